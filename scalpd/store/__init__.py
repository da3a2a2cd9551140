"""Store: the SQLite database that holds every run, intent, order, fill and position."""

from scalpd.store.sqlite import SCHEMA_VERSION, SqliteJournal, Store, StoreError

__all__ = ["SCHEMA_VERSION", "SqliteJournal", "Store", "StoreError"]
