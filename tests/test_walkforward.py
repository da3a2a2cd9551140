"""Walk-forward on real BTC bars: a fresh model per step, purged training, trades only after the
training period, only the out-of-sample days aggregated, the same numbers every time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from scalpd.config.settings import ConfigError, WalkForwardSettings, load_settings
from scalpd.data.parquet import DataError, read_parquet
from scalpd.replay.walkforward import (
    DAY_MS,
    format_walkforward,
    plan_steps,
    run_walkforward,
)
from scalpd.store.sqlite import Store
from scalpd.utc import parse_utc_ms
from tests.conftest import shared_file

MIN = 60_000
# A tiny TCN, one epoch: the test is about the procedure, not the model.
TINY = {"net": {"hidden": 8, "levels": 2}, "window_bars": 96, "stride_bars": 48}


def test_plan_steps_by_hand() -> None:
    wf = WalkForwardSettings(train_days=2, test_days=3, step_days=1)
    start = parse_utc_ms("2024-03-01") + 5 * MIN  # not at midnight: the first test waits for one
    steps = plan_steps(start, parse_utc_ms("2024-03-08"), wf)
    day = lambda d: parse_utc_ms(f"2024-03-{d:02d}")  # noqa: E731
    # Test windows from Mar 4 (the first midnight with 2 days before it) to the last whose
    # first day fits: Mar 7; the last windows are cut at the data's end.
    assert [(s.train_start_ms, s.test_start_ms, s.test_end_ms, s.oos_end_ms) for s in steps] == [
        (day(2), day(4), day(7), day(5)),
        (day(3), day(5), day(8), day(6)),
        (day(4), day(6), day(8), day(7)),
        (day(5), day(7), day(8), day(8)),
    ]
    assert [s.index for s in steps] == [1, 2, 3, 4]
    assert len(plan_steps(start, day(8), wf, max_steps=2)) == 2
    assert plan_steps(start, day(8), wf, start_ms=day(6))[0].test_start_ms == day(6)
    with pytest.raises(DataError, match="needs 2 days"):
        plan_steps(start, day(8), wf, start_ms=day(3))


def test_step_longer_than_test_window_is_refused() -> None:
    with pytest.raises(ConfigError, match="walkforward.*step_days"):
        load_settings(None, {"walkforward": {"test_days": 1, "step_days": 2}})


@pytest.fixture(scope="module")
def btc_five_days():
    bars = read_parquet(shared_file("binance-spot/BTCUSDT-1m-2024.parquet"))
    t = bars.open_time
    lo, hi = t.searchsorted(parse_utc_ms("2024-03-01")), t.searchsorted(parse_utc_ms("2024-03-06"))
    return bars.take(slice(int(lo), int(hi)))


def _walk(bars, tmp_path: Path, name: str):
    settings = load_settings(
        None,
        {
            "walkforward": {
                "train_days": 2, "test_days": 2, "step_days": 1, "warmup_days": 1,
                "epochs": 1, "seed": 3, "threads": 1, "model_backend": "eager",
                "take_profit_bps": 15, "stop_loss_bps": 15, "horizon_bars": 30,
            },
            # A low bar so that a one-epoch model trades at all.
            "strategy": {"min_confidence": 0.3},
            "store": {"path": str(tmp_path / f"{name}.db")},
        },
    )  # fmt: skip
    store = Store(settings.store.path)
    try:
        result = run_walkforward(
            settings, bars, store, max_steps=2, models_dir=tmp_path / name, train_overrides=TINY
        )
        runs = store.conn.execute("SELECT id, status, data_label FROM runs ORDER BY id").fetchall()
    finally:
        store.close()
    return result, runs


def test_walkforward_on_real_bars(btc_five_days, tmp_path: Path) -> None:
    result, runs = _walk(btc_five_days, tmp_path, "a")
    horizon_ms = 30 * MIN
    first = parse_utc_ms("2024-03-03")
    assert [r.step.test_start_ms for r in result.steps] == [first, first + DAY_MS]
    for r in result.steps:
        s = r.step
        assert s.train_start_ms == s.test_start_ms - 2 * DAY_MS
        # Purge: the last label used reads bars up to its own open + horizon, all closed by the
        # test window's start; and no bar of the test window was given to training.
        assert r.last_label_read_ms <= s.test_start_ms
        meta = orjson.loads((r.model_path / "model.json").read_bytes())
        first_bar, last_bar = meta["training"]["data_range_ms"]
        assert first_bar >= s.train_start_ms and last_bar < s.test_start_ms
        # The last 30 training bars (their labels would read the test window) are unlabelled.
        assert r.last_label_read_ms - horizon_ms - MIN <= last_bar - 30 * MIN
        assert r.label_rows <= r.train_rows - 30
        # Trades only in the test window (warm-up bars trade nothing).
        assert all(s.test_start_ms <= t.entry_time_ms < s.test_end_ms for t in r.trades)
        assert r.oos_trades == [t for t in r.trades if t.entry_time_ms < s.oos_end_ms]
    # Each step a stored run, labelled.
    assert [(status, label.split(":")[0]) for _, status, label in runs] == [
        ("completed", "walk-forward step 1/2"),
        ("completed", "walk-forward step 2/2"),
    ]
    assert [r.run_id for r in result.steps] == [run_id for run_id, _, _ in runs]
    # The aggregate holds each step's first day only: the second day of step 1's window is
    # traded again, by the fresher model of step 2, and counted there.
    all_trades = [t for r in result.steps for t in r.trades]
    assert all_trades, "no trade at all: nothing was checked"
    assert len(result.trades) < len(all_trades)
    assert result.trades == sorted(
        (t for r in result.steps for t in r.oos_trades), key=lambda t: t.entry_time_ms
    )
    assert all(first <= t.entry_time_ms < first + 2 * DAY_MS for t in result.trades)
    agg = result.aggregate
    assert agg["trades"] == len(result.trades)
    assert agg["days"] == pytest.approx(2.0)
    assert agg["total_return"] == pytest.approx(sum(t.pnl for t in result.trades) / 10_000.0)
    table = format_walkforward(result)
    assert "out of sample" in table and len(table.splitlines()) == 2 + 2 + 2

    # Deterministic: the same inputs give the same numbers.
    again, _ = _walk(btc_five_days, tmp_path, "b")
    assert again.trades == result.trades
    assert again.aggregate == result.aggregate
    assert [r.metrics for r in again.steps] == [r.metrics for r in result.steps]
    assert np.array_equal(
        [r.last_label_read_ms for r in again.steps], [r.last_label_read_ms for r in result.steps]
    )
