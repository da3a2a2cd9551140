"""The fake exchange's market data: one-minute bars per symbol on one merged timeline."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from scalpd.fakex.matching import BarPrices, FakeMarket

BAR_MS = 60_000
REQUIRED_COLUMNS = ("open_time", "open", "high", "low", "close", "volume")
OPTIONAL_COLUMNS = ("quote_volume", "trades", "taker_buy_base", "taker_buy_quote")


class Kline(NamedTuple):
    open_time_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    trades: int
    taker_buy_base: float
    taker_buy_quote: float
    row: int  # position in the symbol's own arrays: a stable synthetic trade id

    @property
    def close_time_ms(self) -> int:
        """Binance's kline close time: the last millisecond of the minute."""
        return self.open_time_ms + BAR_MS - 1

    @property
    def prices(self) -> BarPrices:
        return BarPrices(self.open, self.high, self.low, self.close, self.volume)


@dataclass(frozen=True)
class SymbolBars:
    market: FakeMarket
    open_time: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    quote_volume: np.ndarray
    trades: np.ndarray
    taker_buy_base: np.ndarray
    taker_buy_quote: np.ndarray

    @classmethod
    def from_columns(cls, market: FakeMarket, columns: Mapping[str, np.ndarray]) -> SymbolBars:
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"bars of {market.symbol} lack column(s) {', '.join(missing)}")
        open_time = np.asarray(columns["open_time"], dtype=np.int64)
        n = len(open_time)
        if n and np.any(np.diff(open_time) <= 0):
            raise ValueError(f"bars of {market.symbol} are not strictly increasing in open_time")
        prices = {c: np.asarray(columns[c], dtype=np.float64) for c in REQUIRED_COLUMNS[1:]}
        for name, values in prices.items():
            if len(values) != n:
                raise ValueError(
                    f"column {name} of {market.symbol} has {len(values)} rows, not {n}"
                )
        volume = prices["volume"]
        # Columns a data set lacks (ETH/SOL files) get estimates, since Binance always sends
        # them: quote volume at the bar's mean price, half the volume bought by takers.
        typical = (prices["open"] + prices["high"] + prices["low"] + prices["close"]) / 4
        quote_volume = _optional(columns, "quote_volume", n, lambda: volume * typical)
        taker_buy_base = _optional(columns, "taker_buy_base", n, lambda: volume / 2)
        taker_buy_quote = _optional(columns, "taker_buy_quote", n, lambda: taker_buy_base * typical)
        trades = _optional(columns, "trades", n, lambda: np.zeros(n)).astype(np.int64)
        return cls(
            market,
            open_time,
            quote_volume=quote_volume,
            trades=trades,
            taker_buy_base=taker_buy_base,
            taker_buy_quote=taker_buy_quote,
            **prices,
        )

    def __len__(self) -> int:
        return len(self.open_time)

    def kline(self, row: int) -> Kline:
        return Kline(
            int(self.open_time[row]),
            float(self.open[row]),
            float(self.high[row]),
            float(self.low[row]),
            float(self.close[row]),
            float(self.volume[row]),
            float(self.quote_volume[row]),
            int(self.trades[row]),
            float(self.taker_buy_base[row]),
            float(self.taker_buy_quote[row]),
            row,
        )

    def closed_rows(
        self, before_ms: int, start_ms: int | None, end_ms: int | None, limit: int
    ) -> range:
        """Rows Binance's /klines returns, among the bars that opened before `before_ms`:
        from `start_ms` forward, else the latest ones up to `end_ms`."""
        stop = int(np.searchsorted(self.open_time, before_ms, side="left"))
        if end_ms is not None:
            stop = min(stop, int(np.searchsorted(self.open_time, end_ms, side="right")))
        if start_ms is not None:
            first = int(np.searchsorted(self.open_time, start_ms, side="left"))
            return range(first, max(first, min(stop, first + limit)))
        return range(max(0, stop - limit), stop)


def _optional(
    columns: Mapping[str, np.ndarray], name: str, n: int, estimate: Callable[[], np.ndarray]
) -> np.ndarray:
    values = columns.get(name)
    if values is None:
        return np.asarray(estimate(), dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if len(values) != n:
        raise ValueError(f"column {name} has {len(values)} rows, not {n}")
    return values


class Timeline:
    """The sorted union of every symbol's open times; one step closes all bars at one time."""

    def __init__(self, symbols: Mapping[str, SymbolBars]) -> None:
        self.symbols = dict(symbols)
        stamps = [s.open_time for s in self.symbols.values()]
        self.times: np.ndarray = (
            np.unique(np.concatenate(stamps)) if stamps else np.zeros(0, np.int64)
        )
        # Per symbol, its row at each timeline index, -1 where it has no bar (a gap).
        self._rows_at: dict[str, np.ndarray] = {}
        for symbol, bars in self.symbols.items():
            rows = np.full(len(self.times), -1, dtype=np.int64)
            rows[np.searchsorted(self.times, bars.open_time)] = np.arange(len(bars))
            self._rows_at[symbol] = rows

    def __len__(self) -> int:
        return len(self.times)

    def bars_at(self, index: int) -> list[tuple[SymbolBars, Kline]]:
        """Every symbol's bar at timeline `index`, skipping symbols with a gap there."""
        out = []
        for symbol, bars in self.symbols.items():
            row = int(self._rows_at[symbol][index])
            if row >= 0:
                out.append((bars, bars.kline(row)))
        return out

    def bar_at(self, symbol: str, index: int) -> Kline | None:
        if not 0 <= index < len(self.times):
            return None
        row = int(self._rows_at[symbol][index])
        return None if row < 0 else self.symbols[symbol].kline(row)
