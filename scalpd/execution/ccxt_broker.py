"""The live broker: orders to Binance spot through ccxt, with our own client order ids.

The engine's calls (`submit`, `cancel_bracket`) only queue work; the daemon awaits `flush()`
after each bar to send it, and `sync()` before each bar to learn what resting orders did.
Reports are handed to the engine by `on_bar`, like the simulator's, so the engine books them at
the same point of the event stream in every mode.

Exits are kept on the exchange: after an entry fills, its take-profit and stop-loss go out as
one OCO order list (a LIMIT_MAKER above, a STOP_LOSS below), so they survive a crash of the
daemon and only one of them can fill. They are sized by what our own trading holds of the
base asset, floored to the lot step: Binance takes a buy's fee from the base asset bought (unless
it is paid in BNB), so the account holds less than the entry's quantity (an OCO for the entry's
quantity would be refused for insufficient balance), and the dust earlier exits left below one
lot step is sold with the next exit, as the simulated broker does.

Every fill's fee and fee asset are the exchange's (its trade data), never recomputed here.

What resting orders did is learnt from the account's user-data stream when it runs
(`watch_account`, Binance's executionReport: each fill with its trade id, price and fee, as
it happens), so a bar that filled an exit normally costs no request on the decision path. REST
is the fallback: a resting order the bar reached about which the stream said nothing new (it is
down, reconnecting, or slower than the market stream this once) is asked about, and after the
stream reconnects every resting order is asked about once (events sent meanwhile are lost).

Limit entries (`OrderType.LIMIT`) rest as GTC limit orders under our client id. They are
learnt about each bar like the exit legs: partial fills become `Fill` reports as they happen,
with an `OrderUpdate` carrying the cumulative filled quantity; after `limit_ttl_bars` bars
(counted on the order's symbol, from the bar after the one it was decided on; the daemon passes
each bar to `sync`) the rest is cancelled. When the entry completes, or is cancelled after a
partial fill, its bracket is armed on what was filled. When an exit's take-profit fills only in
part, the exchange expires the stop (Binance's OCO rule) and the rest of the take-profit keeps
resting until it fills or the time stop cancels it.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ccxt
import structlog

from scalpd.config.settings import MarketRules
from scalpd.events import Bar, Fill, Order, OrderStatus, OrderType, OrderUpdate, Side
from scalpd.execution.brackets import bracket_legs
from scalpd.execution.fees import base_asset
from scalpd.execution.rules import floor_to_step, sellable_qty
from scalpd.faults import crash_point

log = structlog.get_logger("scalpd.execution.ccxt")

_STATUS = {
    "open": OrderStatus.OPEN,
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELLED,
    "cancelled": OrderStatus.CANCELLED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}
_CLOSED_STATUSES = frozenset({"closed", "canceled", "cancelled", "expired", "rejected"})
# Float dust of summed fills: a quantity within this share of the order's is all of it.
_QTY_REL_EPS = 1e-9
DEFAULT_LIMIT_TTL_BARS = 5
# Event-loop turns `sync` gives the user-data stream's reader before polling a reached order.
_STREAM_CATCH_UP_YIELDS = 16
_SUBSCRIBE_TIMEOUT_S = 30.0


@dataclass(slots=True)
class _Execution:
    """What is known of one of our orders on the exchange: its fills, booked once each."""

    order: Order
    exchange_id: str | None = None
    filled_qty: float = 0.0
    cost: float = 0.0  # quote units
    base_fee: float = 0.0  # fees taken from the base asset (they cannot be sold)
    last_fill_ms: int = 0
    trade_ids: set[str] = field(default_factory=set)
    age_bars: int = 0  # bars of the order's symbol closed since it was sent (limit entries)
    unreadable_report: tuple | None = None  # the stream's last unreadable report of it

    @property
    def average_price(self) -> float:
        return self.cost / self.filled_qty if self.filled_qty > 0 else 0.0


@dataclass(slots=True)
class LiveBracket:
    list_client_id: str
    take_profit: Order
    stop_loss: Order
    done: set[str] = field(default_factory=set)  # client ids of legs known to be closed


class CcxtBroker:
    def __init__(
        self,
        exchange: ccxt.Exchange,
        rules: dict[str, MarketRules],
        *,
        max_rate_limit_retries: int = 5,
        limit_ttl_bars: int = DEFAULT_LIMIT_TTL_BARS,
        order_lookup_tries: int = 3,
        backoff_initial_s: float = 1.0,
        user_stream: bool = False,
    ) -> None:
        if limit_ttl_bars < 1:
            raise ValueError("limit_ttl_bars must be at least 1")
        self._ex = exchange
        self._rules = rules
        self._max_retries = max_rate_limit_retries
        self._lookup_tries = order_lookup_tries
        self._backoff_initial_s = backoff_initial_s
        self._limit_ttl_bars = limit_ttl_bars
        # (kind, payload, sequence number): sequence numbers count every item ever queued, so
        # the daemon can send one bar's orders while it decides the next bar (`flush(until)`).
        self._outbox: deque[tuple[str, Any, int]] = deque()
        self.queued_total = 0
        self._send_lock = asyncio.Lock()  # one flush at a time: orders leave in queue order
        self._symbol_of_order: dict[str, str] = {}  # client id -> symbol, to route updates
        self._reports: list = []
        self._executions: dict[str, _Execution] = {}  # by client id
        self.brackets: dict[str, LiveBracket] = {}
        self.working_entries: dict[str, _Execution] = {}  # resting limit entries, by client id
        self._held: dict[str, float] = {}  # base bought less sold and base fees, by symbol
        self.anomalies = 0  # order answers and trades from the exchange not booked (see logs)
        self._user_stream = user_stream
        # The user-data stream is subscribed and its events flow (watch_account). After a
        # reconnect, `_resync` asks about every resting order once: events sent while it was
        # down are not replayed.
        self.stream_live = False
        self._resync = False
        self.stream_reconnects = 0

    # -- Broker port (synchronous, called by the engine) ---------------------------------------

    def submit(self, order: Order) -> None:
        self._symbol_of_order[order.client_id] = order.symbol
        self._queue("submit", order)

    def cancel_bracket(self, symbol: str, time_ms: int) -> None:
        self._queue("cancel_bracket", (symbol, time_ms))

    def _queue(self, kind: str, payload: Any) -> None:
        self._outbox.append((kind, payload, self.queued_total))
        self.queued_total += 1

    def on_bar(self, bar: Bar) -> Sequence:
        """The reports of `bar`'s symbol learnt so far (an order update by its order's
        symbol: another symbol's may be learnt while this one is decided)."""
        if not self._reports:
            return ()
        symbol = bar.symbol
        mine = [r for r in self._reports if self._symbol_of(r) in (symbol, None)]
        self._reports = [r for r in self._reports if r not in mine]
        return mine

    def _symbol_of(self, report: Any) -> str | None:
        symbol = getattr(report, "symbol", None)
        if symbol is None:
            symbol = self._symbol_of_order.get(getattr(report, "client_id", ""))
        return symbol

    # -- network side (awaited by the daemon) --------------------------------------------------

    async def flush(self, until: int | None = None) -> None:
        """Send what the engine queued, in order: every item, or those queued before item
        number `until` (see `queued_total`). One flush at a time."""
        async with self._send_lock:
            while self._outbox and (until is None or self._outbox[0][2] < until):
                kind, payload, _ = self._outbox.popleft()
                if kind == "submit":
                    await self._send(payload)
                else:
                    await self._cancel_bracket(*payload)

    async def sync(self, bar: Bar | None = None) -> None:
        """Learn what resting orders did before `bar` is handed to the engine. `bar` ages the
        limit entries of its symbol (None: of every symbol); one that has now rested
        `limit_ttl_bars` bars is cancelled, so the engine learns its end on the same bar as
        the simulator's would expire it.

        The user-data stream's news is taken first (no request). Only orders the bar's range
        reached and the stream said nothing new about are asked about over REST: a buy
        limit fills only at or below its price, a take-profit sell at or above its own, a
        stop triggers at or below its stop, and the bar's high and low bound every trade of
        its minute. So a bar costs no request on the decision path unless the stream is down
        or late; `check_resting` asks about the rest now and then, off that path, in case
        something else ended them (an operator on the exchange's site)."""
        if self._resync and self.stream_live:
            self._resync = False
            bar = None  # events may have been lost while the stream was down: ask about all
        for client_id, execution in list(self.working_entries.items()):
            if bar is not None and bar.symbol != execution.order.symbol:
                continue
            execution.age_bars += 1
            expiring = execution.age_bars >= self._limit_ttl_bars
            (info,) = await self._learn(
                [execution], reached=bar is None or entry_reached(execution.order, bar)
            )
            if info is not None:
                await self._on_entry_status(client_id, execution, info)
            if client_id in self.working_entries and expiring:
                await self._expire_entry(client_id, execution)
        for symbol, bracket in list(self.brackets.items()):
            if bar is not None and symbol != bar.symbol:
                continue
            await self._sync_bracket(symbol, bracket, bar is None or bracket_reached(bracket, bar))

    async def check_resting(self, symbol: str) -> None:
        """Ask about every resting order of `symbol`, reached or not (see `sync`); what is
        found is reported with the symbol's next bar. Nothing to ask while the user-data
        stream is live: it reports every change of the account's orders, whoever made it."""
        if self.stream_live:
            return
        for client_id, execution in list(self.working_entries.items()):
            if execution.order.symbol == symbol:
                (info,) = await self._learn([execution], reached=True)
                if info is not None:
                    await self._on_entry_status(client_id, execution, info)
        bracket = self.brackets.get(symbol)
        if bracket is not None:
            await self._sync_bracket(symbol, bracket, reached=True)

    async def _sync_bracket(self, symbol: str, bracket: LiveBracket, reached: bool) -> None:
        legs = [
            leg for leg in (bracket.stop_loss, bracket.take_profit)
            if leg.client_id not in bracket.done
        ]  # fmt: skip
        executions = [self._executions.setdefault(leg.client_id, _Execution(leg)) for leg in legs]
        # What the stream says, else both legs asked at once: one round trip, not two.
        answers = await self._learn(executions, reached)
        for leg, info in zip(legs, answers, strict=True):
            if info is None:
                continue
            await self._book_fills(leg, info)
            if info.get("status") in _CLOSED_STATUSES:
                bracket.done.add(leg.client_id)
                self._report_end(leg, info)
        if len(bracket.done) == 2:
            del self.brackets[symbol]
            self._forget_legs(bracket)

    async def _learn(
        self, executions: list[_Execution], reached: bool
    ) -> list[dict[str, Any] | None]:
        """What is new about resting orders: the user-data stream's report of each that has
        news; when the bar reached them, the exchange's answer to a poll for the others (asked
        at once: one round trip). None: nothing to learn now."""
        answers = [self._stream_news(x) for x in executions]
        if not reached or all(info is not None for info in answers):
            return answers
        if self.stream_live:
            # The stream's frame for this bar may be read but not handled yet (it comes on
            # another connection than the candle): let its reader run before asking.
            for _ in range(_STREAM_CATCH_UP_YIELDS):
                await asyncio.sleep(0)
                answers = [self._stream_news(x) for x in executions]
                if all(info is not None for info in answers):
                    return answers
        missing = [i for i, info in enumerate(answers) if info is None]
        polled = await asyncio.gather(*(self._poll(executions[i].order) for i in missing))
        for i, info in zip(missing, polled, strict=True):
            answers[i] = info
        return answers

    def _stream_news(self, execution: _Execution) -> dict[str, Any] | None:
        """The stream's latest report of the order when it says more than we know (a fill
        not booked, or its end), with each trade's detail; None otherwise. A report without
        the trades (the stream began after the order was placed) still counts: booking it
        asks for the trades."""
        if not self.stream_live:
            return None
        cache = getattr(self._ex, "orders", None)
        if cache is None:
            return None
        order = execution.order
        by_id = cache.hashmap.get(order.symbol)
        if not by_id:
            return None
        if execution.exchange_id is not None:
            info = by_id.get(str(execution.exchange_id))
        else:  # placed but its answer not read yet: known by our client id only
            info = next(
                (o for o in reversed(by_id.values()) if o.get("clientOrderId") == order.client_id),
                None,
            )
        if info is None or info.get("clientOrderId") != order.client_id:
            return None
        # ccxt updates a cached order in place: a report is told apart by what it says.
        said = (
            info.get("status"),
            info.get("filled"),
            info.get("lastUpdateTimestamp"),
            len(info.get("trades") or ()),
        )
        if said == execution.unreadable_report:
            return None  # counted once; REST decides until the stream says more
        try:
            filled = float(info.get("filled") or 0.0)
        except (TypeError, ValueError):
            filled = math.nan
        closed = info.get("status") in _CLOSED_STATUSES
        more = not filled <= execution.filled_qty * (1 + _QTY_REL_EPS)  # NaN: looked at below
        if not (closed or more):
            return None
        if not _adds_up(info, filled):
            # A report we cannot read whole (a NaN field, trades that do not make its filled
            # quantity): the exchange's REST answer decides, for every resting order.
            execution.unreadable_report = said
            self.anomalies += 1
            self._resync = True
            log.error(
                "user_stream_report_unreadable",
                client_id=order.client_id,
                status=repr(info.get("status"))[:40],
                filled=repr(info.get("filled"))[:40],
            )
            return None
        return info

    async def watch_account(self) -> None:
        """Keep the account's user-data stream subscribed, for `sync`, until cancelled. A
        dropped stream is subscribed again with backoff; meanwhile `sync` polls."""
        if not self._user_stream:
            return
        delay_s = self._backoff_initial_s
        while True:
            try:
                async with asyncio.timeout(_SUBSCRIBE_TIMEOUT_S):
                    await self._ex.authenticate()  # subscribed once this returns
                if self._resync or self.stream_reconnects:
                    log.info("user_stream_subscribed", reconnects=self.stream_reconnects)
                self.stream_live = True
                delay_s = self._backoff_initial_s
                while True:
                    await self._ex.watch_orders()
            except asyncio.CancelledError:
                self.stream_live = False
                raise
            except Exception as exc:  # noqa: BLE001 - a stream error never stops trading
                if self.stream_live:
                    self.stream_reconnects += 1
                self.stream_live = False
                self._resync = True
                log.warning("user_stream_down", error=f"{type(exc).__name__}: {exc}"[:300])
                await self._drop_user_stream_client()
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 30.0)

    async def _drop_user_stream_client(self) -> None:
        """Start the next subscription on a new connection. ccxt 4.5.90 can leave a refused
        subscription's future pending on the old one (its cleanup raises KeyError first), and
        every later subscribe would wait on it for ever."""
        url = self._ex.urls["api"]["ws"]["ws-api"]["spot"]
        client = self._ex.clients.pop(url, None)
        if client is not None:
            client.reset(ccxt.NetworkError("user-data stream restarted"))
            await client.close()

    def has_unbooked_fills(self) -> bool:
        """Fills learnt from the exchange that the engine has not booked (journaled) yet."""
        return any(type(r) is Fill for r in self._reports)

    def take_reports(self) -> list:
        """Every report not handed over yet, of every symbol (recovery books them at once)."""
        reports, self._reports = self._reports, []
        return reports

    # -- taking over from an earlier run (scalpd/live/recovery.py) ---------------------------

    def set_held(self, symbol: str, qty: float) -> None:
        """What our own trading holds of `symbol`'s base asset (the rebuilt book's position
        plus dust): what exits may sell."""
        self._held[symbol] = qty

    async def take_over(self, order: Order, filled_qty: float, trade_ids: set[str]) -> str:
        """Learn on the exchange what became of an order an earlier run recorded and did not
        see end (`filled_qty` and `trade_ids` were booked then), and report what it missed:
        fills, the end, an entry's bracket. Returns what was found, for the log: "gone" (not on
        the exchange), "resting" (still working there) or "ended"."""
        self._symbol_of_order[order.client_id] = order.symbol
        execution = self._executions.setdefault(order.client_id, _Execution(order))
        execution.filled_qty = filled_qty
        execution.trade_ids |= trade_ids
        info = await self._fetch(order)
        if info is None:
            return "gone"
        await self._book_fills(order, info)
        if order.parent_id is not None:  # a bracket leg: its pair is rebuilt by adopt_bracket
            if info.get("status") in _CLOSED_STATUSES:
                self._report_end(order, info)
                return "ended"
            self._report_working(execution, _time_of(info))  # recorded new before it was sent
            return "resting"
        if info.get("status") not in _CLOSED_STATUSES:
            if order.type is OrderType.LIMIT:
                self.working_entries[order.client_id] = execution
            self._report_working(execution, _time_of(info))
            return "resting"
        self._report_end(order, info)
        if not await self._adopt_armed_bracket(order):
            await self._arm_bracket_on_fills(execution)
        self._executions.pop(order.client_id, None)
        return "ended"

    def adopt_bracket(self, take_profit: Order, stop_loss: Order, done: set[str]) -> None:
        """Track an OCO pair an earlier run armed; `done`: the legs known to be closed."""
        bracket = LiveBracket(take_profit.parent_id + "oco", take_profit, stop_loss, set(done))
        self.brackets[take_profit.symbol] = bracket
        for leg in (take_profit, stop_loss):
            self._symbol_of_order[leg.client_id] = leg.symbol
            self._executions.setdefault(leg.client_id, _Execution(leg))

    async def _adopt_armed_bracket(self, entry: Order) -> bool:
        """A crash can come after an entry's OCO was sent and before its legs were recorded:
        then the legs rest on the exchange under the ids `bracket_legs` gives them. Report them
        (the engine records them) and track them instead of arming a second pair."""
        if entry.bracket is None:
            return False
        rules = self._rules[entry.symbol]
        legs = bracket_legs(entry, 1.0, entry.time_ms, rules, 0.0)  # ids only
        found = [await self._fetch(leg) for leg in legs]
        if found[0] is None or found[1] is None:
            return False
        adopted = []
        for leg, info in zip(legs, found, strict=True):
            price = float(info.get("stopPrice") or info.get("price") or 0.0)
            adopted.append(
                leg._replace(qty=float(info.get("amount") or 0.0), price=price or leg.price)
            )
        self._reports += adopted
        done = set()
        for leg, info in zip(adopted, found, strict=True):
            self._symbol_of_order[leg.client_id] = leg.symbol
            self._executions[leg.client_id] = _Execution(leg)
            await self._book_fills(leg, info)
            if info.get("status") in _CLOSED_STATUSES:
                done.add(leg.client_id)
                self._report_end(leg, info)
            else:
                self._report_working(self._executions[leg.client_id], _time_of(info))
        if len(done) < 2:
            self.adopt_bracket(adopted[0], adopted[1], done)
        log.warning("bracket_adopted", entry_id=entry.client_id, closed_legs=sorted(done))
        return True

    async def open_orders(self, symbols: Sequence[str]) -> list[dict[str, Any]]:
        """The account's open orders on the exchange, for `symbols`."""
        found: list[dict[str, Any]] = []
        for symbol in symbols:
            found += await self._call(self._ex.fetch_open_orders, symbol)
        return found

    async def cancel_by_client_id(self, symbol: str, client_id: str) -> None:
        """Cancel one order; one that ended meanwhile (not found) is no error: asking for its
        status says how it ended."""
        market = self._ex.market(symbol)
        try:
            await self._call(
                self._ex.private_delete_order,
                {"symbol": market["id"], "origClientOrderId": client_id},
            )
        except ccxt.OrderNotFound:
            pass  # ended meanwhile

    # -- internals -----------------------------------------------------------------------------

    async def _send(self, order: Order) -> None:
        params: dict[str, Any] = {"newClientOrderId": order.client_id}
        qty = order.qty
        if order.side is Side.SELL:
            # A sell can only be whole lot steps of what the account holds.
            qty = floor_to_step(qty, self._rules[order.symbol].step_size)
        if order.type is OrderType.LIMIT:
            if order.price is None or not order.price > 0:
                self._reject(order, f"limit order without a valid price: {order.price}")
                return
            kind, price = "limit", order.price
            params["timeInForce"] = "GTC"
        else:
            kind, price = "market", None
        crash_point("order_recorded")
        try:
            info = await self._call(
                self._ex.create_order,
                order.symbol,
                kind,
                order.side.value,
                qty,
                price,
                params,
                lookup=order,
            )
        except (ccxt.InsufficientFunds, ccxt.InvalidOrder, ccxt.BadRequest) as exc:
            self._reject(order, f"{type(exc).__name__}: {exc}")
            return
        except (ccxt.RateLimitExceeded, ccxt.DDoSProtection) as exc:
            # Refused before it was processed (a 429/418 answer), after every retry.
            self._reject(order, f"still rate limited: {exc}")
            return
        crash_point("order_sent")
        if info is None:
            self._reject(order, "not accepted: no answer and not found by client id")
            return
        execution = self._executions.setdefault(order.client_id, _Execution(order))
        execution.exchange_id = info.get("id")
        status = info.get("status")
        if status in ("rejected", "expired", "canceled", "cancelled") and not info.get("filled"):
            self._reject(order, f"exchange answered {status}")
            return
        if order.type is OrderType.LIMIT and status not in _CLOSED_STATUSES:
            await self._book_fills(order, info)
            self.working_entries[order.client_id] = execution
            self._report_working(execution, _time_of(info))
            return
        if status in _CLOSED_STATUSES:
            await self._book_fills(order, info)
            self._report_end(order, info)
            await self._arm_bracket_on_fills(execution)
            self._executions.pop(order.client_id, None)
        else:
            self._reports.append(OrderUpdate(order.client_id, OrderStatus.OPEN, _time_of(info)))

    async def _on_entry_status(
        self, client_id: str, execution: _Execution, info: dict[str, Any]
    ) -> None:
        before = execution.filled_qty
        await self._book_fills(execution.order, info)
        if info.get("status") in _CLOSED_STATUSES:
            del self.working_entries[client_id]
            self._report_end(execution.order, info)
            await self._arm_bracket_on_fills(execution)
            self._executions.pop(client_id, None)
        elif execution.filled_qty > before:
            self._report_working(execution, execution.last_fill_ms)

    def _report_working(self, execution: _Execution, time_ms: int) -> None:
        """The order rests on the exchange: open, or partly filled."""
        filled = execution.filled_qty
        self._reports.append(
            OrderUpdate(
                execution.order.client_id,
                OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.OPEN,
                time_ms,
                filled,
                execution.exchange_id,
            )
        )

    async def _expire_entry(self, client_id: str, execution: _Execution) -> None:
        """The limit entry's time is up: cancel the rest, arm the bracket on what filled."""
        await self.cancel_by_client_id(execution.order.symbol, client_id)
        info = await self._fetch(execution.order)
        if info is None:
            return
        await self._on_entry_status(client_id, execution, info)

    async def _arm_bracket_on_fills(self, execution: _Execution) -> None:
        entry = execution.order
        if entry.bracket is None or execution.filled_qty <= 0:
            return
        rules = self._rules[entry.symbol]
        # The entry less its base-asset fee plus the dust earlier exits left, floored to the step.
        qty = sellable_qty(self._held.get(entry.symbol, 0.0), rules.step_size)
        await self._arm_bracket(entry, execution.average_price, execution.last_fill_ms, qty)

    async def _arm_bracket(self, entry: Order, fill_price: float, fill_ms: int, qty: float) -> None:
        take_profit, stop_loss = bracket_legs(
            entry, fill_price, fill_ms, self._rules[entry.symbol], qty
        )
        market = self._ex.market(entry.symbol)
        list_id = entry.client_id + "oco"
        request = {
            "symbol": market["id"],
            "side": "SELL",
            "quantity": self._ex.amount_to_precision(entry.symbol, qty),
            "aboveType": "LIMIT_MAKER",
            "abovePrice": self._ex.price_to_precision(entry.symbol, take_profit.price),
            "aboveClientOrderId": take_profit.client_id,
            "belowType": "STOP_LOSS",
            "belowStopPrice": self._ex.price_to_precision(entry.symbol, stop_loss.price),
            "belowClientOrderId": stop_loss.client_id,
            "listClientOrderId": list_id,
        }
        # The legs are reported (and journaled by the engine) before they are sent.
        for leg in (take_profit, stop_loss):
            self._symbol_of_order[leg.client_id] = leg.symbol
        self._reports += [take_profit, stop_loss]
        try:
            answer = await self._call(self._ex.private_post_orderlist_oco, request)
        except (ccxt.InsufficientFunds, ccxt.InvalidOrder, ccxt.BadRequest) as exc:
            for leg in (take_profit, stop_loss):
                self._reject(leg, f"{type(exc).__name__}: {exc}")
            log.error("bracket_rejected", entry_id=entry.client_id, error=str(exc))
            return
        crash_point("bracket_sent")
        # The legs' exchange ids: what the stream's reports of them are found by.
        ids = {
            str(r.get("clientOrderId")): str(r.get("orderId"))
            for r in (answer or {}).get("orderReports") or []
            if isinstance(r, dict) and r.get("orderId") is not None
        }
        opened_ms = int((answer or {}).get("transactionTime") or fill_ms)
        for leg in (take_profit, stop_loss):
            self._executions[leg.client_id] = _Execution(leg, ids.get(leg.client_id))
            self._reports.append(OrderUpdate(leg.client_id, OrderStatus.OPEN, opened_ms))
        self.brackets[entry.symbol] = LiveBracket(list_id, take_profit, stop_loss)

    async def _cancel_bracket(self, symbol: str, time_ms: int) -> None:
        bracket = self.brackets.pop(symbol, None)
        if bracket is None:
            return
        market = self._ex.market(symbol)
        try:
            await self._call(
                self._ex.private_delete_orderlist,
                {"symbol": market["id"], "listClientOrderId": bracket.list_client_id},
            )
        except ccxt.OrderNotFound:
            # Filled meanwhile: the next sync() sees the fill. Keep it known until then.
            self.brackets[symbol] = bracket
            return
        for leg in (bracket.take_profit, bracket.stop_loss):
            if leg.client_id in bracket.done:
                continue
            execution = self._executions.get(leg.client_id)
            filled = execution.filled_qty if execution is not None else 0.0
            self._reports.append(OrderUpdate(leg.client_id, OrderStatus.CANCELLED, time_ms, filled))
        self._forget_legs(bracket)

    def _forget_legs(self, bracket: LiveBracket) -> None:
        for leg in (bracket.take_profit, bracket.stop_loss):
            self._executions.pop(leg.client_id, None)

    async def _fetch(self, order: Order) -> dict[str, Any] | None:
        return await self._call(
            self._ex.fetch_order, None, order.symbol, {"origClientOrderId": order.client_id}
        )

    async def _book_fills(self, order: Order, info: dict[str, Any]) -> None:
        """Report the order's fills not reported yet, with the exchange's fee and fee asset.

        What the exchange says is checked before anything is booked: an answer about another
        order (its id or client id not ours) is ignored whole; a trade of another order, or
        without a finite positive quantity and price and a finite non-negative fee, is logged
        with its raw fields, counted in `anomalies` and never booked (nor counted again)."""
        execution = self._executions.setdefault(order.client_id, _Execution(order))
        answer_id, answer_client_id = info.get("id"), info.get("clientOrderId")
        if (
            answer_id is not None
            and execution.exchange_id is not None
            and str(answer_id) != str(execution.exchange_id)
        ) or answer_client_id not in (None, order.client_id):
            self.anomalies += 1
            log.error(
                "order_answer_for_another_order",
                client_id=order.client_id,
                exchange_id=execution.exchange_id,
                answer_id=repr(answer_id)[:80],
                answer_client_id=repr(answer_client_id)[:80],
            )
            return
        if answer_id is not None:
            execution.exchange_id = answer_id
        try:
            filled = float(info.get("filled") or 0.0)
        except (TypeError, ValueError):
            filled = float("nan")
        if not 0 <= filled < float("inf"):
            self.anomalies += 1
            log.error("order_answer_bad_filled", client_id=order.client_id, filled=repr(filled))
            return
        if filled <= execution.filled_qty * (1 + _QTY_REL_EPS):
            return
        trades = info.get("trades") or []
        if not trades and execution.exchange_id is not None:
            trades = await self._call(
                self._ex.fetch_my_trades,
                order.symbol,
                None,
                None,
                {"orderId": execution.exchange_id},
            )
        if not trades:  # no per-trade detail: one fill of the rest at the average price
            trades = [
                {
                    "id": f"{info.get('id')}-{filled}",
                    "price": info.get("average"),
                    "amount": filled - execution.filled_qty,
                    "timestamp": _time_of(info),
                    "fee": info.get("fee"),
                    "takerOrMaker": None,
                }
            ]
        base = base_asset(order.symbol)
        for trade in trades:
            trade_id = str(trade.get("id"))
            if trade_id in execution.trade_ids:
                continue
            execution.trade_ids.add(trade_id)
            fee = trade.get("fee") or {}
            trade_order = trade.get("order")
            try:
                qty, price = float(trade["amount"]), float(trade["price"])
                fee_cost = float(fee.get("cost") or 0.0)
            except (KeyError, TypeError, ValueError, AttributeError):
                qty = price = fee_cost = float("nan")
            foreign = (
                trade_order is not None
                and execution.exchange_id is not None
                and str(trade_order) != str(execution.exchange_id)
            )
            inf = float("inf")  # NaN fails every comparison below, as it must
            if foreign or not (0 < qty < inf and 0 < price < inf and 0 <= fee_cost < inf):
                self.anomalies += 1
                log.error(
                    "exchange_trade_not_booked",
                    client_id=order.client_id,
                    why="trade of another order" if foreign else "bad quantity, price or fee",
                    exchange_id=execution.exchange_id,
                    trade={
                        k: repr(trade.get(k))[:80]
                        for k in ("id", "order", "amount", "price", "fee", "timestamp")
                    },
                )
                continue
            fee_asset = str(fee.get("currency") or "USDT")
            time_ms = int(trade.get("timestamp") or _time_of(info))
            execution.filled_qty += qty
            execution.cost += qty * price
            execution.last_fill_ms = max(execution.last_fill_ms, time_ms)
            if fee_asset == base:
                execution.base_fee += fee_cost
            # Our own base balance of the symbol (never the account's other holdings): what
            # an exit may sell, dust from earlier exits included, as the simulated broker does.
            held = self._held.get(order.symbol, 0.0)
            if order.side is Side.BUY:
                held += qty - (fee_cost if fee_asset == base else 0.0)
            else:
                held -= qty
            self._held[order.symbol] = held
            self._reports.append(
                Fill(
                    order.client_id,
                    order.symbol,
                    order.side,
                    qty,
                    price,
                    fee_cost,
                    fee_asset,
                    time_ms,
                    trade.get("takerOrMaker")
                    or ("maker" if order.type is OrderType.LIMIT else "taker"),
                    trade_id,
                    order.reason,
                )
            )

    def _report_end(self, order: Order, info: dict[str, Any]) -> None:
        """The order is closed on the exchange. A complete fill needs no update (the engine
        sees it from the fills); anything else says how it ended and how much it filled."""
        execution = self._executions.get(order.client_id)
        filled = execution.filled_qty if execution is not None else 0.0
        if filled >= order.qty * (1 - _QTY_REL_EPS):
            return
        status = _STATUS.get(info.get("status") or "", OrderStatus.CANCELLED)
        time_ms = int(info.get("lastUpdateTimestamp") or _time_of(info))
        self._reports.append(
            OrderUpdate(
                order.client_id,
                status,
                time_ms,
                filled,
                execution.exchange_id if execution is not None else None,
            )
        )

    def _reject(self, order: Order, why: str) -> None:
        log.warning("order_rejected_by_exchange", client_id=order.client_id, reason=why)
        self._reports.append(
            OrderUpdate(order.client_id, OrderStatus.REJECTED, order.time_ms, 0.0, None, why)
        )

    async def _poll(self, order: Order) -> dict[str, Any] | None:
        """A resting order's state for `sync`; None when unknown this time (the next bar asks
        again): not found, or an answer ccxt could not read."""
        try:
            return await self._fetch(order)
        except UnreadableAnswer:
            return None

    async def _call(self, fn, *args, lookup: Order | None = None):
        """Call ccxt, backing off on rate limits. On a timeout the outcome of an order is
        unknown: look it up by client id before deciding anything (never send it twice). An
        answer ccxt cannot parse (a "NaN" price raises ValueError in its parser) is counted
        and logged; for an order placement it is an unknown outcome too, else it raises
        `UnreadableAnswer`."""
        delay_s = self._backoff_initial_s
        for _attempt in range(self._max_retries):
            try:
                return await fn(*args)
            except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
                self.anomalies += 1
                log.error(
                    "exchange_answer_unreadable",
                    call=getattr(fn, "__name__", str(fn)),
                    error=f"{type(exc).__name__}: {exc}",
                )
                if lookup is not None:
                    return await self._look_up(lookup)
                raise UnreadableAnswer(f"{getattr(fn, '__name__', fn)}: {exc}") from exc
            except ccxt.OrderNotFound:
                if fn == self._ex.fetch_order:
                    return None
                raise
            except (ccxt.RateLimitExceeded, ccxt.DDoSProtection) as exc:
                log.warning("rate_limited", call=fn.__name__, retry_in_s=delay_s, error=str(exc))
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 30.0)
            except (ccxt.RequestTimeout, ccxt.NetworkError) as exc:
                if lookup is None:
                    raise
                log.warning("order_outcome_unknown", client_id=lookup.client_id, error=str(exc))
                return await self._look_up(lookup)
        raise ccxt.RateLimitExceeded(f"still rate limited after {self._max_retries} tries")

    async def _look_up(self, order: Order) -> dict[str, Any] | None:
        """An order whose placement got no answer: find it by our client id (never send it
        again blindly). None: the exchange does not have it, so it was not placed."""
        delay_s = self._backoff_initial_s / 2
        for attempt in range(self._lookup_tries):
            try:
                return await self._ex.fetch_order(
                    None, order.symbol, {"origClientOrderId": order.client_id}
                )
            except ccxt.OrderNotFound:
                return None
            except (ccxt.RequestTimeout, ccxt.NetworkError) as exc:
                if attempt + 1 == self._lookup_tries:
                    raise
                log.warning("order_lookup_failed", client_id=order.client_id, error=str(exc))
                await asyncio.sleep(delay_s)
                delay_s *= 2
        return None

    async def cancel_all(self, time_ms: int) -> list:
        """Cancel every resting order of ours (limit entries, then each symbol's OCO bracket)
        and return every report not yet handed to the engine, the cancellations included: the
        daemon books them (`Engine.apply_reports`) before its run ends, at a stop with
        `live.cancel_on_stop`. A partly filled entry keeps its fills and gets no bracket: the
        operator asked for nothing resting. A bracket that filled meanwhile is synced instead."""
        for client_id, execution in list(self.working_entries.items()):
            order = execution.order
            await self.cancel_by_client_id(order.symbol, client_id)
            info = await self._fetch(order)
            del self.working_entries[client_id]
            if info is not None:
                await self._book_fills(order, info)
            self._report_end(order, info or {"status": "canceled", "timestamp": time_ms})
            self._executions.pop(client_id, None)
        for symbol in list(self.brackets):
            await self._cancel_bracket(symbol, time_ms)
        if self.brackets:  # not found: filled or expired meanwhile, so learn how
            await self.sync()
        reports, self._reports = self._reports, []
        return reports


def entry_reached(entry: Order, bar: Bar) -> bool:
    """Whether `bar` traded at or through the limit entry's price (a buy: at or below)."""
    price = entry.price
    return price is None or bar.low <= price


def bracket_reached(bracket: LiveBracket, bar: Bar) -> bool:
    """Whether `bar` reached the take-profit or the stop of a resting bracket."""
    tp, sl = bracket.take_profit.price, bracket.stop_loss.price
    return tp is None or sl is None or bar.high >= tp or bar.low <= sl


class UnreadableAnswer(ccxt.ExchangeError):
    """The exchange answered something ccxt could not parse (counted in `anomalies`)."""


def _adds_up(info: dict[str, Any], filled: float) -> bool:
    """Whether a streamed order's trades are readable and make its filled quantity (without
    trades, the stream began after the order was placed: booking asks for them)."""
    if not 0 <= filled < math.inf:
        return False
    trades = info.get("trades")
    if trades is None:
        return True
    total = 0.0
    for trade in trades:
        try:
            qty, price = float(trade["amount"]), float(trade["price"])
        except (KeyError, TypeError, ValueError):
            return False
        if not (0 < qty < math.inf and 0 < price < math.inf):
            return False
        total += qty
    return abs(total - filled) <= max(filled, total) * 1e-9


def _time_of(info: dict[str, Any]) -> int:
    return int(info.get("lastTradeTimestamp") or info.get("timestamp") or 0)
