"""The account's user-data stream of the fake exchange: Binance `executionReport` events.

Binance pushes one executionReport per change of one of the account's orders: NEW when it is
placed (OCO legs included), TRADE for each fill (with that trade's price, quantity, fee and
id, and the order's cumulative quantity), CANCELED, EXPIRED or REJECTED when it ends without
filling completely. The fake derives them by comparing each order with what was last announced
(`Announcer.changes`), after every request that may change the account and before the closed
bar's kline is pushed, so a client learns a bar's fills before the bar itself (Binance sends
fills as they happen, during the minute).

Served over the WebSocket API as Binance does since 2025 (what ccxt 4.5.90 uses for spot):
`userDataStream.subscribe.signature` with the request signed like a REST one; events then
come as {"subscriptionId": n, "event": {...}}.
"""

from __future__ import annotations

from typing import Any

from scalpd.fakex.matching import Fill, Order
from scalpd.fakex.wire import fmt

Json = dict[str, Any]

_END_EXECUTION = {"CANCELED": "CANCELED", "EXPIRED": "EXPIRED", "REJECTED": "REJECTED"}


class Announcer:
    """What each of the account's orders was last announced as; yields what changed since."""

    def __init__(self) -> None:
        self._seen = 0  # orders (in placement order) looked at at least once
        self._announced: dict[int, tuple[str, int]] = {}  # open orders: (status, fills told)

    def changes(self, orders: list[Order]) -> list[Json]:
        """executionReports for every change since the last call, in order."""
        reports: list[Json] = []
        new = orders[self._seen :]
        self._seen = len(orders)
        for order in new:
            reports.append(execution_report(order, "NEW", "NEW", 0, None))
            self._announced[order.order_id] = ("NEW", 0)
        by_id = {o.order_id: o for o in new}
        for order_id in list(self._announced):
            order = by_id.get(order_id) or _find(orders, order_id)
            reports += self._order_changes(order)
        return reports

    def _order_changes(self, order: Order) -> list[Json]:
        status, told = self._announced[order.order_id]
        out: list[Json] = []
        n_fills = len(order.fills)
        for k in range(told, n_fills):
            last = k == n_fills - 1
            # The order's status after this trade: its own once every fill is told.
            after = (
                order.status
                if last and order.status in ("FILLED", "PARTIALLY_FILLED")
                else ("PARTIALLY_FILLED")
            )
            out.append(execution_report(order, "TRADE", after, k + 1, order.fills[k]))
            status = after
        if order.status in _END_EXECUTION and status != order.status:
            out.append(
                execution_report(order, _END_EXECUTION[order.status], order.status, n_fills, None)
            )
            status = order.status
        if order.is_open:
            self._announced[order.order_id] = (status, n_fills)
        else:
            del self._announced[order.order_id]
        return out


def _find(orders: list[Order], order_id: int) -> Order:
    # Order ids count from 1 in placement order: the list index is the id less one.
    order = orders[order_id - 1]
    assert order.order_id == order_id
    return order


def execution_report(
    order: Order, execution: str, status: str, fills_told: int, fill: Fill | None
) -> Json:
    """Binance's spot `executionReport` for `order` after its first `fills_told` fills;
    `fill`: the trade this report announces (execution "TRADE")."""
    done = order.fills[:fills_told]
    cum_qty = sum(f.qty for f in done)
    cum_quote = sum(f.quote_qty for f in done)
    time_ms = fill.time_ms if fill is not None else order.update_time_ms
    if execution == "NEW":
        time_ms = order.time_ms
    return {
        "e": "executionReport",
        "E": time_ms,
        "s": order.market_id,
        "c": order.client_order_id,
        "S": order.side,
        "o": order.type,
        "f": order.time_in_force,
        "q": fmt(order.qty),
        "p": fmt(order.price),
        "P": fmt(order.stop_price),
        "F": fmt(0),
        "g": order.order_list_id,
        "C": "",
        "x": execution,
        "X": status,
        "r": "NONE",
        "i": order.order_id,
        "l": fmt(fill.qty if fill is not None else 0),
        "z": fmt(cum_qty),
        "L": fmt(fill.price if fill is not None else 0),
        "n": fmt(fill.commission if fill is not None else 0),
        "N": fill.commission_asset if fill is not None else None,
        "T": time_ms,
        "t": fill.trade_id if fill is not None else -1,
        "I": 0,
        "w": order.is_working,
        "m": fill.is_maker if fill is not None else False,
        "M": False,
        "O": order.time_ms,
        "Z": fmt(cum_quote),
        "Y": fmt(fill.quote_qty if fill is not None else 0),
        "Q": fmt(order.orig_quote_order_qty),
        "W": order.time_ms,
        "V": "NONE",
    }
