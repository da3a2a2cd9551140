"""Taking over an account at start: the book from SQLite, then the exchange's word on it.

A live daemon may have died anywhere (`kill -9`, power, OOM). What it wrote before acting is in
SQLite (every order before it was sent, every fill it booked); what the exchange did meanwhile
is on the exchange. At start, before the first bar:

1. The book is rebuilt from every fill the account's runs booked (`rebuild_book`: the same
   `Portfolio.apply_fill` as always, so positions, dust and half-sold positions come back
   exactly); cash is what the exchange says the account holds.
2. Each order recorded and not seen to end is looked up on the exchange by its client id
   (`CcxtBroker.take_over`): fills it missed are booked (never twice: the trade ids booked are
   known), ended orders are closed, an entry that filled gets its bracket (or, if the crash came
   after the bracket was sent, the resting pair is adopted), and an order the exchange never
   got (recorded, then the crash before sending) is closed as rejected.
3. Open orders on the exchange that no record knows are strays: cancelled or kept
   (`live.stray_orders`), and alerted either way.
4. Trades since the last record whose order is not ours ("a fill for an order we never sent")
   and base balances below what the book holds are surprises: logged, counted, alerted, never
   booked.

Everything found is booked through the engine, so it is journaled under the new run like any
other report. Paper trading keeps its simulated account in memory and starts afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from scalpd.config.settings import LiveSettings, MarketRules
from scalpd.engine.engine import Engine
from scalpd.engine.portfolio import Portfolio
from scalpd.events import Bracket, Fill, Order, OrderStatus, OrderType, OrderUpdate, Side
from scalpd.execution.ccxt_broker import CcxtBroker
from scalpd.execution.fees import QUOTE_ASSET, base_asset
from scalpd.store.sqlite import Store

log = structlog.get_logger("scalpd.live.recovery")


@dataclass(slots=True)
class Recovery:
    """What the start found; `surprises` are alerted (RECONCILIATION)."""

    orders_taken_over: int = 0
    orders_never_sent: int = 0
    fills_recovered: int = 0
    brackets_armed: int = 0
    strays_cancelled: int = 0
    strays_kept: int = 0
    foreign_trades: int = 0
    surprises: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if k != "surprises"} | {
            "surprises": len(self.surprises)
        }


def fill_from_row(row: dict[str, Any]) -> Fill:
    return Fill(
        row["client_id"],
        row["symbol"],
        Side(row["side"]),
        row["qty"],
        row["price"],
        row["fee"],
        row["fee_asset"],
        row["time_ms"],
        row["liquidity"],
        row["trade_id"],
        row["reason"],
    )


def order_from_row(row: dict[str, Any]) -> Order:
    bracket = None
    if row.get("take_profit_bps") is not None and row.get("stop_loss_bps") is not None:
        bracket = Bracket(row["take_profit_bps"], row["stop_loss_bps"])
    return Order(
        client_id=row["client_id"],
        symbol=row["symbol"],
        side=Side(row["side"]),
        type=OrderType(row["type"]),
        qty=row["qty"],
        time_ms=row["created_ms"],
        reason=row["reason"],
        price=row["price"],
        bracket=bracket,
        parent_id=row["parent_id"],
        reduce_only=bool(row["reduce_only"]),
    )


def rebuild_book(fills: Sequence[Fill], book: Portfolio) -> Portfolio:
    """Apply the account's fills, in the order they were booked, to an empty book."""
    for fill in fills:
        book.apply_fill(fill)
    return book


def held_base(book: Portfolio, symbol: str) -> float:
    """What our own trading holds of the symbol's base asset: the position and the dust."""
    return book.position_qty(symbol) + book.dust.get(symbol, 0.0)


async def recover(
    *,
    store: Store,
    account: str,
    engine: Engine,
    broker: CcxtBroker,
    exchange: Any,
    symbols: Sequence[str],
    rules: dict[str, MarketRules],
    settings: LiveSettings,
    now_ms: Callable[[], int],
) -> Recovery:
    """Steps 2 to 4 of the module doc; the engine was built on the rebuilt book (step 1)."""
    found = Recovery()
    book = engine.portfolio
    for symbol in symbols:
        broker.set_held(symbol, held_base(book, symbol))
    rows = store.account_open_orders(account)
    orders = [(order_from_row(r), float(r["filled_qty"]), r["status"]) for r in rows]
    engine.restore_orders([(o, filled, OrderStatus(status)) for o, filled, status in orders])
    legs: dict[str, list[tuple[Order, str]]] = {}
    for order, filled, status in orders:
        outcome = await broker.take_over(order, filled, store.fill_ids(order.client_id))
        found.orders_taken_over += 1
        if order.parent_id is not None:
            legs.setdefault(order.parent_id, []).append((order, outcome))
        if outcome == "gone":
            never_sent = status == OrderStatus.NEW.value
            found.orders_never_sent += never_sent
            why = (
                "never reached the exchange (recorded, then the daemon stopped before sending)"
                if never_sent
                else "no longer on the exchange"
            )
            if not never_sent:
                found.surprises.append(f"order {order.client_id} ({order.symbol}) {why}")
            end = OrderStatus.REJECTED if never_sent else OrderStatus.CANCELLED
            engine.apply_reports([OrderUpdate(order.client_id, end, now_ms(), filled, None, why)])
        log.info("order_taken_over", client_id=order.client_id, status=status, outcome=outcome)
    for pair in legs.values():
        if len(pair) != 2:
            continue
        kinds = {leg.type: leg for leg, _ in pair}
        take_profit, stop_loss = kinds.get(OrderType.LIMIT), kinds.get(OrderType.STOP)
        if take_profit is None or stop_loss is None:
            continue
        done = {leg.client_id for leg, outcome in pair if outcome != "resting"}
        if len(done) < 2:
            broker.adopt_bracket(take_profit, stop_loss, done)
    reports = broker.take_reports()
    found.fills_recovered = sum(type(r) is Fill for r in reports)
    found.brackets_armed = sum(type(r) is Order for r in reports) // 2
    engine.apply_reports(reports)
    await _strays(found, broker, engine, symbols, settings)
    await _foreign_trades(found, store, account, exchange, engine, symbols)
    await _balances(found, exchange, engine, symbols, rules)
    for text in found.surprises:
        log.warning("reconciliation_surprise", detail=text)
    log.info("recovered", account=account, **found.summary())
    return found


async def _strays(
    found: Recovery,
    broker: CcxtBroker,
    engine: Engine,
    symbols: Sequence[str],
    settings: LiveSettings,
) -> None:
    ours = set(engine.open_orders)
    for info in await broker.open_orders(symbols):
        client_id = str(info.get("clientOrderId") or "")
        if client_id in ours:
            continue
        symbol = str(info.get("symbol"))
        what = (
            f"open order {client_id or info.get('id')} on {symbol} ({info.get('side')} "
            f"{info.get('amount')} @ {info.get('price')}) is not in this database"
        )
        if settings.stray_orders == "cancel":
            await broker.cancel_by_client_id(symbol, client_id)
            found.strays_cancelled += 1
            found.surprises.append(what + ": cancelled")
        else:
            found.strays_kept += 1
            found.surprises.append(what + ": kept (live.stray_orders = 'keep')")


async def _foreign_trades(
    found: Recovery,
    store: Store,
    account: str,
    exchange: Any,
    engine: Engine,
    symbols: Sequence[str],
) -> None:
    """Trades since our last record that are not among our fills (those of our own orders
    were all booked by now, step 2): counted, never booked."""
    since_ms = store.account_last_record_ms(account)
    if since_ms is None:
        return  # a fresh account: what happened before us is not ours to judge
    for symbol in symbols:
        trades = await exchange.fetch_my_trades(symbol, since_ms)
        for trade in trades:
            if store.has_trade(symbol, str(trade.get("id"))):
                continue
            order_id = trade.get("order")
            found.foreign_trades += 1
            engine.anomalies += 1
            found.surprises.append(
                f"trade {trade.get('id')} on {symbol} ({trade.get('side')} {trade.get('amount')}"
                f" @ {trade.get('price')}) belongs to order {order_id}, which we never sent"
            )


async def _balances(
    found: Recovery,
    exchange: Any,
    engine: Engine,
    symbols: Sequence[str],
    rules: dict[str, MarketRules],
) -> None:
    """Cash is the exchange's; a base balance below what the book holds is a surprise (sold
    outside the daemon?): alerted, and left for the operator (exits may then be refused)."""
    balance = await exchange.fetch_balance()
    book = engine.portfolio
    book.cash = float(balance.get(QUOTE_ASSET, {}).get("total") or 0.0)
    for symbol in symbols:
        ours = held_base(book, symbol)
        total = float(balance.get(base_asset(symbol), {}).get("total") or 0.0)
        if total < ours - rules[symbol].step_size:
            found.surprises.append(
                f"{symbol}: the exchange holds {total} {base_asset(symbol)}, our book {ours}"
            )
