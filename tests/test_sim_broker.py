"""The simulated broker's fill rules, with hand-computed prices and fees.

A tier of taker 10 bps and maker 2 bps, so a fill booked at the wrong rate shows. Most tests
switch the costs off (`ZERO`: no latency, spread or impact, the whole bar's volume, the touch
queue rule) so that one rule shows at a time; a spread never goes below half a tick, so a
market buy at an open of 50,000.00 fills at 50,000.005 (a sell at 49,999.995).

The entry: 0.1 BTC at 50,000.005, fee 0.1 * 10 bps = 0.0001 BTC taken from what is bought, so
0.0999 BTC is held and the bracket sells 0.0999. Its take-profit (40 bps) is 50,000.005 * 1.004
= 50,200.00502 -> 50,200.01; its stop (25 bps) 50,000.005 * 0.9975 = 49,875.0049875 -> 49,875.00.
"""

from __future__ import annotations

import pytest

from scalpd.config.settings import FeesSettings, FeeTier, MarketRules, SimSettings
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
FEES = FeesSettings(tiers={"T": FeeTier(maker_bps=2.0, taker_bps=10.0)}, tier="T")
# 1e-9 bps: only the floor of half a tick is paid (0 would turn spread costs off).
ZERO = SimSettings(
    half_spread_bps=1e-9,
    impact_coefficient=0.0,
    latency_ms=0.0,
    max_participation=1.0,
    limit_queue="touch",
)
BUY_AT_50K = 50_000.005
HELD = 0.0999
TP, SL = 50_200.01, 49_875.0


def bar(i: int, o: float, h: float, lo: float, c: float, volume: float = 100.0) -> Bar:
    return Bar(SYM, T + i * M, o, h, lo, c, volume, 0.0, 1, 0.5)


def broker(cash: float = 10_000.0, sim: SimSettings = ZERO, **rules) -> SimBroker:
    return SimBroker(cash=cash, fees=FEES, rules={SYM: RULES.model_copy(update=rules)}, sim=sim)


def entry(qty: float = 0.1, cid: str = "sd1-1", bracket: bool = True, price=None) -> Order:
    return Order(
        cid,
        SYM,
        Side.BUY,
        OrderType.MARKET if price is None else OrderType.LIMIT,
        qty,
        T,
        "ema_cross_up",
        price=price,
        bracket=Bracket(40.0, 25.0) if bracket else None,
    )


def sell(qty: float = HELD, cid: str = "sd1-2", reason: str = "time_stop") -> Order:
    return Order(cid, SYM, Side.SELL, OrderType.MARKET, qty, T, reason, reduce_only=True)


def entered(b: SimBroker) -> list:
    """Submit the 0.1 BTC entry and fill it at 50,000.005 in a bar that touches neither leg."""
    b.submit(entry())
    return list(b.on_bar(bar(1, 50_000.0, 50_100.0, 49_950.0, 50_050.0)))


def test_market_buy_fills_at_next_open_fee_in_base_asset() -> None:
    b = broker()
    b.submit(entry(bracket=False))
    (fill,) = b.on_bar(bar(1, 50_000.0, 50_500.0, 49_000.0, 50_400.0))
    assert fill == Fill(
        "sd1-1",
        SYM,
        Side.BUY,
        0.1,
        pytest.approx(BUY_AT_50K, abs=1e-9),
        pytest.approx(0.0001, rel=1e-12),
        "BTC",
        T + M,
        "taker",
        "sim-1",
        "ema_cross_up",
    )
    # Only the notional leaves the cash; the fee leaves the bought quantity.
    assert b.cash == pytest.approx(10_000.0 - 5_000.0005, rel=1e-12)
    assert b.base[SYM] == pytest.approx(HELD, rel=1e-12)
    assert b.on_bar(bar(2, 50_400.0, 50_400.0, 50_400.0, 50_400.0)) == ()


def test_entry_arms_bracket_on_the_sellable_quantity() -> None:
    fill, tp, sl, tp_open, sl_open = entered(broker())
    assert isinstance(fill, Fill) and fill.fee_asset == "BTC"
    # The legs are reported as orders (recorded new), then as resting on the exchange.
    assert tp_open == OrderUpdate("sd1-1tp", OrderStatus.OPEN, T + M)
    assert sl_open == OrderUpdate("sd1-1sl", OrderStatus.OPEN, T + M)
    common = dict(parent_id="sd1-1", reduce_only=True)
    assert tp == Order(
        "sd1-1tp", SYM, Side.SELL, OrderType.LIMIT, HELD, T + M, "take_profit", price=TP, **common
    )
    assert sl == Order(
        "sd1-1sl", SYM, Side.SELL, OrderType.STOP, HELD, T + M, "stop_loss", price=SL, **common
    )


def test_bracket_legs_round_to_the_tick() -> None:
    # 61,234.57 * 1.004 = 61,479.508... -> 61,479.51; * 0.9975 = 61,081.48... -> 61,081.48
    tp, sl = bracket_legs(entry(), 61_234.57, T, RULES, entry().qty)
    assert (tp.price, sl.price) == (61_479.51, 61_081.48)


def test_take_profit_fills_at_target_as_maker_fee_in_usdt() -> None:
    b = broker()
    entered(b)
    reports = b.on_bar(bar(2, 50_050.0, 50_250.0, 49_990.0, 50_210.0))
    fee = HELD * TP * 2 / 1e4  # 1.00299... USDT
    assert reports == [
        Fill(
            "sd1-1tp",
            SYM,
            Side.SELL,
            HELD,
            TP,
            pytest.approx(fee, rel=1e-12),
            "USDT",
            T + 3 * M,
            "maker",
            "sim-2",
            "take_profit",
        ),
        OrderUpdate("sd1-1sl", OrderStatus.EXPIRED, T + 3 * M),
    ]
    assert b.base[SYM] == pytest.approx(0.0, abs=1e-12)
    assert b.cash == pytest.approx(10_000.0 - 5_000.0005 + HELD * TP - fee, rel=1e-12)
    assert b.on_bar(bar(3, 49_000.0, 49_000.0, 40_000.0, 49_000.0)) == ()  # disarmed


@pytest.mark.parametrize(("queue", "fills"), [("touch", True), ("through", False)])
def test_take_profit_touched_exactly(queue: str, fills: bool) -> None:
    b = broker(sim=ZERO.model_copy(update={"limit_queue": queue}))
    entered(b)
    reports = b.on_bar(bar(2, 50_050.0, TP, 49_990.0, 50_100.0))
    assert bool(reports) is fills
    # A hair above the target trades through it under either rule.
    if not fills:
        (fill, _) = b.on_bar(bar(3, 50_050.0, TP + 0.01, 49_990.0, 50_100.0))
        assert fill.price == TP


def test_take_profit_gapped_through_fills_at_its_own_price() -> None:
    # A resting sell limit fills at its price when the market opens above it: the buyers who
    # cross it pay the resting order's price, the gap's gain goes to nobody resting there.
    b = broker()
    entered(b)
    fill = b.on_bar(bar(2, 50_400.0, 50_600.0, 50_300.0, 50_500.0))[0]
    assert (fill.client_id, fill.price, fill.liquidity) == ("sd1-1tp", TP, "maker")
    assert fill.fee == pytest.approx(HELD * TP * 2 / 1e4)


def test_stop_fills_at_the_stop_less_half_a_tick() -> None:
    b = broker()
    entered(b)
    reports = b.on_bar(bar(2, 50_000.0, 50_010.0, SL, 49_900.0))  # low exactly at the stop
    fill = reports[0]
    assert (fill.client_id, fill.liquidity, fill.reason, fill.qty) == (
        "sd1-1sl",
        "taker",
        "stop_loss",
        HELD,
    )
    assert fill.price == pytest.approx(SL - 0.005, abs=1e-9)
    assert fill.fee == pytest.approx(HELD * (SL - 0.005) * 10 / 1e4)
    assert reports[1] == OrderUpdate("sd1-1tp", OrderStatus.EXPIRED, T + 3 * M)
    assert b.slippage_paid_usdt == pytest.approx(HELD * 0.005 + 0.1 * 0.005, rel=1e-6)


def test_neither_leg_touched_by_a_hair() -> None:
    b = broker()
    entered(b)
    assert b.on_bar(bar(2, 50_000.0, TP - 0.01, SL + 0.01, 50_000.0)) == []


def test_stop_gapped_through_fills_at_the_open() -> None:
    b = broker()
    entered(b)
    reports = b.on_bar(bar(2, 49_500.0, 49_600.0, 49_400.0, 49_550.0))
    assert reports[0].price == pytest.approx(49_499.995, abs=1e-9)


def test_stop_wins_when_one_bar_touches_both() -> None:
    b = broker()
    entered(b)
    reports = b.on_bar(bar(2, 50_000.0, 50_300.0, 49_800.0, 50_250.0))
    assert [type(r) for r in reports] == [Fill, OrderUpdate]
    assert reports[0].client_id == "sd1-1sl"
    assert reports[1].client_id == "sd1-1tp" and reports[1].status is OrderStatus.EXPIRED


def test_bracket_is_checked_in_the_fill_bar_itself() -> None:
    b = broker()
    b.submit(entry())
    reports = b.on_bar(bar(1, 50_000.0, 50_300.0, 49_700.0, 49_900.0))
    assert [getattr(r, "client_id", None) for r in reports] == [
        "sd1-1",
        "sd1-1tp",
        "sd1-1sl",
        "sd1-1tp",  # open
        "sd1-1sl",  # open
        "sd1-1sl",
        "sd1-1tp",
    ]
    exit_fill = reports[5]
    assert exit_fill.price == pytest.approx(SL - 0.005, abs=1e-9)
    assert exit_fill.time_ms == T + 2 * M  # known at the bar's close


def test_reduce_only_exit_cancels_the_bracket_first() -> None:
    b = broker()
    entered(b)
    b.cancel_bracket(SYM, T + 2 * M)
    b.submit(sell())
    reports = b.on_bar(bar(2, 49_900.0, 49_950.0, 49_000.0, 49_100.0))
    assert reports[:2] == [
        OrderUpdate("sd1-1tp", OrderStatus.CANCELLED, T + 2 * M),
        OrderUpdate("sd1-1sl", OrderStatus.CANCELLED, T + 2 * M),
    ]
    fill = reports[2]
    assert (fill.client_id, fill.side, fill.liquidity, fill.reason, fill.fee_asset) == (
        "sd1-2",
        Side.SELL,
        "taker",
        "time_stop",
        "USDT",
    )
    assert fill.price == pytest.approx(49_899.995, abs=1e-9)
    assert b.base[SYM] == pytest.approx(0.0, abs=1e-12)
    assert b.on_bar(bar(3, 40_000.0, 40_000.0, 40_000.0, 40_000.0)) == ()


def test_cancel_without_bracket_is_a_no_op() -> None:
    b = broker()
    b.cancel_bracket(SYM, T)
    assert b.on_bar(bar(1, 1.0, 1.0, 1.0, 1.0)) == ()


@pytest.mark.parametrize(
    ("order", "open_", "cash", "rules", "fragment"),
    [
        (entry(0.00009), 50_000.0, 10_000.0, {}, "min_notional"),  # 4.50 USDT
        (entry(0.000005), 2_000_000.0, 100_000.0, {}, "min_qty"),
        (entry(0.000015), 50_000.0, 10_000.0, {}, "step_size"),
        (entry(2.0), 50_000.0, 1e6, {"max_qty": 1.0}, "above max_qty 1.0"),
        (entry(0.1, price=49_900.005), 50_000.0, 1e6, {}, "not a multiple of tick_size"),
        # 0.2 BTC at 50,000.005 = 10,000.001 USDT: the fee is in BTC, the notional is short.
        (entry(0.2), 50_000.0, 10_000.0, {}, "insufficient balance"),
    ],
)
def test_rejections(order: Order, open_: float, cash: float, rules: dict, fragment: str) -> None:
    b = broker(cash, **rules)
    b.submit(order)
    (update,) = b.on_bar(bar(1, open_, open_, open_, open_))
    assert (update.client_id, update.status, update.time_ms) == (
        "sd1-1",
        OrderStatus.REJECTED,
        T + M,
    )
    assert fragment in update.reason
    assert b.cash == cash and b.base.get(SYM, 0.0) == 0.0


def test_all_in_within_balance_is_accepted() -> None:
    # 0.19999 BTC at 50,000.005 costs 9,999.55 USDT (the fee is taken in BTC).
    b = broker()
    b.submit(entry(0.19999, bracket=False))
    (fill,) = b.on_bar(bar(1, 50_000.0, 50_000.0, 50_000.0, 50_000.0))
    assert isinstance(fill, Fill)
    assert b.cash == pytest.approx(10_000.0 - 0.19999 * BUY_AT_50K, abs=1e-9)


def test_sell_more_than_held_is_rejected() -> None:
    b = broker()
    b.submit(sell(0.1))
    (update,) = b.on_bar(bar(1, 50_000.0, 50_000.0, 50_000.0, 50_000.0))
    assert update.status is OrderStatus.REJECTED and "insufficient balance" in update.reason


def test_other_symbols_bars_do_not_touch_the_order() -> None:
    b = SimBroker(cash=10_000.0, fees=FEES, rules={SYM: RULES, "ETH/USDT": RULES}, sim=ZERO)
    b.submit(entry(bracket=False))
    eth = Bar("ETH/USDT", T + M, 3_000.0, 3_000.0, 3_000.0, 3_000.0, 1.0, 0.0, 1, 0.5)
    assert b.on_bar(eth) == ()
    (fill,) = b.on_bar(bar(1, 50_000.0, 50_000.0, 50_000.0, 50_000.0))
    assert fill.price == pytest.approx(BUY_AT_50K, abs=1e-9)


def test_trade_ids_count_fills() -> None:
    b = broker()
    reports = entered(b)
    reports += b.on_bar(bar(2, 50_050.0, 50_250.0, 49_990.0, 50_210.0))
    assert [r.trade_id for r in reports if isinstance(r, Fill)] == ["sim-1", "sim-2"]
