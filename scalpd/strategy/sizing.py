"""Position sizing rules: how much quote currency an entry may spend. Pure, no I/O.

- fixed_fraction: a share of equity (`position_fraction`);
- fixed_size: the same notional every time (`fixed_size_usdt`), never more than the share of
  equity `position_fraction` allows;
- volatility_scaled: the share of equity scaled down when one-minute volatility is above
  `vol_target_bps`: `position_fraction * min(1, vol_target_bps / sigma_bps)`, where sigma_bps is
  an exponentially weighted standard deviation of one-minute log returns (half-life
  `vol_halflife_bars`). Until a symbol has seen that many bars since its start or its last gap,
  its volatility is unknown and it does not trade.
"""

from __future__ import annotations

import math
from typing import Protocol

from scalpd.config.settings import StrategySettings
from scalpd.events import Bar


class Sizer(Protocol):
    def on_bar(self, bar: Bar) -> None:
        """Every closed bar, before any sizing at it."""

    def on_gap(self, symbol: str) -> None:
        """Bars are missing: a return across the gap is not a one-minute return."""

    def notional_usdt(self, symbol: str, equity_usdt: float) -> float | None:
        """Quote to spend on an entry now; None when the rule cannot size yet."""


class FixedFraction:
    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def on_bar(self, bar: Bar) -> None:
        return None

    def on_gap(self, symbol: str) -> None:
        return None

    def notional_usdt(self, symbol: str, equity_usdt: float) -> float | None:
        return equity_usdt * self.fraction


class FixedSize(FixedFraction):
    def __init__(self, size_usdt: float, max_fraction: float) -> None:
        super().__init__(max_fraction)
        self.size_usdt = size_usdt

    def notional_usdt(self, symbol: str, equity_usdt: float) -> float | None:
        return min(self.size_usdt, equity_usdt * self.fraction)


class _Vol:
    __slots__ = ("last_close", "var", "count")

    def __init__(self, close: float) -> None:
        self.last_close = close
        self.var = 0.0
        self.count = 0


class VolatilityScaled(FixedFraction):
    def __init__(self, fraction: float, target_bps: float, halflife_bars: int) -> None:
        super().__init__(fraction)
        self.target_bps = target_bps
        self.halflife_bars = halflife_bars
        self._alpha = 1.0 - 0.5 ** (1.0 / halflife_bars)
        self._vol: dict[str, _Vol] = {}

    def on_bar(self, bar: Bar) -> None:
        st = self._vol.get(bar.symbol)
        if st is None:
            self._vol[bar.symbol] = _Vol(bar.close)
            return
        r = math.log(bar.close / st.last_close)
        st.var += self._alpha * (r * r - st.var)
        st.last_close = bar.close
        st.count += 1

    def on_gap(self, symbol: str) -> None:
        self._vol.pop(symbol, None)

    def sigma_bps(self, symbol: str) -> float | None:
        st = self._vol.get(symbol)
        if st is None or st.count < self.halflife_bars:
            return None
        return math.sqrt(st.var) * 1e4

    def notional_usdt(self, symbol: str, equity_usdt: float) -> float | None:
        sigma = self.sigma_bps(symbol)
        if sigma is None:
            return None
        scale = 1.0 if sigma <= self.target_bps else self.target_bps / sigma
        return equity_usdt * self.fraction * scale


def build_sizer(settings: StrategySettings) -> Sizer:
    if settings.sizing == "fixed_size":
        return FixedSize(settings.fixed_size_usdt, settings.position_fraction)
    if settings.sizing == "volatility_scaled":
        return VolatilityScaled(
            settings.position_fraction, settings.vol_target_bps, settings.vol_halflife_bars
        )
    return FixedFraction(settings.position_fraction)
