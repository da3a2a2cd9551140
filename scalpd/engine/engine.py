"""The engine: per-event code shared by replay, paper and live.

`on_bar` and `on_gap` are synchronous and do no I/O of their own: replay calls them in a tight
loop over batches, the live runner calls them as events arrive from the network. Orders go to
the broker port, records to the journal port; neither call blocks.

The order of work at each closed bar is fixed, so every mode sees the same sequence:
1. the broker's reports due by this bar's close (fills, cancels, armed exits) are booked; each
   round trip they close goes to the risk manager (losing streak);
2. the risk manager sees the bar (market breakers) and the equity marked at its close (daily
   loss), so a breach at this bar already stops this bar's entries;
3. the strategy sees the bar and the account, and returns intents (a model strategy's output
   goes to the risk manager as its confidence);
4. each intent passes the risk manager (`RiskManager.check`: exits always pass, so a paused
   engine still manages its positions), is journaled as an order, then sent to the broker;
5. drawdown and the equity record are updated;
6. breaker transitions are logged ("risk_breaker", at info: the daemon's alert of each is the
   warning) and handed to `on_risk_event`, and a changed risk state to `save_risk_state` (the
   daemon persists it).

The engine does no I/O of its own for the risk layer either: the daemon passes those two
callbacks; replay passes none (its runs start from a fresh risk state and keep it in memory).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog

from scalpd.engine.orders import can_move
from scalpd.engine.portfolio import ClosedTrade, Portfolio, Position
from scalpd.engine.ports import Broker, Clock
from scalpd.events import (
    TERMINAL_STATUSES,
    Bar,
    Fill,
    Gap,
    Order,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    Trade,
)
from scalpd.risk.breakers import RiskEvent
from scalpd.risk.gate import Decision
from scalpd.risk.manager import PAUSED_PREFIX, RiskManager, holdings_usdt
from scalpd.strategy.base import Strategy


class Journal(Protocol):
    """Where the engine records what it decides and what happens (SQLite in practice)."""

    def record_intent(self, intent: OrderIntent, decision: Decision) -> None: ...
    def record_order(self, order: Order, status: OrderStatus = OrderStatus.NEW) -> None: ...
    def record_order_update(self, update: OrderUpdate, filled_qty: float) -> None: ...
    def record_fill(self, fill: Fill, position: Position | None) -> None: ...
    def record_trade(self, trade: ClosedTrade) -> None: ...
    def record_equity(self, time_ms: int, equity: float, cash: float) -> None: ...


class EquityCurve:
    """Equity at the close of every minute (one sample per close time, whatever the number of
    symbols): what minute-level metrics are computed from. Replay keeps one; live does not."""

    __slots__ = ("time_ms", "equity")

    def __init__(self) -> None:
        self.time_ms = array("q")
        self.equity = array("d")

    def add(self, time_ms: int, equity: float) -> None:
        if self.time_ms and self.time_ms[-1] == time_ms:
            self.equity[-1] = equity  # another symbol's bar of the same minute
        else:
            self.time_ms.append(time_ms)
            self.equity.append(equity)


class ClientIds:
    """Our own client order ids: restart-safe because the run id is in them."""

    __slots__ = ("_prefix", "_seq")

    def __init__(self, prefix: str, start: int = 0) -> None:
        self._prefix = prefix
        self._seq = start

    def next(self) -> str:
        self._seq += 1
        return f"{self._prefix}{self._seq}"


class Engine:
    def __init__(
        self,
        *,
        strategy: Strategy,
        risk: RiskManager,
        broker: Broker,
        journal: Journal,
        clock: Clock,
        cash: float,
        ids: ClientIds,
        equity_interval_ms: int,
        trade_from_ms: int = 0,
        equity_curve: EquityCurve | None = None,
        portfolio: Portfolio | None = None,
        on_risk_event: Callable[[RiskEvent], None] | None = None,
        save_risk_state: Callable[[str], None] | None = None,
        log: Any = None,
    ) -> None:
        """`on_risk_event`: called with every breaker trip and reset (the daemon alerts);
        `save_risk_state`: called with `risk.state.to_json()` whenever it changed (the daemon
        stores it, so a restart keeps a halt); neither may block. `log`: where the engine's
        lines go (a structlog logger; default "scalpd.engine"; the daemon's writes its info
        lines between candles, scalpd/logs.py DeferredLog)."""
        self._strategy = strategy
        self.risk = risk
        self.on_risk_event = on_risk_event
        self._save_risk_state = save_risk_state
        # A model strategy's latest output per symbol (see strategy/base.py); None: a rule.
        self._confidences: dict[str, float] | None = getattr(strategy, "last_probability", None)
        self._broker = broker
        self._journal = journal
        self._clock = clock
        self._ids = ids
        self._equity_interval_ms = equity_interval_ms
        self._next_equity_ms = 0
        # Warm-up: bars closing before this are shown to the strategy (features, model context)
        # but its intents are dropped, so a test window starts with warm state and no trades.
        self.trade_from_ms = trade_from_ms
        self.equity_curve = equity_curve
        self._log = log if log is not None else structlog.get_logger("scalpd.engine")
        self.portfolio = portfolio if portfolio is not None else Portfolio(cash)
        self.open_orders: dict[str, Order] = {}
        # The state of each open order (scalpd/engine/orders.py); ended orders leave.
        self.order_status: dict[str, OrderStatus] = {}
        self._filled_qty: dict[str, float] = {}
        # Symbol -> number of entries/exits in flight (bracket legs excluded).
        self._working: dict[str, int] = {}
        self.trades: list[ClosedTrade] = []
        self.bars_seen = 0
        self.gaps_seen = 0
        self.anomalies = 0
        self.start_equity = cash
        self.peak_equity = cash
        self.max_drawdown = 0.0
        self.last_bar_ms: dict[str, int] = {}

    # -- StrategyContext ---------------------------------------------------------------------

    def position(self, symbol: str) -> Position | None:
        return self.portfolio.positions.get(symbol)

    def has_working_order(self, symbol: str) -> bool:
        return symbol in self._working

    def equity(self) -> float:
        return self.portfolio.equity()

    # -- events in -----------------------------------------------------------------------------

    def on_bar(self, bar: Bar) -> None:
        close_ms = bar.open_time_ms + 60_000
        self._clock.observe(close_ms)
        reports = self._broker.on_bar(bar)
        if reports:
            self._book(reports)
        pf = self.portfolio
        pf.last_price[bar.symbol] = bar.close
        risk = self.risk
        risk.on_bar(bar, close_ms)
        # Routing sends orders but fills none, so this is also the equity after the intents.
        equity = pf.equity() if pf.positions or pf.dust else pf.cash
        risk.on_equity(close_ms, equity)
        intents = self._strategy.on_bar(bar, self)
        confidences = self._confidences
        if confidences is not None:
            p = confidences.get(bar.symbol)
            if p is not None:
                risk.on_confidence(close_ms, p)
        if intents and close_ms >= self.trade_from_ms:
            for intent in intents:
                self._route(intent, bar.close)
        if equity > self.peak_equity:
            self.peak_equity = equity
        else:
            drawdown = 1.0 - equity / self.peak_equity
            if drawdown > self.max_drawdown:
                self.max_drawdown = drawdown
        if self.equity_curve is not None:
            self.equity_curve.add(close_ms, equity)
        if close_ms >= self._next_equity_ms:
            self._journal.record_equity(close_ms, equity, pf.cash)
            self._next_equity_ms = (
                close_ms - close_ms % self._equity_interval_ms + (self._equity_interval_ms)
            )
        self.last_bar_ms[bar.symbol] = bar.open_time_ms
        self.bars_seen += 1
        if risk.has_events() or self._save_risk_state is not None:
            self._risk_outputs()

    def on_gap(self, gap: Gap) -> None:
        self.gaps_seen += 1
        self._log.warning(
            "data_gap",
            symbol=gap.symbol,
            last_open_time_ms=gap.last_open_time_ms,
            next_open_time_ms=gap.next_open_time_ms,
            missing_bars=gap.missing_bars,
        )
        self._strategy.on_gap(gap)

    def on_trade(self, trade: Trade) -> None:
        """A trade print (live feeds only; replay of bars has none)."""
        self._strategy.on_trade(trade)

    def apply_reports(self, reports: Sequence) -> None:
        """Book broker reports: fills, order updates, and orders the broker made (exit legs)."""
        self._book(reports)
        self._risk_outputs()

    # -- time and a person (the risk manager's other inputs) ----------------------------------

    def tick(self, now_ms: int) -> None:
        """Time passed without a bar (live: the daemon calls this every second): cool-downs
        end, the UTC day rolls over, a symbol whose bars stopped is paused (stale data).
        `now_ms` is on the bars' time scale (see Daemon)."""
        self.risk.tick(now_ms)
        self._risk_outputs()

    def pause(self, now_ms: int, reason: str = "operator") -> None:
        """Stop entries until `resume`; exits (time stops, brackets) go on."""
        self.risk.pause(now_ms, reason)
        self._risk_outputs()

    def resume(self, now_ms: int, breaker: str | None = None) -> list[str]:
        """Reset one tripped breaker by name, or all (None); returns the names reset."""
        names = self.risk.resume(now_ms, breaker)
        self._risk_outputs()
        return names

    def flatten(self, time_ms: int, reason: str = "flatten") -> list[str]:
        """Close every position with a reduce-only market sell, routed as a strategy exit
        (journaled first, past the risk manager, the symbol's bracket cancelled first); returns
        the client ids sent. A symbol whose exit is already in flight is left to it: a second
        sell of the same holding could only be refused. Resting limit entries are not touched
        (pause first to stop new ones). The live broker sends them at its next `flush()`."""
        exiting = {
            o.symbol for o in self.open_orders.values() if o.reduce_only and o.parent_id is None
        }
        before = set(self.open_orders)
        for symbol, pos in list(self.portfolio.positions.items()):
            qty = self.portfolio.sellable(symbol)
            if symbol in exiting or qty <= 0:
                continue
            intent = OrderIntent(symbol, Side.SELL, qty, reason, time_ms, None, True)
            self._route(intent, self.portfolio.last_price.get(symbol, pos.avg_price))
        self._risk_outputs()
        return [cid for cid in self.open_orders if cid not in before]

    @property
    def strategy(self) -> Strategy:
        """The strategy deciding (the daemon swaps a model strategy's model through it)."""
        return self._strategy

    # -- internals -----------------------------------------------------------------------------

    def _risk_outputs(self) -> None:
        risk = self.risk
        if risk.has_events():
            callback = self.on_risk_event
            for event in risk.drain_events():
                # Info: expected in a replay; live, the daemon's alert of it is the warning.
                self._log.info(
                    "risk_breaker",
                    breaker=event.breaker,
                    action=event.action,
                    reason=event.reason,
                    time_ms=event.time_ms,
                )
                if callback is not None:
                    callback(event)
        if self._save_risk_state is not None and risk.take_dirty():
            self._save_risk_state(risk.state.to_json())

    def _book(self, reports: Sequence) -> None:
        for report in reports:
            kind = type(report)
            if kind is Fill:
                self._on_fill(report)
            elif kind is OrderUpdate:
                self._on_update(report)
            elif kind is Order:
                # An exit the broker arms for us, recorded before it is sent (new): the
                # exchange's answer opens it or rejects it, as for our own orders.
                self._journal.record_order(report, OrderStatus.NEW)
                self.open_orders[report.client_id] = report
                self.order_status[report.client_id] = OrderStatus.NEW
                self._log.info(
                    "exit_armed",
                    client_id=report.client_id,
                    parent_id=report.parent_id,
                    symbol=report.symbol,
                    type=report.type.value,
                    price=report.price,
                    qty=report.qty,
                )
            else:
                self.anomalies += 1
                self._log.error("unknown_broker_report", report=repr(report))

    def restore_orders(self, orders: Sequence[tuple[Order, float, OrderStatus]]) -> None:
        """Orders an earlier run sent and did not see end, with what it booked of them and
        their state: their reports are booked like this run's own (a restart,
        scalpd/live/recovery.py)."""
        for order, filled_qty, status in orders:
            self.open_orders[order.client_id] = order
            self.order_status[order.client_id] = status
            if filled_qty > 0:
                self._filled_qty[order.client_id] = filled_qty
            if order.parent_id is None:
                self._working[order.symbol] = self._working.get(order.symbol, 0) + 1

    def finish(self, time_ms: int) -> None:
        """Record the final equity (the end of a replay, or a clean shutdown)."""
        pf = self.portfolio
        self._journal.record_equity(time_ms, pf.equity(), pf.cash)

    def _route(self, intent: OrderIntent, price: float) -> None:
        if intent.price is not None:
            price = intent.price
        pf = self.portfolio
        if intent.reduce_only:
            decision = self.risk.check(intent, price, pf.position_qty(intent.symbol))
        else:
            confidences = self._confidences
            decision = self.risk.check(
                intent,
                price,
                pf.position_qty(intent.symbol),
                book=holdings_usdt(pf, self.open_orders.values()),
                confidence=None if confidences is None else confidences.get(intent.symbol),
            )
        self._journal.record_intent(intent, decision)
        if not decision.allowed:
            # A breaker's pause refuses entries by design (its trip was logged): not a warning.
            paused = decision.reason.startswith(PAUSED_PREFIX)
            (self._log.info if paused else self._log.warning)(
                "intent_rejected",
                symbol=intent.symbol,
                side=intent.side.value,
                qty=intent.qty,
                reason=intent.reason,
                decision=decision.reason,
            )
            return
        if intent.reduce_only:
            self._broker.cancel_bracket(intent.symbol, intent.time_ms)
        order = Order(
            client_id=self._ids.next(),
            symbol=intent.symbol,
            side=intent.side,
            type=OrderType.MARKET if intent.price is None else OrderType.LIMIT,
            qty=intent.qty,
            time_ms=intent.time_ms,
            reason=intent.reason,
            price=intent.price,
            bracket=intent.bracket,
            reduce_only=intent.reduce_only,
        )
        # Journal first: after a crash the order is known even if the send never happened.
        self._journal.record_order(order)
        self.open_orders[order.client_id] = order
        self.order_status[order.client_id] = OrderStatus.NEW
        self._working[order.symbol] = self._working.get(order.symbol, 0) + 1
        self._log.info(
            "order",
            client_id=order.client_id,
            symbol=order.symbol,
            side=order.side.value,
            qty=order.qty,
            reason=order.reason,
        )
        self._broker.submit(order)

    def _on_fill(self, fill: Fill) -> None:
        order = self.open_orders.get(fill.client_id)
        if order is None:
            self.anomalies += 1
            self._log.error("fill_for_unknown_order", client_id=fill.client_id, fill=fill._asdict())
            return
        trade = self.portfolio.apply_fill(fill)
        self._journal.record_fill(fill, self.portfolio.positions.get(fill.symbol))
        self._log.info(
            "fill",
            client_id=fill.client_id,
            trade_id=fill.trade_id,
            symbol=fill.symbol,
            side=fill.side.value,
            qty=fill.qty,
            price=fill.price,
            fee=fill.fee,
            reason=fill.reason,
        )
        filled = self._filled_qty.get(fill.client_id, 0.0) + fill.qty
        if filled >= order.qty * (1 - 1e-9):
            self._on_update(OrderUpdate(fill.client_id, OrderStatus.FILLED, fill.time_ms, filled))
        else:
            self._filled_qty[fill.client_id] = filled
            self.order_status[fill.client_id] = OrderStatus.PARTIALLY_FILLED
        if trade is not None:
            self.trades.append(trade)
            self._journal.record_trade(trade)
            self.risk.on_trade_closed(trade)
        self._strategy.on_fill(fill)

    def _on_update(self, update: OrderUpdate) -> None:
        order = self.open_orders.get(update.client_id)
        if order is None:
            self.anomalies += 1
            self._log.error("update_for_unknown_order", client_id=update.client_id)
            return
        current = self.order_status.get(update.client_id, OrderStatus.NEW)
        if not can_move(current, update.status):
            self.anomalies += 1
            self._log.error(
                "illegal_order_transition",
                client_id=update.client_id,
                status=current.value,
                reported=update.status.value,
            )
            return
        self.order_status[update.client_id] = update.status
        filled = max(update.filled_qty, self._filled_qty.get(update.client_id, 0.0))
        self._journal.record_order_update(update, filled)
        if update.status in TERMINAL_STATUSES:
            del self.open_orders[update.client_id]
            del self.order_status[update.client_id]
            self._filled_qty.pop(update.client_id, None)
            if order.parent_id is None:
                left = self._working[order.symbol] - 1
                if left:
                    self._working[order.symbol] = left
                else:
                    del self._working[order.symbol]
        if update.status is OrderStatus.REJECTED:
            self._log.warning("order_rejected", client_id=update.client_id, reason=update.reason)
