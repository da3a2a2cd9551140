"""resample: 1m bars to exchange-aligned candles, checked against a plain loop."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from scalpd.data.bars import BarColumns, from_arrays
from scalpd.data.parquet import read_parquet
from scalpd.data.resample import resample
from tests.conftest import shared_file

MINUTE_MS = 60_000
WEEK_MINUTES = 7 * 1440


def reference(bars: BarColumns, minutes: int) -> list[tuple]:
    """One candle per UTC-aligned bucket with at least one minute: a loop, no cleverness."""
    period_ms = minutes * MINUTE_MS
    candles: dict[int, list[int]] = {}
    for i in range(len(bars)):
        t = int(bars.open_time[i])
        candles.setdefault(t - t % period_ms, []).append(i)
    out = []
    for start, rows in candles.items():
        trades = [int(bars.trades[i]) for i in rows]
        out.append(
            (
                start,
                float(bars.open[rows[0]]),
                max(float(bars.high[i]) for i in rows),
                min(float(bars.low[i]) for i in rows),
                float(bars.close[rows[-1]]),
                math.fsum(float(bars.volume[i]) for i in rows),
                math.fsum(float(bars.quote_volume[i]) for i in rows),
                -1 if min(trades) < 0 else sum(trades),
                math.fsum(float(bars.taker_buy_volume[i]) for i in rows),
                len(rows) != minutes,
            )
        )
    return out


def assert_matches_reference(bars: BarColumns, minutes: int) -> None:
    got = resample(bars, minutes)
    want = reference(bars, minutes)
    assert len(got) == len(want)
    assert got.bars.symbol == bars.symbol
    columns = list(zip(*want, strict=True))
    out = got.bars
    np.testing.assert_array_equal(out.open_time, columns[0])
    np.testing.assert_array_equal(out.open, columns[1])
    np.testing.assert_array_equal(out.high, columns[2])
    np.testing.assert_array_equal(out.low, columns[3])
    np.testing.assert_array_equal(out.close, columns[4])
    # Sums: the loop uses exact summation, numpy pairwise; they agree to rounding.
    np.testing.assert_allclose(out.volume, columns[5], rtol=1e-12)
    np.testing.assert_allclose(out.quote_volume, columns[6], rtol=1e-12)
    np.testing.assert_array_equal(out.trades, columns[7])
    np.testing.assert_allclose(out.taker_buy_volume, columns[8], rtol=1e-12)
    np.testing.assert_array_equal(got.partial, columns[9])


def _ms(when: str) -> int:
    return int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize("minutes", [5, 15, 60])
def test_real_btc_week_matches_the_loop(minutes: int) -> None:
    bars = read_parquet(shared_file("binance-spot/BTCUSDT-1m-2024.parquet"))
    # A week starting mid-candle, so the first and last candles are partial.
    start = int(np.searchsorted(bars.open_time, _ms("2024-03-04T00:07")))
    week = bars.take(np.arange(start, start + WEEK_MINUTES))
    assert_matches_reference(week, minutes)
    got = resample(week, minutes)
    assert got.partial[0] and got.partial[-1] and not got.partial[1:-1].any()


def test_real_btc_week_with_an_exchange_gap_matches_the_loop() -> None:
    bars = read_parquet(shared_file("binance-spot/BTCUSDT-1m-2020.parquet"))
    gap = bars.gaps()[0]
    at = int(np.searchsorted(bars.open_time, gap.last_open_time_ms))
    week = bars.take(np.arange(max(at - WEEK_MINUTES // 2, 0), at + WEEK_MINUTES // 2))
    for minutes in (5, 15, 60):
        assert_matches_reference(week, minutes)
        assert resample(week, minutes).partial.any()  # the candle(s) the gap cuts


def _synthetic(n: int) -> BarColumns:
    rng = np.random.default_rng(7)
    close = 100 + np.cumsum(rng.normal(0, 0.1, n))
    open_ = np.concatenate([[100.0], close[:-1]])
    volume = rng.uniform(1, 2, n)
    return from_arrays(
        "SYN/USDT",
        {
            "open_time": _ms("2024-01-01") + MINUTE_MS * np.arange(n, dtype=np.int64),
            "open": open_,
            "high": np.maximum(open_, close) + rng.uniform(0, 0.1, n),
            "low": np.minimum(open_, close) - rng.uniform(0, 0.1, n),
            "close": close,
            "volume": volume,
            "quote_volume": volume * close,
            "trades": rng.integers(1, 50, n),
            "taker_buy_base": volume * 0.4,
        },
    )


def test_a_candle_with_a_missing_minute_is_partial() -> None:
    bars = _synthetic(60)
    keep = np.ones(60, dtype=bool)
    keep[[7, 20, 21, 22, 23, 24]] = False  # one minute of the 2nd candle, the whole 5th
    holed = bars.take(keep)
    got = resample(holed, 5)
    assert list(got.bars.open_time) == [
        _ms("2024-01-01") + k * 5 * MINUTE_MS for k in range(12) if k != 4
    ]
    assert list(got.partial) == [False, True] + [False] * 9
    second = got.bars.take(np.array([1]))
    assert second.open[0] == bars.open[5] and second.close[0] == bars.close[9]
    assert second.volume[0] == pytest.approx(bars.volume[[5, 6, 8, 9]].sum())
    assert_matches_reference(holed, 5)


def test_unknown_values_stay_unknown() -> None:
    bars = _synthetic(10)
    bars.trades[6] = -1
    bars.quote_volume[2] = np.nan
    got = resample(bars, 5)
    assert list(got.bars.trades) == [bars.trades[:5].sum(), -1]
    assert np.isnan(got.bars.quote_volume[0]) and not np.isnan(got.bars.quote_volume[1])


def test_daily_candles_align_to_utc_midnight() -> None:
    bars = _synthetic(3000).take(np.arange(100, 3000))
    got = resample(bars, 1440)
    assert list(got.bars.open_time) == [_ms("2024-01-01"), _ms("2024-01-02"), _ms("2024-01-03")]
    assert list(got.partial) == [True, False, True]


def test_empty_input_and_bad_arguments() -> None:
    empty = _synthetic(5).take(np.arange(0))
    assert len(resample(empty, 5)) == 0
    with pytest.raises(ValueError, match="does not divide a day"):
        resample(_synthetic(5), 7)
    unsorted = _synthetic(5).take(np.array([1, 0, 2, 3, 4]))
    with pytest.raises(ValueError, match="sorted"):
        resample(unsorted, 5)
