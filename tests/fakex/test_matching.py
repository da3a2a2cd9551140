"""The fake exchange's matching rules and account state, without any I/O."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest

from scalpd.fakex.matching import (
    ApiError,
    BarPrices,
    FakeMarket,
    FeeSchedule,
    MatchingEngine,
    OcoLegRequest,
    OcoRequest,
    OrderRequest,
    adverse_touch,
    check_lot_size,
    check_notional,
    check_price_filter,
    evaluate,
    favourable_touch,
    floor_to_step,
    oco_legs_in_priority,
    parse_decimal,
)

BTC = FakeMarket()
T0 = 1_704_067_200_000


def bar(o: float, h: float, lo: float, c: float, volume: float = math.inf) -> BarPrices:
    return BarPrices(o, h, lo, c, volume)


def engine(
    usdt: float = 10_000.0, btc: float = 0.0, fee_bps: float = 10.0, **kw: Any
) -> MatchingEngine:
    return MatchingEngine(
        {"BTC/USDT": BTC}, {"USDT": usdt, "BTC": btc}, FeeSchedule(fee_bps, fee_bps), **kw
    )


def order(side: str, type_: str, qty: str = "1", **kw: str) -> OrderRequest:
    decimals = {k: Decimal(v) for k, v in kw.items() if k in ("price", "stop_price")}
    rest = {k: v for k, v in kw.items() if k not in decimals}
    return OrderRequest("BTCUSDT", side, type_, quantity=Decimal(qty), **decimals, **rest)


def oco_sell(qty: str, take_profit: str, stop: str, **ids: str) -> OcoRequest:
    return OcoRequest(
        "BTCUSDT",
        "SELL",
        Decimal(qty),
        above=OcoLegRequest(
            "LIMIT_MAKER", price=Decimal(take_profit), client_order_id=ids.get("tp")
        ),
        below=OcoLegRequest("STOP_LOSS", stop_price=Decimal(stop), client_order_id=ids.get("sl")),
        list_client_order_id=ids.get("list"),
    )


# -- pure rules --------------------------------------------------------------------------------


def test_limit_like_orders_fill_at_their_price_or_the_better_open() -> None:
    assert favourable_touch("SELL", 105.0, bar(100, 106, 99, 104)) == 105.0
    assert favourable_touch("SELL", 105.0, bar(107, 108, 104, 105)) == 107.0  # gapped above
    assert favourable_touch("SELL", 105.0, bar(100, 104.99, 99, 104)) is None
    assert favourable_touch("BUY", 95.0, bar(100, 101, 94, 96)) == 95.0
    assert favourable_touch("BUY", 95.0, bar(93, 96, 92, 95)) == 93.0  # gapped below
    assert favourable_touch("BUY", 95.0, bar(100, 101, 95.01, 96)) is None


def test_stops_fill_at_the_stop_or_the_worse_open() -> None:
    assert adverse_touch("SELL", 95.0, bar(100, 101, 94, 96)) == 95.0
    assert adverse_touch("SELL", 95.0, bar(90, 96, 89, 95)) == 90.0  # gapped through
    assert adverse_touch("SELL", 95.0, bar(100, 101, 95.01, 96)) is None
    assert adverse_touch("BUY", 105.0, bar(100, 106, 99, 104)) == 105.0
    assert adverse_touch("BUY", 105.0, bar(110, 111, 104, 105)) == 110.0


def test_evaluate_per_order_type() -> None:
    b = bar(100, 106, 94, 100)
    assert evaluate("LIMIT", "SELL", 105.0, 0.0, False, b) == ("fill", 105.0)
    assert evaluate("LIMIT_MAKER", "BUY", 95.0, 0.0, False, b) == ("fill", 95.0)
    assert evaluate("STOP_LOSS", "SELL", 0.0, 95.0, False, b) == ("fill", 95.0)
    assert evaluate("TAKE_PROFIT", "SELL", 0.0, 105.0, False, b) == ("fill", 105.0)
    assert evaluate("STOP_LOSS_LIMIT", "SELL", 94.5, 95.0, False, b) == ("trigger", 95.0)
    assert evaluate("STOP_LOSS_LIMIT", "SELL", 94.5, 95.0, True, b) == ("fill", 100.0)
    assert evaluate("TAKE_PROFIT_LIMIT", "SELL", 105.5, 105.0, False, b) == ("trigger", 105.0)
    assert evaluate("STOP_LOSS", "SELL", 0.0, 90.0, False, b) is None
    assert evaluate("MARKET", "SELL", 0.0, 0.0, False, b) is None


def test_oco_evaluates_the_stop_leg_first() -> None:
    eng = engine(btc=1.0)
    legs = eng.place_oco(oco_sell("1", "110", "90"), last_price=100.0, now_ms=T0).legs
    assert [leg.type for leg in oco_legs_in_priority(reversed(legs))] == [
        "STOP_LOSS",
        "LIMIT_MAKER",
    ]


def test_filters_are_exact_on_decimal_strings() -> None:
    check_price_filter(BTC, Decimal("42000.01"))
    check_lot_size(BTC, Decimal("0.00123"))
    check_notional(BTC, Decimal("0.0002"), Decimal("25000"))
    with pytest.raises(ApiError, match="PRICE_FILTER"):
        check_price_filter(BTC, Decimal("42000.015"))
    with pytest.raises(ApiError, match="LOT_SIZE"):
        check_lot_size(BTC, Decimal("0.000015"))
    with pytest.raises(ApiError, match="LOT_SIZE"):
        check_lot_size(FakeMarket(min_qty=0.001), Decimal("0.0005"))
    with pytest.raises(ApiError, match="NOTIONAL"):
        check_notional(BTC, Decimal("0.0001"), Decimal("42000"))
    assert floor_to_step(Decimal("0.123456789"), BTC) == Decimal("0.12345")


def test_numeric_parameters_must_be_plain_decimals() -> None:
    assert parse_decimal("price", "1.50") == Decimal("1.50")
    assert parse_decimal("price", None) is None
    for bad in ("1e-5", "-1", "abc", "1.2.3"):
        with pytest.raises(ApiError) as err:
            parse_decimal("price", bad)
        assert err.value.code == -1100


# -- the engine --------------------------------------------------------------------------------


def test_market_buy_then_sell_charge_the_fee_in_the_asset_received() -> None:
    eng = engine(usdt=30_000.0)
    buy = eng.place_order(order("BUY", "MARKET", "0.5"), last_price=40_000.0, now_ms=T0)
    assert buy.status == "FILLED" and buy.cum_quote_qty == pytest.approx(20_000.0)
    assert buy.fills[0].commission == pytest.approx(0.0005)  # 10 bps of 0.5 BTC
    assert buy.fills[0].commission_asset == "BTC"
    assert eng.ledger.free["USDT"] == pytest.approx(30_000 - 20_000)
    assert eng.ledger.free["BTC"] == pytest.approx(0.4995)
    with pytest.raises(ApiError) as err:  # the fee is gone: 0.5 cannot be sold any more
        eng.place_order(order("SELL", "MARKET", "0.5"), last_price=41_000.0, now_ms=T0)
    assert err.value.code == -2010
    sell = eng.place_order(
        order("SELL", "MARKET", "0.4995"), last_price=41_000.0, now_ms=T0 + 60_000
    )
    assert sell.fills[0].price == 41_000.0
    assert sell.fills[0].commission == pytest.approx(20.4795)  # 10 bps of 20 479.5 USDT
    assert sell.fills[0].commission_asset == "USDT"
    assert eng.ledger.free["BTC"] == pytest.approx(0.0)
    assert eng.ledger.free["USDT"] == pytest.approx(10_000 + 20_479.5 - 20.4795)


def test_resting_limit_buy_locks_its_quote_value_and_releases_on_cancel() -> None:
    eng = engine(usdt=1_000.0)
    limit = eng.place_order(
        order("BUY", "LIMIT", "0.01", price="90000", time_in_force="GTC"),
        last_price=95_000.0,
        now_ms=T0,
    )
    assert eng.ledger.locked["USDT"] == pytest.approx(900)  # the fee comes out of the BTC
    with pytest.raises(ApiError) as err:  # the rest is not enough for another
        eng.place_order(
            order("BUY", "LIMIT", "0.01", price="90000", time_in_force="GTC"),
            last_price=95_000.0,
            now_ms=T0,
        )
    assert err.value.code == -2010
    eng.cancel_order("BTCUSDT", limit.order_id, None, T0 + 1)
    assert limit.status == "CANCELED"
    assert eng.ledger.locked["USDT"] == 0.0
    assert eng.ledger.free["USDT"] == pytest.approx(1_000.0)


def test_resting_limit_buy_fills_at_its_own_price_once_the_price_trades_through() -> None:
    eng = engine()
    limit = eng.place_order(
        order("BUY", "LIMIT", "0.1", price="100", time_in_force="GTC"), last_price=101.0, now_ms=T0
    )
    assert eng.close_bar("BTCUSDT", bar(101, 102, 100.5, 101), T0 + 60_000) == []
    assert eng.close_bar("BTCUSDT", bar(101, 102, 100, 101), T0 + 120_000) == []  # touched only
    # Opened below the limit: sellers hit our better bid first, at our price, not the open.
    assert eng.close_bar("BTCUSDT", bar(99, 100, 98, 99.5), T0 + 180_000) == [limit]
    assert limit.status == "FILLED" and limit.fills[0].price == 100.0
    assert limit.fills[0].is_maker and limit.fills[0].time_ms == T0 + 180_000
    assert eng.ledger.locked["USDT"] == 0.0
    assert eng.ledger.free["USDT"] == pytest.approx(10_000 - 10.0)
    assert eng.ledger.free["BTC"] == pytest.approx(0.1 - 0.0001)  # maker 10 bps of 0.1 BTC


def test_touch_queue_fills_a_limit_the_bar_only_reaches() -> None:
    eng = engine(limit_queue="touch")
    limit = eng.place_order(
        order("BUY", "LIMIT", "0.1", price="100", time_in_force="GTC"), last_price=101.0, now_ms=T0
    )
    assert eng.close_bar("BTCUSDT", bar(101, 102, 100, 101), T0 + 60_000) == [limit]
    assert limit.fills[0].price == 100.0


def test_marketable_limit_takes_the_open_at_once() -> None:
    eng = engine()
    limit = eng.place_order(
        order("BUY", "LIMIT", "0.1", price="102", time_in_force="GTC"), last_price=101.0, now_ms=T0
    )
    assert limit.status == "FILLED" and limit.fills[0].price == 101.0
    assert not limit.fills[0].is_maker
    assert eng.ledger.free["USDT"] == pytest.approx(10_000 - 10.1)
    assert eng.ledger.locked["USDT"] == 0.0


def test_resting_limit_fills_a_share_of_each_bars_volume() -> None:
    eng = engine(max_participation=0.1)
    limit = eng.place_order(
        order("BUY", "LIMIT", "1", price="100", time_in_force="GTC"), last_price=101.0, now_ms=T0
    )
    # 10 % of 4.000009 BTC is 0.4000009, floored to the 0.00001 lot step: 0.4.
    eng.close_bar("BTCUSDT", bar(101, 101, 99, 100, 4.000009), T0 + 60_000)
    assert limit.status == "PARTIALLY_FILLED" and limit.is_open
    assert limit.executed_qty == pytest.approx(0.4)
    assert eng.ledger.locked["USDT"] == pytest.approx(60.0)  # the 0.6 still resting
    assert eng.ledger.free["BTC"] == pytest.approx(0.4 - 0.0004)
    eng.close_bar("BTCUSDT", bar(101, 101, 99, 100, 0.000009), T0 + 120_000)  # below one step
    assert limit.executed_qty == pytest.approx(0.4)
    eng.close_bar("BTCUSDT", bar(101, 101, 99, 100, 50.0), T0 + 180_000)
    assert limit.status == "FILLED" and [f.qty for f in limit.fills] == pytest.approx([0.4, 0.6])
    assert eng.ledger.locked["USDT"] == 0.0
    assert eng.ledger.free["USDT"] == pytest.approx(10_000 - 100)
    assert eng.ledger.free["BTC"] == pytest.approx(1 - 0.001)


def test_bnb_fees_are_discounted_and_debited_from_bnb() -> None:
    fees = FeeSchedule(maker_bps=2.0, taker_bps=4.0, bnb=True, bnb_price_usdt=500.0)
    eng = MatchingEngine({"BTC/USDT": BTC}, {"USDT": 10_000.0, "BNB": 1.0}, fees)
    buy = eng.place_order(order("BUY", "MARKET", "0.1"), last_price=40_000.0, now_ms=T0)
    # 4 bps of 4 000 USDT = 1.6 USDT, 25 % off = 1.2 USDT, at 500 USDT a BNB = 0.0024 BNB.
    assert (buy.fills[0].commission, buy.fills[0].commission_asset) == (
        pytest.approx(0.0024),
        "BNB",
    )
    assert eng.ledger.free["BNB"] == pytest.approx(1.0 - 0.0024)
    assert eng.ledger.free["BTC"] == pytest.approx(0.1)  # nothing taken from what was bought
    assert eng.ledger.free["USDT"] == pytest.approx(6_000.0)


def test_bnb_fees_fall_back_to_the_asset_received_when_bnb_is_short() -> None:
    fees = FeeSchedule(maker_bps=2.0, taker_bps=4.0, bnb=True, bnb_price_usdt=500.0)
    eng = MatchingEngine({"BTC/USDT": BTC}, {"USDT": 10_000.0, "BNB": 0.002}, fees)
    buy = eng.place_order(order("BUY", "MARKET", "0.1"), last_price=40_000.0, now_ms=T0)
    # 0.0024 BNB due, 0.002 held: the full (undiscounted) 4 bps in BTC instead.
    assert (buy.fills[0].commission, buy.fills[0].commission_asset) == (pytest.approx(4e-5), "BTC")
    assert eng.ledger.free["BNB"] == pytest.approx(0.002)
    assert eng.ledger.free["BTC"] == pytest.approx(0.1 - 4e-5)


def test_stop_limit_triggers_then_works_as_a_limit_from_the_next_bar() -> None:
    eng = engine(btc=1.0)
    stop = eng.place_order(
        order("SELL", "STOP_LOSS_LIMIT", "1", price="94", stop_price="95", time_in_force="GTC"),
        last_price=100.0,
        now_ms=T0,
    )
    assert not stop.is_working
    eng.close_bar("BTCUSDT", bar(100, 100, 94.5, 96), T0 + 60_000)
    assert stop.triggered and stop.is_working and stop.status == "NEW"
    eng.close_bar("BTCUSDT", bar(93, 93.5, 92, 93), T0 + 120_000)  # never back up to 94
    assert stop.status == "NEW"
    eng.close_bar("BTCUSDT", bar(93, 94.2, 92, 94), T0 + 180_000)
    assert stop.status == "FILLED" and stop.fills[0].price == 94.0


def test_oco_locks_once_and_its_take_profit_fills_while_the_stop_expires() -> None:
    eng = engine(btc=1.0)
    lst = eng.place_oco(oco_sell("1", "110", "90", tp="tp", sl="sl"), last_price=100.0, now_ms=T0)
    assert eng.ledger.locked["BTC"] == 1.0 and eng.ledger.free["BTC"] == 0.0
    stop_leg, take_profit = lst.legs
    assert (stop_leg.client_order_id, take_profit.client_order_id) == ("sl", "tp")
    eng.close_bar("BTCUSDT", bar(100, 111, 95, 109), T0 + 60_000)
    assert take_profit.status == "FILLED" and take_profit.fills[0].price == 110.0
    assert stop_leg.status == "EXPIRED"
    assert lst.list_order_status == "ALL_DONE"
    assert eng.ledger.total("BTC") == 0.0 and eng.ledger.locked["BTC"] == 0.0
    assert eng.ledger.free["USDT"] == pytest.approx(10_000 + 110 - 0.11)


def test_oco_take_profit_filled_in_part_expires_the_stop_and_keeps_resting() -> None:
    eng = engine(btc=1.0, max_participation=0.1)
    lst = eng.place_oco(oco_sell("1", "110", "90"), last_price=100.0, now_ms=T0)
    stop_leg, take_profit = lst.legs
    eng.close_bar("BTCUSDT", bar(100, 111, 95, 109, 3.0), T0 + 60_000)  # 0.3 of 1 fills
    assert take_profit.status == "PARTIALLY_FILLED" and take_profit.executed_qty == 0.3
    assert stop_leg.status == "EXPIRED" and lst.is_open
    assert eng.ledger.locked["BTC"] == pytest.approx(0.7)
    eng.close_bar("BTCUSDT", bar(100, 101, 80, 85, 30.0), T0 + 120_000)  # no stop any more
    assert take_profit.is_open and eng.ledger.locked["BTC"] == pytest.approx(0.7)
    eng.close_bar("BTCUSDT", bar(100, 111, 95, 109, 30.0), T0 + 180_000)
    assert take_profit.status == "FILLED" and lst.list_order_status == "ALL_DONE"
    assert eng.ledger.total("BTC") == pytest.approx(0.0)
    assert eng.ledger.free["USDT"] == pytest.approx(10_000 + 110 - 0.11)


def test_oco_stop_wins_when_one_bar_touches_both_legs() -> None:
    eng = engine(btc=1.0)
    stop_leg, take_profit = eng.place_oco(
        oco_sell("1", "110", "90"), last_price=100.0, now_ms=T0
    ).legs
    eng.close_bar("BTCUSDT", bar(100, 115, 85, 100), T0 + 60_000)
    assert stop_leg.status == "FILLED" and stop_leg.fills[0].price == 90.0
    assert not stop_leg.fills[0].is_maker
    assert take_profit.status == "EXPIRED"


def test_oco_stop_gapping_through_fills_at_the_open() -> None:
    eng = engine(btc=1.0)
    stop_leg, _ = eng.place_oco(oco_sell("1", "110", "90"), last_price=100.0, now_ms=T0).legs
    eng.close_bar("BTCUSDT", bar(80, 85, 79, 84), T0 + 60_000)
    assert stop_leg.fills[0].price == 80.0


def test_buy_oco_takes_profit_below_and_stops_above() -> None:
    eng = engine()
    req = OcoRequest(
        "BTCUSDT",
        "BUY",
        Decimal("1"),
        above=OcoLegRequest("STOP_LOSS", stop_price=Decimal("110")),
        below=OcoLegRequest("LIMIT_MAKER", price=Decimal("90")),
    )
    lst = eng.place_oco(req, last_price=100.0, now_ms=T0)
    assert eng.ledger.locked["USDT"] == pytest.approx(110)
    eng.close_bar("BTCUSDT", bar(100, 101, 89, 95), T0 + 60_000)
    limit_leg = next(leg for leg in lst.legs if leg.type == "LIMIT_MAKER")
    assert limit_leg.status == "FILLED" and eng.ledger.total("BTC") == pytest.approx(0.999)


def test_oco_rules_binance_enforces() -> None:
    eng = engine(btc=1.0)
    with pytest.raises(ApiError, match="relationship"):
        eng.place_oco(oco_sell("1", "99", "90"), last_price=100.0, now_ms=T0)
    with pytest.raises(ApiError) as err:
        eng.place_oco(oco_sell("2", "110", "90"), last_price=100.0, now_ms=T0)
    assert err.value.msg.startswith("Account has insufficient balance")
    wrong_way = OcoRequest(
        "BTCUSDT",
        "SELL",
        Decimal("1"),
        above=OcoLegRequest("STOP_LOSS", stop_price=Decimal("110")),
        below=OcoLegRequest("LIMIT_MAKER", price=Decimal("90")),
    )
    with pytest.raises(ApiError) as err:
        eng.place_oco(wrong_way, last_price=100.0, now_ms=T0)
    assert err.value.code == -1116


def test_cancelling_one_leg_cancels_the_list_and_unlocks() -> None:
    eng = engine(btc=1.0)
    lst = eng.place_oco(oco_sell("1", "110", "90", list="L"), last_price=100.0, now_ms=T0)
    eng.cancel_order("BTCUSDT", None, lst.legs[1].client_order_id, T0 + 5)
    assert [leg.status for leg in lst.legs] == ["CANCELED", "CANCELED"]
    assert eng.ledger.free["BTC"] == 1.0
    with pytest.raises(ApiError) as err:
        eng.cancel_order_list("BTCUSDT", None, "L", T0 + 6)
    assert err.value.code == -2011


def test_client_ids_unique_among_open_orders_and_reusable_after() -> None:
    eng = engine()
    first = eng.place_order(
        order("BUY", "MARKET", "0.001", client_order_id="a1"), last_price=40_000.0, now_ms=T0
    )
    # The first one is closed (filled): the id may be used again, and lookups find the newest.
    second = eng.place_order(
        order("BUY", "LIMIT", "0.001", price="30000", time_in_force="GTC", client_order_id="a1"),
        last_price=40_000.0,
        now_ms=T0,
    )
    assert eng.find_order("BTCUSDT", None, "a1") is second
    assert eng.find_order("BTCUSDT", first.order_id, None) is first
    with pytest.raises(ApiError, match="Duplicate"):
        eng.place_order(
            order(
                "BUY", "LIMIT", "0.001", price="30000", time_in_force="GTC", client_order_id="a1"
            ),
            last_price=40_000.0,
            now_ms=T0,
        )
    with pytest.raises(ApiError) as err:
        eng.place_order(
            order("BUY", "MARKET", "0.001", client_order_id="x" * 37), last_price=1e4, now_ms=T0
        )
    assert err.value.code == -1100


def test_immediate_trigger_and_taker_maker_orders_are_refused() -> None:
    eng = engine(btc=1.0)
    for req in (
        order("SELL", "LIMIT_MAKER", "0.1", price="99"),
        order("SELL", "STOP_LOSS", "0.1", stop_price="100"),
        order("SELL", "TAKE_PROFIT", "0.1", stop_price="100"),
    ):
        with pytest.raises(ApiError) as err:
            eng.place_order(req, last_price=100.0, now_ms=T0)
        assert err.value.code == -2010


def test_ioc_limit_takes_when_marketable_else_expires() -> None:
    eng = engine()
    taken = eng.place_order(
        order("BUY", "LIMIT", "0.1", price="101", time_in_force="IOC"), last_price=100.0, now_ms=T0
    )
    assert taken.status == "FILLED" and taken.fills[0].price == 100.0
    missed = eng.place_order(
        order("BUY", "LIMIT", "0.1", price="99", time_in_force="IOC"), last_price=100.0, now_ms=T0
    )
    assert missed.status == "EXPIRED" and eng.ledger.locked["USDT"] == 0.0


def test_quote_order_qty_market_buy_floors_to_the_step() -> None:
    eng = engine()
    req = OrderRequest("BTCUSDT", "BUY", "MARKET", quote_order_qty=Decimal("100"))
    filled = eng.place_order(req, last_price=30_000.0, now_ms=T0)
    assert filled.qty == pytest.approx(0.00333)
    assert filled.orig_quote_order_qty == 100.0


def test_market_orders_need_an_open_bar_and_a_known_symbol() -> None:
    eng = engine()
    with pytest.raises(ApiError, match="Market is closed"):
        eng.place_order(order("BUY", "MARKET", "0.001"), last_price=None, now_ms=T0)
    with pytest.raises(ApiError) as err:
        eng.place_order(
            OrderRequest("ETHUSDT", "BUY", "MARKET", quantity=Decimal(1)), last_price=1.0, now_ms=T0
        )
    assert err.value.code == -1121


def test_buy_stop_that_gaps_beyond_its_reserve_expires_instead_of_overdrawing() -> None:
    eng = engine(usdt=105.2)
    stop = eng.place_order(
        order("BUY", "STOP_LOSS", "1", stop_price="105"), last_price=100.0, now_ms=T0
    )
    eng.close_bar("BTCUSDT", bar(120, 121, 119, 120), T0 + 60_000)
    assert stop.status == "EXPIRED" and stop.fills == []
    assert eng.ledger.free["USDT"] == pytest.approx(105.2) and eng.ledger.locked["USDT"] == 0.0
