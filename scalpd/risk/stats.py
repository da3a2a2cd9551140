"""Rolling market statistics the risk layer watches, updated bar by bar in constant time.

Pure and causal: an update uses the observation given and what came before, never later data.
Each estimate says how many samples it holds so a caller can refuse to judge while it warms up.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque

# Running sums lose precision as values are added and removed for weeks; they are rebuilt
# from the window every this many updates.
_RESUM_EVERY = 4096


class EwmaVariance:
    """Zero-mean exponentially weighted variance of 1m log returns (the rolling sigma of the
    price-jump test). Zero mean because a minute's drift is noise next to its spread."""

    __slots__ = ("_alpha", "var", "n")

    def __init__(self, halflife_bars: int) -> None:
        self._alpha = 1.0 - 0.5 ** (1.0 / halflife_bars)
        self.var = 0.0
        self.n = 0

    def update(self, r: float) -> None:
        if self.n == 0:
            self.var = r * r
        else:
            self.var += self._alpha * (r * r - self.var)
        self.n += 1

    @property
    def sigma(self) -> float:
        return math.sqrt(self.var)


class RollingMeanStd:
    """Mean and sample standard deviation of the last `window` values."""

    __slots__ = ("_window", "_values", "_sum", "_sumsq", "_until_resum", "n")

    def __init__(self, window: int) -> None:
        self._window = window
        self._values: deque[float] = deque()
        self._sum = 0.0
        self._sumsq = 0.0
        self._until_resum = _RESUM_EVERY
        self.n = 0  # values in the window

    def __len__(self) -> int:
        return self.n

    def add(self, x: float) -> None:
        values = self._values
        values.append(x)
        self._sum += x
        self._sumsq += x * x
        if self.n == self._window:
            old = values.popleft()
            self._sum -= old
            self._sumsq -= old * old
        else:
            self.n += 1
        self._until_resum -= 1
        if not self._until_resum:
            self._until_resum = _RESUM_EVERY
            self._sum = math.fsum(values)
            self._sumsq = math.fsum(v * v for v in values)

    def mean(self) -> float:
        return self._sum / self.n if self.n else math.nan

    def z_above(self, x: float, z_min: float) -> float:
        """x's z-score in the window when it is above `z_min` (> 0), else 0.0. Compares
        squares first, so the common answer (not above) costs no square root."""
        n = self.n
        if n < 2:
            return 0.0
        mean = self._sum / n
        d = x - mean
        if d <= 0.0:
            return 0.0
        var = max(self._sumsq - n * mean * mean, 0.0) / (n - 1)
        if var <= 0.0 or d * d <= z_min * z_min * var:
            return 0.0
        return d / math.sqrt(var)

    def std(self) -> float:
        n = self.n
        if n < 2:
            return math.nan
        mean = self._sum / n
        return math.sqrt(max(self._sumsq - n * mean * mean, 0.0) / (n - 1))


class RollingMedian:
    """Median of the last `window` values: a sorted copy beside the arrival order (O(window)
    per update, a few microseconds for the few hundred values it holds)."""

    __slots__ = ("_window", "_order", "_sorted")

    def __init__(self, window: int) -> None:
        self._window = window
        self._order: deque[float] = deque()
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._order)

    def add(self, x: float) -> None:
        self._order.append(x)
        insort(self._sorted, x)
        if len(self._order) > self._window:
            old = self._order.popleft()
            del self._sorted[bisect_left(self._sorted, old)]

    def median(self) -> float:
        s = self._sorted
        n = len(s)
        if n == 0:
            return math.nan
        mid = n // 2
        return s[mid] if n % 2 else 0.5 * (s[mid - 1] + s[mid])


class _Pair:
    """Aligned return samples of two symbols (same minute) with running Pearson sums."""

    __slots__ = ("samples", "sx", "sy", "sxx", "syy", "sxy", "updates")

    def __init__(self) -> None:
        self.samples: deque[tuple[int, float, float]] = deque()
        self.sx = self.sy = self.sxx = self.syy = self.sxy = 0.0
        self.updates = 0

    def add(self, t: int, x: float, y: float) -> None:
        self.samples.append((t, x, y))
        self.sx += x
        self.sy += y
        self.sxx += x * x
        self.syy += y * y
        self.sxy += x * y
        self.updates += 1
        if self.updates % _RESUM_EVERY == 0:
            self._resum()

    def evict_before(self, t_min: int) -> None:
        samples = self.samples
        while samples and samples[0][0] < t_min:
            _, x, y = samples.popleft()
            self.sx -= x
            self.sy -= y
            self.sxx -= x * x
            self.syy -= y * y
            self.sxy -= x * y
        if not samples:
            self.sx = self.sy = self.sxx = self.syy = self.sxy = 0.0

    def _resum(self) -> None:
        s = self.samples
        self.sx = math.fsum(x for _, x, _ in s)
        self.sy = math.fsum(y for _, _, y in s)
        self.sxx = math.fsum(x * x for _, x, _ in s)
        self.syy = math.fsum(y * y for _, _, y in s)
        self.sxy = math.fsum(x * y for _, x, y in s)

    def corr(self) -> tuple[float, int]:
        n = len(self.samples)
        if n < 2:
            return math.nan, n
        cov = self.sxy - self.sx * self.sy / n
        vx = self.sxx - self.sx * self.sx / n
        vy = self.syy - self.sy * self.sy / n
        if vx <= 0.0 or vy <= 0.0:
            return math.nan, n  # a flat series has no correlation
        return cov / math.sqrt(vx * vy), n


class PairCorrelations:
    """Rolling Pearson correlation of 1m returns for every pair of symbols, over the minutes of
    the last `window_bars` in which both had a return.

    Returns of the same minute are matched by the bar's open time; bars of different symbols
    arrive in any order within a minute (and up to `_MATCH_MINUTES` late), so each symbol's
    recent returns are kept until every other symbol's return of that minute could have come.
    """

    _MATCH_MINUTES = 5

    __slots__ = ("_window_ms", "_recent", "_minutes", "_pairs")

    def __init__(self, window_bars: int) -> None:
        self._window_ms = window_bars * 60_000
        # open_time_ms -> {symbol: return}: the minutes still open to matching; their keys sorted.
        self._recent: dict[int, dict[str, float]] = {}
        self._minutes: list[int] = []
        self._pairs: dict[tuple[str, str], _Pair] = {}

    def add(self, symbol: str, open_time_ms: int, r: float) -> None:
        minute = self._recent.get(open_time_ms)
        if minute is None:
            minutes = self._minutes
            latest = minutes[-1] if minutes else open_time_ms
            cutoff = max(latest, open_time_ms) - self._MATCH_MINUTES * 60_000
            if open_time_ms < cutoff:
                return  # too late: the others' returns of that minute are gone
            minute = self._recent[open_time_ms] = {}
            if open_time_ms > latest:
                minutes.append(open_time_ms)
            else:
                insort(minutes, open_time_ms)
            while minutes[0] < cutoff:
                del self._recent[minutes.pop(0)]
        for other, r_other in minute.items():
            if other == symbol:
                continue
            key = (symbol, other) if symbol < other else (other, symbol)
            pair = self._pairs.get(key)
            if pair is None:
                pair = self._pairs[key] = _Pair()
            if symbol < other:
                pair.add(open_time_ms, r, r_other)
            else:
                pair.add(open_time_ms, r_other, r)
            pair.evict_before(open_time_ms - self._window_ms + 60_000)
        minute[symbol] = r

    def corr(self, a: str, b: str, now_ms: int) -> tuple[float, int]:
        """(correlation, samples) over the window ending at `now_ms`; NaN when undefined."""
        pair = self._pairs.get((a, b) if a < b else (b, a))
        if pair is None:
            return math.nan, 0
        # A symbol whose data stopped must not keep an old correlation alive.
        pair.evict_before(now_ms - self._window_ms)
        return pair.corr()
