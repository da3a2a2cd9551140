"""Market regimes: every bar labelled from past data only, and a run's results split by them.

The rule (`RULE` is the same text, shown in the report). Features come from
`scalpd.features.batch.compute` (defined once in `scalpd/features/spec.py`):

* **shock**: the bar's return ``|ret_1_1m|`` exceeds ``shock_sigmas`` times the GARCH volatility
  known one bar earlier (``garch_vol_1m`` at t-1); the label lasts ``shock_bars`` bars, the
  jump's bar included;
* otherwise **high volatility**: ``garch_vol_1m`` is above the ``vol_percentile``-th percentile
  of its own values over the trailing ``vol_window_bars`` bars (this bar included);
* otherwise **trending**: the efficiency ratio ``er_20_1m`` is at least ``trend_er_min``;
* otherwise **ranging**;
* **warm-up** where the features are not valid yet (the start of the data, after a gap).

Each input at bar t depends on bars up to t only (the features' own property, tested in
tests/test_features_lookahead.py; the percentile window and the shock's persistence look
backwards), so a label never changes when later bars do: tests/test_regimes.py proves it.

Results are split by the regime of a trade's entry bar: the bar at whose close the entry was
decided (the last bar closing at or before the entry fill). Buy-and-hold inside a regime
compounds the close-to-close return of every bar whose previous bar carried that label: what a
holder would have known when deciding to hold through it.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scalpd.data.bars import BarColumns
from scalpd.engine.portfolio import ClosedTrade
from scalpd.events import BAR_INTERVAL_MS
from scalpd.features.batch import compute

WARMUP, RANGING, TRENDING, HIGH_VOL, SHOCK = 0, 1, 2, 3, 4
NAMES = ("warm-up", "ranging", "trending", "high volatility", "shock")
# The order of the report's rows.
ORDER = (TRENDING, RANGING, HIGH_VOL, SHOCK, WARMUP)

RULE = (
    "shock: |1-bar return| > {shock_sigmas:g} x the GARCH(1,1) volatility of the bar before, "
    "lasting {shock_bars} bars; else high volatility: GARCH volatility above the "
    "{vol_percentile:g}th percentile of its last {vol_window_bars} bars; else trending: "
    "20-bar efficiency ratio >= {trend_er_min:g}; else ranging. Warm-up: features not valid "
    "yet. Past bars only. Trades go to the regime of their entry bar."
)


@dataclass(frozen=True)
class RegimeParams:
    vol_window_bars: int = 1440
    vol_percentile: float = 80.0
    trend_er_min: float = 0.3
    shock_sigmas: float = 4.0
    shock_bars: int = 15

    @classmethod
    def from_settings(cls, report: Any) -> RegimeParams:
        return cls(
            report.vol_window_bars,
            report.vol_percentile,
            report.trend_er_min,
            report.shock_sigmas,
            report.shock_bars,
        )

    def rule(self) -> str:
        return RULE.format(**self.__dict__)


def trailing_rank(values: np.ndarray, window_bars: int) -> np.ndarray:
    """Share of the trailing `window_bars` values (this one included, NaN left out) strictly
    below each value; NaN where the value is NaN or the window holds under half its size."""
    out = np.full(len(values), np.nan)
    window: list[float] = []
    min_count = max(1, window_bars // 2)
    vals = values.tolist()
    for i, v in enumerate(vals):
        if v == v:  # not NaN
            insort(window, v)
        if i >= window_bars:
            old = vals[i - window_bars]
            if old == old:
                del window[bisect_left(window, old)]
        if v == v and len(window) >= min_count:
            out[i] = bisect_left(window, v) / len(window)
    return out


def label_bars(bars: BarColumns, params: RegimeParams = RegimeParams()) -> np.ndarray:
    """One regime code (int8, see `NAMES`) per bar of one symbol's validated 1m bars."""
    n = len(bars)
    labels = np.full(n, WARMUP, dtype=np.int8)
    if n == 0:
        return labels
    fm = compute(bars)
    vol = fm.column("garch_vol_1m")
    er = fm.column("er_20_1m")
    ret = fm.column("ret_1_1m")
    prev_vol = np.concatenate(([np.nan], vol[:-1]))
    # The bar before must be the minute before: across a gap there is no prior volatility.
    consecutive = np.concatenate(([False], np.diff(bars.open_time) == BAR_INTERVAL_MS))
    prev_vol[~consecutive] = np.nan
    with np.errstate(invalid="ignore"):
        jump = consecutive & (np.abs(ret) > params.shock_sigmas * prev_vol)
    # A jump at t marks t .. t + shock_bars - 1: the last jump within shock_bars bars.
    shock = np.zeros(n, dtype=bool)
    last_jump = -(10**9)
    for i in range(n):
        if jump[i]:
            last_jump = i
        shock[i] = i - last_jump < params.shock_bars
    rank = trailing_rank(vol, params.vol_window_bars)
    valid = ~np.isnan(er) & ~np.isnan(rank)
    with np.errstate(invalid="ignore"):
        high_vol = rank >= params.vol_percentile / 100.0
        trending = er >= params.trend_er_min
    labels[valid] = RANGING
    labels[valid & trending] = TRENDING
    labels[valid & high_vol] = HIGH_VOL
    labels[shock] = SHOCK
    return labels


def entry_bar_index(close_ms: np.ndarray, entry_time_ms: int) -> int:
    """Index of the last bar closing at or before `entry_time_ms` (-1 if none)."""
    return int(np.searchsorted(close_ms, entry_time_ms, "right")) - 1


def regime_table(
    series: Sequence[BarColumns],
    labels: dict[str, np.ndarray],
    trades: Sequence[ClosedTrade],
    trade_from_ms: int = 0,
) -> list[dict[str, Any]]:
    """One row per regime: trades, win rate, P&L, average trade (quote units, fractions),
    share of time (of the bars closing at or after `trade_from_ms`, all symbols pooled), and
    buy-and-hold return per symbol inside the regime."""
    rows: dict[int, dict[str, Any]] = {
        code: {
            "regime": NAMES[code],
            "trades": 0,
            "wins": 0,
            "pnl": 0.0,
            "bars": 0,
            "buy_and_hold_return": {},
        }
        for code in ORDER
    }
    total_bars = 0
    close_by_symbol: dict[str, np.ndarray] = {}
    for bars in series:
        lab = labels[bars.symbol]
        close_ms = bars.open_time + BAR_INTERVAL_MS
        close_by_symbol[bars.symbol] = close_ms
        traded = close_ms >= trade_from_ms
        total_bars += int(traded.sum())
        counts = np.bincount(lab[traded], minlength=len(NAMES))
        # Bar t's return goes to the label of bar t-1, both inside the traded span.
        growth = bars.close[1:] / bars.close[:-1]
        held = traded[:-1]
        prev_lab = lab[:-1]
        for code in ORDER:
            rows[code]["bars"] += int(counts[code])
            mask = held & (prev_lab == code)
            rows[code]["buy_and_hold_return"][bars.symbol] = (
                float(np.prod(growth[mask]) - 1.0) if mask.any() else 0.0
            )
    for t in trades:
        close_ms = close_by_symbol.get(t.symbol)
        if close_ms is None:
            continue
        i = entry_bar_index(close_ms, t.entry_time_ms)
        code = int(labels[t.symbol][i]) if i >= 0 else WARMUP
        row = rows[code]
        row["trades"] += 1
        row["wins"] += int(t.pnl > 0)
        row["pnl"] += t.pnl
    out = []
    for code in ORDER:
        row = rows[code]
        n = row.pop("trades")
        wins = row.pop("wins")
        bars_in = row.pop("bars")
        out.append(
            {
                "regime": row["regime"],
                "trades": n,
                "win_rate": wins / n if n else math.nan,
                "pnl": row["pnl"],
                "avg_trade_pnl": row["pnl"] / n if n else math.nan,
                "time_share": bars_in / total_bars if total_bars else math.nan,
                "buy_and_hold_return": row["buy_and_hold_return"],
            }
        )
    return out
