"""Benchmarks of the model strategy in replay and of one walk-forward step (they import torch).

- replay_model_bars_per_s: all 527,040 bars of BTC/USDT 2024 through the model strategy (a TCN
  of the default architecture, default settings: ONNX backend, every cost model of the
  simulated broker), median of 3 runs. Timed: `run_replay` from building the engine (the model
  load, its ONNX export, the precomputed features and probabilities) to the stored summary;
  not timed: reading the Parquet file and the setup, which trains the model once on the last
  30 days of 2023 (a period the replay does not touch) and is reported as
  replay_model_setup_s.
- walkforward_window_s: the wall time of one walk-forward step with the default settings
  (train on 30 days, test on the next 7: features, labels, training, the replay, the store),
  median of 3.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Result = dict[str, Any]
DAY_MS = 86_400_000


def _need(relative: str) -> Path:
    from scalpd.bench import _need as need

    return need(relative)


def bench_replay_model() -> Iterator[Result]:
    from scalpd.config.settings import load_settings
    from scalpd.data.parquet import read_parquet
    from scalpd.logs import configure_logging
    from scalpd.models.labels import LabelParams, label_bars
    from scalpd.models.train import TrainParams, train
    from scalpd.replay.runner import load_input, run_replay
    from scalpd.store.sqlite import Store
    from scalpd.strategy.model import feature_matrix

    path_2023 = _need("binance-spot/BTCUSDT-1m-2023.parquet")
    path_2024 = _need("binance-spot/BTCUSDT-1m-2024.parquet")
    configure_logging("error", "json", sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        history = read_parquet(path_2023)
        last = int(history.open_time[-1])
        history = history.take(history.open_time > last - 30 * DAY_MS)
        x, names, fs_id = feature_matrix(history)
        labels = label_bars(history, LabelParams())
        params = TrainParams(epochs=2, seed=0, device="cpu", version="bench")
        artifact = train(
            "tcn", x, labels.y, labels.valid, names, fs_id, params, tmp,
            open_time_ms=history.open_time,
        )  # fmt: skip
        setup_s = time.perf_counter() - t0
        settings = load_settings(
            None,
            {
                "data": {"paths": [str(path_2024)]},
                "strategy": {"name": "model", "model_path": str(artifact.path)},
            },
        )
        inp = load_input(settings)
        store = Store(Path(tmp) / "bench.db")
        speeds, trades, bars = [], 0, 0
        for _ in range(3):
            t0 = time.perf_counter()
            result = run_replay(settings, inp, store)
            wall = time.perf_counter() - t0
            bars = result.summary["bars"]
            speeds.append(round(bars / wall))
            trades = result.summary["trades"]
        store.close()
    yield {
        "bench": "replay_model_bars_per_s",
        "value": statistics.median(speeds),
        "unit": "bars/s",
        "bars": bars,
        "trades": trades,
        "model": "tcn (default size), 2 epochs on BTC/USDT 2023-12-02..2023-12-31",
        "backend": settings.strategy.model_backend,
        "probabilities": "precomputed",
        "runs": speeds,
    }
    yield {"bench": "replay_model_setup_s", "value": round(setup_s, 2), "unit": "s"}


def bench_walkforward_window() -> Iterator[Result]:
    from scalpd.config.settings import load_settings
    from scalpd.data.parquet import read_parquet
    from scalpd.logs import configure_logging
    from scalpd.replay.walkforward import run_walkforward
    from scalpd.store.sqlite import Store
    from scalpd.utc import parse_utc_ms

    configure_logging("error", "json", sys.stderr)
    bars = read_parquet(_need("binance-spot/BTCUSDT-1m-2024.parquet"))
    bars = bars.take(bars.open_time < parse_utc_ms("2024-02-07"))  # 30 days, then 7
    settings = load_settings(None)
    times, record = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(3):
            store = Store(Path(tmp) / f"wf{run}.db")
            t0 = time.perf_counter()
            result = run_walkforward(
                settings, bars, store, max_steps=1, models_dir=Path(tmp) / f"m{run}"
            )
            times.append(time.perf_counter() - t0)
            store.close()
            record = result.steps[0]
    assert record is not None
    yield {
        "bench": "walkforward_window_s",
        "value": round(statistics.median(times), 2),
        "unit": "s",
        "train_days": settings.walkforward.train_days,
        "test_days": settings.walkforward.test_days,
        "model": f"{settings.walkforward.model}, {settings.walkforward.epochs} epochs",
        "train_s": round(record.train_s, 2),
        "replay_s": round(record.replay_s, 2),
        "trades": record.metrics["trades"],
        "runs": [round(t, 2) for t in times],
    }
