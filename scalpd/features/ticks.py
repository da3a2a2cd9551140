"""Microstructure from the tick stream: trades, book tops and book levels, per minute.

Every tick belongs to the minute floor(time_ms / 60 000) and is summed into that minute's
accumulator; the minute's values are taken when its 1-minute bar closes (`TickAccumulator.take`).
Ticks of a minute that has no bar are dropped; ticks that arrive after their minute's bar are
late: dropped and counted.

Large trades: a trade is large when its qty exceeds `large_trade_mult` times the EMA of trade
qty over the trades before it (span `trade_size_span_trades`, started at the first trade). That
EMA belongs to the trade stream, not to the bars: it is updated trade by trade in arrival order
and is not reset by a bar gap (a hole in the bars does not change what a usual trade size is).

`aggregate` is the vectorised form of the same definitions over whole arrays, and
`trades_to_bars` turns a trade stream into 1-minute bars, so that the bar-level definitions
(order-flow imbalance from taker buy volume) can be compared with the tick-level ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.signal import lfilter

from scalpd.data.bars import BarColumns
from scalpd.data.orderbook import BookLevels
from scalpd.events import BookTop, Side, Trade
from scalpd.features.spec import MINUTE_MS, FeatureParams

DEPTH_LEVELS = 5
_NAN = math.nan


def spread_bps(bid: float, ask: float) -> float:
    """1e4 * (ask - bid) / mid."""
    return 2e4 * (ask - bid) / (ask + bid)


def depth_imbalance(levels: BookLevels, n: int = DEPTH_LEVELS) -> float:
    """(bid qty - ask qty) / (bid qty + ask qty) over the best n levels; NaN for an empty book."""
    bid_qty = 0.0
    for _, qty in levels.bids[:n]:
        bid_qty += qty
    ask_qty = 0.0
    for _, qty in levels.asks[:n]:
        ask_qty += qty
    total = bid_qty + ask_qty
    return (bid_qty - ask_qty) / total if total > 0.0 else _NAN


class MinuteTicks(NamedTuple):
    """One minute's tick sums."""

    buy_qty: float
    sell_qty: float
    trades: int
    large_qty: float
    unwarmed: int  # trades classified before the trade-size EMA had its warm-up
    spread_sum_bps: float
    spread_n: int
    depth_sum: float
    depth_n: int

    def ofi(self) -> float:
        total = self.buy_qty + self.sell_qty
        return (self.buy_qty - self.sell_qty) / total if self.trades > 0 and total > 0.0 else _NAN

    def large_share(self) -> float:
        total = self.buy_qty + self.sell_qty
        if self.trades == 0 or self.unwarmed or not total > 0.0:
            return _NAN
        return self.large_qty / total

    def spread(self) -> float:
        return self.spread_sum_bps / self.spread_n if self.spread_n else _NAN

    def depth(self) -> float:
        return self.depth_sum / self.depth_n if self.depth_n else _NAN


# Accumulator slots (a list per minute: cheaper to update in place than a record).
_BUY, _SELL, _N, _LARGE, _UNWARM, _SP_SUM, _SP_N, _D_SUM, _D_N = range(9)


class TickAccumulator:
    """Per-symbol tick state: open minutes' sums and the trade-size EMA. O(1) per tick."""

    __slots__ = (
        "_pending", "_alpha", "_keep", "_mult", "_warmup", "_ema_qty", "_seen",
        "last_taken_ms", "late", "active",
    )  # fmt: skip

    def __init__(self, params: FeatureParams) -> None:
        self._alpha = 2.0 / (params.trade_size_span_trades + 1)
        self._keep = 1.0 - self._alpha
        self._mult = params.large_trade_mult
        self._warmup = params.trade_size_warmup_trades
        self._pending: dict[int, list] = {}
        self._ema_qty = 0.0
        self._seen = 0  # trades since start
        self.last_taken_ms = -1  # open time of the last minute taken by a bar
        self.late = 0
        self.active = False  # has any tick arrived? (bar-only feeds skip the tick columns)

    def _minute(self, time_ms: int) -> list | None:
        minute = time_ms - time_ms % MINUTE_MS
        if minute <= self.last_taken_ms:
            self.late += 1
            return None
        acc = self._pending.get(minute)
        if acc is None:
            acc = self._pending[minute] = [0.0, 0.0, 0, 0.0, 0, 0.0, 0, 0.0, 0]
        self.active = True
        return acc

    def on_trade(self, time_ms: int, qty: float, taker_buys: bool) -> None:
        seen = self._seen
        warm = seen >= self._warmup
        large = warm and qty > self._mult * self._ema_qty
        self._ema_qty = qty if seen == 0 else self._alpha * qty + self._keep * self._ema_qty
        self._seen = seen + 1
        acc = self._minute(time_ms)
        if acc is None:
            return
        acc[_BUY if taker_buys else _SELL] += qty
        acc[_N] += 1
        if large:
            acc[_LARGE] += qty
        if not warm:
            acc[_UNWARM] += 1

    def on_top(self, time_ms: int, bid: float, ask: float) -> None:
        if not (0.0 < bid <= ask):  # crossed or empty tops say nothing about the spread
            return
        acc = self._minute(time_ms)
        if acc is not None:
            acc[_SP_SUM] += spread_bps(bid, ask)
            acc[_SP_N] += 1

    def on_depth(self, time_ms: int, imbalance: float) -> None:
        if time_ms < 0 or imbalance != imbalance:
            return
        acc = self._minute(time_ms)
        if acc is not None:
            acc[_D_SUM] += imbalance
            acc[_D_N] += 1

    def take(self, minute_ms: int) -> MinuteTicks | None:
        """The sums of minute `minute_ms` (its bar has closed), dropping older open minutes."""
        self.last_taken_ms = minute_ms
        pending = self._pending
        acc = pending.pop(minute_ms, None)
        if pending:
            for key in [k for k in pending if k < minute_ms]:
                del pending[key]
        if acc is None:
            return None
        return MinuteTicks(*acc)


# --- vectorised: whole tick arrays -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TickColumns:
    """A symbol's tick stream as arrays, each part in arrival order."""

    trade_time_ms: np.ndarray  # int64
    trade_price: np.ndarray
    trade_qty: np.ndarray
    trade_is_buy: np.ndarray  # bool: the taker bought
    top_time_ms: np.ndarray
    top_bid: np.ndarray
    top_ask: np.ndarray
    depth_time_ms: np.ndarray
    depth_imbalance: np.ndarray

    @staticmethod
    def from_events(
        trades: Iterable[Trade], tops: Iterable[BookTop], levels: Iterable[BookLevels]
    ) -> TickColumns:
        tr = list(trades)
        tp = list(tops)
        lv = list(levels)
        return TickColumns(
            np.array([t.time_ms for t in tr], dtype=np.int64),
            np.array([t.price for t in tr], dtype=np.float64),
            np.array([t.qty for t in tr], dtype=np.float64),
            np.array([t.taker_side is Side.BUY for t in tr], dtype=bool),
            np.array([t.time_ms for t in tp], dtype=np.int64),
            np.array([t.bid for t in tp], dtype=np.float64),
            np.array([t.ask for t in tp], dtype=np.float64),
            np.array([x.time_ms for x in lv], dtype=np.int64),
            np.array([depth_imbalance(x) for x in lv], dtype=np.float64),
        )


class MinuteColumns(NamedTuple):
    """Per-minute tick sums aligned to given bar open times (zero where a minute had none)."""

    buy_qty: np.ndarray
    sell_qty: np.ndarray
    trades: np.ndarray
    large_qty: np.ndarray
    unwarmed: np.ndarray
    spread_sum_bps: np.ndarray
    spread_n: np.ndarray
    depth_sum: np.ndarray
    depth_n: np.ndarray

    def ofi(self) -> np.ndarray:
        total = self.buy_qty + self.sell_qty
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (self.buy_qty - self.sell_qty) / total
        out[(self.trades == 0) | ~(total > 0.0)] = np.nan
        return out

    def large_share(self) -> np.ndarray:
        total = self.buy_qty + self.sell_qty
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self.large_qty / total
        out[(self.trades == 0) | (self.unwarmed > 0) | ~(total > 0.0)] = np.nan
        return out

    def spread(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.spread_n > 0, self.spread_sum_bps / self.spread_n, np.nan)

    def depth(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.depth_n > 0, self.depth_sum / self.depth_n, np.nan)


def _per_minute(
    bar_open_ms: np.ndarray, time_ms: np.ndarray, weights: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Sums of each weight over the ticks of each bar's minute (sequential, in tick order)."""
    n = len(bar_open_ms)
    minute = time_ms - time_ms % MINUTE_MS
    row = np.searchsorted(bar_open_ms, minute)
    hit = (row < n) & (bar_open_ms[np.minimum(row, n - 1)] == minute) if n else row < 0
    row = row[hit]
    # np.bincount adds weights in index order: the same sums as the tick-by-tick accumulator.
    return [np.bincount(row, w[hit], minlength=n).astype(np.float64) for w in weights]


def trade_size_flags(qty: np.ndarray, params: FeatureParams) -> tuple[np.ndarray, np.ndarray]:
    """(large, warm) per trade: the EMA of qty before each trade, as `on_trade` keeps it."""
    alpha = 2.0 / (params.trade_size_span_trades + 1)
    ema_after = np.empty(len(qty))
    if len(qty):
        ema_after[0] = qty[0]
        ema_after[1:] = lfilter(
            [alpha], [1.0, -(1.0 - alpha)], qty[1:], zi=[(1.0 - alpha) * qty[0]]
        )[0]
    ema_before = np.concatenate(([0.0], ema_after[:-1]))
    warm = np.arange(len(qty)) >= params.trade_size_warmup_trades
    large = warm & (qty > params.large_trade_mult * ema_before)
    return large, warm


def aggregate(ticks: TickColumns, bar_open_ms: np.ndarray, params: FeatureParams) -> MinuteColumns:
    """Tick sums per bar minute, the vectorised twin of `TickAccumulator`.

    Assumes no tick is late (every tick arrives before its minute's bar closes), which holds
    for a replay merged by time; `bar_open_ms` must be sorted.
    """
    qty = ticks.trade_qty
    large, warm = trade_size_flags(qty, params)
    buy = np.where(ticks.trade_is_buy, qty, 0.0)
    sell = np.where(ticks.trade_is_buy, 0.0, qty)
    ones = np.ones(len(qty))
    buy_s, sell_s, n_s, large_s, unwarm_s = _per_minute(
        bar_open_ms,
        ticks.trade_time_ms,
        [buy, sell, ones, np.where(large, qty, 0.0), (~warm).astype(np.float64)],
    )
    ok_top = (ticks.top_bid > 0.0) & (ticks.top_bid <= ticks.top_ask)
    sp = spread_bps(ticks.top_bid[ok_top], ticks.top_ask[ok_top])
    sp_sum, sp_n = _per_minute(bar_open_ms, ticks.top_time_ms[ok_top], [sp, np.ones(len(sp))])
    ok_depth = (ticks.depth_time_ms >= 0) & ~np.isnan(ticks.depth_imbalance)
    d = ticks.depth_imbalance[ok_depth]
    d_sum, d_n = _per_minute(bar_open_ms, ticks.depth_time_ms[ok_depth], [d, np.ones(len(d))])
    # buy and sell are summed apart in the accumulator: adding 0.0 for the other side's
    # trades leaves every partial sum unchanged, so the sums agree bit for bit.
    return MinuteColumns(
        buy_s, sell_s, n_s.astype(np.int64), large_s, unwarm_s.astype(np.int64),
        sp_sum, sp_n.astype(np.int64), d_sum, d_n.astype(np.int64),
    )  # fmt: skip


def trades_to_bars(symbol: str, ticks: TickColumns) -> BarColumns:
    """1-minute bars (OHLCV, quote volume, trade count, taker buy volume) from trades, one per
    minute that has trades, built the way the exchange builds its klines."""
    t = ticks.trade_time_ms
    if len(t) == 0:
        empty = np.empty(0)
        return BarColumns(
            symbol, np.empty(0, np.int64), *(empty,) * 6, np.empty(0, np.int64), empty
        )
    order = np.argsort(t, kind="stable")
    t = t[order]
    price = ticks.trade_price[order]
    qty = ticks.trade_qty[order]
    buy = ticks.trade_is_buy[order]
    minute = t - t % MINUTE_MS
    starts = np.flatnonzero(np.concatenate(([True], minute[1:] != minute[:-1])))
    ends = np.concatenate((starts[1:], [len(t)]))
    return BarColumns(
        symbol=symbol,
        open_time=minute[starts],
        open=price[starts],
        high=np.maximum.reduceat(price, starts),
        low=np.minimum.reduceat(price, starts),
        close=price[ends - 1],
        volume=np.add.reduceat(qty, starts),
        quote_volume=np.add.reduceat(price * qty, starts),
        trades=(ends - starts).astype(np.int64),
        taker_buy_volume=np.add.reduceat(np.where(buy, qty, 0.0), starts),
    )
