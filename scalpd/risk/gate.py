"""Pre-trade size limits and the `Decision` type. Pure: decides from the intent, a reference
price and the position. `RiskManager` (manager.py) adds the rest of the limits and the breakers."""

from __future__ import annotations

import math
from typing import NamedTuple

from scalpd.config.settings import RiskSettings
from scalpd.events import OrderIntent, Side


class Decision(NamedTuple):
    allowed: bool
    reason: str


ALLOWED = Decision(True, "ok")


class RiskGate:
    def __init__(self, settings: RiskSettings) -> None:
        self._max_order = settings.max_order_notional_usdt
        self._max_position = settings.max_position_notional_usdt

    def check(self, intent: OrderIntent, price: float, position_qty: float) -> Decision:
        """`price` is the last close: the best estimate of the fill when the intent is made."""
        if not (intent.qty > 0 and math.isfinite(intent.qty)):
            return Decision(False, f"quantity {intent.qty} is not positive")
        if intent.reduce_only:
            if intent.side is Side.BUY or intent.qty > position_qty * (1 + 1e-9):
                return Decision(False, "reduce-only intent would not reduce the position")
            return ALLOWED  # exits are never blocked by size limits
        notional = intent.qty * price
        if notional > self._max_order:
            return Decision(
                False, f"order notional {notional:.2f} > max_order_notional {self._max_order}"
            )
        after = (position_qty + intent.qty) * price
        if after > self._max_position:
            return Decision(
                False,
                f"position notional {after:.2f} > max_position_notional {self._max_position}",
            )
        return ALLOWED
