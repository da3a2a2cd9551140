"""scalpd/live/insight.py: the loop-lag monitor, the log ring, the labels and calibration of the
served model's predictions (hand-computed), permutation importance, and a paper daemon's
`status` carrying them (a tiny model with a 15-bar label horizon, fed past its features'
warm-up so its predictions mature)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path

import numpy as np
import pytest
import structlog

from scalpd.data.synthetic import generate
from scalpd.events import BAR_INTERVAL_MS, Bar
from scalpd.live import insight
from scalpd.live.insight import (
    LagWindow,
    LogRing,
    LoopLagMonitor,
    ModelQuality,
    barrier_outcome,
    log_loss_rows,
    permutation_importance,
    quality,
)
from scalpd.models.labels import LabelParams, triple_barrier
from scalpd.ops.control import request
from tests.test_daemon_services import running
from tests.test_model_versions import _paper_daemon, tiny_model  # noqa: F401 - a fixture

T0 = 1_704_067_200_000
WAIT_S = 20  # a bound on a hang only


def _bar(i: int, high: float, low: float, close: float, symbol: str = "BTC/USDT") -> Bar:
    return Bar(symbol, T0 + i * BAR_INTERVAL_MS, close, high, low, close, 1.0, close, 1, 0.5)


# -- loop lag ----------------------------------------------------------------------------------


def test_lag_window_percentiles_by_hand() -> None:
    window = LagWindow(size=4)
    assert window.summary() == {"samples": 0, "p50": None, "p99": None, "max": None}
    for ms in (9.0, 1.0, 2.0, 3.0, -0.5):  # the first falls out; a negative one is 0
        window.add(ms)
    s = window.summary()
    # [1, 2, 3, 0]: median 1.5; p99 by linear interpolation 2 + 0.97 * (3 - 2) = 2.97.
    assert (s["samples"], s["p50"], s["p99"], s["max"]) == (4, 1.5, 2.97, 3.0)


def test_loop_lag_monitor_sees_a_blocked_loop() -> None:
    async def scenario() -> dict:
        monitor = LoopLagMonitor(interval_s=0.01)
        monitor.start()
        await asyncio.sleep(0.03)
        time.sleep(0.2)  # the loop is blocked: the monitor wakes at least ~0.19 s late
        await asyncio.sleep(0.03)
        await monitor.close()
        return monitor.summary()

    s = asyncio.run(scenario())
    assert s["samples"] >= 2 and s["interval_ms"] == 10.0
    assert s["max"] >= 150.0  # a lower bound only: no timing assertion beyond what was forced


# -- log ring ----------------------------------------------------------------------------------


def test_log_ring_keeps_the_last_lines_and_uninstalls() -> None:
    ring = LogRing(size=3)
    before = list(structlog.get_config()["processors"])
    ring.install()
    try:
        logger = structlog.get_logger("t")
        for i in range(4):
            logger.warning("line", i=i, obj=object())
        logging.getLogger("ccxt.t").warning("from %s", "ccxt")
        logging.getLogger("ccxt.t").info("not kept: below warning")
    finally:
        ring.uninstall()
    assert list(structlog.get_config()["processors"]) == before
    tail = ring.tail(10)
    assert [line.get("i") for line in tail] == [2, 3, None]
    assert tail[0]["event"] == "line" and tail[0]["level"] == "warning"
    assert isinstance(tail[0]["obj"], str) and tail[0]["time"]
    assert tail[-1] == {**tail[-1], "level": "warning", "logger": "ccxt.t", "event": "from ccxt"}
    assert ring.tail(1) == tail[-1:]
    structlog.get_logger("t").warning("after")  # uninstalled: not kept
    assert len(ring.tail(10)) == 3 and ring.tail(10)[-1]["event"] == "from ccxt"


# -- labels and calibration ----------------------------------------------------------------------


def test_barrier_outcome_by_hand_and_equal_to_the_label_function() -> None:
    # Close 100, 50 bps barriers: long TP (short SL) at 100.5, long SL (short TP) at 99.5.
    assert barrier_outcome(100.0, [(100.2, 99.8), (100.6, 100.0)], 50, 50) == (0, 1)
    assert barrier_outcome(100.0, [(100.6, 99.4)], 50, 50) == (1, 1)  # both touched: stop
    assert barrier_outcome(100.0, [(100.1, 99.9)], 50, 50) == (2, 2)
    assert barrier_outcome(100.0, [(100.2, 99.4)], 50, 50) == (1, 0)
    rng = np.random.default_rng(7)
    n, params = 400, LabelParams(take_profit_bps=20.0, stop_loss_bps=15.0, horizon_bars=6)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 8e-4, n)))
    high = close * (1 + rng.uniform(0, 1.5e-3, n))
    low = close * (1 - rng.uniform(0, 1.5e-3, n))
    times = T0 + np.arange(n, dtype=np.int64) * BAR_INTERVAL_MS
    labels = triple_barrier(times, high, low, close, params)
    for t in range(n - params.horizon_bars):
        later = list(zip(high[t + 1 : t + 7], low[t + 1 : t + 7], strict=True))
        assert barrier_outcome(close[t], later, 20.0, 15.0) == tuple(labels.y[t]), t


def test_quality_by_hand() -> None:
    p = [0.9, 0.8, 0.3, 0.5, 0.1]
    y = [1, 0, 0, 1, 0]
    q = quality(p, y, bins=2)
    # Right side of 0.5: 0.9/1 yes, 0.8/0 no, 0.3/0 yes, 0.5/1 yes (0.5 predicts it), 0.1/0 yes.
    assert q["accuracy"] == 0.8
    # Brier: (0.01 + 0.64 + 0.09 + 0.25 + 0.01) / 5 = 0.2.
    assert q["brier"] == pytest.approx(0.2)
    # Bins [0, 0.5): p 0.3, 0.1 -> mean 0.2, freq 0; [0.5, 1]: 0.9, 0.8, 0.5 -> 0.7333, 2/3.
    assert q["calibration"] == [
        {"lo": 0.0, "hi": 0.5, "n": 2, "mean_p": 0.2, "freq": 0.0},
        {"lo": 0.5, "hi": 1.0, "n": 3, "mean_p": 0.7333, "freq": 0.6667},
    ]
    # ECE: 2/5 * 0.2 + 3/5 * (0.7333 - 0.6667) = 0.08 + 0.04 = 0.12.
    assert q["ece"] == pytest.approx(0.12, abs=1e-4)
    assert q["base_rate"] == 0.4 and q["samples"] == 5
    assert quality([], [])["accuracy"] is None
    assert quality([1.0], [1])["calibration"][0]["lo"] == 0.9  # 1.0 is in the last bin


def test_model_quality_labels_after_the_horizon_only() -> None:
    mq = ModelQuality(50.0, 50.0, horizon_bars=2, importance_samples=4)
    row = np.zeros(3, np.float32)
    assert mq.on_bar(_bar(0, 100.0, 100.0, 100.0), 0.7, row) == []
    assert mq.on_bar(_bar(1, 100.6, 100.0, 100.3), 0.2, row) == []  # bar 0: TP hit, not yet due
    # Bar 2 completes bar 0's window (bars 1..2): take-profit first; p 0.7 right.
    assert mq.on_bar(_bar(2, 100.3, 100.1, 100.2), float("nan"), row) == [(0.7, 1)]
    # Bar 1 (close 100.3: TP 100.8015, SL 99.7985): bar 3 stops it.
    assert mq.on_bar(_bar(3, 100.2, 99.7, 99.8), None, None) == [(0.2, 0)]
    assert mq.on_bar(_bar(4, 99.9, 99.7, 99.8), 0.6, row) == []  # bar 2 had no prediction
    s = mq.summary("BTC/USDT")
    assert (s["samples"], s["accuracy"]) == (2, 1.0)
    assert s["brier"] == pytest.approx((0.3**2 + 0.2**2) / 2, abs=1e-4)
    # A gap drops what is pending: bar 4's window would span it.
    assert mq.on_bar(_bar(9, 99.9, 99.7, 99.8), 0.6, row) == []
    assert mq.on_bar(_bar(10, 99.9, 99.7, 99.8), 0.6, row) == []
    assert mq.summary("BTC/USDT")["samples"] == 2
    assert mq.summary("ETH/USDT")["samples"] == 0
    x, times, y, scored = mq.importance_inputs("BTC/USDT")
    # Bars 0, 1, 2 matured with a row (bar 3 had none, and the gap dropped it). Bar 0: long
    # take-profit, short stopped by the same 100.6; bar 1: long stopped at 99.7, the short's
    # take-profit there; bar 2 (close 100.2: barriers 100.701 / 99.699): neither, timeouts.
    assert x.shape == (3, 3) and list(times) == [T0, T0 + 60_000, T0 + 120_000]
    assert y.tolist() == [[0, 1], [1, 0], [2, 2]] and scored.all()
    mq.reset()  # another model serves: its window starts empty
    assert mq.summary("BTC/USDT")["samples"] == 0 and not mq.importance_due("BTC/USDT")


def test_permutation_importance_finds_the_column_the_model_reads() -> None:
    rng = np.random.default_rng(1)
    n = 200
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = np.stack([(x[:, 0] > 0).astype(int) * 2, np.zeros(n, int)], axis=1)  # long: TP / TO

    def predict(rows: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p_tp = 1 / (1 + np.exp(3 * rows[:, 0]))  # reads column 0 only
        probs = np.zeros((len(rows), 2, 3))
        probs[:, 0, 0], probs[:, 0, 2] = p_tp, 1 - p_tp
        probs[:, 1] = [0.8, 0.1, 0.1]
        return probs, np.ones(len(rows), bool)

    times = np.arange(n, dtype=np.int64)
    scored = np.arange(n) >= 50
    out = permutation_importance(predict, x, times, y, scored, ["a", "b", "c"])
    assert out["complete"] and out["samples"] == 150
    assert list(out["importance"])[0] == "a" and out["importance"]["a"] > 0.5
    assert out["importance"]["b"] == 0.0 == out["importance"]["c"]
    probs, _ = predict(x, times)
    assert out["base_loss"] == pytest.approx(float(log_loss_rows(probs, y)[50:].mean()), abs=1e-5)
    # Seeded: the same answer again; a budget spent at once stops before any column.
    assert permutation_importance(predict, x, times, y, scored, ["a", "b", "c"]) == out
    ticks = iter(range(100))
    cut = permutation_importance(
        predict, x, times, y, scored, ["a", "b", "c"], budget_s=0.5, clock=lambda: next(ticks)
    )
    assert not cut["complete"] and cut["importance"] == {}


# -- in a paper daemon -------------------------------------------------------------------------


def test_status_of_a_rule_strategy_has_lag_and_log_tail(tmp_path: Path) -> None:
    async def scenario() -> dict:
        async with running(tmp_path, paper=True) as h:
            await h.step(3)
            await asyncio.sleep(0.6)  # a couple of the lag monitor's wake-ups
            return await request(h.socket, "status")

    status = asyncio.run(scenario())
    assert status["loop_lag_ms"]["samples"] >= 1 and status["loop_lag_ms"]["p99"] is not None
    assert status["model_quality"] is None  # a rule strategy serves no probabilities
    assert any(line.get("event") == "bar" for line in status["log_tail"])


@pytest.mark.parametrize("online", [False, True], ids=["frozen", "online"])
def test_status_carries_the_served_models_quality(
    tiny_model: Path,  # noqa: F811
    tmp_path: Path,
    online: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Importance at once here, not ten minutes of wall time after the start.
    monkeypatch.setattr(insight, "IMPORTANCE_EVERY_S", 0.0)
    from tests.test_model_versions import ONLINE, SYMBOL, model_daemon_settings

    def settings(fx):
        # Daily rounds: none in these bars, the trained weights serve throughout.
        online_section = {**ONLINE, "update_every": "day"} if online else {"enabled": False}
        return model_daemon_settings(fx, tiny_model, tmp_path / "q.db", online_section)

    # Past the features' ~1,064-bar warm-up: predictions, then their labels 15 bars later.
    bars = generate(days=0.85, seed=3, start="2024-01-01T00:00:00Z")

    async def scenario() -> dict:
        async with _paper_daemon(settings, bars) as (daemon, _fx, step):
            await step(len(bars) - 1)
            socket = daemon.settings.control.socket_path
            async with asyncio.timeout(WAIT_S):  # the importance thread: a bound on a hang
                while True:
                    status = await request(socket, "status")
                    entry = status["model_quality"]["symbols"][SYMBOL]
                    found = entry["feature_importance"]
                    if found is not None and found["samples"] > 0:
                        return status
                    await asyncio.sleep(0.05)

    status = asyncio.run(scenario())
    quality_ = status["model_quality"]
    assert quality_["label"] == {"take_profit_bps": 20.0, "stop_loss_bps": 20.0, "horizon_bars": 15}
    entry = quality_["symbols"][SYMBOL]
    assert 0.0 <= entry["confidence"] <= 1.0
    assert entry["samples"] > 0 and 0.0 <= entry["accuracy"] <= 1.0
    assert 0.0 <= entry["brier"] <= 1.0 and entry["calibration"]
    assert sum(b["n"] for b in entry["calibration"]) == entry["samples"]
    importance = entry["feature_importance"]
    assert 0 < len(importance["importance"]) <= 10 and math.isfinite(importance["base_loss"])
    if online:  # who serves: the trained model, no round having run
        assert entry["serving"]["champion"] == 0 and entry["serving"]["challenger"] is None
    else:
        assert "serving" not in entry
    assert status["loop_lag_ms"]["samples"] >= 1
    assert isinstance(status["log_tail"], list) and len(status["log_tail"]) <= 50
