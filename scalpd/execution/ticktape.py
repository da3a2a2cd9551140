"""Recorded trades and book tops of one symbol: where they exist, the exact price an order met.

A buy arriving at time t meets the best ask of the last book top at or before t (a sell: the
bid), for up to that level's size. Without book tops, it meets the first trade at or after t,
plus (buy) or minus (sell) half the configured spread. The quantity beyond the top level walks
the book: the impact model (slippage.py) prices it.

`TickTape` itself is pure; `load_tape` reads the recorder's bar-store files and
`tape_from_recording` raw WebSocket recordings (binance_ws), stamping a book ticker (which has
no time of its own) with the last exchange time seen before it, as the live feed does.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from scalpd.events import Side


class TapeQuote(NamedTuple):
    price: float  # the best level's price (or a trade's, moved by half the spread)
    size: float  # what that level holds; inf when unknown (trade fallback)
    mid: float  # the price before the spread
    half_spread_bps: float


class TickTape:
    __slots__ = ("top_ms", "bid", "bid_qty", "ask", "ask_qty", "trade_ms", "trade_price")

    def __init__(
        self,
        top_ms: np.ndarray,
        bid: np.ndarray,
        bid_qty: np.ndarray,
        ask: np.ndarray,
        ask_qty: np.ndarray,
        trade_ms: np.ndarray,
        trade_price: np.ndarray,
    ) -> None:
        # Sorted by time (stable), so the last of one millisecond is the latest known.
        order = np.argsort(top_ms, kind="stable")
        self.top_ms = np.asarray(top_ms, dtype=np.int64)[order]
        self.bid = np.asarray(bid, dtype=np.float64)[order]
        self.bid_qty = np.asarray(bid_qty, dtype=np.float64)[order]
        self.ask = np.asarray(ask, dtype=np.float64)[order]
        self.ask_qty = np.asarray(ask_qty, dtype=np.float64)[order]
        order = np.argsort(trade_ms, kind="stable")
        self.trade_ms = np.asarray(trade_ms, dtype=np.int64)[order]
        self.trade_price = np.asarray(trade_price, dtype=np.float64)[order]

    @property
    def empty(self) -> bool:
        return len(self.top_ms) == 0 and len(self.trade_ms) == 0

    def covers(self, time_ms: float) -> bool:
        """Whether `time_ms` lies within the recording (no stale book is ever used)."""
        if self.empty:
            return False
        first = min(
            self.top_ms[0] if len(self.top_ms) else np.inf,
            self.trade_ms[0] if len(self.trade_ms) else np.inf,
        )
        last = max(
            self.top_ms[-1] if len(self.top_ms) else -np.inf,
            self.trade_ms[-1] if len(self.trade_ms) else -np.inf,
        )
        return first <= time_ms <= last

    def quote(self, side: Side, time_ms: float, half_spread_bps: float) -> TapeQuote | None:
        """What an order of `side` arriving at `time_ms` meets first; None when the tape does
        not cover that time."""
        if not self.covers(time_ms):
            return None
        i = int(np.searchsorted(self.top_ms, time_ms, side="right")) - 1
        if i >= 0:
            bid, ask = float(self.bid[i]), float(self.ask[i])
            mid = 0.5 * (bid + ask)
            half = 0.5 * (ask - bid) / mid * 1e4
            if side is Side.BUY:
                return TapeQuote(ask, float(self.ask_qty[i]), mid, half)
            return TapeQuote(bid, float(self.bid_qty[i]), mid, half)
        j = int(np.searchsorted(self.trade_ms, time_ms, side="left"))
        if j >= len(self.trade_ms):
            return None
        price = float(self.trade_price[j])
        moved = price * (
            1 + half_spread_bps / 1e4 if side is Side.BUY else 1 - half_spread_bps / 1e4
        )
        return TapeQuote(moved, float("inf"), price, half_spread_bps)

    def first_trade_at_or_below(self, start_ms: int, end_ms: int, price: float) -> int | None:
        """Time of the first trade in [start_ms, end_ms) at or below `price` (a sell stop's
        trigger), or None."""
        lo = int(np.searchsorted(self.trade_ms, start_ms, side="left"))
        hi = int(np.searchsorted(self.trade_ms, end_ms, side="left"))
        hits = np.nonzero(self.trade_price[lo:hi] <= price)[0]
        return int(self.trade_ms[lo + hits[0]]) if len(hits) else None


def tape_from_tables(book_top, trades) -> TickTape:
    """A tape from the recorder's `book_top` and `trades` tables (pyarrow)."""
    col = lambda t, name: t.column(name).to_numpy()  # noqa: E731
    return TickTape(
        col(book_top, "time_ms"),
        col(book_top, "bid"),
        col(book_top, "bid_qty"),
        col(book_top, "ask"),
        col(book_top, "ask_qty"),
        col(trades, "time_ms"),
        col(trades, "price"),
    )


def load_tape(
    root: Path, symbol: str, start_ms: int | None = None, end_ms: int | None = None
) -> TickTape | None:
    """The recorded tape of `symbol` in the bar store at `root`, or None when nothing is."""
    from scalpd.data.recorder import BOOK_TOP, TRADES, read_ticks

    tape = tape_from_tables(
        read_ticks(root, symbol, BOOK_TOP, start_ms, end_ms),
        read_ticks(root, symbol, TRADES, start_ms, end_ms),
    )
    return None if tape.empty else tape


def tape_from_recording(paths: Iterable[str | Path], symbol: str) -> TickTape:
    """A tape of `symbol` ("BTC/USDT") from raw Binance WebSocket recordings."""
    from scalpd.data.binance_ws import parse_book_ticker, parse_trade, unwrap

    prefix = symbol.replace("/", "").lower()
    tops: list[tuple[int, float, float, float, float]] = []
    trades: list[tuple[int, float]] = []
    last_ms = -1
    from scalpd.data.binance_ws import iter_recording

    for recv_ns, message in iter_recording(paths):
        stream_symbol, channel, data = unwrap(message)
        if stream_symbol != prefix:
            continue
        if channel == "trade":
            trade = parse_trade(data, symbol)
            last_ms = max(last_ms, trade.time_ms)
            trades.append((trade.time_ms, trade.price))
        elif channel.startswith("depth"):
            last_ms = max(last_ms, int(data.get("E", last_ms)))
        elif channel == "bookTicker":
            time_ms = last_ms if last_ms >= 0 else recv_ns // 1_000_000
            top = parse_book_ticker(data, symbol, time_ms).top
            tops.append((top.time_ms, top.bid, top.bid_qty, top.ask, top.ask_qty))
    t = np.array(tops, dtype=np.float64).reshape(-1, 5)
    r = np.array(trades, dtype=np.float64).reshape(-1, 2)
    return TickTape(
        t[:, 0].astype(np.int64), t[:, 1], t[:, 2], t[:, 3], t[:, 4],
        r[:, 0].astype(np.int64), r[:, 1],
    )  # fmt: skip
