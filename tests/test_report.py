"""The replay report: summary keys, JSON stored with the run and rebuilt by `scalpd report`
without replaying, a self-contained HTML page, and nothing from outside the replayed bars."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import orjson
import pytest

from scalpd.cli import main
from scalpd.config.settings import Settings
from scalpd.replay import baselines as bl
from scalpd.replay.metrics import TIERS
from scalpd.replay.report import render_html, traded_bars, with_capital_levels
from scalpd.replay.runner import load_input, run_replay
from scalpd.replay.summary import format_summary
from scalpd.store.sqlite import SCHEMA_VERSION, Store

METRIC_KEYS = {
    "days", "total_return", "annualised_return", "max_drawdown", "max_drawdown_minutes",
    "sharpe_minute", "sharpe_daily", "sortino_daily", "calmar", "trades", "win_rate",
    "profit_factor", "avg_trade_minutes", "trades_per_day", "exposure", "turnover", "fees",
    "slippage", "mean_daily_return", "positive_days", "daily_pnl", "daily_return",
}  # fmt: skip
# Read by the capital-level table, the benchmarks and older tests.
SUMMARY_KEYS = {
    "data", "from", "to", "days", "bars", "gaps", "trades", "trades_per_day", "win_rate_pct",
    "total_return_pct", "buy_and_hold_return_pct", "max_drawdown_pct", "fees_usdt",
    "slippage_usdt", "rejected_orders", "final_equity_usdt", "open_positions", "anomalies",
    "bars_per_s", "run_s", "load_s", "metrics", "targets",
}  # fmt: skip


def _settings(**report: int) -> Settings:
    return Settings(data={"synthetic_days": 2}, report={"random_trials": 3, **report})


def test_summary_has_the_metrics_and_the_targets(tmp_path: Path) -> None:
    settings = _settings()
    result = run_replay(settings, load_input(settings), Store(tmp_path / "r.db"))
    summary = result.summary
    assert SUMMARY_KEYS <= set(summary)
    assert METRIC_KEYS <= set(summary["metrics"])
    assert summary["metrics"]["trades"] == summary["trades"] > 0
    assert [row["metric"] for row in summary["targets"]] == [
        "win_rate", "sharpe_daily", "max_drawdown", "mean_daily_return", "trades_per_day",
    ]  # fmt: skip
    for row in summary["targets"]:
        assert all(isinstance(row[tier]["pass"], bool) for tier in TIERS)
    text = format_summary(summary, result.run_id, "r.db")
    assert "seed targets" in text and "Sharpe" in text and "FAIL" in text


def test_report_rebuilt_from_sqlite_alone(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCALPD_DATA__SYNTHETIC_DAYS", "2")
    monkeypatch.setenv("SCALPD_REPORT__RANDOM_TRIALS", "3")
    db, first, second = tmp_path / "r.db", tmp_path / "replay.html", tmp_path / "out/again.html"
    assert main(["replay", "--db", str(db), "--report", str(first), "--json"]) == 0
    out = capsys.readouterr()
    run_id = orjson.loads(out.out)["run_id"]
    assert f"report written to {first}" in out.err

    assert main(["report", str(run_id), "--db", str(db), "--json", "--out", str(second)]) == 0
    printed = capsys.readouterr().out
    with sqlite3.connect(db) as conn:
        sql = "SELECT report_json FROM reports WHERE run_id=?"
        (stored,) = conn.execute(sql, (run_id,)).fetchone()
    assert printed == stored + "\n"
    report = orjson.loads(printed)
    assert report["run_id"] == run_id
    assert report["data"].startswith("SYNTHETIC")
    assert report["settings"]["report"]["random_trials"] == 3
    assert len(report["baselines"]["random_entries"]["runs"]["total_return"]) == 3
    assert {r["regime"] for r in report["regimes"]["rows"]} >= {"trending", "ranging", "shock"}
    # The page rebuilt from the store is the page the replay wrote.
    html = second.read_text()
    assert html == first.read_text()
    assert html.count("<svg") >= 6  # equity, drawdown, daily, trades, random return and Sharpe
    assert not re.search(r"https?://|<script|<link|@import|src=", html)
    assert "Seed targets" in html and "Regimes" in html and "SYNTHETIC" in html


def test_report_of_a_run_without_one_is_one_error_line(tmp_path: Path, capsys) -> None:
    db = tmp_path / "r.db"
    store = Store(db)
    run_id = store.start_run("paper", {}, "live data")
    store.close()
    assert main(["report", str(run_id), "--db", str(db)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"scalpd: error: run {run_id} (paper, running) has no report: completed replays store one"
    )
    assert main(["report", "99", "--db", str(db)]) == 1
    assert "no run 99" in capsys.readouterr().err


def test_a_version_1_store_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema_version', '1');"
            # The order and fill tables as the first schema had them (later versions add to them).
            "CREATE TABLE orders (client_id TEXT PRIMARY KEY, run_id INTEGER, status TEXT);"
            "CREATE TABLE fills (id INTEGER PRIMARY KEY, client_id TEXT, trade_id TEXT,"
            " symbol TEXT);"
            "CREATE TABLE runs (id INTEGER PRIMARY KEY, mode TEXT NOT NULL, status TEXT NOT NULL,"
            " started_at_ms INTEGER NOT NULL, finished_at_ms INTEGER, data_label TEXT,"
            " config_json TEXT NOT NULL, summary_json TEXT, error TEXT);"
            "INSERT INTO runs VALUES (1, 'replay', 'completed', 0, 1, 'old', '{}', '{}', NULL);"
        )
    store = Store(db)
    assert store.schema_version == SCHEMA_VERSION == 5
    assert store.run(1)["data_label"] == "old"
    assert store.report_json(1) is None
    store.save_report(1, {"run_id": 1})
    store.save_report(1, {"run_id": 1, "again": True})
    assert orjson.loads(store.report_json(1)) == {"run_id": 1, "again": True}


def test_report_covers_the_traded_bars_only(tmp_path: Path) -> None:
    settings = _settings(random_trials=2)
    inp = load_input(settings)
    bars = inp.series[0]
    trade_from_ms = int(bars.open_time[0]) + 6 * 3_600_000  # 6 hours of warm-up
    result = run_replay(settings, inp, Store(tmp_path / "r.db"), trade_from_ms=trade_from_ms)
    report = result.report
    assert report is not None
    assert report["period"]["from_ms"] == trade_from_ms - 60_000
    assert report["period"]["to_ms"] == int(bars.open_time[-1]) + 60_000
    times = report["curve"]["time_ms"]
    assert trade_from_ms <= times[0] and times[-1] <= report["period"]["to_ms"]
    assert len(times) <= settings.report.curve_points
    fee = settings.fees.taker_bps
    traded = traded_bars(bars, trade_from_ms)
    assert report["baselines"]["buy_and_hold"][bars.symbol] == bl.buy_and_hold(
        traded, settings.sim.starting_cash_usdt, fee
    )
    assert all(t.entry_time_ms >= trade_from_ms for t in result.engine.trades)
    shares = sum(r["time_share"] for r in report["regimes"]["rows"])
    assert shares == pytest.approx(1.0)


def test_capital_levels_table_when_given(tmp_path: Path) -> None:
    settings = _settings(random_trials=0)
    result = run_replay(settings, load_input(settings), Store(tmp_path / "r.db"))
    assert result.report is not None
    notes = result.report["baselines"]["notes"]
    assert notes == ["random-entry and rule baselines not run for this replay (--no-baselines)"]
    rows = [{"capital_usdt": 100.0, "run_id": 7, "final_equity_usdt": 98.5, "trades": 3}]
    html = render_html(with_capital_levels(result.report, rows))
    assert "Capital levels" in html and "98.50" in html
    assert "Capital levels" not in render_html(result.report)
