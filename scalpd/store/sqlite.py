"""SQLite store: runs, intents, orders, fills, round trips, positions, equity, quarantined rows,
each replay's report (the JSON `scalpd report RUN` rebuilds its HTML from), and the model
versions online learning made, with their lineage and events (`scalpd ctl models`).

WAL mode. A live journal writes with `synchronous=FULL` and its owner commits each event's
records in one transaction (`flush()`) before acting on them, so an order is on disk before it
is sent (the daemon: after each bar's decision, before its orders go out); a replay journal
commits in batches (a replay can be run again) and
marks its run completed only at the very end, so a crash never leaves a run that looks whole.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from scalpd.engine.portfolio import ClosedTrade, Position
from scalpd.events import Fill, Order, OrderIntent, OrderStatus, OrderUpdate
from scalpd.models.versions import ModelVersion, VersionEvent
from scalpd.risk.gate import Decision

SCHEMA_VERSION = 5

# Steps from one schema version to the next, applied in order to an older database.
_MIGRATIONS: dict[int, str] = {
    # v2: replay reports.
    2: """
CREATE TABLE IF NOT EXISTS reports (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id),
    created_ms INTEGER NOT NULL,
    report_json TEXT NOT NULL
);
""",
    # v3: the risk layer's state (breakers, daily anchors), per account, so a restart keeps a
    # halt. One row per key, replaced on every save.
    3: """
CREATE TABLE IF NOT EXISTS risk_state (
    account TEXT PRIMARY KEY,
    updated_ms INTEGER NOT NULL,
    state_json TEXT NOT NULL
);
""",
    # v4: what a restarted daemon needs to take over from the last run of its account: the
    # account a run traded, an entry's bracket (to arm it if the crash came first), and the
    # exchange's id of each order.
    4: """
ALTER TABLE runs ADD COLUMN account TEXT;
ALTER TABLE orders ADD COLUMN take_profit_bps REAL;
ALTER TABLE orders ADD COLUMN stop_loss_bps REAL;
ALTER TABLE orders ADD COLUMN exchange_id TEXT;
CREATE INDEX IF NOT EXISTS runs_account ON runs(account);
CREATE INDEX IF NOT EXISTS fills_client ON fills(client_id, trade_id);
CREATE INDEX IF NOT EXISTS fills_trade ON fills(symbol, trade_id);
""",
    # v5: model versions born online (issue 8) and what happened to them. A version is
    # identified by (run_id, symbol, model, version): each run's online learner counts from
    # the trained artifact (version 0) again, so the same number in two runs is two networks.
    # Weights are NULL for a candidate the guard rejected.
    5: """
CREATE TABLE IF NOT EXISTS model_versions (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    symbol TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    parent INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    weights BLOB,
    metrics_json TEXT NOT NULL,
    PRIMARY KEY (run_id, symbol, model, version)
);
CREATE TABLE IF NOT EXISTS model_events (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    symbol TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS model_events_version ON model_events(run_id, symbol, model, version);
""",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    mode TEXT NOT NULL,             -- replay | paper | live
    status TEXT NOT NULL,           -- running | completed | failed | interrupted
    started_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER,
    data_label TEXT,
    config_json TEXT NOT NULL,
    summary_json TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS intents (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    time_ms INTEGER NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    qty REAL NOT NULL,
    reason TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    decision TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    client_id TEXT PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    type TEXT NOT NULL,
    qty REAL NOT NULL,
    price REAL,
    reason TEXT NOT NULL,
    parent_id TEXT,
    reduce_only INTEGER NOT NULL,
    status TEXT NOT NULL,
    filled_qty REAL NOT NULL DEFAULT 0,
    status_reason TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_run_status ON orders(run_id, status);
CREATE TABLE IF NOT EXISTS fills (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    client_id TEXT NOT NULL,
    trade_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    qty REAL NOT NULL,
    price REAL NOT NULL,
    fee REAL NOT NULL,
    fee_asset TEXT NOT NULL,
    liquidity TEXT NOT NULL,
    reason TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    UNIQUE (run_id, client_id, trade_id)
);
CREATE TABLE IF NOT EXISTS trades (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    symbol TEXT NOT NULL,
    entry_time_ms INTEGER NOT NULL,
    exit_time_ms INTEGER NOT NULL,
    qty REAL NOT NULL,
    entry_price REAL NOT NULL,
    exit_price REAL NOT NULL,
    fees REAL NOT NULL,
    pnl REAL NOT NULL,
    exit_reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    symbol TEXT NOT NULL,
    qty REAL NOT NULL,
    avg_price REAL NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, symbol)
);
CREATE TABLE IF NOT EXISTS equity (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    time_ms INTEGER NOT NULL,
    equity REAL NOT NULL,
    cash REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS equity_run_time ON equity(run_id, time_ms);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    run_id INTEGER REFERENCES runs(id),
    source TEXT NOT NULL,
    row_index INTEGER NOT NULL,
    open_time_ms INTEGER,
    reason TEXT NOT NULL
);
""" + "".join(_MIGRATIONS.values())


class StoreError(Exception):
    pass


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Store:
    """One SQLite database file; `journal(run_id)` gives the engine's recorder for a run."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite_utils.Database(path)
            self.conn: sqlite3.Connection = self.db.conn
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None
        self.path = path

    def _migrate(self) -> None:
        row = self.conn.execute(
            "SELECT value FROM meta WHERE key='schema_version'"
            if self._has_table("meta")
            else "SELECT NULL WHERE 0"
        ).fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"schema version {row[0]} is newer than this scalpd understands ({SCHEMA_VERSION})"
            )
        if row is None:
            self.conn.executescript(_SCHEMA)
            self.conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            self.conn.commit()
            return
        for version in range(int(row[0]) + 1, SCHEMA_VERSION + 1):
            self.conn.executescript(_MIGRATIONS[version])
            self.conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
            self.conn.commit()

    def _has_table(self, name: str) -> bool:
        found = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)
        ).fetchone()
        return found is not None

    @property
    def schema_version(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0])

    def close(self) -> None:
        self.conn.close()

    # -- runs ----------------------------------------------------------------------------------

    def start_run(
        self, mode: str, config: dict[str, Any], data_label: str, account: str | None = None
    ) -> int:
        """A new run; `account` (live and paper) ties it to the runs that traded the same
        account before it, whose open orders and positions a restart takes over."""
        cur = self.conn.execute(
            "INSERT INTO runs(mode, status, started_at_ms, data_label, config_json, account) "
            "VALUES (?, 'running', ?, ?, ?, ?)",
            (mode, _now_ms(), data_label, orjson.dumps(config).decode(), account),
        )
        self.conn.commit()
        return int(cur.lastrowid)

    def finish_run(
        self, run_id: int, status: str, summary: dict[str, Any] | None = None, error: str = ""
    ) -> None:
        self.conn.execute(
            "UPDATE runs SET status=?, finished_at_ms=?, summary_json=?, error=? WHERE id=?",
            (
                status,
                _now_ms(),
                orjson.dumps(summary).decode() if summary is not None else None,
                error or None,
                run_id,
            ),
        )
        self.conn.commit()

    def run(self, run_id: int) -> dict[str, Any]:
        return self.db["runs"].get(run_id)

    def save_report(self, run_id: int, report: dict[str, Any]) -> None:
        """Store (or replace) a run's report JSON."""
        self.conn.execute(
            "INSERT INTO reports(run_id, created_ms, report_json) VALUES (?, ?, ?) "
            "ON CONFLICT(run_id) DO UPDATE SET created_ms=excluded.created_ms, "
            "report_json=excluded.report_json",
            (run_id, _now_ms(), orjson.dumps(report).decode()),
        )
        self.conn.commit()

    def report_json(self, run_id: int) -> str | None:
        """A run's report exactly as stored; None when it has none."""
        row = self.conn.execute(
            "SELECT report_json FROM reports WHERE run_id=?", (run_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def save_risk_state(self, account: str, state_json: str, *, commit: bool = True) -> None:
        """Store (or replace) the risk state of an account (e.g. "binance:main" or a run id),
        as durably as the connection's journal runs (synchronous=FULL under a live or paper
        journal): a lost halt would let a restarted daemon trade.

        commit: at once (True), or with the caller's next commit (False): the daemon's, made
        before anything the change follows from is acted on. A bar's fills and the risk state
        they changed then reach the disk in one transaction, both or neither (committed apart,
        a crash between them counted a loss whose fill recovery would book again), with one
        fsync on the decision path, not two."""
        self.conn.execute(
            "INSERT INTO risk_state(account, updated_ms, state_json) VALUES (?, ?, ?) "
            "ON CONFLICT(account) DO UPDATE SET updated_ms=excluded.updated_ms, "
            "state_json=excluded.state_json",
            (account, _now_ms(), state_json),
        )
        if commit:
            self.conn.commit()

    def load_risk_state(self, account: str) -> str | None:
        """The account's risk state JSON as last saved; None when it has none."""
        row = self.conn.execute(
            "SELECT state_json FROM risk_state WHERE account=?", (account,)
        ).fetchone()
        return None if row is None else str(row[0])

    # -- an account across runs (what a restart takes over) ----------------------------------

    def account_fills(self, account: str) -> list[dict[str, Any]]:
        """Every fill booked for the account, in the order booked: the book is rebuilt from
        them (positions, dust, the part of a position already sold)."""
        return list(
            self.db.query(
                "SELECT f.* FROM fills f JOIN runs r ON r.id = f.run_id WHERE r.account = ? "
                "ORDER BY f.id",
                (account,),
            )
        )

    def account_open_orders(self, account: str) -> list[dict[str, Any]]:
        """The account's orders not known to have ended (new, open, partially filled)."""
        return list(
            self.db.query(
                "SELECT o.* FROM orders o JOIN runs r ON r.id = o.run_id "
                "WHERE r.account = ? AND o.status IN ('new', 'open', 'partially_filled') "
                "ORDER BY o.rowid",
                (account,),
            )
        )

    def fill_ids(self, client_id: str) -> set[str]:
        """The exchange trade ids already booked for one of our orders (in any run)."""
        rows = self.conn.execute("SELECT trade_id FROM fills WHERE client_id = ?", (client_id,))
        return {str(r[0]) for r in rows}

    def has_trade(self, symbol: str, trade_id: str) -> bool:
        """Whether an exchange trade is among our fills (of any run)."""
        row = self.conn.execute(
            "SELECT 1 FROM fills WHERE symbol = ? AND trade_id = ? LIMIT 1", (symbol, trade_id)
        ).fetchone()
        return row is not None

    def account_last_record_ms(self, account: str) -> int | None:
        """The exchange time of the account's latest fill or order change; None: no record."""
        row = self.conn.execute(
            "SELECT max(t) FROM ("
            " SELECT max(f.time_ms) AS t FROM fills f JOIN runs r ON r.id = f.run_id"
            " WHERE r.account = ?"
            " UNION ALL SELECT max(o.updated_ms) FROM orders o JOIN runs r ON r.id = o.run_id"
            " WHERE r.account = ?)",
            (account, account),
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def rows(self, table: str, run_id: int) -> list[dict[str, Any]]:
        return list(self.db[table].rows_where("run_id = ?", [run_id], order_by="rowid"))

    def quarantine(self, run_id: int | None, source: str, rows: list[tuple[int, int, str]]) -> None:
        self.conn.executemany(
            "INSERT INTO quarantine(run_id, source, row_index, open_time_ms, reason) "
            "VALUES (?, ?, ?, ?, ?)",
            [(run_id, source, i, t, reason) for i, t, reason in rows],
        )
        self.conn.commit()

    # -- model versions born online (issue 8) ------------------------------------------------

    def model_versions(
        self, run_id: int | None = None, symbol: str | None = None
    ) -> list[dict[str, Any]]:
        """The lineage of `run_id`'s and `symbol`'s versions (None: every run, every symbol),
        by run, symbol, model and version. Each row: run_id, symbol, model, version, parent,
        created_ms, has_weights, metrics (a dict), and from its events `state` (the kind of
        its latest one; None before any), `state_ms`, `reason`, and `champion`: whether it is
        the version serving at the end of the events (the latest promoted or restored; after a
        champion's rollback, the one its promotion replaced)."""
        rows = list(
            self.db.query(
                "SELECT run_id, symbol, model, version, parent, created_ms, "
                "weights IS NOT NULL AS has_weights, metrics_json FROM model_versions "
                "WHERE (:run IS NULL OR run_id = :run) AND (:sym IS NULL OR symbol = :sym) "
                "ORDER BY run_id, symbol, model, version",
                {"run": run_id, "sym": symbol},
            )
        )
        champion: dict[tuple[int, str, str], int] = {}  # version 0 until an event says
        replaced: dict[tuple[int, str, str, int], int] = {}  # promoted -> the one it replaced
        latest: dict[tuple[int, str, str, int], dict[str, Any]] = {}  # each version's last
        for e in self.model_events(run_id, symbol):
            lineage, version = (e["run_id"], e["symbol"], e["model"]), e["version"]
            latest[(*lineage, version)] = e
            if e["kind"] in ("promoted", "restored"):
                replaced[(*lineage, version)] = champion.get(lineage, 0)
                champion[lineage] = version
            elif e["kind"] == "rolled_back" and champion.get(lineage, 0) == version:
                champion[lineage] = replaced.get((*lineage, version), 0)
        for r in rows:
            last = latest.get((r["run_id"], r["symbol"], r["model"], r["version"]), {})
            r["state"], r["state_ms"] = last.get("kind"), last.get("time_ms")
            r["reason"] = last.get("reason")
            r["has_weights"] = bool(r["has_weights"])
            r["metrics"] = orjson.loads(r.pop("metrics_json"))
            r["champion"] = champion.get((r["run_id"], r["symbol"], r["model"])) == r["version"]
        return rows

    def model_events(
        self, run_id: int | None = None, symbol: str | None = None
    ) -> list[dict[str, Any]]:
        """Every version event of `run_id` and `symbol` (None: all), in the order recorded."""
        return list(
            self.db.query(
                "SELECT run_id, symbol, model, version, kind, time_ms, reason FROM model_events "
                "WHERE (:run IS NULL OR run_id = :run) AND (:sym IS NULL OR symbol = :sym) "
                "ORDER BY id",
                {"run": run_id, "sym": symbol},
            )
        )

    def model_weights(self, run_id: int, symbol: str, model: str, version: int) -> bytes:
        """A stored version's weights (torch.save of its state_dict). StoreError when the
        run has no such version, or the guard rejected it (its weights were not kept)."""
        row = self.conn.execute(
            "SELECT weights FROM model_versions "
            "WHERE run_id = ? AND symbol = ? AND model = ? AND version = ?",
            (run_id, symbol, model, version),
        ).fetchone()
        if row is None:
            known = self.conn.execute(
                "SELECT group_concat(version, ', ') FROM (SELECT version FROM model_versions "
                "WHERE run_id = ? AND symbol = ? AND model = ? AND weights IS NOT NULL "
                "ORDER BY version)",
                (run_id, symbol, model),
            ).fetchone()[0]
            raise StoreError(
                f"run {run_id} has no version {version} of {symbol} ({model}); "
                f"versions with weights: {known or 'none'}"
            )
        if row[0] is None:
            raise StoreError(
                f"version {version} of {symbol} ({model}, run {run_id}) was rejected by the "
                "guard: its weights were not kept"
            )
        return bytes(row[0])

    def journal(self, run_id: int, *, durable: bool) -> SqliteJournal:
        return SqliteJournal(self.conn, run_id, durable=durable, store=self)


class SqliteJournal:
    """The engine's Journal port on SQLite.

    durable=True (live, paper): synchronous=FULL; the owner commits with `flush()` before it
    acts on what was recorded (one fsync per event, not one per record).
    durable=False (replay): one transaction per `_BATCH` records, and `flush()` at the end.
    """

    _BATCH = 5_000

    def __init__(
        self, conn: sqlite3.Connection, run_id: int, *, durable: bool, store: Store | None = None
    ) -> None:
        self._conn = conn
        self.store = store  # the Store it writes to: its queries read what was recorded
        self._run = run_id
        self._durable = durable
        self._pending = 0
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")

    def _done(self) -> None:
        if self._durable:
            return  # committed by the owner's flush(), before it acts
        self._pending += 1
        if self._pending >= self._BATCH:
            self.flush()

    def flush(self) -> None:
        self._conn.commit()
        self._pending = 0

    def record_intent(self, intent: OrderIntent, decision: Decision) -> None:
        self._conn.execute(
            "INSERT INTO intents(run_id, time_ms, symbol, side, qty, reason, allowed, decision) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self._run,
                intent.time_ms,
                intent.symbol,
                intent.side.value,
                intent.qty,
                intent.reason,
                int(decision.allowed),
                decision.reason,
            ),
        )
        self._done()

    def record_order(self, order: Order, status: OrderStatus = OrderStatus.NEW) -> None:
        self._conn.execute(
            "INSERT INTO orders(client_id, run_id, symbol, side, type, qty, price, reason, "
            "parent_id, reduce_only, status, created_ms, updated_ms, take_profit_bps, "
            "stop_loss_bps) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                order.client_id,
                self._run,
                order.symbol,
                order.side.value,
                order.type.value,
                order.qty,
                order.price,
                order.reason,
                order.parent_id,
                int(order.reduce_only),
                status.value,
                order.time_ms,
                order.time_ms,
                order.bracket.take_profit_bps if order.bracket else None,
                order.bracket.stop_loss_bps if order.bracket else None,
            ),
        )
        self._done()

    def record_order_update(self, update: OrderUpdate, filled_qty: float) -> None:
        self._conn.execute(
            "UPDATE orders SET status=?, filled_qty=?, status_reason=?, updated_ms=?, "
            "exchange_id=COALESCE(?, exchange_id) WHERE client_id=?",
            (
                update.status.value,
                filled_qty,
                update.reason or None,
                update.time_ms,
                update.exchange_id,
                update.client_id,
            ),
        )
        self._done()

    def record_fill(self, fill: Fill, position: Position | None) -> None:
        self._conn.execute(
            "INSERT INTO fills(run_id, client_id, trade_id, symbol, side, qty, price, fee, "
            "fee_asset, liquidity, reason, time_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self._run,
                fill.client_id,
                fill.trade_id,
                fill.symbol,
                fill.side.value,
                fill.qty,
                fill.price,
                fill.fee,
                fill.fee_asset,
                fill.liquidity,
                fill.reason,
                fill.time_ms,
            ),
        )
        qty, avg = (position.qty, position.avg_price) if position is not None else (0.0, 0.0)
        self._conn.execute(
            "INSERT INTO positions(run_id, symbol, qty, avg_price, updated_ms) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(run_id, symbol) DO UPDATE SET "
            "qty=excluded.qty, avg_price=excluded.avg_price, updated_ms=excluded.updated_ms",
            (self._run, fill.symbol, qty, avg, fill.time_ms),
        )
        self._done()

    def record_trade(self, trade: ClosedTrade) -> None:
        self._conn.execute(
            "INSERT INTO trades(run_id, symbol, entry_time_ms, exit_time_ms, qty, entry_price, "
            "exit_price, fees, pnl, exit_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self._run, *trade),
        )
        self._done()

    def record_equity(self, time_ms: int, equity: float, cash: float) -> None:
        self._conn.execute(
            "INSERT INTO equity(run_id, time_ms, equity, cash) VALUES (?, ?, ?, ?)",
            (self._run, time_ms, equity, cash),
        )
        self._done()

    def record_model(self, record: ModelVersion | VersionEvent) -> None:
        """A model version born online, or something that happened to one (issue 8)."""
        if isinstance(record, ModelVersion):
            self._conn.execute(
                "INSERT INTO model_versions(run_id, symbol, model, version, parent, created_ms, "
                "weights, metrics_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self._run,
                    record.symbol,
                    record.model,
                    record.version,
                    record.parent,
                    record.created_ms,
                    record.weights,
                    orjson.dumps(dict(record.metrics), option=orjson.OPT_SERIALIZE_NUMPY).decode(),
                ),
            )
        else:
            self._conn.execute(
                "INSERT INTO model_events(run_id, symbol, model, version, kind, time_ms, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    self._run,
                    record.symbol,
                    record.model,
                    record.version,
                    record.kind,
                    record.time_ms,
                    record.reason,
                ),
            )
        self._done()
