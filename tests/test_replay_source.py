"""ReplaySource: series merged in time order, gaps announced first, segments never across one."""

from __future__ import annotations

import math

import numpy as np
import pytest

import scalpd.replay.source as source_mod
from scalpd.data.bars import BarColumns, from_arrays
from scalpd.events import Bar, Gap
from scalpd.replay.source import ReplaySource

M = 60_000
T = 1_709_251_200_000


def series(symbol: str, minutes: list[int], base: float = 100.0) -> BarColumns:
    """Bars at T + minute; the close encodes (symbol base, minute) so each bar is recognisable."""
    n = len(minutes)
    close = np.array([base + m for m in minutes], dtype=np.float64)
    return from_arrays(
        symbol,
        {
            "open_time": np.array([T + m * M for m in minutes], dtype=np.int64),
            "open": close - 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": np.full(n, 2.0),
            "trades": np.arange(n, dtype=np.int64),
        },
    )


def flatten(src: ReplaySource) -> list[Gap | Bar]:
    out: list[Gap | Bar] = []
    for gap, bars in src.segments():
        if gap is not None:
            out.append(gap)
        out.extend(bars)
    return out


def keys(events: list[Gap | Bar]) -> list[tuple]:
    """(symbol, minute) for a bar; ("gap", symbol, last minute, next minute) for a gap."""
    out = []
    for e in events:
        if isinstance(e, Gap):
            out.append(
                ("gap", e.symbol, (e.last_open_time_ms - T) // M, (e.next_open_time_ms - T) // M)
            )
        else:
            out.append((e.symbol, (e.open_time_ms - T) // M))
    return out


def test_single_series_is_one_segment_of_bars() -> None:
    src = ReplaySource([series("BTC/USDT", list(range(5)))])
    segs = list(src.segments())
    assert len(segs) == 1
    gap, bars = segs[0]
    assert gap is None
    assert all(type(b) is Bar for b in bars)
    first = bars[0]
    assert first[:7] == ("BTC/USDT", T, 99.5, 101.0, 99.0, 100.0, 2.0)
    assert first.trades == 0
    # Absent optional columns are NaN.
    assert math.isnan(first.quote_volume) and math.isnan(first.taker_buy_volume)
    assert type(first.open_time_ms) is int and type(first.trades) is int
    assert [b.close for b in bars] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert len(src) == 5
    assert src.first_open_time_ms == T
    assert src.last_close_time_ms == T + 5 * M


def test_merge_in_time_order_with_symbol_order_as_tie_break() -> None:
    # Given ETH first, then BTC: at equal times ETH's bar comes first (the given order, which
    # here is not the alphabetical one).
    eth = series("ETH/USDT", [0, 1, 2, 3], base=1_000.0)
    btc = series("BTC/USDT", [1, 2, 3, 4], base=50_000.0)
    src = ReplaySource([eth, btc])
    assert src.symbols == ["ETH/USDT", "BTC/USDT"]
    events = flatten(src)
    assert keys(events) == [
        ("ETH/USDT", 0),
        ("ETH/USDT", 1),
        ("BTC/USDT", 1),
        ("ETH/USDT", 2),
        ("BTC/USDT", 2),
        ("ETH/USDT", 3),
        ("BTC/USDT", 3),
        ("BTC/USDT", 4),
    ]
    # Every field belongs to its own symbol's row.
    for bar in events:
        base = 1_000.0 if bar.symbol == "ETH/USDT" else 50_000.0
        minute = (bar.open_time_ms - T) // M
        assert (bar.close, bar.open, bar.high, bar.low) == (
            base + minute,
            base + minute - 0.5,
            base + minute + 1,
            base + minute - 1,
        )
    assert [b.trades for b in events if b.symbol == "BTC/USDT"] == [0, 1, 2, 3]
    assert src.first_open_time_ms == T
    assert src.last_close_time_ms == T + 5 * M

    # The other order of the same series reverses the ties only.
    swapped = keys(flatten(ReplaySource([btc, eth])))
    assert swapped[1:3] == [("BTC/USDT", 1), ("ETH/USDT", 1)]


def test_gap_comes_right_before_the_first_bar_after_it() -> None:
    btc = series("BTC/USDT", [0, 1, 2, 6, 7])
    src = ReplaySource([btc])
    segs = list(src.segments())
    assert [(g, [(b.open_time_ms - T) // M for b in bars]) for g, bars in segs] == [
        (None, [0, 1, 2]),
        (Gap("BTC/USDT", T + 2 * M, T + 6 * M), [6, 7]),
    ]
    assert segs[1][0].missing_bars == 3


def test_gaps_per_symbol_in_a_merged_stream() -> None:
    eth = series("ETH/USDT", [0, 1, 2, 5, 6, 7, 8])  # missing 3, 4
    btc = series("BTC/USDT", [0, 1, 2, 3, 4, 5, 6, 8])  # missing 7
    src = ReplaySource([eth, btc])
    assert keys(flatten(src)) == [
        ("ETH/USDT", 0),
        ("BTC/USDT", 0),
        ("ETH/USDT", 1),
        ("BTC/USDT", 1),
        ("ETH/USDT", 2),
        ("BTC/USDT", 2),
        ("BTC/USDT", 3),
        ("BTC/USDT", 4),
        ("gap", "ETH/USDT", 2, 5),
        ("ETH/USDT", 5),
        ("BTC/USDT", 5),
        ("ETH/USDT", 6),
        ("BTC/USDT", 6),
        ("ETH/USDT", 7),
        ("ETH/USDT", 8),
        ("gap", "BTC/USDT", 6, 8),
        ("BTC/USDT", 8),
    ]


def test_both_symbols_gap_at_the_same_time() -> None:
    eth = series("ETH/USDT", [0, 1, 4, 5])
    btc = series("BTC/USDT", [0, 1, 4, 5])
    segs = list(ReplaySource([eth, btc]).segments())
    assert [(g, keys(bars)) for g, bars in segs] == [
        (None, [("ETH/USDT", 0), ("BTC/USDT", 0), ("ETH/USDT", 1), ("BTC/USDT", 1)]),
        (Gap("ETH/USDT", T + M, T + 4 * M), [("ETH/USDT", 4)]),
        (Gap("BTC/USDT", T + M, T + 4 * M), [("BTC/USDT", 4), ("ETH/USDT", 5), ("BTC/USDT", 5)]),
    ]


def _check_segments(src: ReplaySource) -> list[tuple[Gap | None, list[Bar]]]:
    """No segment holds two bars of a symbol across a gap; every gap opens a segment."""
    segs = list(src.segments())
    last: dict[str, int] = {}
    for gap, bars in segs:
        assert bars, "empty segment"
        for j, bar in enumerate(bars):
            prev = last.get(bar.symbol)
            if prev is not None and bar.open_time_ms - prev != M:
                # Only the first bar of a segment may follow a gap, and the gap is its own.
                assert j == 0
                assert gap == Gap(bar.symbol, prev, bar.open_time_ms)
            last[bar.symbol] = bar.open_time_ms
    return segs


def test_segments_never_span_a_gap_random_series() -> None:
    rng = np.random.default_rng(5)
    all_series = []
    for k, symbol in enumerate(["BTC/USDT", "ETH/USDT", "SOL/USDT"]):
        present = rng.random(400) > 0.1
        minutes = [int(m) for m in np.nonzero(present)[0] + k]
        all_series.append(series(symbol, minutes, base=1_000.0 * (k + 1)))
    src = ReplaySource(all_series)
    segs = _check_segments(src)
    gaps = [g for g, _ in segs if g is not None]
    assert sorted(gaps) == sorted(g for s in all_series for g in s.gaps())
    bars = [b for _, bs in segs for b in bs]
    assert len(bars) == len(src) == sum(len(s) for s in all_series)
    assert [(b.open_time_ms, src.symbols.index(b.symbol)) for b in bars] == sorted(
        (b.open_time_ms, src.symbols.index(b.symbol)) for b in bars
    )


def test_long_segments_are_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source_mod, "_CHUNK_BARS", 4)
    btc = series("BTC/USDT", [*range(10), *range(20, 26)])
    segs = _check_segments(ReplaySource([btc]))
    gap = Gap("BTC/USDT", T + 9 * M, T + 20 * M)
    assert [(g, len(bars)) for g, bars in segs] == [
        (None, 4),
        (None, 4),
        (None, 2),
        (gap, 4),  # the gap is announced once, before the first chunk after it
        (None, 2),
    ]
    assert [(b.open_time_ms - T) // M for _, bars in segs for b in bars] == [
        *range(10),
        *range(20, 26),
    ]


def test_default_chunk_size() -> None:
    n = 2 * 65_536 + 3
    segs = list(ReplaySource([series("BTC/USDT", list(range(n)))]).segments())
    assert [(g, len(bars)) for g, bars in segs] == [(None, 65_536), (None, 65_536), (None, 3)]
    assert segs[1][1][0].open_time_ms == T + 65_536 * M


def test_rejects_nothing_and_duplicates() -> None:
    with pytest.raises(ValueError):
        ReplaySource([])
    with pytest.raises(ValueError, match="same symbol"):
        ReplaySource([series("BTC/USDT", [0]), series("BTC/USDT", [1])])
