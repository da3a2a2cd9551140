"""Exchange order rules (tick, lot step, minimums) as pure functions shared by every broker."""

from __future__ import annotations

import math

from scalpd.config.settings import MarketRules


def _decimals(step: float) -> int:
    # 0.01 -> 2, 1e-05 -> 5, 1.0 -> 0: enough to print a multiple of `step` exactly.
    return max(0, -math.floor(math.log10(step) + 1e-9))


def round_to_tick(price: float, tick_size: float) -> float:
    """Nearest price the exchange accepts."""
    return round(round(price / tick_size) * tick_size, _decimals(tick_size))


def floor_to_step(qty: float, step_size: float) -> float:
    """Largest quantity the exchange accepts that is not above `qty`."""
    # The 1e-9 keeps 0.3/0.1 = 2.9999999999999996 from flooring to 2.
    return round(math.floor(qty / step_size + 1e-9) * step_size, _decimals(step_size))


def violation(qty: float, price: float, rules: MarketRules) -> str | None:
    """Why the exchange would reject an order of `qty` at about `price`, or None."""
    if not (qty > 0 and math.isfinite(qty)):
        return f"quantity {qty} is not positive"
    if qty < rules.min_qty:
        return f"quantity {qty} below min_qty {rules.min_qty}"
    if abs(floor_to_step(qty, rules.step_size) - qty) > rules.step_size * 1e-6:
        return f"quantity {qty} not a multiple of step_size {rules.step_size}"
    if qty * price < rules.min_notional_usdt:
        return f"notional {qty * price:.4f} below min_notional {rules.min_notional_usdt}"
    return None
