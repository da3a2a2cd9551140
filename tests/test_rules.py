"""Exchange order rules: tick rounding, lot-step flooring and the reasons for a rejection."""

from __future__ import annotations

import pytest

from scalpd.config.settings import MarketRules
from scalpd.execution.rules import floor_to_step, price_violation, round_to_tick, violation

BTC = MarketRules(tick_size=0.01, step_size=0.00001, min_qty=0.00001, min_notional_usdt=5.0)
POL = MarketRules(tick_size=0.0001, step_size=0.1, min_qty=0.1, min_notional_usdt=5.0)


@pytest.mark.parametrize(
    ("price", "tick", "expected"),
    [
        (61_234.564, 0.01, 61_234.56),
        (61_234.566, 0.01, 61_234.57),
        (61_234.5649999, 0.01, 61_234.56),
        (0.1 + 0.2, 0.1, 0.3),  # 0.30000000000000004
        (0.3, 0.1, 0.3),
        (0.34999, 0.1, 0.3),
        (0.35001, 0.1, 0.4),
        (0.123456, 0.0001, 0.1235),
        (0.00004, 0.0001, 0.0),
        (1234.6, 1.0, 1235.0),
        (1234.4, 10.0, 1230.0),
        (100.0, 0.01, 100.0),
    ],
)
def test_round_to_tick(price: float, tick: float, expected: float) -> None:
    assert round_to_tick(price, tick) == expected


def test_round_to_tick_gives_clean_decimals() -> None:
    # A multiple of the tick, printed without float noise (what an exchange would accept).
    for cents in range(6_000_000, 6_002_000):
        price = cents / 100
        assert round_to_tick(price * 1.0000000001, 0.01) == price
        assert repr(round_to_tick(price + 0.004, 0.01)) == repr(price)


@pytest.mark.parametrize(
    ("qty", "step", "expected"),
    [
        (0.3, 0.1, 0.3),  # 0.3 / 0.1 = 2.9999999999999996 must not floor to 0.2
        (0.7, 0.1, 0.7),  # 6.999999999999999
        (0.29999, 0.1, 0.2),
        (0.3 - 1e-7, 0.1, 0.2),
        (0.00003, 0.00001, 0.00003),  # 2.9999999999999996 steps
        (0.00001, 0.00001, 0.00001),
        (0.0000099999, 0.00001, 0.0),
        (0.123456789, 0.00001, 0.12345),
        (0.1234599999, 0.00001, 0.12345),
        (1.0, 0.00001, 1.0),
        (0.155, 0.001, 0.155),
        (0.035, 0.001, 0.035),
        (12.9, 1.0, 12.0),
        (0.0, 0.00001, 0.0),
    ],
)
def test_floor_to_step(qty: float, step: float, expected: float) -> None:
    assert floor_to_step(qty, step) == expected


def test_floor_to_step_keeps_every_multiple_of_the_btc_step() -> None:
    # Every BTC quantity from 0 to 2 in steps of 1e-5, written as decimals, is kept as it is,
    # and a hair below it floors to the step under it.
    for k in range(0, 200_001, 7):
        qty = float(f"{k}e-5")
        assert floor_to_step(qty, 0.00001) == qty
        if k:
            assert floor_to_step(qty * (1 - 1e-7), 0.00001) == float(f"{k - 1}e-5")


def test_floor_to_step_large_quantities() -> None:
    assert floor_to_step(296.84252, 0.00001) == 296.84252
    assert floor_to_step(5_982_755.8, 0.1) == 5_982_755.8
    assert violation(5_982_755.8, 0.5, POL) is None


def test_round_to_tick_non_decimal_tick() -> None:
    assert round_to_tick(0.25, 0.25) == 0.25
    assert round_to_tick(7.5, 2.5) == 7.5


def test_violation_accepts_a_valid_order() -> None:
    assert violation(0.00012, 61_000.0, BTC) is None
    assert violation(0.3, 20.0, POL) is None  # 0.3 is a multiple of 0.1 despite floats


@pytest.mark.parametrize(
    ("qty", "price", "rules", "fragment"),
    [
        (0.0, 61_000.0, BTC, "not positive"),
        (-0.001, 61_000.0, BTC, "not positive"),
        (float("nan"), 61_000.0, BTC, "not positive"),
        (float("inf"), 61_000.0, BTC, "not positive"),
        (0.000009, 1_000_000.0, BTC, "below min_qty"),
        (0.000125, 61_000.0, BTC, "not a multiple of step_size"),
        (0.35, 20.0, POL, "not a multiple of step_size"),
        (0.00008, 61_000.0, BTC, "below min_notional"),  # 4.88 USDT
        (0.1, 49.9, POL, "below min_notional"),
    ],
)
def test_violation_reasons(qty: float, price: float, rules: MarketRules, fragment: str) -> None:
    why = violation(qty, price, rules)
    assert why is not None and fragment in why


def test_min_notional_is_inclusive() -> None:
    assert violation(0.0001, 50_000.0, BTC) is None  # exactly 5 USDT


def test_max_qty_and_price_tick() -> None:
    small = BTC.model_copy(update={"max_qty": 2.0})
    assert violation(2.0, 50_000.0, small) is None
    assert violation(2.00001, 50_000.0, small) == "quantity 2.00001 above max_qty 2.0"
    assert price_violation(49_900.01, BTC) is None
    assert price_violation(49_900.005, BTC) == "price 49900.005 not a multiple of tick_size 0.01"
    assert price_violation(0.12345, POL) == "price 0.12345 not a multiple of tick_size 0.0001"
    assert price_violation(0.1234, POL) is None
