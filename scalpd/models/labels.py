"""Triple-barrier labels: which barrier a trade opened at the close of bar t hits first.

For each bar t and each side (long, short) a trade is opened at close[t]. Bars t+1 .. t+H are
scanned in order (H = `horizon_bars`): the take-profit is hit when a bar's high (long) or low
(short) reaches close[t] moved by `take_profit_bps` in the trade's favour, the stop-loss when
its low (long) or high (short) reaches close[t] moved by `stop_loss_bps` against it. When one bar
touches both, the stop-loss wins: a minute bar does not tell which came first (the replay
broker's rule). Neither within H bars is a timeout.

A label is valid only when bars t .. t+H are contiguous minutes: a window that crosses a data
gap, or runs past the end of the data, is masked (class -1, valid False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from scalpd.data.bars import BarColumns
from scalpd.events import BAR_INTERVAL_MS
from scalpd.models.errors import ModelError
from scalpd.models.kernels import compiled_as

TAKE_PROFIT, STOP_LOSS, TIMEOUT = 0, 1, 2
CLASS_NAMES = ("take_profit", "stop_loss", "timeout")
SIDE_NAMES = ("long", "short")
INVALID = -1


@dataclass(frozen=True)
class LabelParams:
    take_profit_bps: float = 15.0
    stop_loss_bps: float = 15.0
    horizon_bars: int = 30

    def __post_init__(self) -> None:
        if self.take_profit_bps <= 0 or self.stop_loss_bps <= 0 or self.horizon_bars < 1:
            raise ValueError(f"label parameters must be positive: {self}")


class Labels(NamedTuple):
    y: np.ndarray  # int8 [T, 2]: class per side (long, short); INVALID where not valid
    valid: np.ndarray  # bool [T]: the whole window t .. t+H exists and has no gap
    exit_bars: np.ndarray  # int16 [T, 2]: bars after t when the barrier hit (H for timeout)


def contiguous_windows(open_time_ms: np.ndarray, horizon_bars: int) -> np.ndarray:
    """valid[t]: bars t .. t+horizon all exist, one minute apart."""
    n = len(open_time_ms)
    valid = np.zeros(n, dtype=bool)
    if n <= horizon_bars:
        return valid
    broken = np.diff(open_time_ms) != BAR_INTERVAL_MS
    broken_before = np.concatenate([[0], np.cumsum(broken)])  # broken steps among rows < i
    last = n - horizon_bars
    valid[:last] = broken_before[horizon_bars:] - broken_before[:last] == 0
    return valid


def _first_hit(
    prices: np.ndarray, level: np.ndarray, horizon: int, above: bool, never: int
) -> np.ndarray:
    """For each t, the first k in 1..horizon with prices[t+k] crossing level[t]; else `never`.
    Loops over k (small) and vectorises over t (large)."""
    n = len(level)
    first = np.full(n, never, dtype=np.int16)
    for k in range(1, min(horizon, n - 1) + 1):
        later = prices[k:]
        hit = later >= level[: n - k] if above else later <= level[: n - k]
        head = first[: n - k]
        head[hit & (head == never)] = k
    return first


def triple_barrier(
    open_time_ms: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    params: LabelParams,
) -> Labels:
    """Labels for every bar (see the module doc)."""
    h = params.horizon_bars
    never = h + 1
    up = 1.0 + params.take_profit_bps / 1e4
    down = 1.0 - params.take_profit_bps / 1e4
    stop_down = 1.0 - params.stop_loss_bps / 1e4
    stop_up = 1.0 + params.stop_loss_bps / 1e4
    long_tp = _first_hit(high, close * up, h, True, never)
    long_sl = _first_hit(low, close * stop_down, h, False, never)
    short_tp = _first_hit(low, close * down, h, False, never)
    short_sl = _first_hit(high, close * stop_up, h, True, never)
    sides = ((long_tp, long_sl), (short_tp, short_sl))
    valid = contiguous_windows(np.asarray(open_time_ms, dtype=np.int64), h)
    n = len(close)
    y = np.full((n, 2), TIMEOUT, dtype=np.int8)
    exit_bars = np.full((n, 2), h, dtype=np.int16)
    for side, (tp_at, sl_at) in enumerate(sides):
        stop = (sl_at <= tp_at) & (sl_at <= h)  # a tie is a stop: the conservative reading
        take = ~stop & (tp_at <= h)
        y[stop, side] = STOP_LOSS
        y[take, side] = TAKE_PROFIT
        exit_bars[stop, side] = sl_at[stop]
        exit_bars[take, side] = tp_at[take]
    y[~valid] = INVALID
    return Labels(y, valid, exit_bars)


def label_bars(bars: BarColumns, params: LabelParams) -> Labels:
    return triple_barrier(bars.open_time, bars.high, bars.low, bars.close, params)


def class_frequencies(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[2, 3] share of each class per side among masked rows (uniform where none)."""
    out = np.full((2, 3), 1.0 / 3.0)
    rows = y[mask]
    if len(rows):
        for side in range(2):
            out[side] = np.bincount(rows[:, side].astype(np.int64), minlength=3)[:3] / len(rows)
    return out


def matured_label(
    entry_close: float, high: np.ndarray, low: np.ndarray, params: LabelParams
) -> np.ndarray:
    """The triple-barrier classes [long, short] of a trade opened at `entry_close`, from the
    highs and lows of the `horizon_bars` bars after it (labels.triple_barrier's rule for one
    bar, with a tie going to the stop; that function is the reference the tests hold it to).
    One compiled scan (~1 us a bar), where triple_barrier over a window costs ~4H."""
    h = params.horizon_bars
    if len(high) != h or len(low) != h:
        raise ModelError(f"a matured label needs the {h} bars after its bar, got {len(high)}")
    return _first_barriers(
        float(entry_close),
        np.array(high, dtype=np.float64),  # copies: the one array type compiled
        np.array(low, dtype=np.float64),
        params.take_profit_bps / 1e4,
        params.stop_loss_bps / 1e4,
    )


@compiled_as("int64[::1](float64, float64[::1], float64[::1], float64, float64)")
def _first_barriers(
    entry_close: float, high: np.ndarray, low: np.ndarray, take: float, stop: float
) -> np.ndarray:
    """matured_label's scan, compiled (a bar's label costs ~1 us, not ~8): per side, the
    first bar that reaches a barrier decides; one that reaches both is a stop."""
    out = np.full(2, TIMEOUT, dtype=np.int64)
    levels = (
        (entry_close * (1.0 + take), entry_close * (1.0 - stop)),  # long: take up, stop down
        (entry_close * (1.0 - take), entry_close * (1.0 + stop)),  # short: take down, stop up
    )
    for side in range(2):
        take_at, stop_at = levels[side]
        for i in range(high.shape[0]):
            if side == 0:
                took, stopped = high[i] >= take_at, low[i] <= stop_at
            else:
                took, stopped = low[i] <= take_at, high[i] >= stop_at
            if stopped:
                out[side] = STOP_LOSS
                break
            if took:
                out[side] = TAKE_PROFIT
                break
    return out


def log_loss_rows(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row: nats of the classes that happened, the mean of both sides. probs [T, 2, 3],
    y [T, 2]."""
    picked = np.take_along_axis(probs, y[:, :, None], axis=2)[:, :, 0]
    return -np.log(np.maximum(picked, 1e-12)).mean(axis=1)


_SIDES = np.arange(2)


def log_loss_row(probs: np.ndarray, y: np.ndarray) -> float:
    """log_loss_rows of one row (probs [2, 3], y [2]), the same arithmetic in the same dtype
    (the tests hold them equal bit for bit) without its gathers: online learning scores each
    model this way at every bar, where the gathers cost twice the rest."""
    nats = np.log(np.maximum(probs[_SIDES, y], 1e-12))
    return float(-(nats[0] + nats[1]) / 2)  # .mean(): a sum of two, then / 2
