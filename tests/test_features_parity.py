"""Batch features (training) equal incremental features (replay, live) on real BTC/USDT months.

Tolerance, per feature f and bar t: |batch - incremental| <= 1e-9 * max(|batch|, |incremental|)
+ 1e-9 * rms_f, where rms_f is the root mean square of feature f over the month. The relative
term is the 1e-9 asked for; the absolute floor, one billionth of the feature's typical size,
only matters where a value crosses zero (a return, a MACD histogram, a distance to VWAP), where
a relative error has no meaning. In practice most columns agree bit for bit: both sides run the
same recursions in the same order (lfilter and cumsum are sequential); the rest differ by the
last bit of numpy's vectorised log against libm's (observed: at most 5e-13 relative, in
poc_dist where 1e4*ln(close) ~ 1e5 is differenced with the bin centre).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from scalpd.data.bars import BarColumns
from scalpd.data.parquet import read_parquet
from scalpd.events import Bar, Gap
from scalpd.features import batch, garch
from scalpd.features.incremental import FeatureEngine, SymbolFeatures, replay
from scalpd.features.normalize import RunningZ, zscore
from scalpd.features.spec import (
    FEATURE_NAMES,
    FEATURE_SET_ID,
    FeatureParams,
    feature_set_id,
    feature_specs,
)
from tests.conftest import shared_file

RTOL = 1e-9


def _ms(day: str) -> int:
    return int(np.datetime64(day, "ms").astype(np.int64))


@lru_cache(maxsize=4)
def _month(year: int, start: str, stop: str) -> BarColumns:
    bars = read_parquet(shared_file(f"binance-spot/BTCUSDT-1m-{year}.parquet"))
    return bars.take((bars.open_time >= _ms(start)) & (bars.open_time < _ms(stop)))


def assert_parity(expected: np.ndarray, got: np.ndarray, names: tuple[str, ...]) -> None:
    """Same valid masks, and every valid value within the tolerance of the module docstring."""
    mask_e, mask_g = np.isnan(expected), np.isnan(got)
    bad_mask = [names[f] for f in np.flatnonzero((mask_e != mask_g).any(axis=0))]
    assert not bad_mask, f"valid masks differ in {bad_mask}"
    worst = []
    for f, name in enumerate(names):
        ok = ~mask_e[:, f]
        if not ok.any():
            continue
        a, b = expected[ok, f], got[ok, f]
        rms = float(np.sqrt(np.mean(a * a)))
        limit = RTOL * np.maximum(np.abs(a), np.abs(b)) + RTOL * rms
        excess = np.abs(a - b) - limit
        if excess.max() > 0.0:
            i = int(np.argmax(excess))
            worst.append(f"{name}: batch {a[i]!r} vs incremental {b[i]!r}")
    assert not worst, "; ".join(worst)


def _incremental(bars: BarColumns) -> np.ndarray:
    return replay([bars])[bars.symbol]


def test_full_month_2024_batch_equals_incremental() -> None:
    bars = _month(2024, "2024-03-01", "2024-04-01")
    assert len(bars) == 31 * 1440 and not bars.gaps()
    expected = batch.compute(bars).values
    got = _incremental(bars)
    assert_parity(expected, got, FEATURE_NAMES)
    # Everything but the tick and cross-asset columns (no ticks, one symbol) becomes valid.
    never = {"ofi_tick_1m", "large_trade_share_1m", "spread_bps_1m", "spread_ratio_1m",
             "depth_imb5_1m", "xcorr_mean_60_1m"}  # fmt: skip
    valid_at_end = {n for n, ok in zip(FEATURE_NAMES, ~np.isnan(got[-1]), strict=True) if ok}
    assert valid_at_end == set(FEATURE_NAMES) - never


def test_month_2020_with_exchange_gaps_resets_identically() -> None:
    bars = _month(2020, "2020-02-01", "2020-03-01")
    gaps = bars.gaps()
    assert len(gaps) == 2  # 2020-02-09 (60 min) and 2020-02-19 (354 min)
    expected = batch.compute(bars).values
    got = _incremental(bars)
    assert_parity(expected, got, FEATURE_NAMES)

    # After each gap both restart from nothing: the rows after it are those of the bars after
    # it computed alone, and the slowest features are invalid again.
    for gap in gaps:
        after = int(np.searchsorted(bars.open_time, gap.next_open_time_ms))
        alone = batch.compute(bars.take(slice(after, len(bars)))).values
        np.testing.assert_array_equal(expected[after:], alone)
        assert np.isnan(expected[after, FEATURE_NAMES.index("rsi_14_15m")])
        assert np.isnan(expected[after, FEATURE_NAMES.index("ret_1_1m")])


def test_warmups_match_the_registry() -> None:
    """Counted from a reset, each feature turns valid exactly after its documented warm-up
    (1m features), or within its timeframe's alignment slack (5m, 15m)."""
    bars = _month(2024, "2024-03-01", "2024-03-03").take(slice(7, None))  # start off the hour
    values = batch.compute(bars).values
    for f, spec in enumerate(feature_specs()):
        valid = np.flatnonzero(~np.isnan(values[:, f]))
        if spec.group in ("tick", "cross"):
            assert len(valid) == 0, spec.name
            continue
        first_valid = int(valid[0]) + 1  # bars seen when first valid
        m = spec.timeframe_min
        if spec.name.startswith(("res_dist", "sup_dist")):  # waits for the first swing too
            assert first_valid >= spec.warmup_bars * m, spec.name
        elif m == 1:
            assert first_valid == spec.warmup_bars, spec.name
        else:
            assert spec.warmup_bars * m <= first_valid <= spec.warmup_1m_bars, spec.name


def test_engine_with_one_symbol_is_symbol_features() -> None:
    bars = _month(2024, "2024-03-01", "2024-03-02")
    engine = FeatureEngine([bars.symbol])
    alone = SymbolFeatures(bars.symbol)
    fields = [getattr(bars, f).tolist() for f in ("open_time", "open", "high", "low", "close",
              "volume", "quote_volume", "trades", "taker_buy_volume")]  # fmt: skip
    for row in zip(*fields, strict=True):
        bar = Bar(bars.symbol, *row)
        assert engine.on_bar(bar) and alone.update(bar)
        np.testing.assert_array_equal(engine.vector(bars.symbol), alone.values)


def test_gap_event_and_open_time_jump_reset_alike() -> None:
    bars = _month(2024, "2024-03-01", "2024-03-02")
    cut = bars.take(np.r_[0:500, 530 : len(bars)])  # 30 minutes missing
    told, untold = SymbolFeatures(bars.symbol), SymbolFeatures(bars.symbol)
    for i in range(len(cut)):
        bar = Bar(bars.symbol, *(getattr(cut, f)[i].item() for f in (
            "open_time", "open", "high", "low", "close", "volume", "quote_volume", "trades",
            "taker_buy_volume")))  # fmt: skip
        if i == 500:
            told.on_gap(Gap(bars.symbol, int(cut.open_time[499]), int(cut.open_time[500])))
        told.update(bar)
        untold.update(bar)
        np.testing.assert_array_equal(told.values, untold.values)
    assert told.gaps == untold.gaps == 1


def test_normalisation_batch_equals_incremental() -> None:
    bars = _month(2024, "2024-03-01", "2024-03-08")
    raw = _incremental(bars)
    expected = zscore(batch.compute(bars).values)
    running = RunningZ(len(FEATURE_NAMES))
    got = np.array([running.update(row).copy() for row in raw])
    assert_parity(expected, got, FEATURE_NAMES)
    late = got[2 * 1440 :]
    assert np.nanmax(np.abs(late)) <= FeatureParams().norm_clip
    # Running statistics only: the z-scores of the first days do not move when later days are
    # added (a whole-sample mean would).
    short = zscore(batch.compute(bars.take(slice(0, 3 * 1440))).values)
    np.testing.assert_array_equal(short, expected[: 3 * 1440])


def test_garch_recursion_and_fit() -> None:
    rng = np.random.default_rng(7)
    true = garch.GarchParams(omega_bps2=0.5, alpha=0.08, beta=0.9)
    h = true.unconditional_var_bps2
    r = np.empty(20_000)
    path = np.empty(20_000)
    for i, z in enumerate(rng.standard_normal(20_000)):
        r[i] = np.sqrt(h) * z
        h = garch.step(h, float(r[i]), true)
        path[i] = h
    np.testing.assert_array_equal(garch.variance_path(r, true), path)
    fitted = garch.fit(r)
    assert abs(fitted.alpha - true.alpha) < 0.02
    assert abs(fitted.beta - true.beta) < 0.03
    assert fitted.alpha + fitted.beta < 1.0


def test_feature_set_id_names_and_params() -> None:
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == 56
    assert FEATURE_SET_ID == feature_set_id(FeatureParams())
    assert FEATURE_SET_ID.startswith("fs-") and len(FEATURE_SET_ID) == 19
    assert feature_set_id(FeatureParams(rsi_bars=21)) != FEATURE_SET_ID
    other_garch = FeatureParams(garch_by_symbol=(("ETH/USDT", garch.GarchParams(1.0, 0.1, 0.8)),))
    assert feature_set_id(other_garch) != FEATURE_SET_ID
    for spec in feature_specs():
        assert spec.formula and spec.unit and spec.name.endswith(("_1m", "_5m", "_15m")), spec
    with pytest.raises(ValueError):
        FeatureParams(poc_bin_bps=(5.0,))


@pytest.mark.parametrize("drop_share", [0.05, 0.4])
def test_many_short_segments_batch_equals_incremental(drop_share: float) -> None:
    """Random holes cut a day into segments shorter than most windows: every restart and every
    partial warm-up must still agree, including the 5m/15m candles cut by a hole."""
    bars = _month(2024, "2024-03-01", "2024-03-02")
    keep = np.random.default_rng(11).random(len(bars)) >= drop_share
    holed = bars.take(keep)
    assert len(holed.gaps()) > 50
    assert_parity(batch.compute(holed).values, _incremental(holed), FEATURE_NAMES)


def test_empty_and_single_bar_series() -> None:
    bars = _month(2024, "2024-03-01", "2024-03-02")
    for n in (0, 1, 2):
        part = bars.take(slice(0, n))
        values = batch.compute(part).values
        assert values.shape == (n, len(FEATURE_NAMES))
        if n:
            assert_parity(values, _incremental(part), FEATURE_NAMES)
