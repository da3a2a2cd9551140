"""Exchange order rules (tick, lot step, minimums) as pure functions shared by every broker."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

from scalpd.config.settings import MarketRules


def _decimals(step: float) -> int:
    # Decimal places of the step as written: 0.01 -> 2, 1e-05 -> 5, 0.25 -> 2, 1.0 -> 0.
    return max(0, -Decimal(repr(step)).normalize().as_tuple().exponent)


def round_to_tick(price: float, tick_size: float) -> float:
    """Nearest price the exchange accepts; a price half-way between two ticks rounds up.

    Decided on the decimal value as written (repr), so 40331.935 is a tie whatever its binary
    representation, and replay and live agree on it.
    """
    ticks = (Decimal(repr(price)) / Decimal(repr(tick_size))).to_integral_value(ROUND_HALF_UP)
    return round(float(ticks) * tick_size, _decimals(tick_size))


def floor_to_step(qty: float, step_size: float) -> float:
    """Largest quantity the exchange accepts that is not above `qty`."""
    steps = qty / step_size
    nearest = round(steps)
    # Float division leaves noise (0.3/0.1 = 2.9999999999999996) that grows with the size of
    # the quotient: a value within a relative 1e-12 of a whole step is that step.
    whole = nearest if abs(steps - nearest) <= 1e-12 * max(1.0, abs(steps)) else math.floor(steps)
    return round(whole * step_size, _decimals(step_size))


def violation(qty: float, price: float, rules: MarketRules) -> str | None:
    """Why the exchange would reject an order of `qty` at about `price`, or None."""
    if not (qty > 0 and math.isfinite(qty)):
        return f"quantity {qty} is not positive"
    if qty < rules.min_qty:
        return f"quantity {qty} below min_qty {rules.min_qty}"
    if qty > rules.max_qty:
        return f"quantity {qty} above max_qty {rules.max_qty}"
    if abs(floor_to_step(qty, rules.step_size) - qty) > rules.step_size * 1e-6:
        return f"quantity {qty} not a multiple of step_size {rules.step_size}"
    if qty * price < rules.min_notional_usdt:
        return f"notional {qty * price:.4f} below min_notional {rules.min_notional_usdt}"
    return None


def price_violation(price: float, rules: MarketRules) -> str | None:
    """Why the exchange would reject a limit or stop price, or None."""
    if not (price > 0 and math.isfinite(price)):
        return f"price {price} is not positive"
    if round_to_tick(price, rules.tick_size) != price:
        return f"price {price} not a multiple of tick_size {rules.tick_size}"
    return None


def sellable_qty(held_base: float, step: float) -> float:
    """What an exit may sell: the base asset our trading holds (bought, less base-asset fees
    and what was sold, dust of earlier exits included), floored to the lot step. Both brokers
    size exits with it."""
    return floor_to_step(max(held_base, 0.0), step)
