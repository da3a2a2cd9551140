"""Several symbols in one engine: BTC, ETH and SOL on their common window
2024-10-01 03:00 -> 2024-11-04 20:19 UTC (50,000 minutes each).

ETH and SOL bars carry no taker volume and no trade count: the features built on them are
invalid (NaN) for those symbols, never zero. The cross-asset correlation is checked against a
plain numpy computation (np.corrcoef on each window), not against the running sums.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from scalpd.data.bars import BarColumns
from scalpd.data.parquet import read_parquet
from scalpd.events import Bar
from scalpd.features import batch
from scalpd.features.incremental import FeatureEngine, SymbolFeatures, replay
from scalpd.features.spec import FEATURE_NAMES, FeatureParams
from tests.conftest import shared_file
from tests.test_features_parity import assert_parity

START_MS = int(np.datetime64("2024-10-01T03:00", "ms").astype(np.int64))
STOP_MS = int(np.datetime64("2024-11-04T20:20", "ms").astype(np.int64))
CROSS = FEATURE_NAMES.index("xcorr_mean_60_1m")
NEEDS_TAKER_OR_TRADES = ("ofi_1m", "ofi_15_1m", "trade_size_rel_60_1m")


@lru_cache(maxsize=1)
def _series() -> tuple[BarColumns, ...]:
    out = []
    for name in ("BTCUSDT-1m-2024", "ETHUSDT-1m-windows", "SOLUSDT-1m-windows"):
        bars = read_parquet(shared_file(f"binance-spot/{name}.parquet"))
        out.append(bars.take((bars.open_time >= START_MS) & (bars.open_time < STOP_MS)))
    assert [len(s) for s in out] == [50_000] * 3
    return tuple(out)


@lru_cache(maxsize=1)
def _both() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    series = _series()
    expected = {s: m.values for s, m in batch.compute_many(list(series)).items()}
    return expected, replay(list(series))


def test_three_symbols_in_one_engine_equal_batch() -> None:
    expected, got = _both()
    for symbol in expected:
        assert_parity(expected[symbol], got[symbol], FEATURE_NAMES)


def test_missing_taker_and_trade_columns_give_invalid_not_zero() -> None:
    expected, got = _both()
    for name in NEEDS_TAKER_OR_TRADES:
        f = FEATURE_NAMES.index(name)
        assert np.isnan(got["ETH/USDT"][:, f]).all() and np.isnan(got["SOL/USDT"][:, f]).all()
        assert not np.isnan(got["BTC/USDT"][1_000:, f]).any()
    # Everything that needs only OHLCV is valid for all three once warm.
    ohlcv = [i for i, n in enumerate(FEATURE_NAMES)
             if n not in NEEDS_TAKER_OR_TRADES and "tick" not in n and "spread" not in n
             and "depth" not in n and "large" not in n]  # fmt: skip
    for symbol in expected:
        assert not np.isnan(got[symbol][2_000:, ohlcv]).any(), symbol


def _direct_correlations(series: tuple[BarColumns, ...], n: int) -> dict[tuple[int, int], dict]:
    """{(i, j): {open_time: corr}} from np.corrcoef over the n minutes ending at each sampled
    time, where both symbols have every minute of the window and the minute before it."""
    closes = []
    for s in series:
        closes.append(dict(zip(s.open_time.tolist(), s.close.tolist(), strict=True)))
    times = series[0].open_time[::37].tolist()
    out: dict[tuple[int, int], dict] = {}
    for i in range(len(series)):
        for j in range(i + 1, len(series)):
            found = {}
            for t in times:
                window = [t - k * 60_000 for k in range(n, -1, -1)]  # n+1 closes, n returns
                if not all(m in closes[i] and m in closes[j] for m in window):
                    continue
                ci = np.array([closes[i][m] for m in window])
                cj = np.array([closes[j][m] for m in window])
                ri = 1e4 * np.log(ci[1:] / ci[:-1])
                rj = 1e4 * np.log(cj[1:] / cj[:-1])
                found[t] = float(np.corrcoef(ri, rj)[0, 1])
            out[(i, j)] = found
    return out


def test_cross_asset_correlation_equals_direct_numpy() -> None:
    series = _series()
    n = FeatureParams().corr_bars
    direct = _direct_correlations(series, n)
    expected, got = _both()
    checked = 0
    for k, s in enumerate(series):
        row_of = {t: r for r, t in enumerate(s.open_time.tolist())}
        for t in series[0].open_time[::37].tolist():
            pairs = [direct[tuple(sorted((k, o)))].get(t) for o in range(3) if o != k]
            pairs = [c for c in pairs if c is not None]
            if t not in row_of:
                continue
            want = float(np.mean(pairs)) if pairs else np.nan
            have = got[s.symbol][row_of[t], CROSS]
            assert np.isnan(want) == np.isnan(have), (s.symbol, t)
            if pairs:
                assert abs(have - want) <= 1e-9, (s.symbol, t, have, want)
                checked += 1
    assert checked > 3_500

    # The engine's pairwise reading, at the end of the window.
    engine = FeatureEngine([s.symbol for s in series])
    tail = [s.take(slice(len(s) - 200, len(s))) for s in series]
    for i in range(200):
        for s in tail:
            engine.on_bar(_bar(s, i))
    last = int(series[0].open_time[-1])
    for (i, j), found in direct.items():
        if last in found:
            assert abs(engine.correlation(series[i].symbol, series[j].symbol) - found[last]) < 1e-9


def _bar(s: BarColumns, i: int) -> Bar:
    return Bar(s.symbol, *(getattr(s, f)[i].item() for f in (
        "open_time", "open", "high", "low", "close", "volume", "quote_volume", "trades",
        "taker_buy_volume")))  # fmt: skip


def test_per_symbol_state_is_independent() -> None:
    """Each symbol's own features in the shared engine equal a lone SymbolFeatures fed the same
    bars; a gap and bad bars in one symbol leave the other symbols' features untouched."""
    series = [s.take(slice(0, 3_000)) for s in _series()]
    engine = FeatureEngine([s.symbol for s in series])
    alone = {s.symbol: SymbolFeatures(s.symbol) for s in series}
    untouched = FeatureEngine([s.symbol for s in series[:2]])  # BTC and ETH without SOL
    own = [i for i in range(len(FEATURE_NAMES)) if i != CROSS]
    for i in range(3_000):
        for s in series:
            bar = _bar(s, i)
            if s.symbol == "SOL/USDT" and 1_000 <= i < 1_030:
                continue  # a 30-minute hole in SOL only
            if s.symbol == "SOL/USDT" and i == 2_000:
                assert not engine.on_bar(bar._replace(close=float("nan")))
                assert not engine.on_bar(bar._replace(open_time_ms=bar.open_time_ms - 60_000))
            assert engine.on_bar(bar)
            alone[s.symbol].update(bar)
            if s.symbol != "SOL/USDT":
                untouched.on_bar(bar)
        for s in series:
            np.testing.assert_array_equal(engine.vector(s.symbol)[own], alone[s.symbol].values[own])
    assert engine.features["SOL/USDT"].gaps == 1
    assert engine.rejected == {"nan_or_infinite": 1, "duplicate": 1}
    # Without SOL, BTC and ETH have one pair instead of two: the mean differs but each pair's
    # correlation is the same number.
    assert engine.correlation("BTC/USDT", "ETH/USDT") == untouched.correlation(
        "BTC/USDT", "ETH/USDT"
    )
