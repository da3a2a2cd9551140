"""A small built-in causal feature set: a STAND-IN until the feature engine (scalpd/features)
lands. `scalpd train` uses it by default; the real features will replace it through the
`features_fn` parameter, and models trained on it carry its own feature-set id, so they can
never be fed the engine's features by mistake.

Every feature at bar t uses bars <= t only. State restarts after a gap (missing minutes): a
feature is NaN until it has seen its look-back since the last reset, and where its inputs are
missing (no taker volume, zero volume).
"""

from __future__ import annotations

import hashlib

import numpy as np

from scalpd.data.bars import BarColumns
from scalpd.events import BAR_INTERVAL_MS

RETURN_BARS = (1, 5, 15)
VOL_BARS = (15, 60)
FLOW_BARS = 15
VOLUME_BARS = 60

FEATURE_NAMES = [
    *(f"log_return_{k}b_bps" for k in RETURN_BARS),
    *(f"volatility_{n}b_bps" for n in VOL_BARS),
    "taker_buy_share_1b",
    f"taker_buy_share_{FLOW_BARS}b",
    "range_bps",
    f"log_volume_ratio_{VOLUME_BARS}b",
]
FEATURE_SET_ID = (
    "basic-v1-"
    + hashlib.sha256(
        repr((FEATURE_NAMES, RETURN_BARS, VOL_BARS, FLOW_BARS, VOLUME_BARS)).encode()
    ).hexdigest()[:12]
)


def bars_since_reset(open_time_ms: np.ndarray) -> np.ndarray:
    """0 at the first bar and after every gap, then 1, 2, ..."""
    n = len(open_time_ms)
    reset = np.ones(n, dtype=bool)
    reset[1:] = np.diff(open_time_ms) != BAR_INTERVAL_MS
    idx = np.arange(n)
    last_reset = np.maximum.accumulate(np.where(reset, idx, 0))
    return idx - last_reset


def _lag(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    out[k:] = x[:-k]
    return out


def _rolling_sum(x: np.ndarray, n: int) -> np.ndarray:
    """Sum of x[t-n+1 .. t] (NaN treated as 0; the caller masks windows that lack data)."""
    c = np.concatenate([[0.0], np.cumsum(np.nan_to_num(x))])
    out = np.full(len(x), np.nan)
    out[n - 1 :] = c[n:] - c[:-n]
    return out


def basic_features(bars: BarColumns) -> tuple[np.ndarray, list[str], str]:
    """(X float64 [T, F], names, feature_set_id) for one symbol's bars."""
    age = bars_since_reset(bars.open_time)
    log_close = np.log(bars.close)
    cols: list[np.ndarray] = []
    for k in RETURN_BARS:
        r = (log_close - _lag(log_close, k)) * 1e4
        cols.append(np.where(age >= k, r, np.nan))
    r1 = cols[0]
    for n in VOL_BARS:
        s1, s2 = _rolling_sum(r1, n), _rolling_sum(r1 * r1, n)
        var = np.maximum(s2 / n - (s1 / n) ** 2, 0.0)
        cols.append(np.where(age >= n, np.sqrt(var), np.nan))  # n returns need n+1 bars
    with np.errstate(invalid="ignore", divide="ignore"):
        vol = np.where(bars.volume > 0, bars.volume, np.nan)
        cols.append(bars.taker_buy_volume / vol - 0.5)
        buys, total = _rolling_sum(bars.taker_buy_volume, FLOW_BARS), _rolling_sum(vol, FLOW_BARS)
        known = _rolling_sum(np.isfinite(bars.taker_buy_volume / vol), FLOW_BARS) == FLOW_BARS
        cols.append(np.where((age >= FLOW_BARS - 1) & known, buys / total - 0.5, np.nan))
        cols.append((bars.high - bars.low) / bars.close * 1e4)
        mean_vol = _rolling_sum(bars.volume, VOLUME_BARS) / VOLUME_BARS
        cols.append(np.where(age >= VOLUME_BARS - 1, np.log(vol / mean_vol), np.nan))
    X = np.column_stack(cols).astype(np.float64)
    X[~np.isfinite(X)] = np.nan  # NaN is the only invalid mark
    return X, list(FEATURE_NAMES), FEATURE_SET_ID
