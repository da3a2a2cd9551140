"""The live broker: orders to Binance spot through ccxt, with our own client order ids.

The engine's calls (`submit`, `cancel_bracket`) only queue work; the daemon awaits `flush()`
after each bar to send it, and `sync()` before each bar to learn what the resting exits did.
Reports are handed to the engine by `on_bar`, like the simulator's, so the engine books them at
the same point of the event stream in every mode.

Exits are kept on the exchange: after an entry fills, its take-profit and stop-loss go out as
one OCO order list (a LIMIT_MAKER above, a STOP_LOSS below), so they survive a crash of the
daemon and only one of them can fill.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ccxt
import structlog

from scalpd.config.settings import MarketRules
from scalpd.events import Bar, Fill, Order, OrderStatus, OrderType, OrderUpdate
from scalpd.execution.brackets import bracket_legs

log = structlog.get_logger("scalpd.execution.ccxt")

_STATUS = {
    "open": OrderStatus.OPEN,
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELLED,
    "cancelled": OrderStatus.CANCELLED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}


@dataclass(slots=True)
class LiveBracket:
    list_client_id: str
    take_profit: Order
    stop_loss: Order


class CcxtBroker:
    def __init__(
        self,
        exchange: ccxt.Exchange,
        rules: dict[str, MarketRules],
        *,
        max_rate_limit_retries: int = 5,
    ) -> None:
        self._ex = exchange
        self._rules = rules
        self._max_retries = max_rate_limit_retries
        self._outbox: list[tuple[str, Any]] = []
        self._reports: list = []
        self.brackets: dict[str, LiveBracket] = {}

    # -- Broker port (synchronous, called by the engine) ---------------------------------------

    def submit(self, order: Order) -> None:
        self._outbox.append(("submit", order))

    def cancel_bracket(self, symbol: str, time_ms: int) -> None:
        self._outbox.append(("cancel_bracket", (symbol, time_ms)))

    def on_bar(self, bar: Bar) -> Sequence:
        if not self._reports:
            return ()
        mine = [r for r in self._reports if _symbol_of(r) in (bar.symbol, None)]
        self._reports = [r for r in self._reports if r not in mine]
        return mine

    # -- network side (awaited by the daemon) --------------------------------------------------

    async def flush(self) -> None:
        """Send what the engine queued, in order."""
        while self._outbox:
            kind, payload = self._outbox.pop(0)
            if kind == "submit":
                await self._send(payload)
            else:
                await self._cancel_bracket(*payload)

    async def sync(self) -> None:
        """Learn whether a resting exit filled (polled; a user-data stream can replace it)."""
        for symbol, bracket in list(self.brackets.items()):
            for leg in (bracket.stop_loss, bracket.take_profit):
                info = await self._call(
                    self._ex.fetch_order, None, symbol, {"origClientOrderId": leg.client_id}
                )
                if info is None or info.get("status") != "closed":
                    continue
                await self._book_fills(leg, info)
                other = bracket.take_profit if leg is bracket.stop_loss else bracket.stop_loss
                self._reports.append(
                    OrderUpdate(other.client_id, OrderStatus.EXPIRED, _time_of(info))
                )
                del self.brackets[symbol]
                break

    # -- internals -----------------------------------------------------------------------------

    async def _send(self, order: Order) -> None:
        params = {"newClientOrderId": order.client_id}
        try:
            info = await self._call(
                self._ex.create_order,
                order.symbol,
                "market",
                order.side.value,
                order.qty,
                None,
                params,
                lookup=order,
            )
        except (ccxt.InsufficientFunds, ccxt.InvalidOrder, ccxt.BadRequest) as exc:
            self._reject(order, f"{type(exc).__name__}: {exc}")
            return
        if info is None:
            self._reject(order, "not accepted: no answer and not found by client id")
            return
        status = _STATUS.get(info.get("status") or "", OrderStatus.OPEN)
        if status is OrderStatus.FILLED:
            await self._book_fills(order, info)
            if order.bracket is not None:
                await self._arm_bracket(order, float(info["average"]), _time_of(info))
        elif status in (OrderStatus.REJECTED, OrderStatus.EXPIRED, OrderStatus.CANCELLED):
            self._reject(order, f"exchange answered {info.get('status')}")
        else:
            self._reports.append(OrderUpdate(order.client_id, status, _time_of(info)))

    async def _arm_bracket(self, entry: Order, fill_price: float, fill_ms: int) -> None:
        take_profit, stop_loss = bracket_legs(
            entry, fill_price, fill_ms, self._rules[entry.symbol], entry.qty
        )
        market = self._ex.market(entry.symbol)
        list_id = entry.client_id + "oco"
        request = {
            "symbol": market["id"],
            "side": "SELL",
            "quantity": self._ex.amount_to_precision(entry.symbol, entry.qty),
            "aboveType": "LIMIT_MAKER",
            "abovePrice": self._ex.price_to_precision(entry.symbol, take_profit.price),
            "aboveClientOrderId": take_profit.client_id,
            "belowType": "STOP_LOSS",
            "belowStopPrice": self._ex.price_to_precision(entry.symbol, stop_loss.price),
            "belowClientOrderId": stop_loss.client_id,
            "listClientOrderId": list_id,
        }
        # The legs are reported (and journaled by the engine) before they are sent.
        self._reports += [take_profit, stop_loss]
        try:
            await self._call(self._ex.private_post_orderlist_oco, request)
        except (ccxt.InsufficientFunds, ccxt.InvalidOrder, ccxt.BadRequest) as exc:
            for leg in (take_profit, stop_loss):
                self._reject(leg, f"{type(exc).__name__}: {exc}")
            log.error("bracket_rejected", entry_id=entry.client_id, error=str(exc))
            return
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
            self._reports.append(OrderUpdate(leg.client_id, OrderStatus.CANCELLED, time_ms))

    async def _book_fills(self, order: Order, info: dict[str, Any]) -> None:
        trades = info.get("trades") or []
        if not trades and info.get("id") is not None:
            trades = await self._call(
                self._ex.fetch_my_trades, order.symbol, None, None, {"orderId": info["id"]}
            )
        if not trades:  # no per-trade detail: one fill at the average price
            trades = [
                {
                    "id": f"{info.get('id')}-avg",
                    "price": info["average"],
                    "amount": info["filled"],
                    "timestamp": _time_of(info),
                    "fee": info.get("fee"),
                    "takerOrMaker": None,
                }
            ]
        for trade in trades:
            fee = trade.get("fee") or {}
            self._reports.append(
                Fill(
                    order.client_id,
                    order.symbol,
                    order.side,
                    float(trade["amount"]),
                    float(trade["price"]),
                    float(fee.get("cost") or 0.0),
                    str(fee.get("currency") or "USDT"),
                    int(trade.get("timestamp") or _time_of(info)),
                    trade.get("takerOrMaker")
                    or ("maker" if order.type is OrderType.LIMIT else "taker"),
                    str(trade.get("id")),
                    order.reason,
                )
            )

    def _reject(self, order: Order, why: str) -> None:
        log.warning("order_rejected_by_exchange", client_id=order.client_id, reason=why)
        self._reports.append(
            OrderUpdate(order.client_id, OrderStatus.REJECTED, order.time_ms, 0.0, None, why)
        )

    async def _call(self, fn, *args, lookup: Order | None = None):
        """Call ccxt, backing off on rate limits. On a timeout the outcome of an order is
        unknown: look it up by client id before deciding anything (never send it twice)."""
        delay_s = 1.0
        for _attempt in range(self._max_retries):
            try:
                return await fn(*args)
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
                try:
                    return await self._ex.fetch_order(
                        None, lookup.symbol, {"origClientOrderId": lookup.client_id}
                    )
                except ccxt.OrderNotFound:
                    return None
        raise ccxt.RateLimitExceeded(f"still rate limited after {self._max_retries} tries")


def _time_of(info: dict[str, Any]) -> int:
    return int(info.get("lastTradeTimestamp") or info.get("timestamp") or 0)


def _symbol_of(report: Any) -> str | None:
    return getattr(report, "symbol", None)
