"""A deterministic synthetic 1-minute market: the embedded default that needs no download.

Returns follow a GARCH(1,1) with Student-t shocks, so volatility clusters as it does in BTC
minute bars; volume rises with the size of the move; taker-buy volume leans with its sign.
Its symbol says SYN so that no report can mistake it for a real market.

Optionally (both off by default, where the output is byte for byte what it always was) it
plants something a model can learn, and a change of regime that breaks it:
- `flow_drift_sigmas`: a hidden order-flow pressure p (AR(1), persistence 0.9, unit variance)
  shows in the taker-buy share (+0.1 p) and pushes the next minutes' returns: the mean of
  the next return is flow_drift_sigmas * p in units of its own volatility. Informed flow: a
  short-horizon pattern the features (taker-buy share, recent returns) can see at bar t,
  before the move. It is drawn from its own seeded stream, so turning it on leaves the
  GARCH shocks, ranges and volumes as they were.
- `regime_change`: from one bar on, the pattern's strength (and sign: a negative value is
  flow that is faded, the opposite bet) and the volatility change. A model trained before
  the change is then confidently wrong: the case online learning exists for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from scalpd.data.bars import BarColumns
from scalpd.events import BAR_INTERVAL_MS

SYNTHETIC_SYMBOL = "SYNBTC/USDT"

# GARCH(1,1) per minute, in the range fitted to BTC/USDT 1m returns: unconditional volatility
# about 0.08% a minute, persistence alpha + beta = 0.97.
_OMEGA = 0.0008**2 * (1 - 0.97)
_ALPHA = 0.07
_BETA = 0.90
_DOF = 4.0
# The hidden flow pressure: persistent over a few minutes (half-life ~7 bars), as order-flow
# imbalance is, and visible in the taker-buy share with a noise of about its own size.
_PRESSURE_PERSISTENCE = 0.9
_PRESSURE_FLOW_SHARE = 0.1
_PRESSURE_SEED_TAG = 0x5EED_F10


@dataclass(frozen=True)
class RegimeChange:
    """From bar int(at_fraction * n) on, the flow pattern's strength becomes
    `flow_drift_sigmas_after` and the volatility is scaled by `volatility_mult` (the GARCH
    constant is scaled by its square, so the volatility moves there over ~30 bars, the
    model's persistence, not in one jump)."""

    at_fraction: float = 0.5
    flow_drift_sigmas_after: float = 0.0
    volatility_mult: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.at_fraction <= 1.0:
            raise ValueError(f"regime change at_fraction must be in [0, 1], got {self.at_fraction}")
        if not self.volatility_mult > 0:
            raise ValueError(
                f"regime change volatility_mult must be > 0, got {self.volatility_mult}"
            )

    def bar_index(self, n_bars: int) -> int:
        """The first bar of the new regime."""
        return int(self.at_fraction * n_bars)


def synthetic_label(days: float, seed: int) -> str:
    return f"SYNTHETIC market (seed={seed}, {days:g} days of 1m bars)"


def _pressure(n: int, seed: int) -> np.ndarray:
    """The hidden flow pressure: a unit-variance AR(1), from a stream of its own."""
    z = np.random.default_rng([seed, _PRESSURE_SEED_TAG]).standard_normal(n)
    keep = np.sqrt(1 - _PRESSURE_PERSISTENCE**2)
    p = z.copy()  # p[0] ~ N(0, 1): already the stationary law
    for i in range(1, n):
        p[i] = _PRESSURE_PERSISTENCE * p[i - 1] + keep * z[i]
    return p


def generate(
    days: float,
    seed: int,
    start: str,
    start_price: float = 40_000.0,
    *,
    flow_drift_sigmas: float = 0.0,
    regime_change: RegimeChange | None = None,
) -> BarColumns:
    """`days` of 1m bars from `start`, deterministic with `seed`; see the module doc for the
    optional planted pattern (`flow_drift_sigmas`) and `regime_change`."""
    n = int(days * 24 * 60)
    rng = np.random.default_rng(seed)
    shocks = rng.standard_t(_DOF, size=n) / np.sqrt(_DOF / (_DOF - 2))
    change = regime_change.bar_index(n) if regime_change else n
    drift_sigmas = np.full(n, float(flow_drift_sigmas))
    omega = np.full(n, _OMEGA)
    if regime_change:
        drift_sigmas[change:] = regime_change.flow_drift_sigmas_after
        omega[change:] = _OMEGA * regime_change.volatility_mult**2
    planted = bool(drift_sigmas.any())
    pressure = _pressure(n, seed) if planted else np.zeros(n)
    # Bar i's drift follows the pressure at bar i-1: seen at that bar's close, before the move.
    push = np.zeros(n)
    push[1:] = drift_sigmas[1:] * pressure[:-1]
    returns = np.empty(n)
    variance = _OMEGA / (1 - _ALPHA - _BETA)
    for i in range(n):  # the recursion is sequential by nature; 43,200 steps take ~25 ms
        r = np.sqrt(variance) * (shocks[i] + push[i])  # + 0.0 when nothing is planted
        returns[i] = r
        variance = omega[i] + _ALPHA * r * r + _BETA * variance
    close = start_price * np.exp(np.cumsum(returns))
    open_ = np.concatenate([[start_price], close[:-1]])
    sigma = np.abs(returns) + 0.0004
    high = np.maximum(open_, close) * (1 + sigma * rng.uniform(0.0, 0.8, n))
    low = np.minimum(open_, close) * (1 - sigma * rng.uniform(0.0, 0.8, n))
    volume = rng.gamma(2.0, 6.0, n) * (1 + 400 * np.abs(returns))
    flow = 0.5 + 60 * returns + rng.normal(0, 0.08, n)
    if planted:
        flow += _PRESSURE_FLOW_SHARE * pressure
    buy_share = np.clip(flow, 0.02, 0.98)
    first_ms = int(datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() * 1000)
    first_ms -= first_ms % BAR_INTERVAL_MS
    mid = (high + low) / 2
    return BarColumns(
        symbol=SYNTHETIC_SYMBOL,
        open_time=first_ms + BAR_INTERVAL_MS * np.arange(n, dtype=np.int64),
        open=np.round(open_, 2),
        high=np.round(high, 2),
        low=np.round(low, 2),
        close=np.round(close, 2),
        volume=np.round(volume, 5),
        quote_volume=np.round(volume * mid, 2),
        trades=(volume * 40).astype(np.int64) + 1,
        taker_buy_volume=np.round(volume * buy_share, 5),
    )
