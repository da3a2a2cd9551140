"""Train/validation splits by time with purging and an embargo.

A sample at bar t (open time t_ms) uses bar t's close as its entry and bars t+1 .. t+H for its
label, so its label spans [t_ms, t_ms + (H+1) bars). The validation period covers its samples'
open times [val_start, val_end) and, through their labels, runs on to val_end + H bars.

- Purge: a training sample whose label span overlaps the validation period is dropped (the
  last H bars before val_start, and those just after it in k-fold splits).
- Embargo: training samples that open less than `embargo_bars` after the validation period
  (labels included) are dropped too, because features that look back (rolling windows) carry
  validation-period information into the bars after it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from scalpd.events import BAR_INTERVAL_MS


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # bool [T]
    validation: np.ndarray  # bool [T]
    val_start_ms: int
    val_end_ms: int  # exclusive: the open times of validation samples lie in [start, end)
    horizon_bars: int
    embargo_bars: int

    def forbidden_ms(self) -> tuple[int, int]:
        """[start, end): no training sample's label span may touch this interval."""
        end = self.val_end_ms + (self.horizon_bars + self.embargo_bars) * BAR_INTERVAL_MS
        return self.val_start_ms, end


def purged_split(
    open_time_ms: np.ndarray,
    horizon_bars: int,
    val_start_ms: int,
    val_end_ms: int | None = None,
    embargo_bars: int = 0,
) -> Split:
    """Validation = samples opening in [val_start_ms, val_end_ms); training = every other
    sample whose label span stays clear of the validation period and its embargo."""
    t = np.asarray(open_time_ms, dtype=np.int64)
    if val_end_ms is None:
        val_end_ms = int(t.max()) + BAR_INTERVAL_MS if len(t) else int(val_start_ms)
    validation = (t >= val_start_ms) & (t < val_end_ms)
    embargo_end_ms = val_end_ms + (horizon_bars + embargo_bars) * BAR_INTERVAL_MS
    label_end = t + (horizon_bars + 1) * BAR_INTERVAL_MS  # exclusive
    clear = (label_end <= val_start_ms) | (t >= embargo_end_ms)
    return Split(
        clear & ~validation, validation, int(val_start_ms), int(val_end_ms), horizon_bars,
        embargo_bars,
    )  # fmt: skip


def chronological_split(
    open_time_ms: np.ndarray, horizon_bars: int, val_fraction: float, embargo_bars: int = 0
) -> Split:
    """The last `val_fraction` of the time range is validation; training is before it."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    t = np.asarray(open_time_ms, dtype=np.int64)
    first, last = int(t.min()), int(t.max()) + BAR_INTERVAL_MS
    start = last - int(round((last - first) * val_fraction / BAR_INTERVAL_MS)) * BAR_INTERVAL_MS
    return purged_split(t, horizon_bars, start, last, embargo_bars)


def purged_kfold(
    open_time_ms: np.ndarray, horizon_bars: int, n_folds: int, embargo_bars: int = 0
) -> list[Split]:
    """k contiguous validation periods covering the time range, each with purge and embargo
    (training data on both sides of the validation period)."""
    t = np.asarray(open_time_ms, dtype=np.int64)
    first, last = int(t.min()), int(t.max()) + BAR_INTERVAL_MS
    bars = (last - first) // BAR_INTERVAL_MS
    edges = [first + (bars * k // n_folds) * BAR_INTERVAL_MS for k in range(n_folds + 1)]
    return [purged_split(t, horizon_bars, a, b, embargo_bars) for a, b in itertools.pairwise(edges)]
