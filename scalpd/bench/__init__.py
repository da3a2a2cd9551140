"""`scalpd bench`: performance measured as benchmarks (never as timed tests).

Each benchmark prints one JSON object a line: {"bench", "value", "unit", ...context}. Later
issues register theirs in `BENCHMARKS`. Real market data is read from $SCALPD_DATA_DIR, by
default ../shared/data beside the repository; a benchmark whose data is missing says so.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

Result = dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    return Path(os.environ.get("SCALPD_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def _machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}"


class MissingData(Exception):
    pass


def _need(relative: str) -> Path:
    path = data_dir() / relative
    if not path.is_file():
        raise MissingData(f"{path} not found (set SCALPD_DATA_DIR to the folder of binance-spot/)")
    return path


def bench_replay_rule() -> Iterator[Result]:
    """The baseline strategy over all 527,040 bars of BTC/USDT 2024; median of 3 runs."""
    from scalpd.config.settings import load_settings
    from scalpd.logs import configure_logging
    from scalpd.replay.runner import load_input, run_replay
    from scalpd.store.sqlite import Store

    path = _need("binance-spot/BTCUSDT-1m-2024.parquet")
    configure_logging("error", "json", sys.stderr)
    settings = load_settings(None, {"data": {"paths": [str(path)]}})
    speeds, loads, bars = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        for _ in range(3):
            inp = load_input(settings)
            loads.append(inp.load_s)
            result = run_replay(settings, inp, store)
            speeds.append(result.summary["bars_per_s"])
            bars = result.summary["bars"]
        store.close()
    yield {
        "bench": "replay_rule_bars_per_s",
        "value": statistics.median(speeds),
        "unit": "bars/s",
        "bars": bars,
        "runs": speeds,
    }
    yield {
        "bench": "replay_rule_load_s",
        "value": round(statistics.median(loads), 3),
        "unit": "s",
        "bars": bars,
    }


def _btc_years() -> list[Path]:
    return [_need(f"binance-spot/BTCUSDT-1m-{year}.parquet") for year in range(2020, 2025)]


def bench_load_5y() -> Iterator[Result]:
    """All five years of BTC/USDT 1m bars read from the bar store; median of 5 reads."""
    from scalpd.data.parquet import read_parquet
    from scalpd.data.store import BarStore

    paths = _btc_years()
    with tempfile.TemporaryDirectory() as tmp:
        store = BarStore(Path(tmp))
        for path in paths:  # setup, not timed
            store.write("binance", "BTC/USDT", "1m", read_parquet(path), path.name)
        times, rows = [], 0
        for _ in range(5):
            t0 = time.perf_counter()
            rows = len(store.read("binance", "BTC/USDT", "1m"))
            times.append(time.perf_counter() - t0)
    yield {
        "bench": "load_5y_btc_s",
        "value": round(statistics.median(times), 3),
        "unit": "s",
        "rows": rows,
        "runs": [round(t, 3) for t in times],
    }


def bench_import_archive() -> Iterator[Result]:
    """Binance archive files (monthly zipped CSV, as published) imported into an empty store."""
    import zipfile

    import numpy as np

    from scalpd.data.archive import import_archive
    from scalpd.data.parquet import read_parquet
    from scalpd.data.store import BarStore

    bars = read_parquet(_need("binance-spot/BTCUSDT-1m-2024.parquet"))
    months = bars.open_time.astype("datetime64[ms]").astype("datetime64[M]")
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for month in np.unique(months)[:6]:  # six monthly files, about 262,000 rows
            b = bars.take(months == month)
            close_time = b.open_time + 59_999
            rows = np.column_stack([
                b.open_time, b.open, b.high, b.low, b.close, b.volume, close_time,
                b.quote_volume, b.trades, b.taker_buy_volume, b.quote_volume / 2, np.zeros(len(b)),
            ])  # fmt: skip
            name = f"BTCUSDT-1m-{month}"
            csv = "\n".join(",".join(repr(float(x)) if i not in (0, 6, 8, 11) else str(int(x))
                                      for i, x in enumerate(row)) for row in rows)  # fmt: skip
            path = Path(tmp) / f"{name}.zip"
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(f"{name}.csv", csv + "\n")
            files.append(path)
        total = sum(len(bars.take(months == m)) for m in np.unique(months)[:6])
        speeds = []
        for run in range(3):
            store = BarStore(Path(tmp) / f"store{run}")
            t0 = time.perf_counter()
            import_archive(files, store)
            speeds.append(total / (time.perf_counter() - t0))
    yield {
        "bench": "import_archive_rows_per_s",
        "value": round(statistics.median(speeds)),
        "unit": "rows/s",
        "rows": total,
        "files": len(files),
    }


def _features_update() -> Iterator[Result]:
    from scalpd.features.bench import bench_update_latency

    return bench_update_latency()


def _features_batch() -> Iterator[Result]:
    from scalpd.features.bench import bench_batch

    return bench_batch()


def _models() -> dict[str, Callable[[], Iterator[Result]]]:
    # Imported on demand: it loads torch, which the other benchmarks do not need.
    def run(key: str) -> Iterator[Result]:
        from scalpd.models.bench import BENCHMARKS as model_benchmarks

        return model_benchmarks[key]()

    kinds = ("tcn", "transformer", "lstm", "ensemble")
    return {f"models_{kind}": (lambda k=f"models_{kind}": run(k)) for kind in kinds}


def _replay_model() -> Iterator[Result]:
    from scalpd.bench.model_replay import bench_replay_model  # imports torch: on demand

    return bench_replay_model()


def _walkforward_window() -> Iterator[Result]:
    from scalpd.bench.model_replay import bench_walkforward_window

    return bench_walkforward_window()


def _crash_soak() -> Iterator[Result]:
    from scalpd.bench.crash_soak import bench_crash_soak

    return bench_crash_soak()


def _decision_latency() -> Iterator[Result]:
    from scalpd.bench.decision_latency import bench_decision_latency  # imports torch: on demand

    return bench_decision_latency()


def _decision_latency_online() -> Iterator[Result]:
    from scalpd.bench.decision_latency import bench_decision_latency_online

    return bench_decision_latency_online()


def _finetune_step() -> Iterator[Result]:
    from scalpd.bench.finetune import bench_finetune_step  # imports torch: on demand

    return bench_finetune_step()


def _online_regime() -> Iterator[Result]:
    from scalpd.bench.online_regime import bench_online_regime  # imports torch: on demand

    return bench_online_regime()


def _online_walkforward() -> Iterator[Result]:
    from scalpd.bench.online_walkforward import bench_online_walkforward  # imports torch

    return bench_online_walkforward()


def _online_replay() -> Iterator[Result]:
    from scalpd.bench.online_replay import bench_online_replay  # imports torch: on demand

    return bench_online_replay()


BENCHMARKS: dict[str, Callable[[], Iterator[Result]]] = {
    "replay_rule_bars_per_s": bench_replay_rule,
    "replay_model_bars_per_s": _replay_model,
    "walkforward_window_s": _walkforward_window,
    "load_5y_btc_s": bench_load_5y,
    "import_archive_rows_per_s": bench_import_archive,
    "features_update_us": _features_update,
    "features_batch_bars_per_s": _features_batch,
    "recovery_s": _crash_soak,
    "decision_latency": _decision_latency,
    "decision_latency_online": _decision_latency_online,
    "finetune_step_ms": _finetune_step,
    "online_regime": _online_regime,
    "online_walkforward": _online_walkforward,
    "replay_online_bars_per_s": _online_replay,
    **_models(),
}


def run_benchmarks(names: list[str], as_json: bool = True) -> int:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(
            f"scalpd: error: unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    failed = False
    for name in names or list(BENCHMARKS):
        t0 = time.perf_counter()
        try:
            for result in BENCHMARKS[name]():
                result["machine"] = _machine()
                sys.stdout.write(orjson.dumps(result).decode() + "\n")
                sys.stdout.flush()
        except MissingData as exc:
            failed = True
            out = {"bench": name, "value": None, "skipped": str(exc)}
            sys.stdout.write(orjson.dumps(out).decode() + "\n")
        print(f"# {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 1 if failed else 0
