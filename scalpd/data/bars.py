"""Columnar bars of one symbol, and the checks every bar series passes before it is used.

Bad rows are never silently kept or silently dropped: `validate` returns the clean series and
the quarantined rows with their reasons, and the caller decides (stop, or go on and log).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from scalpd.events import BAR_INTERVAL_MS, Gap

KNOWN_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "BTC", "ETH", "BNB")

PRICE_COLUMNS = ("open", "high", "low", "close")
REQUIRED_COLUMNS = ("open_time", *PRICE_COLUMNS, "volume")
OPTIONAL_COLUMNS = ("quote_volume", "trades", "taker_buy_base")


@dataclass(frozen=True, slots=True)
class BarColumns:
    """One symbol's bars as arrays, sorted by open time. Absent optional data is NaN / -1."""

    symbol: str
    open_time: np.ndarray  # int64, ms since the epoch, UTC
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    quote_volume: np.ndarray
    trades: np.ndarray  # int64, -1 when unknown
    taker_buy_volume: np.ndarray

    def __len__(self) -> int:
        return len(self.open_time)

    def take(self, index: np.ndarray | slice) -> BarColumns:
        return BarColumns(self.symbol, *(getattr(self, name)[index] for name in ARRAY_FIELDS))

    def between(self, start_ms: int | None, end_ms: int | None) -> BarColumns:
        """The bars opening in [start_ms, end_ms) (None: unbounded on that side)."""
        t = self.open_time
        lo = 0 if start_ms is None else int(t.searchsorted(start_ms, "left"))
        hi = len(self) if end_ms is None else int(t.searchsorted(end_ms, "left"))
        return self.take(slice(lo, hi))

    def kline_columns(self) -> dict[str, np.ndarray]:
        """The arrays under Binance's kline column names (the inverse of `from_arrays`)."""
        return {_KLINE_NAME.get(name, name): getattr(self, name) for name in ARRAY_FIELDS}

    def gaps(self) -> list[Gap]:
        """Every place where bars are missing between two consecutive rows."""
        steps = np.diff(self.open_time)
        where = np.nonzero(steps != BAR_INTERVAL_MS)[0]
        return [Gap(self.symbol, int(self.open_time[i]), int(self.open_time[i + 1])) for i in where]


ARRAY_FIELDS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trades",
    "taker_buy_volume",
)
_KLINE_NAME = {"taker_buy_volume": "taker_buy_base"}


class QuarantinedRow(NamedTuple):
    row_index: int
    open_time_ms: int
    reason: str


def symbol_from_filename(stem: str) -> str | None:
    """'BTCUSDT-1m-2024' -> 'BTC/USDT'; None when no known quote ends the first part."""
    pair = stem.split("-")[0].split("_")[0].upper()
    for quote in KNOWN_QUOTES:
        if pair.endswith(quote) and len(pair) > len(quote):
            return f"{pair[: -len(quote)]}/{quote}"
    return None


def row_is_clean(
    open_time_ms: int, open_: float, high: float, low: float, close: float, volume: float
) -> bool:
    """True only if `validate` would keep this row on its own: a cheap scalar check for one
    live bar at a time. It never decides a row is bad: on False, ask `validate` (the rules and
    the reason). Chained comparisons, so a NaN anywhere fails one of them."""
    return (
        open_time_ms % BAR_INTERVAL_MS == 0
        and 0.0 < low <= open_ <= high < math.inf
        and low <= close <= high
        and 0.0 <= volume < math.inf
    )


def validate(bars: BarColumns) -> tuple[BarColumns, list[QuarantinedRow]]:
    """Split `bars` into clean rows and quarantined rows (first reason found per row)."""
    n = len(bars)
    reasons = np.full(n, "", dtype=object)

    def mark(mask: np.ndarray, reason: str) -> None:
        reasons[mask & (reasons == "")] = reason

    prices = np.vstack([bars.open, bars.high, bars.low, bars.close])
    mark(~np.isfinite(prices).all(axis=0) | ~np.isfinite(bars.volume), "NaN or infinite value")
    with np.errstate(invalid="ignore"):
        mark((prices <= 0).any(axis=0), "non-positive price")
        mark(bars.high < bars.low, "high below low")
        mark(
            (bars.high < np.maximum(bars.open, bars.close))
            | (bars.low > np.minimum(bars.open, bars.close)),
            "open or close outside high-low range",
        )
        mark(bars.volume < 0, "negative volume")
    mark(bars.open_time % BAR_INTERVAL_MS != 0, "open_time not on a minute boundary")
    # Time order: a row not after the latest time seen so far is a duplicate or out of order.
    ot = bars.open_time
    if n:
        previous_max = np.maximum.accumulate(ot)
        seen_before = np.concatenate([[np.iinfo(np.int64).min], previous_max[:-1]])
        mark(ot == seen_before, "duplicate open_time")
        mark(ot < seen_before, "open_time out of order")
    bad = reasons != ""
    quarantined = [QuarantinedRow(int(i), int(ot[i]), str(reasons[i])) for i in np.nonzero(bad)[0]]
    return (bars.take(~bad) if quarantined else bars), quarantined


def from_arrays(symbol: str, columns: dict[str, np.ndarray]) -> BarColumns:
    """Build BarColumns from named arrays (Binance kline column names)."""
    n = len(columns["open_time"])
    nan = np.full(n, np.nan)
    return BarColumns(
        symbol=symbol,
        open_time=np.asarray(columns["open_time"], dtype=np.int64),
        open=np.asarray(columns["open"], dtype=np.float64),
        high=np.asarray(columns["high"], dtype=np.float64),
        low=np.asarray(columns["low"], dtype=np.float64),
        close=np.asarray(columns["close"], dtype=np.float64),
        volume=np.asarray(columns["volume"], dtype=np.float64),
        quote_volume=np.asarray(columns.get("quote_volume", nan), dtype=np.float64),
        trades=np.asarray(columns.get("trades", np.full(n, -1)), dtype=np.int64),
        taker_buy_volume=np.asarray(columns.get("taker_buy_base", nan), dtype=np.float64),
    )
