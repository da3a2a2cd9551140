"""Microstructure from ticks, on the real WebSocket recordings (BTC and ETH, 2024-08-08 23:54 to
2024-08-09 00:05 UTC, about 11 minutes).

The recording is replayed through the engine tick by tick (trades, book tickers, and the best
5 levels of the book rebuilt from snapshot + diffs after each diff), with a 1-minute bar after
each minute. Checked:
- the trades aggregated to 1-minute bars equal Binance's own klines on every full minute
  (volume, taker buy volume, trade count, OHLC): the trade stream is complete;
- where the definitions overlap, the tick path equals the bar path: the per-minute imbalance
  from individual trades (`ofi_tick_1m`) equals `ofi_1m` computed from the taker buy volume of
  the aggregated bars;
- per-minute spread and depth imbalance equal a direct computation from the recording (the
  order book's own `depth_imbalance`, not the feature code);
- the tick columns of the batch computation equal the engine's, minute by minute.
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import pytest

from scalpd.data.bars import BarColumns
from scalpd.data.binance_ws import (
    SNAPSHOT,
    iter_recording,
    parse_book_ticker,
    parse_depth_snapshot,
    parse_depth_update,
    parse_trade,
    unwrap,
)
from scalpd.data.orderbook import BookLevels, OrderBook, Outcome
from scalpd.data.parquet import read_parquet
from scalpd.events import Bar, BookTop, Side, Trade
from scalpd.features import batch
from scalpd.features.incremental import FeatureEngine
from scalpd.features.spec import FEATURE_NAMES, FeatureParams
from scalpd.features.ticks import TickColumns, trades_to_bars
from tests.conftest import shared_file
from tests.test_features_parity import assert_parity

SYMBOLS = {"btcusdt": "BTC/USDT", "ethusdt": "ETH/USDT"}
# A bar is delivered once ticks 5 s past its close arrive: the local clock of the book tickers
# ran ~1.3 s behind the exchange's, so a later tick can still belong to the minute before.
BAR_DELAY_MS = 5_000
# Warm-up in trades short enough for an 11-minute recording.
PARAMS = FeatureParams(trade_size_warmup_trades=200)
TICK = ["ofi_tick_1m", "large_trade_share_1m", "spread_bps_1m", "spread_ratio_1m", "depth_imb5_1m"]


class Recorded(NamedTuple):
    ticks: list[tuple[int, Trade | BookTop | BookLevels]]  # (minute-attribution ms, event)
    depth_by_minute: dict[int, list[float]]  # OrderBook.depth_imbalance(5) after each diff
    bars: BarColumns  # 1-minute bars built from the trades


@lru_cache(maxsize=2)
def _recorded(stream: str) -> Recorded:
    symbol = SYMBOLS[stream]
    paths = [shared_file(f"binance-ws/spot-{stream}_2024080{day}.gz") for day in (8, 9)]
    book = OrderBook(symbol)
    ticks: list[tuple[int, Trade | BookTop | BookLevels]] = []
    depth: dict[int, list[float]] = defaultdict(list)
    trades = []
    for recv_ns, message in iter_recording(paths):
        _, channel, data = unwrap(message)
        if channel == "trade":
            trade = parse_trade(data, symbol)
            trades.append(trade)
            ticks.append((trade.time_ms, trade))
        elif channel == "bookTicker":
            top = parse_book_ticker(data, symbol, recv_ns // 1_000_000).top
            ticks.append((top.time_ms, top))
        elif channel == SNAPSHOT:
            assert book.apply_snapshot(parse_depth_snapshot(data))
        elif (
            channel.startswith("depth")
            and book.on_depth(parse_depth_update(data)) is Outcome.APPLIED
        ):
            levels = book.levels(5)
            ticks.append((levels.time_ms, levels))
            depth[levels.time_ms - levels.time_ms % 60_000].append(book.depth_imbalance(5))
    bars = trades_to_bars(symbol, TickColumns.from_events(trades, [], []))
    return Recorded(ticks, dict(depth), bars)


def _bar(bars: BarColumns, i: int) -> Bar:
    return Bar(bars.symbol, *(getattr(bars, f)[i].item() for f in (
        "open_time", "open", "high", "low", "close", "volume", "quote_volume", "trades",
        "taker_buy_volume")))  # fmt: skip


def _run(stream: str) -> tuple[np.ndarray, FeatureEngine]:
    """The engine's vector after each bar, ticks and bars merged as they would arrive live."""
    rec = _recorded(stream)
    bars = rec.bars
    engine = FeatureEngine([bars.symbol], PARAMS)
    out = np.full((len(bars), len(FEATURE_NAMES)), np.nan)
    next_bar = 0

    def deliver_until(now_ms: float) -> None:
        nonlocal next_bar
        while next_bar < len(bars) and bars.open_time[next_bar] + 60_000 + BAR_DELAY_MS <= now_ms:
            assert engine.on_bar(_bar(bars, next_bar))
            out[next_bar] = engine.vector(bars.symbol)
            next_bar += 1

    for time_ms, event in rec.ticks:
        deliver_until(time_ms)
        if isinstance(event, Trade):
            engine.on_trade(event)
        else:
            engine.on_book(event)
    deliver_until(np.inf)
    return out, engine


@pytest.mark.parametrize("stream", ["btcusdt", "ethusdt"])
def test_tick_path_equals_bar_path_and_direct_computation(stream: str) -> None:
    rec = _recorded(stream)
    got, engine = _run(stream)
    bars = rec.bars
    assert len(bars) == 12  # 23:54 .. 00:05, first and last minutes partial
    assert engine.features[bars.symbol].ticks.late == 0

    # Order-flow imbalance: trade by trade == from the aggregated bars' taker buy volume.
    bar_level = batch.compute(bars, PARAMS).column("ofi_1m")
    tick_level = got[:, FEATURE_NAMES.index("ofi_tick_1m")]
    np.testing.assert_allclose(tick_level, bar_level, rtol=1e-9, atol=1e-12)
    assert not np.isnan(tick_level).any()

    # Spread and depth imbalance per minute, computed directly.
    tops: dict[int, list[float]] = defaultdict(list)
    for t, event in rec.ticks:
        if isinstance(event, BookTop):
            mid = (event.bid + event.ask) / 2
            tops[t - t % 60_000].append(1e4 * (event.ask - event.bid) / mid)
    for i, minute in enumerate(bars.open_time.tolist()):
        spread = got[i, FEATURE_NAMES.index("spread_bps_1m")]
        depth = got[i, FEATURE_NAMES.index("depth_imb5_1m")]
        assert spread == pytest.approx(np.mean(tops[minute]), rel=1e-9)
        assert depth == pytest.approx(np.mean(rec.depth_by_minute[minute]), rel=1e-9, abs=1e-12)
    assert 0.0 < np.nanmin(got[:, FEATURE_NAMES.index("spread_bps_1m")]) < 1.0  # BTC ~0.002 bps

    # Large trades: a share in [0, 1] once the trade-size EMA has 200 trades behind it.
    large = got[:, FEATURE_NAMES.index("large_trade_share_1m")]
    assert np.isnan(large[0]) and ((large[2:] >= 0.0) & (large[2:] <= 1.0)).all()
    ratio = got[:, FEATURE_NAMES.index("spread_ratio_1m")]
    assert np.isnan(ratio[: PARAMS.spread_warmup_bars - 1]).all()
    assert not np.isnan(ratio[PARAMS.spread_warmup_bars - 1 :]).any()


@pytest.mark.parametrize("stream", ["btcusdt", "ethusdt"])
def test_batch_tick_columns_equal_the_engine(stream: str) -> None:
    rec = _recorded(stream)
    got, _ = _run(stream)
    ticks = TickColumns.from_events(
        [e for _, e in rec.ticks if isinstance(e, Trade)],
        [e for _, e in rec.ticks if isinstance(e, BookTop)],
        [e for _, e in rec.ticks if isinstance(e, BookLevels)],
    )
    expected = batch.compute(rec.bars, PARAMS, ticks).values
    assert_parity(expected, got, FEATURE_NAMES)
    cols = [FEATURE_NAMES.index(n) for n in TICK]
    assert (~np.isnan(expected[:, cols])).sum() > 40


def test_trades_aggregate_to_the_exchange_klines() -> None:
    bars = _recorded("btcusdt").bars
    klines = read_parquet(shared_file("binance-spot/BTCUSDT-1m-2024.parquet"))
    rows = np.searchsorted(klines.open_time, bars.open_time)
    full = slice(1, len(bars) - 1)  # the recording starts and ends inside a minute
    k = klines.take(rows[full])
    b = bars.take(full)
    np.testing.assert_array_equal(b.trades, k.trades)
    for field in ("volume", "taker_buy_volume", "quote_volume"):
        np.testing.assert_allclose(getattr(b, field), getattr(k, field), rtol=1e-9)
    for field in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(getattr(b, field), getattr(k, field))


def test_late_ticks_are_dropped_and_counted() -> None:
    engine = FeatureEngine(["BTC/USDT"], PARAMS)
    minute = 1_723_161_600_000
    engine.on_bar(Bar("BTC/USDT", minute, 100.0, 101.0, 99.0, 100.5, 2.0, 201.0, 3, 1.0))
    before = engine.vector("BTC/USDT").copy()
    engine.on_trade(Trade("BTC/USDT", minute + 30_000, 100.0, 1.0, Side.BUY, "1"))
    np.testing.assert_array_equal(engine.vector("BTC/USDT"), before)
    assert engine.features["BTC/USDT"].ticks.late == 1
