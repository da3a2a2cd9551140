"""The simulated broker of replay and paper trading, with its fill model as a replaceable part.

It plays the exchange: it holds its own balances, applies the exchange's order rules, and fills
against the bars it is shown. Fill rules (`NextOpenFillModel`):
- a market order decided at the close of bar t fills at the open of bar t+1, as a taker;
- an entry's bracket is armed at the entry's fill price (take-profit rounded to the tick) and
  is checked against the same bar it filled in and every later one: the stop-loss triggers when
  the low touches it and fills at min(stop, open); the take-profit fills when the high reaches
  it, at max(take-profit, open), as a maker. When one bar touches both, the stop wins: a
  minute bar does not say which came first, and assuming the worse is the honest choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from scalpd.config.settings import FeesSettings, MarketRules
from scalpd.events import (
    Bar,
    Fill,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
)
from scalpd.execution.brackets import bracket_legs
from scalpd.execution.rules import violation

QUOTE_ASSET = "USDT"


@dataclass(slots=True)
class ArmedBracket:
    entry_id: str
    take_profit: Order
    stop_loss: Order


class FillModel(Protocol):
    def market_price(self, order: Order, bar: Bar) -> float:
        """Price a market order meets when it reaches the exchange during `bar`."""

    def bracket_exit(self, bracket: ArmedBracket, bar: Bar) -> tuple[Order, float] | None:
        """The leg of a long position's bracket that `bar` fills, and its price."""


class NextOpenFillModel:
    def market_price(self, order: Order, bar: Bar) -> float:
        return bar.open

    def bracket_exit(self, bracket: ArmedBracket, bar: Bar) -> tuple[Order, float] | None:
        stop = bracket.stop_loss.price
        if bar.low <= stop:
            return bracket.stop_loss, min(stop, bar.open)
        target = bracket.take_profit.price
        if bar.high >= target:
            return bracket.take_profit, max(target, bar.open)
        return None


class SimBroker:
    """Fills orders against bars. Reports become visible to the engine at the next bar."""

    def __init__(
        self,
        *,
        cash: float,
        fees: FeesSettings,
        rules: dict[str, MarketRules],
        fill_model: FillModel | None = None,
    ) -> None:
        self.cash = cash
        self.base: dict[str, float] = {}
        self._fees = fees
        self._rules = rules
        self._fill_model = fill_model or NextOpenFillModel()
        self._pending: dict[str, list[Order]] = {}
        self._brackets: dict[str, ArmedBracket] = {}
        self._queued: dict[str, list] = {}
        self._active: set[str] = set()  # symbols with anything to do at their next bar
        self._trade_seq = 0

    # -- orders in -------------------------------------------------------------------------

    def submit(self, order: Order) -> None:
        self._active.add(order.symbol)
        if order.type is not OrderType.MARKET:
            self._queue(order.symbol, self._reject(order, "sim broker takes market orders only"))
            return
        self._pending.setdefault(order.symbol, []).append(order)

    def cancel_bracket(self, symbol: str, time_ms: int) -> None:
        bracket = self._brackets.pop(symbol, None)
        if bracket is None:
            return
        for leg in (bracket.take_profit, bracket.stop_loss):
            self._queue(symbol, OrderUpdate(leg.client_id, OrderStatus.CANCELLED, time_ms))

    # -- market data in, reports out --------------------------------------------------------

    def on_bar(self, bar: Bar) -> Sequence:
        symbol = bar.symbol
        if symbol not in self._active:
            return ()
        reports = self._queued.pop(symbol, [])
        pending = self._pending.pop(symbol, None)
        if pending:
            for order in pending:
                self._fill_market(order, bar, reports)
        bracket = self._brackets.get(symbol)
        if bracket is not None:
            hit = self._fill_model.bracket_exit(bracket, bar)
            if hit is not None:
                leg, price = hit
                other = bracket.stop_loss if leg is bracket.take_profit else bracket.take_profit
                del self._brackets[symbol]
                liquidity = "maker" if leg.type is OrderType.LIMIT else "taker"
                reports.append(self._fill(leg, price, bar.close_time_ms, liquidity))
                reports.append(OrderUpdate(other.client_id, OrderStatus.EXPIRED, bar.close_time_ms))
        if symbol not in self._brackets:
            self._active.discard(symbol)
        return reports

    # -- internals --------------------------------------------------------------------------

    def _fill_market(self, order: Order, bar: Bar, reports: list) -> None:
        price = self._fill_model.market_price(order, bar)
        rules = self._rules[order.symbol]
        why = violation(order.qty, price, rules)
        if why is None:
            if order.side is Side.BUY:
                cost = order.qty * price * (1 + self._fees.taker_bps / 1e4)
                if cost > self.cash:
                    why = (
                        f"insufficient balance: need {cost:.2f} {QUOTE_ASSET}, have {self.cash:.2f}"
                    )
            elif order.qty > self.base.get(order.symbol, 0.0) + 1e-12:
                why = f"insufficient balance: sell {order.qty}, have {self.base.get(order.symbol)}"
        if why is not None:
            reports.append(self._reject(order, why, bar.open_time_ms))
            return
        reports.append(self._fill(order, price, bar.open_time_ms, "taker"))
        if order.bracket is not None:
            take_profit, stop_loss = bracket_legs(order, price, bar.open_time_ms, rules, order.qty)
            self._brackets[order.symbol] = ArmedBracket(order.client_id, take_profit, stop_loss)
            reports.append(take_profit)
            reports.append(stop_loss)

    def _fill(self, order: Order, price: float, time_ms: int, liquidity: str) -> Fill:
        bps = self._fees.maker_bps if liquidity == "maker" else self._fees.taker_bps
        notional = order.qty * price
        fee = notional * bps / 1e4
        if order.side is Side.BUY:
            self.cash -= notional + fee
            self.base[order.symbol] = self.base.get(order.symbol, 0.0) + order.qty
        else:
            self.cash += notional - fee
            self.base[order.symbol] = self.base.get(order.symbol, 0.0) - order.qty
        self._trade_seq += 1
        return Fill(
            order.client_id,
            order.symbol,
            order.side,
            order.qty,
            price,
            fee,
            QUOTE_ASSET,
            time_ms,
            liquidity,
            f"sim-{self._trade_seq}",
            order.reason,
        )

    def _reject(self, order: Order, why: str, time_ms: int | None = None) -> OrderUpdate:
        return OrderUpdate(
            order.client_id,
            OrderStatus.REJECTED,
            order.time_ms if time_ms is None else time_ms,
            reason=why,
        )

    def _queue(self, symbol: str, report: object) -> None:
        self._queued.setdefault(symbol, []).append(report)
