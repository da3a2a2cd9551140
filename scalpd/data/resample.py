"""1-minute bars to longer candles, built the way the exchange builds them.

Candles are aligned to UTC multiples of their length (a 1h candle opens on the hour), take the
open of their first minute, the close of their last, the extremes and the sums. A candle some
minute of which is missing (an exchange gap) is still built from the minutes there are, and
marked partial so that a strategy or a comparison with the exchange's own candles can tell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scalpd.data.bars import BarColumns
from scalpd.events import BAR_INTERVAL_MS

_DAY_MINUTES = 1440


@dataclass(frozen=True, slots=True)
class Resampled:
    bars: BarColumns  # open_time steps by `minutes`: BarColumns.gaps() does not apply
    partial: np.ndarray  # bool, one per candle: some minute of it is missing
    minutes: int

    def __len__(self) -> int:
        return len(self.bars)


def resample(bars: BarColumns, minutes: int) -> Resampled:
    """Candles of `minutes` (dividing a day: 5, 15, 60, 240, 1440...) from sorted 1m bars.

    Unknown optional values stay unknown: a sum with a NaN is NaN, and a candle with a minute
    of unknown trade count (-1) has trade count -1.
    """
    if minutes <= 0 or _DAY_MINUTES % minutes:
        raise ValueError(f"candle length {minutes} min does not divide a day")
    ot = bars.open_time
    if len(ot) and (np.any(np.diff(ot) <= 0) or np.any(ot % BAR_INTERVAL_MS)):
        raise ValueError("resample needs validated 1m bars: sorted, unique, on minute boundaries")
    period_ms = minutes * BAR_INTERVAL_MS
    bucket = ot - ot % period_ms  # floor, also right for times before the epoch
    if len(ot) == 0:
        return Resampled(bars, np.zeros(0, dtype=bool), minutes)
    starts = np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))
    ends = np.concatenate((starts[1:], [len(ot)]))  # exclusive
    counts = ends - starts
    trades = np.add.reduceat(bars.trades, starts)
    trades[np.minimum.reduceat(bars.trades, starts) < 0] = -1
    out = BarColumns(
        symbol=bars.symbol,
        open_time=bucket[starts],
        open=bars.open[starts],
        high=np.maximum.reduceat(bars.high, starts),
        low=np.minimum.reduceat(bars.low, starts),
        close=bars.close[ends - 1],
        volume=np.add.reduceat(bars.volume, starts),
        quote_volume=np.add.reduceat(bars.quote_volume, starts),
        trades=trades,
        taker_buy_volume=np.add.reduceat(bars.taker_buy_volume, starts),
    )
    return Resampled(out, counts != minutes, minutes)
