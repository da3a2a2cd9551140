"""No look-ahead: a feature at bar t depends on bars <= t only.

For a random t and random edits after t (prices moved, volumes changed, bars removed, which
also creates gaps), every feature at every bar <= t, batch and incremental, must stay exactly
what it was.
The window is 1,600 real BTC/USDT minutes, enough for every 15m feature to warm up, so the
property is checked on valid values and not just on NaN.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scalpd.data.bars import BarColumns
from scalpd.data.parquet import read_parquet
from scalpd.features import batch
from scalpd.features.incremental import replay
from scalpd.features.spec import FEATURE_NAMES
from tests.conftest import shared_file

N_BARS = 1_600


@lru_cache(maxsize=1)
def _window() -> tuple[BarColumns, np.ndarray, np.ndarray]:
    bars = read_parquet(shared_file("binance-spot/BTCUSDT-1m-2024.parquet"))
    start = int(
        np.searchsorted(bars.open_time, np.datetime64("2024-05-06T00:07", "ms").astype(np.int64))
    )
    window = bars.take(slice(start, start + N_BARS))
    return window, batch.compute(window).values, replay([window])[window.symbol]


def _edited(bars: BarColumns, t: int, seed: int, drop_share: float) -> BarColumns:
    """Bars after t scaled in price (OHLC together, so they stay valid), with new volumes,
    and some removed."""
    rng = np.random.default_rng(seed)
    n = len(bars)
    after = np.arange(n) > t
    scale = np.where(after, np.exp(rng.normal(0.0, 0.01, n)), 1.0)
    vol_scale = np.where(after, rng.uniform(0.1, 10.0, n), 1.0)
    keep = ~after | (rng.random(n) >= drop_share)
    edited = BarColumns(
        bars.symbol,
        bars.open_time,
        bars.open * scale,
        bars.high * scale,
        bars.low * scale,
        bars.close * scale,
        bars.volume * vol_scale,
        bars.quote_volume * vol_scale * scale,
        bars.trades,
        bars.taker_buy_volume * vol_scale * rng.uniform(0.0, 1.0, n) ** after,
    )
    return edited.take(keep)


@settings(derandomize=True, max_examples=12, deadline=None)
@given(
    t=st.integers(0, N_BARS - 2),
    seed=st.integers(0, 2**32 - 1),
    drop_share=st.sampled_from([0.0, 0.01, 0.3]),
)
def test_features_at_t_ignore_every_later_bar(t: int, seed: int, drop_share: float) -> None:
    bars, batch_before, incr_before = _window()
    edited = _edited(bars, t, seed, drop_share)
    assert np.array_equal(edited.open_time[: t + 1], bars.open_time[: t + 1])
    batch_after = batch.compute(edited).values
    incr_after = replay([edited])[edited.symbol]
    np.testing.assert_array_equal(batch_after[: t + 1], batch_before[: t + 1])
    np.testing.assert_array_equal(incr_after[: t + 1], incr_before[: t + 1])
    if t >= 1_100:  # past the slowest warm-up: the property holds on valid 15m values too
        assert not np.isnan(batch_before[t, FEATURE_NAMES.index("bb_squeeze_20_15m")])
    # The edits do reach later rows (the test would prove nothing otherwise).
    if t < N_BARS - 100:
        assert not np.array_equal(batch_after[-1], batch_before[-1], equal_nan=True)


@settings(derandomize=True, max_examples=6, deadline=None)
@given(t=st.integers(100, 1_000), seed=st.integers(0, 2**32 - 1))
def test_cross_asset_features_at_t_ignore_later_bars(t: int, seed: int) -> None:
    """Two symbols: edits after t in one of them change neither symbol's row t."""
    btc = read_parquet(shared_file("binance-spot/BTCUSDT-1m-2024.parquet"))
    eth = read_parquet(shared_file("binance-spot/ETHUSDT-1m-windows.parquet"))
    start = np.datetime64("2024-10-02T00:00", "ms").astype(np.int64)
    stop = start + 1_200 * 60_000
    btc = btc.take((btc.open_time >= start) & (btc.open_time < stop))
    eth = eth.take((eth.open_time >= start) & (eth.open_time < stop))
    before = batch.compute_many([btc, eth])
    after = batch.compute_many([btc, _edited(eth, t, seed, 0.2)])
    for symbol in (btc.symbol, eth.symbol):
        np.testing.assert_array_equal(after[symbol].values[: t + 1], before[symbol].values[: t + 1])
    assert not np.isnan(before[btc.symbol].column("xcorr_mean_60_1m")[t])
