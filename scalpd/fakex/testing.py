"""Helpers for tests that drive the real ccxt client against a FakeExchange."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import ccxt.pro
import numpy as np

from scalpd.fakex.server import FakeExchange
from scalpd.fakex.timeline import BAR_MS

# 2024-01-01T00:00:00Z
DEFAULT_START_MS = 1_704_067_200_000


def bars_from_prices(
    ohlc: Sequence[tuple[float, float, float, float]],
    *,
    start_ms: int = DEFAULT_START_MS,
    volume: float = 2.0,
) -> dict[str, np.ndarray]:
    """Bar columns from explicit (open, high, low, close) rows, one minute apart."""
    prices = np.asarray(ohlc, dtype=np.float64).reshape(-1, 4)
    n = len(prices)
    return {
        "open_time": start_ms + BAR_MS * np.arange(n, dtype=np.int64),
        "open": prices[:, 0],
        "high": prices[:, 1],
        "low": prices[:, 2],
        "close": prices[:, 3],
        "volume": np.full(n, volume),
    }


def random_walk_bars(
    n: int, *, seed: int = 0, start_ms: int = DEFAULT_START_MS, price: float = 42_000.0
) -> dict[str, np.ndarray]:
    """n bars of a cent-rounded random walk with every optional Binance column."""
    rng = np.random.default_rng(seed)
    close = np.round(price + np.cumsum(rng.normal(0.0, price * 5e-4, n)), 2)
    open_ = np.concatenate([[price], close[:-1]])
    high = np.round(np.maximum(open_, close) + rng.uniform(0, price * 3e-4, n), 2)
    low = np.round(np.minimum(open_, close) - rng.uniform(0, price * 3e-4, n), 2)
    volume = np.round(rng.uniform(0.5, 20.0, n), 5)
    taker_buy = np.round(volume * rng.uniform(0.2, 0.8, n), 5)
    return {
        "open_time": start_ms + BAR_MS * np.arange(n, dtype=np.int64),
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
        "quote_volume": np.round(volume * close, 4),
        "trades": rng.integers(10, 2_000, n),
        "taker_buy_base": taker_buy,
        "taker_buy_quote": np.round(taker_buy * close, 4),
    }


def exchange_section(fx: FakeExchange, api_key: str, api_secret: str, **extra: object) -> dict:
    """The `[exchange]` settings of a daemon trading on `fx`: its URLs, the keys, and a short
    reconnect backoff (tests drop connections on purpose); `extra` adds or overrides keys."""
    return {
        "rest_url": fx.base_url,
        "ws_url": fx.ws_url,
        "api_key": api_key,
        "api_secret": api_secret,
        "reconnect_initial_backoff_s": 0.05,
        **extra,
    }


async def until_unsubscribed(fx: FakeExchange, timeout_s: float = 60.0) -> None:
    """Until no WebSocket stream is subscribed on `fx` (a stopped or killed daemon's are gone
    from the exchange's side too), so that the next subscription seen is a new daemon's."""
    async with asyncio.timeout(timeout_s):
        while fx.subscriptions:
            await asyncio.sleep(0.01)


@asynccontextmanager
async def ccxt_client(fx: FakeExchange, **config: object) -> AsyncIterator[ccxt.pro.binance]:
    """A ccxt.pro.binance talking only to `fx`, markets loaded, closed on exit."""
    exchange = ccxt.pro.binance(dict(config))
    fx.configure_ccxt(exchange)
    try:
        await exchange.load_markets()
        yield exchange
    finally:
        await exchange.close()


@asynccontextmanager
async def running(fx: FakeExchange) -> AsyncIterator[FakeExchange]:
    """`fx` serving on a free port, stopped on exit."""
    await fx.start()
    try:
        yield fx
    finally:
        await fx.stop()
