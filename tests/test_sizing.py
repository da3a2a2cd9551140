"""Sizing rules, with hand-computed sizes."""

from __future__ import annotations

import math

import pytest

from scalpd.config.settings import StrategySettings
from scalpd.events import Bar
from scalpd.strategy.sizing import FixedFraction, FixedSize, VolatilityScaled, build_sizer


def bar(close: float, minute: int = 0, symbol: str = "BTC/USDT") -> Bar:
    return Bar(symbol, minute * 60_000, close, close, close, close, 1.0, close, 1, 0.5)


def test_fixed_fraction_spends_a_share_of_equity() -> None:
    assert FixedFraction(0.5).notional_usdt("BTC/USDT", 1_000.0) == 500.0


def test_fixed_size_is_capped_by_the_share_of_equity() -> None:
    sizer = FixedSize(1_000.0, 0.95)
    assert sizer.notional_usdt("BTC/USDT", 10_000.0) == 1_000.0
    # A $100 account cannot spend $1,000: 95 % of its equity.
    assert sizer.notional_usdt("BTC/USDT", 100.0) == pytest.approx(95.0)


def test_volatility_scaled_waits_for_its_estimate_then_shrinks_in_high_volatility() -> None:
    # Half-life 2 bars: alpha = 1 - 0.5 ** 0.5.
    sizer = VolatilityScaled(0.9, target_bps=10.0, halflife_bars=2)
    alpha = 1 - 0.5**0.5
    sizer.on_bar(bar(100.0, 0))
    assert sizer.notional_usdt("BTC/USDT", 1_000.0) is None
    sizer.on_bar(bar(100.2, 1))  # +20 bps
    assert sizer.notional_usdt("BTC/USDT", 1_000.0) is None
    sizer.on_bar(bar(100.0, 2))  # -20 bps
    r1, r2 = math.log(100.2 / 100.0), math.log(100.0 / 100.2)
    var = alpha * r1 * r1
    var += alpha * (r2 * r2 - var)
    sigma_bps = math.sqrt(var) * 1e4
    assert sizer.sigma_bps("BTC/USDT") == pytest.approx(sigma_bps)
    assert sigma_bps > 10.0
    assert sizer.notional_usdt("BTC/USDT", 1_000.0) == pytest.approx(900.0 * 10.0 / sigma_bps)
    # Calm market: full size.
    calm = VolatilityScaled(0.9, target_bps=50.0, halflife_bars=2)
    for i, close in enumerate((100.0, 100.2, 100.0)):
        calm.on_bar(bar(close, i))
    assert calm.notional_usdt("BTC/USDT", 1_000.0) == pytest.approx(900.0)


def test_volatility_estimate_restarts_after_a_gap() -> None:
    sizer = VolatilityScaled(0.9, target_bps=10.0, halflife_bars=2)
    for i, close in enumerate((100.0, 100.1, 100.2)):
        sizer.on_bar(bar(close, i))
    assert sizer.sigma_bps("BTC/USDT") is not None
    sizer.on_gap("BTC/USDT")
    assert sizer.sigma_bps("BTC/USDT") is None


def test_build_sizer_follows_the_settings() -> None:
    assert type(build_sizer(StrategySettings())) is FixedFraction
    assert type(build_sizer(StrategySettings(sizing="fixed_size"))) is FixedSize
    assert type(build_sizer(StrategySettings(sizing="volatility_scaled"))) is VolatilityScaled
