"""Replay's market-data source: one or more bar series merged in time order, in batches.

The engine is driven synchronously over each batch (no event-loop round trip per bar). A
batch never spans a gap: the gap comes first, so state can reset before the next bar.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from itertools import repeat

import numpy as np

from scalpd.data.bars import ARRAY_FIELDS, BarColumns
from scalpd.events import BAR_INTERVAL_MS, Bar, Gap

_CHUNK_BARS = 65_536
_as_bar = partial(tuple.__new__, Bar)  # a Bar from a ready tuple, without per-field checks


class ReplaySource:
    def __init__(self, series: Sequence[BarColumns]) -> None:
        if not series:
            raise ValueError("nothing to replay")
        symbols = [s.symbol for s in series]
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"the same symbol twice: {symbols}")
        self.series = list(series)
        self.symbols = symbols
        # Merge all series into one time-ordered stream: by open time, then by symbol order.
        times = np.concatenate([s.open_time for s in series])
        which = np.concatenate([np.full(len(s), k, dtype=np.int32) for k, s in enumerate(series)])
        row = np.concatenate([np.arange(len(s)) for s in series])
        order = np.lexsort((which, times)) if len(series) > 1 else np.arange(len(times))
        self._which = which[order]
        self._row = row[order]
        self._times = times[order]
        # A gap starts before row i of a series when its open time jumps by more than a bar.
        self._gap_before = np.zeros(len(order), dtype=bool)
        gap_rows = [np.diff(s.open_time) != BAR_INTERVAL_MS for s in series]
        for k, flags in enumerate(gap_rows):
            mask = self._which == k
            per_series = np.concatenate([[False], flags])
            self._gap_before[np.nonzero(mask)[0]] = per_series[self._row[mask]]

    def __len__(self) -> int:
        return len(self._times)

    @property
    def first_open_time_ms(self) -> int:
        return int(self._times[0])

    @property
    def last_close_time_ms(self) -> int:
        return int(self._times[-1]) + BAR_INTERVAL_MS

    def segments(self) -> Iterator[tuple[Gap | None, list[Bar]]]:
        gap_positions = np.nonzero(self._gap_before)[0].tolist()
        bounds = sorted(set([0, len(self), *gap_positions]))
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            gap = self._gap_at(start) if self._gap_before[start] else None
            for lo in range(start, stop, _CHUNK_BARS):
                yield (gap if lo == start else None), self._bars(lo, min(stop, lo + _CHUNK_BARS))

    def _gap_at(self, i: int) -> Gap:
        s = self.series[self._which[i]]
        r = int(self._row[i])
        return Gap(s.symbol, int(s.open_time[r - 1]), int(s.open_time[r]))

    def _bars(self, lo: int, hi: int) -> list[Bar]:
        which = self._which[lo:hi]
        rows = self._row[lo:hi]
        if len(self.series) == 1:
            s = self.series[0]
            sl = slice(int(rows[0]), int(rows[-1]) + 1)
            symbols = repeat(s.symbol)
            cols = [getattr(s, f)[sl].tolist() for f in ARRAY_FIELDS]
        else:
            symbols = [self.symbols[k] for k in which.tolist()]
            cols = [self._gather(f, which, rows) for f in ARRAY_FIELDS]
        return list(map(_as_bar, zip(symbols, *cols, strict=False)))

    def _gather(self, field: str, which: np.ndarray, rows: np.ndarray) -> list:
        first = getattr(self.series[0], field)
        out = np.empty(len(rows), dtype=first.dtype)
        for k, s in enumerate(self.series):
            mask = which == k
            out[mask] = getattr(s, field)[rows[mask]]
        return out.tolist()
