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


BENCHMARKS: dict[str, Callable[[], Iterator[Result]]] = {
    "replay_rule_bars_per_s": bench_replay_rule,
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
