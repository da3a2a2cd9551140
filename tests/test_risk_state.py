"""Risk state survives a restart: its JSON round-trips exactly, SQLite keeps it (a v2 database is
migrated to v3 first), and a restored manager halts what the old one halted, resetting on the
same schedule. Also: the abnormal-market defaults on a month of real BTC/USDT bars."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from scalpd.config.settings import RiskSettings
from scalpd.engine.portfolio import ClosedTrade
from scalpd.events import Bar, OrderIntent, Side
from scalpd.risk import RiskManager, RiskState
from scalpd.risk.breakers import Breaker
from scalpd.store.sqlite import SCHEMA_VERSION, Store
from scalpd.utc import parse_utc_ms
from tests.conftest import shared_file

T = 1_709_251_200_000  # 2024-03-01 00:00 UTC
M = 60_000
DAY = 86_400_000
BTC = "BTC/USDT"
SETTINGS = RiskSettings(max_consecutive_losses=2, loss_cooldown_min=30.0, stale_after_s=0)


def entry(time_ms: int, symbol: str = BTC) -> OrderIntent:
    return OrderIntent(symbol, Side.BUY, 0.01, "test_entry", time_ms)


def loss(exit_ms: int) -> ClosedTrade:
    return ClosedTrade(BTC, exit_ms - M, exit_ms, 0.01, 100.0, 99.0, 0.1, -1.1, "stop_loss")


def halted_manager() -> RiskManager:
    """Tripped: daily loss, consecutive losses, manual pause; one breaker tripped and reset."""
    risk = RiskManager(SETTINGS)
    risk.on_equity(T, 10_000.0)
    risk.on_trade_closed(loss(T + 10 * M))
    risk.on_trade_closed(loss(T + 11 * M))  # trips; cool-down to T + 41 min
    risk.on_equity(T + 12 * M, 9_400.0)  # 6% down: daily loss halt
    risk.pause(T + 13 * M, "ctl")
    risk.pause(T + 14 * M, "ctl")  # no-op: already paused
    risk.state.breakers["spread:ETH/USDT"] = Breaker(False, "old", T - DAY, None, 3)
    risk.drain_events()
    return risk


def test_state_json_round_trips_exactly() -> None:
    state = halted_manager().state
    text = state.to_json()
    back = RiskState.from_json(text)
    assert back == state
    assert back.to_json() == text
    assert back.tripped() == ["manual", "daily_loss", "consecutive_losses"]
    assert RiskState.from_json(RiskState().to_json()) == RiskState()


def test_unknown_state_version_is_refused() -> None:
    with pytest.raises(ValueError, match="risk state version 99: this scalpd reads version 1"):
        RiskState.from_json('{"version": 99, "breakers": {}}')


def test_a_restored_manager_keeps_the_halt_and_its_schedule() -> None:
    old = halted_manager()
    new = RiskManager(SETTINGS, RiskState.from_json(old.state.to_json()))
    now = T + 20 * M
    assert new.check(entry(now), 100.0, 0.0) == old.check(entry(now), 100.0, 0.0)
    assert not new.check(entry(now), 100.0, 0.0).allowed
    assert new.resume(now, "manual") == ["manual"]
    assert "daily_loss" in new.check(entry(now), 100.0, 0.0).reason
    new.tick(T + 41 * M)  # the loss cool-down ends on the old schedule
    assert [(e.breaker, e.action) for e in new.drain_events()] == [
        ("manual", "reset"),
        ("consecutive_losses", "reset"),
    ]
    assert new.state.consecutive_losses == 0
    assert not new.check(entry(T + DAY - 1), 100.0, 0.0).allowed  # halted all day
    new.on_equity(T + DAY, 9_400.0)
    assert new.check(entry(T + DAY), 100.0, 0.0).allowed
    assert new.state.day_start_equity == 9_400.0


def test_dirty_flag_says_when_to_save() -> None:
    risk = RiskManager(SETTINGS)
    risk.on_equity(T, 10_000.0)  # a new day anchored
    assert risk.take_dirty()
    assert not risk.take_dirty()
    risk.on_equity(T + M, 9_990.0)  # only the mark moved: nothing to save
    assert not risk.take_dirty()
    risk.on_trade_closed(loss(T + 2 * M))
    assert risk.take_dirty()


def test_sqlite_saves_and_loads_risk_state(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = Store(db)
    assert store.load_risk_state("binance:main") is None
    store.save_risk_state("binance:main", RiskState().to_json())
    text = halted_manager().state.to_json()
    store.save_risk_state("binance:main", text)  # replaces
    store.save_risk_state("binance:other", RiskState().to_json())
    store.close()
    store = Store(db)  # a restart
    assert store.load_risk_state("binance:main") == text
    assert RiskState.from_json(store.load_risk_state("binance:other")) == RiskState()
    store.close()


def test_a_version_2_store_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema_version', '2');"
            # The order and fill tables as the first schema had them (later versions add to them).
            "CREATE TABLE orders (client_id TEXT PRIMARY KEY, run_id INTEGER, status TEXT);"
            "CREATE TABLE fills (id INTEGER PRIMARY KEY, client_id TEXT, trade_id TEXT,"
            " symbol TEXT);"
            "CREATE TABLE runs (id INTEGER PRIMARY KEY, mode TEXT NOT NULL, status TEXT NOT NULL,"
            " started_at_ms INTEGER NOT NULL, finished_at_ms INTEGER, data_label TEXT,"
            " config_json TEXT NOT NULL, summary_json TEXT, error TEXT);"
            "INSERT INTO runs VALUES (1, 'live', 'interrupted', 0, 1, 'old', '{}', NULL, NULL);"
            "CREATE TABLE reports (run_id INTEGER PRIMARY KEY REFERENCES runs(id),"
            " created_ms INTEGER NOT NULL, report_json TEXT NOT NULL);"
            "INSERT INTO reports VALUES (1, 5, '{\"run_id\": 1}');"
        )
    store = Store(db)
    assert store.schema_version == SCHEMA_VERSION == 5
    assert store.run(1)["data_label"] == "old"
    assert store.report_json(1) == '{"run_id": 1}'
    text = halted_manager().state.to_json()
    store.save_risk_state("1", text)
    assert store.load_risk_state("1") == text
    assert {"take_profit_bps", "stop_loss_bps", "exchange_id"} <= set(
        store.db["orders"].columns_dict
    )
    assert "account" in store.db["runs"].columns_dict
    store.close()


def test_default_market_breakers_are_rare_on_real_bars() -> None:
    """March 2024 BTC/USDT (a volatile month, 44,640 bars): the default abnormal-market tests
    trip a handful of times, not constantly, and the stale test never on gap-free data."""
    path = shared_file("binance-spot/BTCUSDT-1m-2024.parquet")
    start, end = parse_utc_ms("2024-03-01"), parse_utc_ms("2024-04-01")
    table = pq.read_table(
        path,
        columns=["open_time", "open", "high", "low", "close", "volume"],
        filters=[("open_time", ">=", start), ("open_time", "<", end)],
    )
    cols = [table.column(c).to_pylist() for c in table.column_names]
    risk = RiskManager(RiskSettings())
    trips: dict[str, int] = {}
    for t, o, h, lo, c, v in zip(*cols, strict=True):
        risk.on_bar(Bar(BTC, t, o, h, lo, c, v, v * c, -1, float("nan")))
        for event in risk.drain_events():
            if event.action == "trip":
                kind = event.breaker.split(":")[0]
                trips[kind] = trips.get(kind, 0) + 1
    assert len(cols[0]) == 44_640
    assert set(trips) <= {"price_jump", "volatility"}
    assert 1 <= trips.get("price_jump", 0) <= 31 and 1 <= trips.get("volatility", 0) <= 31
