"""Triple-barrier labels and purged/embargoed splits."""

from __future__ import annotations

import numpy as np
import pytest

from scalpd.data.bars import BarColumns
from scalpd.data.parquet import read_parquet
from scalpd.events import BAR_INTERVAL_MS
from scalpd.models.labels import (
    INVALID,
    STOP_LOSS,
    TAKE_PROFIT,
    TIMEOUT,
    LabelParams,
    label_bars,
    log_loss_row,
    log_loss_rows,
    triple_barrier,
)
from scalpd.models.splits import chronological_split, purged_kfold, purged_split
from tests.conftest import shared_file

MARCH_2024_MS = 1_709_251_200_000


@pytest.fixture(scope="module")
def bars() -> BarColumns:
    """Three days of real BTC/USDT minute bars."""
    all_bars = read_parquet(shared_file("binance-spot/BTCUSDT-1m-2024.parquet"))
    t = all_bars.open_time
    return all_bars.take((t >= MARCH_2024_MS) & (t < MARCH_2024_MS + 3 * 86_400_000))


def loop_labels(
    open_time: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, p: LabelParams
) -> tuple[np.ndarray, np.ndarray]:
    """The definition, written as plainly as possible."""
    n, h = len(close), p.horizon_bars
    y = np.full((n, 2), INVALID)
    valid = np.zeros(n, dtype=bool)
    for t in range(n):
        if t + h >= n or any(
            open_time[j + 1] - open_time[j] != BAR_INTERVAL_MS for j in range(t, t + h)
        ):
            continue
        valid[t] = True
        entry = close[t]
        for side in (0, 1):
            if side == 0:
                take, stop = (
                    entry * (1 + p.take_profit_bps / 1e4),
                    entry * (1 - p.stop_loss_bps / 1e4),
                )
            else:
                take, stop = (
                    entry * (1 - p.take_profit_bps / 1e4),
                    entry * (1 + p.stop_loss_bps / 1e4),
                )
            outcome = TIMEOUT
            for j in range(t + 1, t + h + 1):
                if side == 0:
                    hit_stop, hit_take = low[j] <= stop, high[j] >= take
                else:
                    hit_stop, hit_take = high[j] >= stop, low[j] <= take
                if hit_stop:  # checked first: a bar touching both is a stop-loss
                    outcome = STOP_LOSS
                    break
                if hit_take:
                    outcome = TAKE_PROFIT
                    break
            y[t, side] = outcome
    return y, valid


@pytest.mark.parametrize(
    "params",
    [LabelParams(10, 10, 15), LabelParams(25, 8, 30), LabelParams(5, 40, 5)],
    ids=str,
)
def test_labels_match_the_loop_on_real_bars(bars: BarColumns, params: LabelParams) -> None:
    b = bars.take(slice(0, 1500))
    got = label_bars(b, params)
    want_y, want_valid = loop_labels(b.open_time, b.high, b.low, b.close, params)
    np.testing.assert_array_equal(got.valid, want_valid)
    np.testing.assert_array_equal(got.y, want_y)
    # Every class occurs, so the comparison covers them all.
    assert {TAKE_PROFIT, STOP_LOSS, TIMEOUT} <= set(np.unique(got.y[got.valid]).tolist())
    assert not got.valid[-params.horizon_bars :].any()  # the end of data masks


def test_a_bar_touching_both_barriers_is_a_stop_loss() -> None:
    t = np.arange(5, dtype=np.int64) * BAR_INTERVAL_MS
    close = np.full(5, 100.0)
    high = np.array([100.0, 100.5, 100.0, 100.0, 100.0])  # bar 1 reaches +50 bps...
    low = np.array([100.0, 99.5, 100.0, 100.0, 100.0])  # ...and -50 bps
    labels = triple_barrier(t, high, low, close, LabelParams(20, 20, 3))
    assert labels.y[0].tolist() == [STOP_LOSS, STOP_LOSS]
    assert labels.exit_bars[0].tolist() == [1, 1]


def test_only_bars_after_t_decide_label_t(bars: BarColumns) -> None:
    params = LabelParams(10, 10, 15)
    h = params.horizon_bars
    base = label_bars(bars, params)
    rng = np.random.default_rng(7)

    # Bars after t+H never matter: scramble everything from `cut` on.
    cut = 2000
    scrambled = {name: getattr(bars, name).copy() for name in ("high", "low", "close")}
    factor = rng.uniform(0.9, 1.1, len(bars) - cut)
    for name in scrambled:
        scrambled[name][cut:] *= factor
    moved = triple_barrier(
        bars.open_time, scrambled["high"], scrambled["low"], scrambled["close"], params
    )
    np.testing.assert_array_equal(moved.y[: cut - h], base.y[: cut - h])

    # Bar t's own high and low do not matter (the trade opens at its close)...
    t = 500
    high, low = bars.high.copy(), bars.low.copy()
    high[t] *= 1.05
    low[t] *= 0.95
    same = triple_barrier(bars.open_time, high, low, bars.close, params)
    assert same.y[t].tolist() == base.y[t].tolist()

    # ...but bar t+1 does: a spike there decides both sides at once.
    quiet = np.flatnonzero(base.valid & (base.y[:, 0] == TIMEOUT))
    t = int(quiet[0])
    high = bars.high.copy()
    high[t + 1] = bars.close[t] * 1.01  # +100 bps: the long's target, the short's stop
    spiked = triple_barrier(bars.open_time, high, bars.low, bars.close, params)
    assert base.y[t, 0] == TIMEOUT and spiked.y[t, 0] in (TAKE_PROFIT, STOP_LOSS)
    assert spiked.y[t, 1] == STOP_LOSS


def test_a_gap_masks_every_window_that_crosses_it(bars: BarColumns) -> None:
    params = LabelParams(10, 10, 15)
    h = params.horizon_bars
    keep = np.ones(len(bars), dtype=bool)
    keep[1000:1010] = False  # ten minutes missing after row 999
    gapped = bars.take(keep)
    labels = label_bars(gapped, params)
    # Rows 999-h+1 .. 999 have windows across the gap; so have none before or after.
    np.testing.assert_array_equal(labels.valid[999 - h + 1 : 1000], False)
    assert labels.valid[999 - h] and labels.valid[1000]
    full = label_bars(bars, params)
    np.testing.assert_array_equal(labels.y[: 999 - h + 1], full.y[: 999 - h + 1])
    np.testing.assert_array_equal(labels.y[1000:], full.y[1010:])
    want_y, want_valid = loop_labels(
        gapped.open_time, gapped.high, gapped.low, gapped.close, params
    )
    np.testing.assert_array_equal(labels.valid, want_valid)
    np.testing.assert_array_equal(labels.y, want_y)


def _assert_no_overlap(times: np.ndarray, split, horizon: int, embargo: int) -> None:
    lo = split.val_start_ms
    hi = split.val_end_ms + (horizon + embargo) * BAR_INTERVAL_MS
    train_t = times[split.train]
    label_end = train_t + (horizon + 1) * BAR_INTERVAL_MS  # exclusive
    assert not ((train_t < hi) & (label_end > lo)).any(), "a training label reaches validation"
    assert not (split.train & split.validation).any()
    # Every validation label ends before any later training sample opens.
    val_t = times[split.validation]
    later = train_t[train_t >= split.val_end_ms]
    if len(later) and len(val_t):
        last_val_label_end = val_t.max() + (horizon + 1) * BAR_INTERVAL_MS
        assert later.min() >= last_val_label_end + embargo * BAR_INTERVAL_MS - BAR_INTERVAL_MS


def test_purge_and_embargo_leave_no_overlap(bars: BarColumns) -> None:
    times, horizon, embargo = bars.open_time, 15, 60
    split = chronological_split(times, horizon, 0.25, embargo)
    _assert_no_overlap(times, split, horizon, embargo)
    assert split.validation.sum() == int(round(len(times) * 0.25))
    # Purged: exactly the `horizon` samples just before validation are dropped.
    first_val = int(np.flatnonzero(split.validation)[0])
    assert not split.train[first_val - horizon : first_val].any()
    assert split.train[first_val - horizon - 1]

    for fold in purged_kfold(times, horizon, 4, embargo):
        _assert_no_overlap(times, fold, horizon, embargo)
        assert fold.validation.any() and fold.train.any()
    middle = purged_kfold(times, horizon, 4, embargo)[1]
    end_val = int(np.flatnonzero(middle.validation)[-1])
    # After a middle fold: its labels' horizon, then the embargo, before training resumes.
    resumed = int(np.flatnonzero(middle.train[end_val:])[0]) + end_val
    assert resumed - end_val == horizon + embargo + 1

    # With a gap in the data the rules are the same, by time.
    keep = np.ones(len(times), dtype=bool)
    keep[2000:2100] = False
    split = purged_split(times[keep], horizon, int(times[2050]), int(times[3000]), embargo)
    _assert_no_overlap(times[keep], split, horizon, embargo)


def test_one_row_log_loss_is_the_rows_one_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=(5000, 2)).astype(np.float32)
    probs[::7, 0, 1] = 0.0  # the floor at 1e-12
    y = rng.integers(0, 3, size=(5000, 2))
    rows = log_loss_rows(probs, y)
    assert [log_loss_row(p, t) for p, t in zip(probs, y, strict=True)] == rows.tolist()
