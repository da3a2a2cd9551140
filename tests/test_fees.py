"""Fees by Binance spot tier, in BNB or in the asset received, and their configuration."""

from __future__ import annotations

import pytest

from scalpd.config.settings import ConfigError, FeesSettings, load_settings
from scalpd.events import Side
from scalpd.execution.fees import FeeCharge, fee_charge, fee_value_usdt

VIP0 = FeesSettings()
VIP3 = FeesSettings(tier="VIP3")


def test_vip0_taker_buy_pays_in_the_base_asset() -> None:
    # 0.1 BTC at 50,000: 10 bps of 0.1 BTC = 0.0001 BTC, worth 5.00 USDT.
    got = fee_charge(Side.BUY, 0.1, 50_000.0, "taker", "BTC/USDT", VIP0)
    assert got == FeeCharge(pytest.approx(0.0001), "BTC", pytest.approx(5.0))


def test_vip0_sell_pays_in_usdt() -> None:
    got = fee_charge(Side.SELL, 0.1, 50_000.0, "maker", "BTC/USDT", VIP0)
    assert got == FeeCharge(pytest.approx(5.0), "USDT", pytest.approx(5.0))


def test_vip3_maker_and_taker_differ() -> None:
    # VIP3: maker 4.2 bps, taker 6 bps, of 5,000 USDT.
    maker = fee_charge(Side.SELL, 0.1, 50_000.0, "maker", "BTC/USDT", VIP3)
    taker = fee_charge(Side.SELL, 0.1, 50_000.0, "taker", "BTC/USDT", VIP3)
    assert (maker.amount, taker.amount) == (pytest.approx(2.1), pytest.approx(3.0))
    buy = fee_charge(Side.BUY, 0.1, 50_000.0, "taker", "BTC/USDT", VIP3)
    assert buy == FeeCharge(pytest.approx(0.00006), "BTC", pytest.approx(3.0))
    assert (VIP3.maker_bps, VIP3.taker_bps) == (4.2, 6.0)


def test_bnb_discount_and_asset() -> None:
    fees = FeesSettings(pay_in_bnb=True, bnb_price_usdt=500.0)
    # 10 bps less 25% = 7.5 bps of 5,000 USDT = 3.75 USDT = 0.0075 BNB at 500, on either side.
    for side in (Side.BUY, Side.SELL):
        got = fee_charge(side, 0.1, 50_000.0, "taker", "BTC/USDT", fees)
        assert got == FeeCharge(pytest.approx(0.0075), "BNB", pytest.approx(3.75))
    assert fees.taker_bps == pytest.approx(7.5)
    # On BNB/USDT itself the fill price is BNB's: 1 BNB at 600, 7.5 bps = 0.45 USDT = 0.00075 BNB.
    got = fee_charge(Side.BUY, 1.0, 600.0, "taker", "BNB/USDT", fees)
    assert got == FeeCharge(pytest.approx(0.00075), "BNB", pytest.approx(0.45))


def test_fee_value_in_usdt() -> None:
    assert fee_value_usdt(0.0001, "BTC", "BTC/USDT", 50_000.0, 500.0) == pytest.approx(5.0)
    assert fee_value_usdt(2.0, "USDT", "BTC/USDT", 50_000.0, 500.0) == 2.0
    assert fee_value_usdt(0.01, "BNB", "BTC/USDT", 50_000.0, 600.0) == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"fees": {"tier": "VIP11"}}, "'fees.tier' has bad value 'VIP11': unknown fee tier; "
         "allowed: VIP0, VIP1, VIP2, VIP3, VIP4, VIP5, VIP6, VIP7, VIP8, VIP9"),
        ({"fees": {"bnb_discount": 1.0}}, "'fees.bnb_discount' has bad value 1.0"),
        ({"sim": {"latency_ms": -1}}, "'sim.latency_ms' has bad value -1"),
        ({"sim": {"latency_ms": 1500}}, "'sim.latency_ms' has bad value 1500"),
        ({"sim": {"latency_ms": 20, "latency_jitter_ms": 30}}, "-10..50 ms; allowed: 0..1000"),
        ({"sim": {"limit_queue": "front"}}, "'sim.limit_queue' has bad value 'front'"),
        ({"sim": {"max_participation": 0}}, "'sim.max_participation' has bad value 0"),
    ],
)  # fmt: skip
def test_bad_cost_settings_are_one_line_config_errors(overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, overrides)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
