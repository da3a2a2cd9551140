"""The live broker (CcxtBroker) with the real ccxt client against the fake exchange.

The fake is stepped by hand and the broker is driven the way the daemon drives it: after each
step, `sync(bar)` then `on_bar(bar)` (the reports the engine would book), then `flush()`.
Expectations are worked out by hand from Binance's rules (fees from the asset received, OCO
sized by what the account can sell, resting limits filling a share of each bar's volume).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import ccxt
import numpy as np
import pytest

from scalpd.config.settings import MarketRules
from scalpd.events import Bar, Bracket, Fill, Order, OrderStatus, OrderType, OrderUpdate, Side
from scalpd.execution.ccxt_broker import CcxtBroker
from scalpd.fakex import FakeExchange, FakeMarket
from scalpd.fakex.testing import bars_from_prices, ccxt_client, running
from scalpd.live.exchange import market_rules

SYMBOL = "BTC/USDT"
RULES = {SYMBOL: MarketRules(tick_size=0.01, step_size=0.00001, min_qty=0.00001)}
BRACKET = Bracket(take_profit_bps=50.0, stop_loss_bps=50.0)

# (open, high, low, close, volume); bar 0 is history, bar 1 is current at the start.
QUIET = (40_000.0, 40_010.0, 39_990.0, 40_000.0, 100.0)


def make_fx(rows: Sequence[tuple[float, ...]], **kw: Any) -> FakeExchange:
    columns = bars_from_prices([r[:4] for r in rows])
    columns["volume"] = np.array([r[4] for r in rows], dtype=np.float64)
    kw.setdefault("start_index", 1)
    return FakeExchange({SYMBOL: columns}, **kw)


def bar_event(fx: FakeExchange, index: int) -> Bar:
    """Bar `index` as the daemon's source hands it to the engine once it has closed."""
    k = fx._timeline.bar_at("BTCUSDT", index)
    assert k is not None
    return Bar(SYMBOL, k.open_time_ms, k.open, k.high, k.low, k.close, k.volume, 0.0, 0, 0.0)


async def step(fx: FakeExchange, broker: CcxtBroker) -> list:
    """Close the current bar; what the engine would be handed for it."""
    closed = fx.current_index
    await fx.step()
    bar = bar_event(fx, closed)
    await broker.sync(bar)
    reports = list(broker.on_bar(bar))
    await broker.flush()
    return reports


def entry(qty: float, *, price: float | None = None, client_id: str = "e1") -> Order:
    return Order(
        client_id=client_id,
        symbol=SYMBOL,
        side=Side.BUY,
        type=OrderType.MARKET if price is None else OrderType.LIMIT,
        qty=qty,
        time_ms=0,
        reason="entry",
        price=price,
        bracket=BRACKET,
    )


async def submit(fx: FakeExchange, broker: CcxtBroker, order: Order) -> list:
    """Send an order decided at the last close; what the engine is handed with the next bar
    (taken now, so that the next step's reports are that bar's own)."""
    broker.submit(order)
    await broker.flush()
    return list(broker.on_bar(bar_event(fx, fx.current_index)))


def fills(reports: Sequence) -> list[tuple]:
    return [
        (r.client_id, r.qty, r.price, pytest.approx(r.fee), r.fee_asset, r.liquidity)
        for r in reports
        if type(r) is Fill
    ]


def legs(reports: Sequence) -> list[tuple]:
    return [(r.client_id, r.type, r.qty, r.price) for r in reports if type(r) is Order]


def updates(reports: Sequence) -> list[tuple]:
    return [
        (r.client_id, r.status, pytest.approx(r.filled_qty))
        for r in reports
        if type(r) is OrderUpdate
    ]


def oco_quantity(fx: FakeExchange) -> float:
    (stop, take_profit) = [o for o in fx.orders if o["orderListId"] >= 0]
    assert stop["origQty"] == take_profit["origQty"]
    return float(stop["origQty"])


# -- fees in the right asset, and an OCO the account can pay -----------------------------------


def test_buy_fee_in_base_leaves_bought_minus_fee_and_the_oco_sells_what_is_left() -> None:
    async def run() -> None:
        fx = make_fx([QUIET, QUIET, (40_000, 40_300, 39_900, 40_250, 100.0), QUIET])
        async with running(fx), ccxt_client(fx) as ex:
            broker = CcxtBroker(ex, RULES)
            sent = await submit(fx, broker, entry(0.12345))
            # Taker 10 bps of 0.12345 BTC = 0.00012345 BTC; 0.12332655 held, 0.12332 sellable.
            assert fills(sent) == [("e1", 0.12345, 40_000.0, 0.00012345, "BTC", "taker")]
            assert legs(sent) == [
                ("e1tp", OrderType.LIMIT, 0.12332, 40_200.0),
                ("e1sl", OrderType.STOP, 0.12332, 39_800.0),
            ]
            assert oco_quantity(fx) == 0.12332
            assert fx.free_balances["BTC"] == pytest.approx(0.00000655)  # dust
            assert fx.locked_balances["BTC"] == pytest.approx(0.12332)
            assert fx.balances["USDT"] == pytest.approx(10_000 - 4_938.0)
            assert await step(fx, broker) == []  # bar 1: quiet
            reports = await step(fx, broker)  # bar 2: high 40 300 trades through 40 200
            # Maker 10 bps of 0.12332 * 40 200 = 4 957.464 USDT, in USDT.
            assert fills(reports) == [("e1tp", 0.12332, 40_200.0, 4.957464, "USDT", "maker")]
            assert updates(reports) == [("e1sl", OrderStatus.EXPIRED, 0.0)]
            assert broker.brackets == {}
            assert fx.balances["BTC"] == pytest.approx(0.00000655)
            assert fx.balances["USDT"] == pytest.approx(10_000 - 4_938 + 4_957.464 - 4.957464)

    asyncio.run(run())


def test_an_oco_for_more_than_the_free_base_is_rejected_for_insufficient_balance() -> None:
    async def run() -> None:
        fx = make_fx([QUIET, QUIET, QUIET])
        async with running(fx), ccxt_client(fx) as ex:
            await ex.create_order(SYMBOL, "market", "buy", 0.12345)
            request = {
                "symbol": "BTCUSDT",
                "side": "SELL",
                "quantity": "0.12345",  # what was bought, not what is held after the fee
                "aboveType": "LIMIT_MAKER",
                "abovePrice": "40200",
                "belowType": "STOP_LOSS",
                "belowStopPrice": "39800",
            }
            with pytest.raises(ccxt.InsufficientFunds):
                await ex.private_post_orderlist_oco(request)
            assert await ex.private_get_openorderlist() == []
            assert fx.locked_balances["BTC"] == 0.0
            assert fx.free_balances["BTC"] == pytest.approx(0.12332655)
            request["quantity"] = "0.12332"
            placed = await ex.private_post_orderlist_oco(request)
            assert placed["listOrderStatus"] == "EXECUTING"

    asyncio.run(run())


def test_bnb_fees_are_discounted_and_debited_from_bnb() -> None:
    async def run() -> None:
        fx = make_fx(
            [QUIET, QUIET, QUIET],
            balances={"USDT": 10_000.0, "BNB": 1.0},
            bnb_fees=True,
            bnb_price_usdt=500.0,
        )
        async with running(fx), ccxt_client(fx) as ex:
            broker = CcxtBroker(ex, RULES)
            sent = await submit(fx, broker, entry(0.12345))
            # 10 bps of 4 938 USDT = 4.938, 25 % off = 3.7035 USDT, at 500 = 0.007407 BNB.
            assert fills(sent) == [("e1", 0.12345, 40_000.0, 0.007407, "BNB", "taker")]
            assert oco_quantity(fx) == 0.12345  # nothing taken from the BTC bought
            assert fx.balances["BNB"] == pytest.approx(1.0 - 0.007407)
            assert fx.balances["BTC"] == pytest.approx(0.12345)
            assert fx.balances["USDT"] == pytest.approx(10_000 - 4_938.0)

    asyncio.run(run())


def test_bnb_fees_fall_back_to_the_base_asset_when_bnb_is_short() -> None:
    async def run() -> None:
        fx = make_fx(
            [QUIET, QUIET, QUIET],
            balances={"USDT": 10_000.0, "BNB": 0.005},  # 0.007407 BNB would be due
            bnb_fees=True,
            bnb_price_usdt=500.0,
        )
        async with running(fx), ccxt_client(fx) as ex:
            broker = CcxtBroker(ex, RULES)
            sent = await submit(fx, broker, entry(0.12345))
            assert fills(sent) == [("e1", 0.12345, 40_000.0, 0.00012345, "BTC", "taker")]
            assert oco_quantity(fx) == 0.12332
            assert fx.balances["BNB"] == 0.005

    asyncio.run(run())


# -- limit entries -----------------------------------------------------------------------------

LIMIT_BARS = [
    QUIET,
    (40_000, 40_050, 39_850, 39_950, 1.5),  # 1: through 39 900; 10 % of 1.5 = 0.15 fills
    (39_950, 39_990, 39_800, 39_900, 1.0),  # 2: 0.1 more
    (39_900, 39_950, 39_850, 39_920, 5.0),  # 3: the last 0.05
    (39_920, 39_990, 39_880, 39_950, 10.0),  # 4: between the legs
    (39_950, 40_150, 39_900, 40_100, 1.0),  # 5: through the take-profit: 0.1 of it fills
    (40_100, 40_150, 40_000, 40_100, 10.0),  # 6: the rest of it
    QUIET,
]


def test_limit_entry_fills_over_bars_then_arms_the_bracket_on_what_was_filled() -> None:
    async def run() -> None:
        fx = make_fx(LIMIT_BARS, balances={"USDT": 20_000.0})
        async with running(fx), ccxt_client(fx) as ex:
            broker = CcxtBroker(ex, RULES, limit_ttl_bars=5)
            sent = await submit(fx, broker, entry(0.3, price=39_900.0))
            assert updates(sent) == [("e1", OrderStatus.OPEN, 0.0)]
            assert fx.locked_balances["USDT"] == pytest.approx(0.3 * 39_900)
            bar1 = await step(fx, broker)
            # Maker 10 bps, in BTC: 0.00015, then 0.0001, then 0.00005.
            assert fills(bar1) == [("e1", 0.15, 39_900.0, 0.00015, "BTC", "maker")]
            assert updates(bar1) == [("e1", OrderStatus.PARTIALLY_FILLED, 0.15)]
            bar2 = await step(fx, broker)
            assert fills(bar2) == [("e1", 0.1, 39_900.0, 0.0001, "BTC", "maker")]
            assert updates(bar2) == [("e1", OrderStatus.PARTIALLY_FILLED, 0.25)]
            assert legs(bar1 + bar2) == []
            bar3 = await step(fx, broker)
            assert fills(bar3) == [("e1", pytest.approx(0.05), 39_900.0, 0.00005, "BTC", "maker")]
            # Complete: the engine sees it from the fills. The legs rest once the OCO is placed.
            assert updates(bar3) == [
                ("e1tp", OrderStatus.OPEN, 0.0),
                ("e1sl", OrderStatus.OPEN, 0.0),
            ]
            # 0.3 bought less 0.0003 of fees = 0.2997 sellable; legs at 39 900 +- 50 bps.
            assert legs(bar3) == [
                ("e1tp", OrderType.LIMIT, 0.2997, 40_099.5),
                ("e1sl", OrderType.STOP, 0.2997, 39_700.5),
            ]
            assert oco_quantity(fx) == 0.2997 and broker.working_entries == {}
            assert fx.balances["USDT"] == pytest.approx(20_000 - 0.3 * 39_900)
            assert fx.locked_balances["USDT"] == pytest.approx(0.0)
            assert await step(fx, broker) == []  # bar 4
            bar5 = await step(fx, broker)
            # Part of the take-profit fills: Binance expires the stop at once.
            assert fills(bar5) == [("e1tp", 0.1, 40_099.5, 4.00995, "USDT", "maker")]
            assert updates(bar5) == [("e1sl", OrderStatus.EXPIRED, 0.0)]
            bar6 = await step(fx, broker)
            assert fills(bar6) == [("e1tp", 0.1997, 40_099.5, 8.00787015, "USDT", "maker")]
            assert broker.brackets == {}
            assert fx.balances["BTC"] == pytest.approx(0.0)

    asyncio.run(run())


def test_limit_entry_cancelled_at_its_ttl_arms_the_bracket_on_its_partial_fill() -> None:
    async def run() -> None:
        rows = [
            *LIMIT_BARS[:2],
            (39_950, 39_990, 39_900, 39_950, 10.0),  # 2: only touches 39 900: no fill
            (39_920, 39_990, 39_880, 39_950, 10.0),  # 3: would fill, but it is gone
            QUIET,
        ]
        fx = make_fx(rows, balances={"USDT": 20_000.0})
        async with running(fx), ccxt_client(fx) as ex:
            broker = CcxtBroker(ex, RULES, limit_ttl_bars=2)
            await submit(fx, broker, entry(0.3, price=39_900.0))
            bar1 = await step(fx, broker)
            assert updates(bar1) == [("e1", OrderStatus.PARTIALLY_FILLED, 0.15)]
            bar2 = await step(fx, broker)  # its second bar: cancelled after it
            assert fills(bar2) == []
            assert updates(bar2) == [
                ("e1", OrderStatus.CANCELLED, 0.15),
                ("e1tp", OrderStatus.OPEN, 0.0),
                ("e1sl", OrderStatus.OPEN, 0.0),
            ]
            # 0.15 less 0.00015 of fee = 0.14985 sellable.
            assert legs(bar2) == [
                ("e1tp", OrderType.LIMIT, 0.14985, 40_099.5),
                ("e1sl", OrderType.STOP, 0.14985, 39_700.5),
            ]
            assert fx.orders[0]["status"] == "CANCELED"
            assert fx.orders[0]["executedQty"] == "0.15000000"
            assert broker.working_entries == {}
            assert fx.balances["USDT"] == pytest.approx(20_000 - 0.15 * 39_900)
            assert fx.locked_balances["USDT"] == pytest.approx(0.0)
            assert fx.locked_balances["BTC"] == pytest.approx(0.14985)
            assert fills(await step(fx, broker)) == []  # bar 3

    asyncio.run(run())


def test_limit_entry_unfilled_at_its_ttl_is_cancelled_without_a_bracket() -> None:
    async def run() -> None:
        fx = make_fx([QUIET] * 5)
        async with running(fx), ccxt_client(fx) as ex:
            broker = CcxtBroker(ex, RULES, limit_ttl_bars=2)
            await submit(fx, broker, entry(0.1, price=39_000.0))
            assert updates(await step(fx, broker)) == []
            bar2 = await step(fx, broker)
            assert updates(bar2) == [("e1", OrderStatus.CANCELLED, 0.0)]
            assert legs(bar2) == [] and broker.brackets == {}
            assert fx.balances == pytest.approx({"USDT": 10_000.0, "BTC": 0.0})

    asyncio.run(run())


def test_time_stop_sells_whole_lot_steps() -> None:
    async def run() -> None:
        fx = make_fx([QUIET, QUIET, QUIET])
        async with running(fx), ccxt_client(fx) as ex:
            broker = CcxtBroker(ex, RULES)
            await submit(fx, broker, entry(0.12345))
            broker.cancel_bracket(SYMBOL, 0)
            exit_ = Order("x1", SYMBOL, Side.SELL, OrderType.MARKET, 0.12332, 0, "time_stop")
            sent = await submit(fx, broker, exit_)
            assert fills(sent)[-1] == ("x1", 0.12332, 40_000.0, 4.9328, "USDT", "taker")
            assert updates(sent) == [
                ("e1tp", OrderStatus.CANCELLED, 0.0),
                ("e1sl", OrderStatus.CANCELLED, 0.0),
            ]
            assert fx.balances["BTC"] == pytest.approx(0.00000655)

    asyncio.run(run())


# -- market rules --------------------------------------------------------------------------------


def test_market_rules_come_from_the_exchange_filters() -> None:
    async def run() -> None:
        market = FakeMarket(SYMBOL, step_size=0.0001, min_qty=0.0001, max_qty=250.0)
        fx = make_fx([QUIET, QUIET], markets={SYMBOL: market})
        async with running(fx), ccxt_client(fx) as ex:
            rules = market_rules(ex, SYMBOL)
            assert (rules.tick_size, rules.step_size, rules.min_qty) == (0.01, 0.0001, 0.0001)
            assert rules.min_notional_usdt == 5.0
            if "max_qty" in MarketRules.model_fields:  # with the simulator's max-qty check
                assert rules.max_qty == 250.0
            with pytest.raises(ccxt.InvalidOrder, match="LOT_SIZE"):
                await ex.create_order(SYMBOL, "market", "buy", 250.0001)

    asyncio.run(run())
