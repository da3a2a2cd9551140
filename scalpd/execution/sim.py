"""The simulated broker of replay and paper trading: it plays the exchange.

It holds its own balances, applies the exchange's order rules (`rules.py`: lot step, minimum
and maximum quantity, minimum notional, price tick) and fills against the bars it is shown.
The parts are replaceable: where an order meets the market (`FillModel`), what a taker pays
beyond that price (`slippage.SlippageModel`), when it arrives (`latency.Latency`), the fees
(`fees.FeeSchedule`) and, where trades and book tops were recorded, the tape (`ticktape`).

Fill rules (`MinuteBarFillModel`, minute bars):
- Market order decided at the close of bar t: reaches the exchange `latency` ms into bar t+1
  and meets its open moved against it by sqrt(latency / 1 min) of the way to the bar's high
  (buy) or low (sell) (latency.py); then pays half the spread and the square-root impact
  (slippage.py), as a taker. It always fills completely (impact prices walking the book).
  Where the tape covers the arrival time, it meets the recorded book instead (ticktape.py).
- Limit order (an entry with a price): marketable on arrival (a buy limit at or above the
  arrival price) -> taker fill at the arrival price with costs, never above the limit.
  Otherwise it rests from its arrival bar on and fills at its price, as a maker, in a bar whose
  low goes strictly below it (`sim.limit_queue = "through"`: the queue ahead of it is assumed
  filled first) or reaches it ("touch": front of the queue); at most `sim.max_participation`
  of the bar's volume a bar. After `sim.limit_ttl_bars` bars the unfilled rest expires.
- An entry's bracket is armed when the entry completes or expires, on what the account holds
  (the fills less a base-asset fee, plus dust earlier exits left, floored to the lot step:
  `rules.sellable_qty`), at its average fill price, and is checked from that bar on. Stop-loss
  (stop-market): triggers when the low reaches it, fills at min(stop, open) (a gap fills at the
  open) less half spread and impact, as a taker, all of it. Take-profit (limit): the limit
  queue rule and participation cap, at its own price (a resting order does, even when the
  market opens above it), as a maker. One bar touching both: the stop wins (the bar does not
  say which came first).
  Binance OCO: a partial take-profit fill cancels the stop; the rest of the take-profit rests
  until it fills or the engine's time stop cancels it and sells what is left.
- Orders the exchange would reject are rejected, with its reason.
Fill times: a fill at arrival is stamped with the bar's open time, a resting order's fill
with the bar's close time (when it is known).
Slippage paid (`slippage_paid_usdt`) is what taker fills pay beyond the price with no costs:
the bar's open for market orders (latency drift included), min(stop, open) for stops, the
book's mid on the tape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from scalpd.config.settings import FeesSettings, MarketRules, SimSettings
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
from scalpd.execution.fees import QUOTE_ASSET, FeeSchedule, base_asset
from scalpd.execution.latency import Latency, arrival_price
from scalpd.execution.rules import floor_to_step, price_violation, sellable_qty, violation
from scalpd.execution.slippage import SlippageModel
from scalpd.execution.ticktape import TickTape

_DEFAULT_SIM = SimSettings()


class FillModel(Protocol):
    def arrival_price(self, side: Side, latency_ms: float, bar: Bar) -> float:
        """Price (before spread and impact) an order sent at the previous close meets."""

    def limit_reached(self, side: Side, price: float, bar: Bar) -> bool:
        """Whether `bar` trades a resting limit order of `side` at `price`."""

    def stop_price(self, stop: float, bar: Bar) -> float | None:
        """Where a sell stop at `stop` triggers in `bar` (before costs), or None."""


class MinuteBarFillModel:
    """The rules of the module docstring, on minute bars."""

    __slots__ = ("touch",)

    def __init__(self, limit_queue: str = "through") -> None:
        self.touch = limit_queue == "touch"

    def arrival_price(self, side: Side, latency_ms: float, bar: Bar) -> float:
        return arrival_price(side, latency_ms, bar.open, bar.high, bar.low)

    def limit_reached(self, side: Side, price: float, bar: Bar) -> bool:
        if side is Side.BUY:
            return bar.low <= price if self.touch else bar.low < price
        return bar.high >= price if self.touch else bar.high > price

    def stop_price(self, stop: float, bar: Bar) -> float | None:
        return min(stop, bar.open) if bar.low <= stop else None


@dataclass(slots=True)
class Working:
    """An order at the exchange: a limit entry resting, or a take-profit leg."""

    order: Order
    remaining: float
    filled: float = 0.0
    notional: float = 0.0
    base_fee: float = 0.0  # fees taken from the base asset bought
    bars_left: int = 0


@dataclass(slots=True)
class ArmedBracket:
    entry_id: str
    take_profit: Working
    stop_loss: Order | None  # None once the take-profit's partial fill cancelled it


class SimBroker:
    """Fills orders against bars. Reports become visible to the engine at the next bar."""

    def __init__(
        self,
        *,
        cash: float,
        fees: FeesSettings,
        rules: dict[str, MarketRules],
        sim: SimSettings | None = None,
        fill_model: FillModel | None = None,
        tapes: dict[str, TickTape] | None = None,
    ) -> None:
        sim = sim or _DEFAULT_SIM
        self.cash = cash
        self.base: dict[str, float] = {}
        self.slippage_paid_usdt = 0.0
        self.fees_paid_usdt = 0.0
        self._fees = FeeSchedule(fees)
        self._rules = rules
        self._fill_model = fill_model or MinuteBarFillModel(sim.limit_queue)
        self._slippage = SlippageModel.from_settings(sim)
        self._latency = Latency.from_settings(sim)
        self._participation = sim.max_participation
        self._ttl_bars = sim.limit_ttl_bars
        self._tapes = tapes or {}
        self._pending: dict[str, list[tuple[Order, float]]] = {}  # (order, latency ms)
        self._resting: dict[str, list[Working]] = {}
        self._brackets: dict[str, ArmedBracket] = {}
        self._queued: dict[str, list] = {}
        self._active: set[str] = set()  # symbols with anything to do at their next bar
        self._trade_seq = 0

    # -- orders in -------------------------------------------------------------------------

    def submit(self, order: Order) -> None:
        self._active.add(order.symbol)
        if order.type is OrderType.STOP:
            self._queue(order.symbol, self._reject(order, "sim broker takes no bare stop orders"))
            return
        # Drawn now, in submission order: a draw never depends on later data.
        latency_ms = self._latency.draw_ms()
        self._pending.setdefault(order.symbol, []).append((order, latency_ms))

    def cancel_bracket(self, symbol: str, time_ms: int) -> None:
        bracket = self._brackets.pop(symbol, None)
        if bracket is None:
            return
        self._queue(
            symbol, OrderUpdate(bracket.take_profit.order.client_id, OrderStatus.CANCELLED, time_ms)
        )
        if bracket.stop_loss is not None:
            self._queue(
                symbol, OrderUpdate(bracket.stop_loss.client_id, OrderStatus.CANCELLED, time_ms)
            )

    # -- market data in, reports out --------------------------------------------------------

    def on_bar(self, bar: Bar) -> Sequence:
        symbol = bar.symbol
        if symbol not in self._active:
            return ()
        reports = self._queued.pop(symbol, [])
        pending = self._pending.pop(symbol, None)
        if pending:
            for order, latency_ms in pending:
                self._arrive(order, latency_ms, bar, reports)
        resting = self._resting.get(symbol)
        if resting:
            self._work_limits(resting, bar, reports)
            if not resting:
                del self._resting[symbol]
        bracket = self._brackets.get(symbol)
        if bracket is not None:
            self._work_bracket(bracket, bar, reports)
        if symbol not in self._brackets and symbol not in self._resting:
            self._active.discard(symbol)
        return reports

    # -- internals --------------------------------------------------------------------------

    def _arrive(self, order: Order, latency_ms: float, bar: Bar, reports: list) -> None:
        rules = self._rules[order.symbol]
        limit = order.price if order.type is OrderType.LIMIT else None
        why = price_violation(limit, rules) if limit is not None else None
        if why is None:
            why = violation(order.qty, limit if limit is not None else bar.open, rules)
        if why is not None:
            reports.append(self._reject(order, why, bar.open_time_ms))
            return
        side = order.side
        price, reference, touch = self._taker_price(
            order.symbol, side, order.qty, bar, bar.open_time_ms + latency_ms, latency_ms, rules
        )
        marketable = limit is None or (limit >= touch if side is Side.BUY else limit <= touch)
        if limit is not None and marketable:
            price = min(price, limit) if side is Side.BUY else max(price, limit)
        check_price = price if marketable else limit
        why = self._balance_problem(order, order.qty, check_price, "taker")
        if why is not None:
            reports.append(self._reject(order, why, bar.open_time_ms))
            return
        work = Working(order, order.qty, bars_left=self._ttl_bars)
        if marketable:
            self.slippage_paid_usdt += order.qty * abs(price - reference)
            self._fill_working(work, order.qty, price, bar.open_time_ms, "taker", reports)
            if order.bracket is not None:
                self._arm(work, bar.open_time_ms, reports)
            return
        self._resting.setdefault(order.symbol, []).append(work)

    def _taker_price(
        self,
        symbol: str,
        side: Side,
        qty: float,
        bar: Bar,
        arrival_ms: float,
        latency_ms: float,
        rules: MarketRules,
    ) -> tuple[float, float, float]:
        """(fill price with costs, the price with no costs, the best price it meets first)
        of a taker order arriving at `arrival_ms`."""
        slip = self._slippage
        tape = self._tapes.get(symbol)
        quote = None
        if tape is not None:
            quote = tape.quote(side, arrival_ms, slip.half_spread(bar.open, rules.tick_size))
        if quote is None:
            base = self._fill_model.arrival_price(side, latency_ms, bar)
            bps = slip.half_spread(base, rules.tick_size)
            bps += slip.impact_bps(qty, bar.volume, bar.high, bar.low)
            price = base * (1 + bps / 1e4) if side is Side.BUY else base * (1 - bps / 1e4)
            return price, bar.open, base
        # The top level's size at its price, the rest walks the book: the impact model.
        at_top = min(qty, quote.size)
        beyond = qty - at_top
        price = quote.price
        if beyond > 0:
            bps = slip.impact_bps(beyond, bar.volume, bar.high, bar.low)
            worse = price * (1 + bps / 1e4) if side is Side.BUY else price * (1 - bps / 1e4)
            price = (at_top * quote.price + beyond * worse) / qty
        return price, quote.mid, quote.price

    def _balance_problem(
        self, order: Order, qty: float, price: float, liquidity: str
    ) -> str | None:
        if order.side is Side.BUY:
            fee = self._fees.charge(Side.BUY, qty, price, liquidity, order.symbol)
            cost = qty * price + (0.0 if fee.asset == base_asset(order.symbol) else fee.value_usdt)
            if cost > self.cash:
                return f"insufficient balance: need {cost:.2f} {QUOTE_ASSET}, have {self.cash:.2f}"
            return None
        held = self.base.get(order.symbol, 0.0)
        if qty > held + 1e-12:
            return f"insufficient balance: sell {qty}, have {held}"
        return None

    def _work_limits(self, resting: list[Working], bar: Bar, reports: list) -> None:
        close_ms = bar.close_time_ms
        for work in list(resting):
            order = work.order
            if self._fill_model.limit_reached(order.side, order.price, bar):
                qty = self._participation_qty(work, bar)
                if qty > 0 and self._balance_problem(order, qty, order.price, "maker") is None:
                    self._fill_working(work, qty, order.price, close_ms, "maker", reports)
            work.bars_left -= 1
            done = work.remaining < self._rules[order.symbol].step_size * 0.5
            if done or work.bars_left <= 0:
                resting.remove(work)
                if not done:
                    reports.append(
                        OrderUpdate(
                            order.client_id, OrderStatus.EXPIRED, close_ms, filled_qty=work.filled
                        )
                    )
                if order.bracket is not None and work.filled > 0:
                    self._arm(work, close_ms, reports)

    def _participation_qty(self, work: Working, bar: Bar) -> float:
        volume = bar.volume
        cap = self._participation * volume if volume > 0 else 0.0
        step = self._rules[work.order.symbol].step_size
        return floor_to_step(min(work.remaining, cap), step)

    def _arm(self, entry: Working, time_ms: int, reports: list) -> None:
        order = entry.order
        rules = self._rules[order.symbol]
        # The balance already holds the entry less its base-asset fee, plus earlier dust.
        qty = sellable_qty(self.base.get(order.symbol, 0.0), rules.step_size)
        price = entry.notional / entry.filled
        take_profit, stop_loss = bracket_legs(order, price, time_ms, rules, qty)
        reports.append(take_profit)
        reports.append(stop_loss)
        why = violation(qty, stop_loss.price, rules)
        if why is not None:
            # The exchange would refuse the legs: the position waits for the time stop.
            reports.append(
                OrderUpdate(take_profit.client_id, OrderStatus.REJECTED, time_ms, reason=why)
            )
            reports.append(
                OrderUpdate(stop_loss.client_id, OrderStatus.REJECTED, time_ms, reason=why)
            )
            return
        reports.append(OrderUpdate(take_profit.client_id, OrderStatus.OPEN, time_ms))
        reports.append(OrderUpdate(stop_loss.client_id, OrderStatus.OPEN, time_ms))
        self._brackets[order.symbol] = ArmedBracket(
            order.client_id, Working(take_profit, qty), stop_loss
        )
        self._active.add(order.symbol)

    def _work_bracket(self, bracket: ArmedBracket, bar: Bar, reports: list) -> None:
        symbol = bar.symbol
        close_ms = bar.close_time_ms
        tp = bracket.take_profit
        stop = bracket.stop_loss
        if stop is not None:
            trigger = self._fill_model.stop_price(stop.price, bar)
            if trigger is not None:
                price, reference = self._stop_fill(stop, tp.remaining, trigger, bar)
                self.slippage_paid_usdt += tp.remaining * abs(price - reference)
                del self._brackets[symbol]
                reports.append(self._fill(stop, tp.remaining, price, close_ms, "taker"))
                reports.append(
                    OrderUpdate(tp.order.client_id, OrderStatus.EXPIRED, close_ms, tp.filled)
                )
                return
        target = tp.order.price
        if not self._fill_model.limit_reached(Side.SELL, target, bar):
            return
        qty = self._participation_qty(tp, bar)
        if qty <= 0:
            return
        self._fill_working(tp, qty, target, close_ms, "maker", reports)
        if tp.remaining < self._rules[symbol].step_size * 0.5:
            del self._brackets[symbol]
            if stop is not None:
                reports.append(OrderUpdate(stop.client_id, OrderStatus.EXPIRED, close_ms))
        elif stop is not None:
            # OCO: a partial fill of one leg cancels the other.
            bracket.stop_loss = None
            reports.append(OrderUpdate(stop.client_id, OrderStatus.CANCELLED, close_ms))

    def _stop_fill(self, stop: Order, qty: float, trigger: float, bar: Bar) -> tuple[float, float]:
        rules = self._rules[stop.symbol]
        tape = self._tapes.get(stop.symbol)
        if tape is not None and tape.covers(bar.open_time_ms):
            hit_ms = tape.first_trade_at_or_below(bar.open_time_ms, bar.close_time_ms, stop.price)
            if hit_ms is not None:
                price, mid, _ = self._taker_price(
                    stop.symbol, Side.SELL, qty, bar, hit_ms, 0, rules
                )
                return price, mid
        slip = self._slippage
        bps = slip.half_spread(trigger, rules.tick_size)
        bps += slip.impact_bps(qty, bar.volume, bar.high, bar.low)
        return trigger * (1 - bps / 1e4), trigger

    def _fill_working(
        self, work: Working, qty: float, price: float, time_ms: int, liquidity: str, reports: list
    ) -> None:
        fill = self._fill(work.order, qty, price, time_ms, liquidity)
        work.remaining -= qty
        work.filled += qty
        work.notional += qty * price
        if fill.side is Side.BUY and fill.fee_asset == base_asset(fill.symbol):
            work.base_fee += fill.fee
        reports.append(fill)

    def _fill(self, order: Order, qty: float, price: float, time_ms: int, liquidity: str) -> Fill:
        symbol = order.symbol
        fee = self._fees.charge(order.side, qty, price, liquidity, symbol)
        notional = qty * price
        if order.side is Side.BUY:
            self.cash -= notional
            bought = qty - fee.amount if fee.asset == base_asset(symbol) else qty
            self.base[symbol] = self.base.get(symbol, 0.0) + bought
            if fee.asset != base_asset(symbol):
                self.cash -= fee.value_usdt
        else:
            self.cash += notional - fee.value_usdt
            self.base[symbol] = self.base.get(symbol, 0.0) - qty
        self.fees_paid_usdt += fee.value_usdt
        self._trade_seq += 1
        return Fill(
            order.client_id,
            symbol,
            order.side,
            qty,
            price,
            fee.amount,
            fee.asset,
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


NextOpenFillModel = MinuteBarFillModel  # the name this part had before costs were modelled
