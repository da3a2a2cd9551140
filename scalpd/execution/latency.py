"""Order latency and where an order decided at a bar close meets the market.

On minute bars: an order decided at the close of bar t reaches the exchange `latency_ms` into
bar t+1. The bar does not say where the price was then, so it is taken to have moved from the
open towards the bar's extreme against the order (the high for a buy, the low for a sell) by
`sqrt(latency_ms / 60 000)` of that distance: a diffusion covers a share of its range growing
with the square root of time. 50 ms moves 2.9% of the way; a whole minute all of it.

With `latency_jitter_ms` > 0 each order draws its latency uniformly in latency +- jitter from
one `random.Random(seed)`, once per order in submission order: a draw never depends on data
that comes after it.
"""

from __future__ import annotations

import math
import random

from scalpd.config.settings import SimSettings
from scalpd.events import Side

MINUTE_MS = 60_000.0


class Latency:
    __slots__ = ("latency_ms", "jitter_ms", "_rng")

    def __init__(self, latency_ms: float, jitter_ms: float = 0.0, seed: int = 0) -> None:
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self._rng = random.Random(seed)

    @classmethod
    def from_settings(cls, sim: SimSettings) -> Latency:
        return cls(sim.latency_ms, sim.latency_jitter_ms, sim.seed)

    def draw_ms(self) -> float:
        """The latency of the next order submitted."""
        if self.jitter_ms > 0.0:
            return self._rng.uniform(
                self.latency_ms - self.jitter_ms, self.latency_ms + self.jitter_ms
            )
        return self.latency_ms


def arrival_price(side: Side, latency_ms: float, open_: float, high: float, low: float) -> float:
    """The price an order sent at the previous close meets `latency_ms` into this bar."""
    share = math.sqrt(min(latency_ms, MINUTE_MS) / MINUTE_MS)
    if side is Side.BUY:
        return open_ + share * (high - open_)
    return open_ - share * (open_ - low)
