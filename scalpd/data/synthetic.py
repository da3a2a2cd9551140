"""A deterministic synthetic 1-minute market: the embedded default that needs no download.

Returns follow a GARCH(1,1) with Student-t shocks, so volatility clusters as it does in BTC
minute bars; volume rises with the size of the move; taker-buy volume leans with its sign.
Its symbol says SYN so that no report can mistake it for a real market.
"""

from __future__ import annotations

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


def synthetic_label(days: float, seed: int) -> str:
    return f"SYNTHETIC market (seed={seed}, {days:g} days of 1m bars)"


def generate(days: float, seed: int, start: str, start_price: float = 40_000.0) -> BarColumns:
    n = int(days * 24 * 60)
    rng = np.random.default_rng(seed)
    shocks = rng.standard_t(_DOF, size=n) / np.sqrt(_DOF / (_DOF - 2))
    returns = np.empty(n)
    variance = _OMEGA / (1 - _ALPHA - _BETA)
    for i in range(n):  # the recursion is sequential by nature; 43,200 steps take ~20 ms
        r = np.sqrt(variance) * shocks[i]
        returns[i] = r
        variance = _OMEGA + _ALPHA * r * r + _BETA * variance
    close = start_price * np.exp(np.cumsum(returns))
    open_ = np.concatenate([[start_price], close[:-1]])
    sigma = np.abs(returns) + 0.0004
    high = np.maximum(open_, close) * (1 + sigma * rng.uniform(0.0, 0.8, n))
    low = np.minimum(open_, close) * (1 - sigma * rng.uniform(0.0, 0.8, n))
    volume = rng.gamma(2.0, 6.0, n) * (1 + 400 * np.abs(returns))
    buy_share = np.clip(0.5 + 60 * returns + rng.normal(0, 0.08, n), 0.02, 0.98)
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
