"""Trading fees as Binance spot charges them. Pure: no I/O.

- The rate is the account tier's maker or taker rate (`fees.tiers[fees.tier]`).
- Paid in BNB (`fees.pay_in_bnb`): `fees.bnb_discount` off, charged in BNB converted at the
  fixed `fees.bnb_price_usdt` (BNB's own price moves are not modelled; on BNB/USDT itself the
  fill price is BNB's price).
- Otherwise in the asset received: a buy's fee in the base asset (the account holds the bought
  quantity less the fee), a sell's in USDT.
"""

from __future__ import annotations

from typing import NamedTuple

from scalpd.config.settings import FeesSettings
from scalpd.events import Side

QUOTE_ASSET = "USDT"
BNB = "BNB"


class FeeCharge(NamedTuple):
    amount: float  # in `asset`
    asset: str
    value_usdt: float


def base_asset(symbol: str) -> str:
    return symbol.partition("/")[0]


def fee_value_usdt(
    fee: float, fee_asset: str, symbol: str, price: float, bnb_price_usdt: float
) -> float:
    """USDT value of a fee charged in `fee_asset` on a fill of `symbol` at `price`."""
    if fee_asset == QUOTE_ASSET:
        return fee
    if fee_asset == base_asset(symbol):
        return fee * price
    if fee_asset == BNB:
        return fee * bnb_price_usdt
    raise ValueError(f"fee in {fee_asset} on {symbol}: no price to value it")


class FeeSchedule:
    """`FeesSettings` read once into plain floats: the broker prices every fill with it."""

    __slots__ = ("maker_rate", "taker_rate", "pay_in_bnb", "bnb_price_usdt")

    def __init__(self, fees: FeesSettings) -> None:
        tier = fees.tiers[fees.tier]
        discount = fees.bnb_discount if fees.pay_in_bnb else 0.0
        self.maker_rate = tier.maker_bps * (1 - discount) / 1e4
        self.taker_rate = tier.taker_bps * (1 - discount) / 1e4
        self.pay_in_bnb = fees.pay_in_bnb
        self.bnb_price_usdt = fees.bnb_price_usdt

    def charge(
        self, side: Side, qty: float, price: float, liquidity: str, symbol: str
    ) -> FeeCharge:
        rate = self.maker_rate if liquidity == "maker" else self.taker_rate
        value = qty * price * rate
        if self.pay_in_bnb:
            bnb_price = price if base_asset(symbol) == BNB else self.bnb_price_usdt
            return FeeCharge(value / bnb_price, BNB, value)
        if side is Side.BUY:
            return FeeCharge(qty * rate, base_asset(symbol), value)
        return FeeCharge(value, QUOTE_ASSET, value)


def fee_charge(
    side: Side, qty: float, price: float, liquidity: str, symbol: str, fees: FeesSettings
) -> FeeCharge:
    """(fee amount, fee asset, fee value in USDT) of filling `qty` of `symbol` at `price`."""
    return FeeSchedule(fees).charge(side, qty, price, liquidity, symbol)
