"""Feature benchmarks (register in `scalpd.bench.BENCHMARKS`): per-bar update latency of the
incremental engine and throughput of the batch computation, on real BTC/USDT 2024 bars."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from scalpd.bench import MissingData, data_dir
from scalpd.data.bars import BarColumns
from scalpd.data.parquet import read_parquet
from scalpd.events import Bar

Result = dict[str, Any]

_BTC_2024 = "binance-spot/BTCUSDT-1m-2024.parquet"
_WARMUP_BARS = 10_000
_TIMED_BARS = 100_000


def _btc_2024() -> BarColumns:
    path = data_dir() / _BTC_2024
    if not path.is_file():
        raise MissingData(f"{path} not found (set SCALPD_DATA_DIR to the folder of binance-spot/)")
    return read_parquet(path)


def _as_bars(bars: BarColumns, lo: int, hi: int) -> list[Bar]:
    cols = [getattr(bars, f)[lo:hi].tolist() for f in (
        "open_time", "open", "high", "low", "close", "volume", "quote_volume", "trades",
        "taker_buy_volume",
    )]  # fmt: skip
    return [Bar(bars.symbol, *row) for row in zip(*cols, strict=True)]


def bench_update_latency() -> Iterator[Result]:
    """One `SymbolFeatures.update` (every feature of one symbol), timed call by call with
    perf_counter_ns over 100,000 bars of BTC/USDT 2024 after 10,000 bars of warm-up."""
    from scalpd.features.incremental import SymbolFeatures
    from scalpd.features.normalize import RunningZ

    bars = _btc_2024()
    stream = _as_bars(bars, 0, _WARMUP_BARS + _TIMED_BARS)
    sf = SymbolFeatures(bars.symbol)
    update = sf.update
    clock = time.perf_counter_ns
    for bar in stream[:_WARMUP_BARS]:
        update(bar)
    took = np.empty(_TIMED_BARS, np.int64)
    gc.disable()  # a collection mid-run measures the collector, not the features
    try:
        for i, bar in enumerate(stream[_WARMUP_BARS:]):
            t0 = clock()
            update(bar)
            took[i] = clock() - t0
    finally:
        gc.enable()
    us = took / 1e3
    context = {"bars": _TIMED_BARS, "features": len(sf.values)}
    yield {"bench": "features_update_us_p50", "value": round(float(np.percentile(us, 50)), 2),
           "unit": "us", **context}  # fmt: skip
    yield {"bench": "features_update_us_p99", "value": round(float(np.percentile(us, 99)), 2),
           "unit": "us", "max_us": round(float(us.max()), 1), **context}  # fmt: skip

    # The running z-score stage, which a model applies to the vector after the features.
    z = RunningZ(len(sf.values))
    took_z = np.empty(_TIMED_BARS // 10, np.int64)
    vec = sf.values
    for i in range(len(took_z)):
        t0 = clock()
        z.update(vec)
        took_z[i] = clock() - t0
    yield {"bench": "features_normalize_us_p99",
           "value": round(float(np.percentile(took_z / 1e3, 99)), 2), "unit": "us"}  # fmt: skip


def bench_batch() -> Iterator[Result]:
    """`batch.compute` (every feature) over all of BTC/USDT 2024; median of 3 runs."""
    from scalpd.features import batch

    bars = _btc_2024()
    speeds = []
    for _ in range(3):
        t0 = time.perf_counter()
        batch.compute(bars)
        speeds.append(len(bars) / (time.perf_counter() - t0))
    yield {
        "bench": "features_batch_bars_per_s",
        "value": round(statistics.median(speeds)),
        "unit": "bars/s",
        "bars": len(bars),
        "runs": [round(s) for s in speeds],
    }


if __name__ == "__main__":  # python -m scalpd.features.bench
    import orjson

    for bench in (bench_update_latency, bench_batch):
        for result in bench():
            print(orjson.dumps(result).decode(), flush=True)
