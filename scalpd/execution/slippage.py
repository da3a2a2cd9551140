"""What a taker fill pays beyond the price it meets: half the spread, then market impact.

- Half the spread: from the recorded book where there is one, else `sim.half_spread_bps`;
  never less than half a tick (a spread cannot be narrower than one tick). 0 turns spread
  costs off: only for comparing with an exchange that fills at the bar's prices (the fake one).
- Impact, the square-root law: `impact_bps = k * sigma_bps * sqrt(qty / bar_volume)`, with
  sigma the Parkinson volatility of the fill bar, `ln(high / low) / sqrt(4 ln 2)`, in bps, and
  k = `sim.impact_coefficient` (empirical studies find k of order 1). Capped at
  `sim.max_impact_bps`; a bar without volume pays the cap (nothing to trade against). A
  coefficient of 0 turns impact off.

Both move the price against the trader: up for a buy, down for a sell. Pure: no I/O.
"""

from __future__ import annotations

import math

from scalpd.config.settings import SimSettings
from scalpd.events import Side

_PARKINSON = 1.0 / math.sqrt(4.0 * math.log(2.0))


def parkinson_sigma_bps(high: float, low: float) -> float:
    """One bar's Parkinson volatility, bps."""
    if not (low > 0.0 and high >= low):
        return 0.0
    return math.log(high / low) * _PARKINSON * 1e4


class SlippageModel:
    __slots__ = ("half_spread_bps", "impact_coefficient", "max_impact_bps")

    def __init__(
        self, half_spread_bps: float, impact_coefficient: float, max_impact_bps: float
    ) -> None:
        self.half_spread_bps = half_spread_bps
        self.impact_coefficient = impact_coefficient
        self.max_impact_bps = max_impact_bps

    @classmethod
    def from_settings(cls, sim: SimSettings) -> SlippageModel:
        return cls(sim.half_spread_bps, sim.impact_coefficient, sim.max_impact_bps)

    def half_spread(self, price: float, tick_size: float) -> float:
        """Half the spread in bps at `price`, from the configured value."""
        if self.half_spread_bps == 0.0:
            return 0.0
        return max(self.half_spread_bps, 0.5 * tick_size / price * 1e4)

    def impact_bps(self, qty: float, bar_volume: float, high: float, low: float) -> float:
        if self.impact_coefficient == 0.0:
            return 0.0
        if not bar_volume > 0.0:  # zero or NaN: no liquidity known
            return self.max_impact_bps
        sigma = parkinson_sigma_bps(high, low)
        impact = self.impact_coefficient * sigma * math.sqrt(qty / bar_volume)
        return min(impact, self.max_impact_bps)


def against(price: float, side: Side, bps: float) -> float:
    """`price` moved `bps` against a trader on `side`."""
    return price * (1 + bps / 1e4) if side is Side.BUY else price * (1 - bps / 1e4)
