"""The simulated broker's fill model, with hand-computed prices and fees.

Taker 10 bps and maker 2 bps, so a fill booked at the wrong rate shows. An entry at 50,000.00
with a 40 / 25 bps bracket arms its take-profit at 50,200.00 and its stop at 49,875.00.
"""

from __future__ import annotations

import pytest

from scalpd.config.settings import FeesSettings, MarketRules
from scalpd.events import (
    Bar,
    Bracket,
    Fill,
    Order,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
)
from scalpd.execution.brackets import bracket_legs
from scalpd.execution.sim import SimBroker

SYM = "BTC/USDT"
M = 60_000
T = 1_709_251_200_000
RULES = MarketRules(tick_size=0.01, step_size=0.00001, min_qty=0.00001, min_notional_usdt=5.0)
FEES = FeesSettings(taker_bps=10.0, maker_bps=2.0)
TP, SL = 50_200.0, 49_875.0


def bar(i: int, o: float, h: float, lo: float, c: float, symbol: str = SYM) -> Bar:
    return Bar(symbol, T + i * M, o, h, lo, c, 1.0, 0.0, 1, 0.5)


def broker(cash: float = 10_000.0) -> SimBroker:
    return SimBroker(cash=cash, fees=FEES, rules={SYM: RULES})


def entry(qty: float = 0.1, cid: str = "sd1-1", bracket: bool = True) -> Order:
    return Order(
        cid,
        SYM,
        Side.BUY,
        OrderType.MARKET,
        qty,
        T,
        "ema_cross_up",
        bracket=Bracket(40.0, 25.0) if bracket else None,
    )


def sell(qty: float = 0.1, cid: str = "sd1-2", reason: str = "time_stop") -> Order:
    return Order(cid, SYM, Side.SELL, OrderType.MARKET, qty, T, reason, reduce_only=True)


def entered(b: SimBroker) -> list:
    """Submit the 0.1 BTC entry and fill it at 50,000.00 in a bar that touches neither leg."""
    b.submit(entry())
    return list(b.on_bar(bar(1, 50_000.0, 50_100.0, 49_950.0, 50_050.0)))


def test_market_buy_fills_at_next_open_with_taker_fee() -> None:
    b = broker()
    b.submit(entry(bracket=False))
    reports = b.on_bar(bar(1, 50_000.0, 50_500.0, 49_000.0, 50_400.0))
    assert reports == [
        Fill(
            "sd1-1",
            SYM,
            Side.BUY,
            0.1,
            50_000.0,
            5.0,
            "USDT",
            T + M,
            "taker",
            "sim-1",
            "ema_cross_up",
        )
    ]
    assert b.cash == pytest.approx(10_000.0 - 5_000.0 - 5.0, rel=1e-12)
    assert b.base[SYM] == pytest.approx(0.1)
    # Nothing left to do for the symbol.
    assert b.on_bar(bar(2, 50_400.0, 50_400.0, 50_400.0, 50_400.0)) == ()


def test_entry_arms_bracket_at_fill_price_rounded_to_tick() -> None:
    reports = entered(broker())
    fill, tp, sl = reports
    assert isinstance(fill, Fill) and fill.price == 50_000.0 and fill.fee == pytest.approx(5.0)
    assert tp == Order(
        "sd1-1tp",
        SYM,
        Side.SELL,
        OrderType.LIMIT,
        0.1,
        T + M,
        "take_profit",
        price=TP,
        parent_id="sd1-1",
        reduce_only=True,
    )
    assert sl == Order(
        "sd1-1sl",
        SYM,
        Side.SELL,
        OrderType.STOP,
        0.1,
        T + M,
        "stop_loss",
        price=SL,
        parent_id="sd1-1",
        reduce_only=True,
    )


def test_bracket_legs_round_to_the_tick() -> None:
    # 61,234.57 * 1.004 = 61,479.508... -> 61,479.51; * 0.9975 = 61,081.48... -> 61,081.48
    tp, sl = bracket_legs(entry(), 61_234.57, T, RULES, entry().qty)
    assert (tp.price, sl.price) == (61_479.51, 61_081.48)


def test_take_profit_fills_at_target_as_maker() -> None:
    b = broker()
    entered(b)
    reports = b.on_bar(bar(2, 50_050.0, 50_250.0, 49_990.0, 50_210.0))
    assert reports == [
        Fill(
            "sd1-1tp",
            SYM,
            Side.SELL,
            0.1,
            TP,
            0.1 * TP * 2 / 1e4,
            "USDT",
            T + 3 * M,
            "maker",
            "sim-2",
            "take_profit",
        ),
        OrderUpdate("sd1-1sl", OrderStatus.EXPIRED, T + 3 * M),
    ]
    assert b.base[SYM] == pytest.approx(0.0)
    assert b.cash == pytest.approx(10_000.0 - 5_005.0 + 5_020.0 - 1.004, rel=1e-12)
    assert b.on_bar(bar(3, 49_000.0, 49_000.0, 40_000.0, 49_000.0)) == ()  # disarmed


def test_take_profit_gapped_through_fills_at_the_open() -> None:
    b = broker()
    entered(b)
    reports = b.on_bar(bar(2, 50_400.0, 50_600.0, 50_300.0, 50_500.0))
    fill = reports[0]
    assert (fill.client_id, fill.price, fill.liquidity) == ("sd1-1tp", 50_400.0, "maker")
    assert fill.fee == pytest.approx(0.1 * 50_400.0 * 2 / 1e4)


def test_stop_fills_at_the_stop_when_low_touches_it() -> None:
    b = broker()
    entered(b)
    # Low exactly at the stop: touched.
    reports = b.on_bar(bar(2, 50_000.0, 50_010.0, SL, 49_900.0))
    fill = reports[0]
    assert (fill.client_id, fill.price, fill.liquidity, fill.reason) == (
        "sd1-1sl",
        SL,
        "taker",
        "stop_loss",
    )
    assert fill.fee == pytest.approx(0.1 * SL * 10 / 1e4)
    assert reports[1] == OrderUpdate("sd1-1tp", OrderStatus.EXPIRED, T + 3 * M)


def test_neither_leg_touched_by_a_hair() -> None:
    b = broker()
    entered(b)
    assert b.on_bar(bar(2, 50_000.0, TP - 0.01, SL + 0.01, 50_000.0)) == []


def test_stop_gapped_through_fills_at_the_open() -> None:
    b = broker()
    entered(b)
    reports = b.on_bar(bar(2, 49_500.0, 49_600.0, 49_400.0, 49_550.0))
    assert reports[0].price == 49_500.0
    assert reports[0].fee == pytest.approx(0.1 * 49_500.0 * 10 / 1e4)


def test_stop_wins_when_one_bar_touches_both() -> None:
    b = broker()
    entered(b)
    reports = b.on_bar(bar(2, 50_000.0, 50_300.0, 49_800.0, 50_250.0))
    assert [type(r) for r in reports] == [Fill, OrderUpdate]
    assert (reports[0].client_id, reports[0].price) == ("sd1-1sl", SL)
    assert reports[1].client_id == "sd1-1tp" and reports[1].status is OrderStatus.EXPIRED


def test_bracket_is_checked_in_the_fill_bar_itself() -> None:
    b = broker()
    b.submit(entry())
    reports = b.on_bar(bar(1, 50_000.0, 50_300.0, 49_700.0, 49_900.0))
    assert [getattr(r, "client_id", None) for r in reports] == [
        "sd1-1",
        "sd1-1tp",
        "sd1-1sl",
        "sd1-1sl",
        "sd1-1tp",
    ]
    exit_fill = reports[3]
    assert isinstance(exit_fill, Fill) and exit_fill.price == SL  # min(stop, open) = the stop
    assert exit_fill.time_ms == T + 2 * M  # known at the bar's close


def test_reduce_only_exit_cancels_the_bracket_first() -> None:
    b = broker()
    entered(b)
    b.cancel_bracket(SYM, T + 2 * M)
    b.submit(sell())
    # The next bar would have hit the stop, but the bracket is gone: the exit fills at the open.
    reports = b.on_bar(bar(2, 49_900.0, 49_950.0, 49_000.0, 49_100.0))
    assert reports[:2] == [
        OrderUpdate("sd1-1tp", OrderStatus.CANCELLED, T + 2 * M),
        OrderUpdate("sd1-1sl", OrderStatus.CANCELLED, T + 2 * M),
    ]
    assert len(reports) == 3
    fill = reports[2]
    assert (fill.client_id, fill.side, fill.price, fill.liquidity, fill.reason) == (
        "sd1-2",
        Side.SELL,
        49_900.0,
        "taker",
        "time_stop",
    )
    assert b.base[SYM] == pytest.approx(0.0)
    assert b.on_bar(bar(3, 40_000.0, 40_000.0, 40_000.0, 40_000.0)) == ()


def test_cancel_without_bracket_is_a_no_op() -> None:
    b = broker()
    b.cancel_bracket(SYM, T)
    assert b.on_bar(bar(1, 1.0, 1.0, 1.0, 1.0)) == ()


@pytest.mark.parametrize(
    ("qty", "open_", "cash", "fragment"),
    [
        (0.00009, 50_000.0, 10_000.0, "min_notional"),  # 4.50 USDT
        (0.000005, 2_000_000.0, 100_000.0, "min_qty"),
        (0.000015, 50_000.0, 10_000.0, "step_size"),
        (0.2, 50_000.0, 10_000.0, "insufficient balance"),  # needs 10,010 USDT
        (0.19981, 50_000.0, 10_000.0, "insufficient balance"),  # 9,990.50 + fee 9.99 > 10,000
    ],
)
def test_rejections(qty: float, open_: float, cash: float, fragment: str) -> None:
    b = broker(cash)
    b.submit(entry(qty))
    reports = b.on_bar(bar(1, open_, open_, open_, open_))
    assert len(reports) == 1
    update = reports[0]
    assert (update.client_id, update.status, update.time_ms) == (
        "sd1-1",
        OrderStatus.REJECTED,
        T + M,
    )
    assert fragment in update.reason
    assert b.cash == cash and b.base.get(SYM, 0.0) == 0.0


def test_all_in_within_balance_is_accepted() -> None:
    # 0.1998 BTC at 50,000 costs 9,990 + 9.99 fee = 9,999.99 <= 10,000.
    b = broker()
    b.submit(entry(0.1998, bracket=False))
    (fill,) = b.on_bar(bar(1, 50_000.0, 50_000.0, 50_000.0, 50_000.0))
    assert isinstance(fill, Fill)
    assert b.cash == pytest.approx(0.01, abs=1e-9)


def test_sell_more_than_held_is_rejected() -> None:
    b = broker()
    b.submit(sell(0.1))
    (update,) = b.on_bar(bar(1, 50_000.0, 50_000.0, 50_000.0, 50_000.0))
    assert update.status is OrderStatus.REJECTED and "insufficient balance" in update.reason


def test_non_market_order_is_rejected_at_the_next_bar() -> None:
    b = broker()
    order = Order("sd1-9", SYM, Side.BUY, OrderType.LIMIT, 0.1, T, "x", price=49_000.0)
    b.submit(order)
    (update,) = b.on_bar(bar(1, 50_000.0, 50_000.0, 48_000.0, 50_000.0))
    assert (update.client_id, update.status, update.time_ms) == ("sd1-9", OrderStatus.REJECTED, T)
    assert "market orders only" in update.reason


def test_other_symbols_bars_do_not_touch_the_order() -> None:
    b = SimBroker(cash=10_000.0, fees=FEES, rules={SYM: RULES, "ETH/USDT": RULES})
    b.submit(entry(bracket=False))
    assert b.on_bar(bar(1, 3_000.0, 3_000.0, 3_000.0, 3_000.0, "ETH/USDT")) == ()
    (fill,) = b.on_bar(bar(1, 50_000.0, 50_000.0, 50_000.0, 50_000.0))
    assert fill.price == 50_000.0


def test_trade_ids_count_fills() -> None:
    b = broker()
    reports = entered(b)
    reports += b.on_bar(bar(2, 50_050.0, 50_250.0, 49_990.0, 50_210.0))
    assert [r.trade_id for r in reports if isinstance(r, Fill)] == ["sim-1", "sim-2"]
