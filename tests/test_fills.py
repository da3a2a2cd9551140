"""Execution costs and order types of the simulated broker, each with a worked example.

Costs: half the spread (configured or from the recorded book), square-root impact, latency
(with seeded jitter). Orders: limit entries (through / touch, marketable on arrival, partial
fills across bars, TTL), the OCO rule on a partial take-profit, the tape on a real recording.
"""

from __future__ import annotations

import math
import random

import pytest

from scalpd.config.settings import FeesSettings, FeeTier, MarketRules, SimSettings
from scalpd.events import Bar, Bracket, Fill, Order, OrderStatus, OrderType, OrderUpdate, Side
from scalpd.execution.latency import Latency, arrival_price
from scalpd.execution.sim import SimBroker
from scalpd.execution.slippage import SlippageModel, parkinson_sigma_bps
from scalpd.execution.ticktape import tape_from_recording
from tests.conftest import shared_file

SYM = "BTC/USDT"
M = 60_000
T = 1_709_251_200_000
RULES = MarketRules(tick_size=0.01, step_size=0.00001, min_qty=0.00001, min_notional_usdt=5.0)
FEES = FeesSettings(tiers={"T": FeeTier(maker_bps=2.0, taker_bps=10.0)}, tier="T")
# 1e-9 bps: only the floor of half a tick is paid (0 would turn spread costs off).
ZERO = SimSettings(
    half_spread_bps=1e-9, impact_coefficient=0.0, latency_ms=0.0, max_participation=1.0
)


def bar(i: int, o: float, h: float, lo: float, c: float, volume: float = 100.0, t0=T) -> Bar:
    return Bar(SYM, t0 + i * M, o, h, lo, c, volume, 0.0, 1, 0.5)


def broker(sim: SimSettings = ZERO, cash: float = 100_000.0, tapes=None) -> SimBroker:
    return SimBroker(cash=cash, fees=FEES, rules={SYM: RULES}, sim=sim, tapes=tapes)


def order(qty: float, side: Side = Side.BUY, price=None, bracket=None, cid="sd1-1") -> Order:
    kind = OrderType.MARKET if price is None else OrderType.LIMIT
    return Order(cid, SYM, side, kind, qty, T, "x", price=price, bracket=bracket)


# -- spread and impact ---------------------------------------------------------------------------


def test_square_root_impact_worked_example() -> None:
    # Bar 50,000 / high 50,100 / low 49,900, 10 BTC traded; buying 0.1 BTC.
    # sigma = ln(50,100 / 49,900) / sqrt(4 ln 2) = 0.0040000053 / 1.6651092 = 24.0225 bps;
    # impact = 1.0 * 24.0225 * sqrt(0.1 / 10) = 2.40225 bps; plus half the spread, 1 bp:
    # 50,000 * (1 + 3.40225e-4) = 50,017.0112.
    assert parkinson_sigma_bps(50_100.0, 49_900.0) == pytest.approx(24.0225, abs=1e-4)
    sim = ZERO.model_copy(update={"half_spread_bps": 1.0, "impact_coefficient": 1.0})
    b = broker(sim)
    b.submit(order(0.1))
    (fill,) = b.on_bar(bar(1, 50_000.0, 50_100.0, 49_900.0, 50_000.0, volume=10.0))
    assert fill.price == pytest.approx(50_017.0112, abs=1e-4)
    assert b.slippage_paid_usdt == pytest.approx(0.1 * 17.0112, abs=1e-5)
    # A sell pays the same below the open.
    b.submit(order(0.05, Side.SELL, cid="sd1-2"))
    (fill,) = b.on_bar(bar(2, 50_000.0, 50_100.0, 49_900.0, 50_000.0, volume=5.0))
    assert fill.price == pytest.approx(50_000.0 * (1 - 3.40225e-4), abs=1e-4)


def test_impact_is_capped_and_a_bar_without_volume_pays_the_cap() -> None:
    model = SlippageModel(1.0, 1.0, 50.0)
    assert model.impact_bps(100.0, 1.0, 50_100.0, 49_900.0) == 50.0  # 240 bps, capped
    assert model.impact_bps(0.1, 0.0, 50_000.0, 50_000.0) == 50.0
    assert model.impact_bps(0.1, math.nan, 50_000.0, 50_000.0) == 50.0
    sim = ZERO.model_copy(update={"half_spread_bps": 1.0, "impact_coefficient": 1.0})
    b = broker(sim)
    b.submit(order(0.1))
    (fill,) = b.on_bar(bar(1, 50_000.0, 50_000.0, 50_000.0, 50_000.0, volume=0.0))
    assert fill.price == pytest.approx(50_000.0 * 1.0051, abs=1e-6)  # 1 + 50 bps


def test_half_spread_is_at_least_half_a_tick() -> None:
    model = SlippageModel(0.1, 0.0, 50.0)
    # POL at 0.5 USDT with a 0.0001 tick: half a tick is 1 bp, more than the configured 0.1.
    assert model.half_spread(0.5, 0.0001) == pytest.approx(1.0)
    # 0 turns spread costs off (to compare with an exchange that fills at the bar's prices).
    assert SlippageModel(0.0, 0.0, 50.0).half_spread(0.5, 0.0001) == 0.0
    assert SlippageModel(3.0, 0.0, 50.0).half_spread(0.5, 0.0001) == 3.0


# -- latency ---------------------------------------------------------------------------------------


def test_latency_on_a_minute_bar_worked_example() -> None:
    # 50 ms is sqrt(50 / 60,000) = 0.0288675 of the way from the open to the high (a buy) or
    # the low (a sell): 50,000 + 0.0288675 * 100 = 50,002.88675; 50,000 - 2.88675.
    assert arrival_price(Side.BUY, 50.0, 50_000.0, 50_100.0, 49_900.0) == pytest.approx(
        50_002.88675, abs=1e-5
    )
    assert arrival_price(Side.SELL, 50.0, 50_000.0, 50_100.0, 49_900.0) == pytest.approx(
        49_997.11325, abs=1e-5
    )
    assert arrival_price(Side.BUY, 60_000.0, 50_000.0, 50_100.0, 49_900.0) == 50_100.0
    b = broker(ZERO.model_copy(update={"latency_ms": 50.0}))
    b.submit(order(0.1))
    (fill,) = b.on_bar(bar(1, 50_000.0, 50_100.0, 49_900.0, 50_000.0))
    assert fill.price == pytest.approx(50_002.88675 + 0.005, abs=1e-5)  # + half a tick


def test_latency_jitter_is_seeded_and_drawn_once_per_order() -> None:
    sim = ZERO.model_copy(update={"latency_ms": 100.0, "latency_jitter_ms": 50.0, "seed": 7})
    rng = random.Random(7)
    expected = [rng.uniform(50.0, 150.0) for _ in range(3)]
    latency = Latency.from_settings(sim)
    assert [latency.draw_ms() for _ in range(3)] == expected
    prices = []
    for _ in range(2):  # the same seed, the same fills
        b = broker(sim)
        b.submit(order(0.1))
        (fill,) = b.on_bar(bar(1, 50_000.0, 50_100.0, 49_900.0, 50_000.0))
        prices.append(fill.price)
    share = math.sqrt(expected[0] / 60_000.0)
    assert prices[0] == prices[1] == pytest.approx(50_000.0 + share * 100.0 + 0.005, abs=1e-6)


# -- limit orders ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queue", "low", "fills"),
    [("through", 49_900.0, False), ("touch", 49_900.0, True), ("through", 49_899.99, True)],
)
def test_limit_buy_through_or_touch(queue: str, low: float, fills: bool) -> None:
    b = broker(ZERO.model_copy(update={"limit_queue": queue}))
    b.submit(order(0.1, price=49_900.0))
    reports = b.on_bar(bar(1, 50_000.0, 50_050.0, low, 50_000.0))
    if fills:
        (fill,) = reports
        # At its price, as a maker: 2 bps of 0.1 BTC taken in BTC; stamped at the bar's close.
        assert (fill.price, fill.liquidity, fill.time_ms) == (49_900.0, "maker", T + 2 * M)
        assert (fill.fee, fill.fee_asset) == (pytest.approx(0.00002), "BTC")
    else:
        assert reports == []


def test_marketable_limit_fills_at_the_open_as_taker_never_above_its_price() -> None:
    b = broker()
    b.submit(order(0.1, price=50_100.0))
    (fill,) = b.on_bar(bar(1, 50_000.0, 50_050.0, 49_950.0, 50_000.0))
    assert (fill.price, fill.liquidity, fill.time_ms) == (
        pytest.approx(50_000.005, abs=1e-9),
        "taker",
        T + M,
    )
    # Marketable, but the spread and impact would cost more than the limit allows.
    sim = ZERO.model_copy(update={"half_spread_bps": 10.0})
    b = broker(sim)
    b.submit(order(0.1, price=50_020.0))
    (fill,) = b.on_bar(bar(1, 50_000.0, 50_050.0, 49_950.0, 50_000.0))
    assert fill.price == 50_020.0  # 50,050 (10 bps) capped at the limit


def test_partial_fills_across_bars_then_the_bracket_on_what_was_filled() -> None:
    # 0.5 BTC limit buy, 10% of bars of 2 BTC: 0.2 + 0.2 + 0.1. Fees 2 bps in BTC:
    # 0.00004 + 0.00004 + 0.00002 = 0.0001; the bracket sells 0.4999.
    b = broker(ZERO.model_copy(update={"max_participation": 0.1}))
    b.submit(order(0.5, price=49_900.0, bracket=Bracket(40.0, 25.0)))
    got = []
    for i in (1, 2, 3):
        got.append(b.on_bar(bar(i, 50_000.0, 50_000.0, 49_800.0, 49_950.0, volume=2.0)))
    assert [(f.qty, f.time_ms) for f in got[0] + got[1]] == [(0.2, T + 2 * M), (0.2, T + 3 * M)]
    fill, tp, sl, tp_open, sl_open = got[2]
    assert (fill.qty, fill.price) == (0.1, 49_900.0)
    assert (tp_open.client_id, sl_open.client_id) == (tp.client_id, sl.client_id)
    assert tp_open.status is sl_open.status is OrderStatus.OPEN
    # 49,900 * 1.004 = 50,099.6; * 0.9975 = 49,775.25.
    assert (tp.qty, tp.price, sl.qty, sl.price) == (0.4999, 50_099.6, 0.4999, 49_775.25)
    assert b.base[SYM] == pytest.approx(0.4999, rel=1e-12)


def test_limit_entry_expires_after_its_ttl_and_arms_on_the_filled_part() -> None:
    sim = ZERO.model_copy(update={"max_participation": 0.1, "limit_ttl_bars": 2})
    b = broker(sim)
    b.submit(order(0.5, price=49_900.0, bracket=Bracket(40.0, 25.0)))
    assert len(b.on_bar(bar(1, 50_000.0, 50_000.0, 49_800.0, 49_950.0, volume=2.0))) == 1
    fill, expired, tp, sl, *opened = b.on_bar(
        bar(2, 50_000.0, 50_000.0, 49_800.0, 49_950.0, volume=2.0)
    )
    assert [(u.client_id, u.status) for u in opened] == [
        (tp.client_id, OrderStatus.OPEN),
        (sl.client_id, OrderStatus.OPEN),
    ]
    assert fill.qty == 0.2
    assert expired == OrderUpdate("sd1-1", OrderStatus.EXPIRED, T + 3 * M, filled_qty=0.4)
    # 0.4 less fees 0.00008 BTC = 0.39992.
    assert tp.qty == sl.qty == 0.39992
    # Never filled: expires with nothing to protect.
    b = broker(sim)
    b.submit(order(0.5, price=40_000.0, bracket=Bracket(40.0, 25.0)))
    assert b.on_bar(bar(1, 50_000.0, 50_000.0, 49_800.0, 49_950.0)) == []
    assert b.on_bar(bar(2, 50_000.0, 50_000.0, 49_800.0, 49_950.0)) == [
        OrderUpdate("sd1-1", OrderStatus.EXPIRED, T + 3 * M, filled_qty=0.0)
    ]
    assert b.on_bar(bar(3, 50_000.0, 50_000.0, 30_000.0, 49_950.0)) == ()


def test_partial_take_profit_cancels_the_stop_oco() -> None:
    # Entry 0.1 BTC at 50,000.005 (0.0999 held); take-profit 50,200.01, stop 49,875.00.
    b = broker(ZERO.model_copy(update={"max_participation": 0.1}))
    b.submit(order(0.1, bracket=Bracket(40.0, 25.0)))
    b.on_bar(bar(1, 50_000.0, 50_100.0, 49_950.0, 50_050.0))
    # 10% of 0.5 BTC: 0.05 of the 0.0999 sells; the stop is cancelled.
    fill, cancelled = b.on_bar(bar(2, 50_100.0, 50_300.0, 50_000.0, 50_200.0, volume=0.5))
    assert (fill.client_id, fill.qty, fill.price, fill.liquidity) == (
        "sd1-1tp",
        0.05,
        50_200.01,
        "maker",
    )
    assert cancelled == OrderUpdate("sd1-1sl", OrderStatus.CANCELLED, T + 3 * M)
    # A bar through the old stop: nothing, the stop is gone.
    assert b.on_bar(bar(3, 50_000.0, 50_000.0, 49_000.0, 49_100.0)) == []
    # The engine's time stop cancels what rests of the take-profit, then sells the rest.
    b.cancel_bracket(SYM, T + 4 * M)
    b.submit(order(0.0499, Side.SELL, cid="sd1-2"))
    cancel, sold = b.on_bar(bar(4, 49_100.0, 49_200.0, 49_000.0, 49_100.0))
    assert cancel == OrderUpdate("sd1-1tp", OrderStatus.CANCELLED, T + 4 * M)
    assert isinstance(sold, Fill) and sold.qty == 0.0499
    assert b.base[SYM] == pytest.approx(0.0, abs=1e-12)


# -- the tape: recorded book tops and trades ---------------------------------------------------

BTC_WS = "binance-ws/spot-btcusdt_2024080{}.gz"
MIDNIGHT = 1_723_161_600_000  # 2024-08-09 00:00:00 UTC


def test_tape_fills_at_the_recorded_book_on_real_traffic() -> None:
    paths = [shared_file(BTC_WS.format(d)) for d in (8, 9)]
    tape = tape_from_recording(paths, SYM)
    # An order decided at the close of the 23:59 bar arrives 50 ms into the 00:00 bar. Checked
    # by hand in spot-btcusdt_20240808.gz: the last exchange time before it is the depth update
    # E=1723161599973 (line 41153), and the last book ticker after it, before the next depth
    # update (E=...600073), is line 41156: bid 61685.99 x 1.38154, ask 61686.00 x 4.56943.
    sim = ZERO.model_copy(update={"latency_ms": 50.0, "impact_coefficient": 1.0})
    b = broker(sim, cash=1e6, tapes={SYM: tape})
    minute = bar(0, 61_686.0, 61_700.0, 61_600.0, 61_650.0, volume=100.0, t0=MIDNIGHT)
    b.submit(order(1.0))
    (fill,) = b.on_bar(minute)
    assert fill.price == 61_686.00  # the ask, no spread added: the book has its own
    b.submit(order(0.999, Side.SELL, cid="sd1-2"))  # 1 BTC less its 10 bps fee
    (fill,) = b.on_bar(minute)
    assert fill.price == 61_685.99  # the bid
    # 5 BTC: 4.56943 at the ask, the 0.43057 beyond it walks the book (impact model):
    # sigma = ln(61,700 / 61,600) / 1.6651092 = 9.7415 bps; impact = 9.7415 * sqrt(0.43057 /
    # 100) = 0.63921 bps; 61,686 * (1 + 0.63921e-4) = 61,689.9431.
    b.submit(order(5.0, cid="sd1-3"))
    (fill,) = b.on_bar(minute)
    expected = (4.56943 * 61_686.0 + 0.43057 * 61_689.9431) / 5.0
    assert fill.price == pytest.approx(expected, abs=1e-3)
    # Outside the recording the bar rules apply: latency (61,686 + 0.0288675 * 14 = 61,686.40415),
    # half a tick, impact 9.7415 * sqrt(1 / 100) = 0.97415 bps.
    b.submit(order(1.0, cid="sd1-4"))
    (fill,) = b.on_bar(bar(0, 61_686.0, 61_700.0, 61_600.0, 61_650.0, t0=MIDNIGHT + 3_600_000))
    arrival = 61_686.40415
    assert fill.price == pytest.approx(arrival + 0.005 + arrival * 0.97415e-4, abs=1e-4)
