"""Model benchmarks: results as {"bench": name, "value": v, "unit": u, ...context}.

- infer_<model>_<backend>_us_p50 / _p99: one new bar, streaming, after a warm-up; per-call
  perf_counter_ns over `stream_bars` bars; torch and onnxruntime on one thread (the lowest
  one-bar latency); garbage collection left on, as in the daemon.
- infer_<model>_<backend>_after_pause[_warmed]_us_p50: the same step after PAUSE_S of sleep
  (caches gone cold, as between live candles), and with a throwaway step (`Predictor.warm`)
  just before it, as the daemon's pacer runs one.
- infer_<model>_full_series_bars_per_s: a year of bars (527,040 rows) through the eager
  full-series path (chunked, all cores).
- train_<model>_samples_per_s: scored positions per second of training (CPU, all cores).

Features are random (seeded) rows of `n_features` columns, the width the feature engine is
expected to have; the networks are untrained (random, seeded): speed does not depend on the
weights. Wire-up: merge `BENCHMARKS` into scalpd.bench.BENCHMARKS.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from scalpd.models.backends import make_predictor
from scalpd.models.device import set_threads
from scalpd.models.nets import NET_CLASSES, EnsembleNet, SeqNet, StreamingNet, build_net

Result = dict[str, Any]
YEAR_BARS = 527_040
N_FEATURES = 40
MODELS = ("tcn", "transformer", "lstm", "ensemble")
PAUSE_S = 0.02  # idle before each step of the "after pause" figures
PAUSED_BARS = 200


def _features(n_bars: int, n_features: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_bars, n_features)).astype(np.float32)


def bench_net(model: str, n_features: int = N_FEATURES, seed: int = 0) -> StreamingNet:
    """The default-sized network of `model`, seeded, normaliser fitted on random rows."""
    torch.manual_seed(seed)
    if model == "ensemble":
        return EnsembleNet([bench_net(k, n_features, seed) for k in NET_CLASSES])  # type: ignore[misc]
    net = build_net({"kind": model, "n_features": n_features})
    assert isinstance(net, SeqNet)
    net.norm.fit(_features(1000, n_features, seed))
    return net.eval()


def bench_stream(
    model: str,
    backend: str,
    stream_bars: int = 3000,
    warmup_bars: int = 500,
    n_features: int = N_FEATURES,
) -> Iterator[Result]:
    net = bench_net(model, n_features)
    pred = make_predictor(net, backend, threads=1)
    x = _features(warmup_bars + stream_bars, n_features, seed=1)
    times = np.empty(stream_bars, dtype=np.int64)
    for t in range(warmup_bars):
        pred.predict_step(x[t])
    gc.collect()
    clock = time.perf_counter_ns
    for i in range(stream_bars):
        row = x[warmup_bars + i]
        t0 = clock()
        pred.predict_step(row)
        times[i] = clock() - t0
    context = {"bars": stream_bars, "features": n_features, "threads": 1}
    for q in (50, 99):
        yield {
            "bench": f"infer_{model}_{backend}_us_p{q}",
            "value": round(float(np.percentile(times, q)) / 1000, 1),
            "unit": "us",
            **context,
        }
    # Live, a step comes a minute after the last: the caches hold other things by then
    # (scalpd/live/pacing.py warms the model just before a candle is due).
    for warmed in (False, True):
        paused = np.empty(PAUSED_BARS, dtype=np.int64)
        for i in range(PAUSED_BARS):
            time.sleep(PAUSE_S)
            if warmed:
                pred.warm()
            t0 = clock()
            pred.predict_step(x[i])
            paused[i] = clock() - t0
        name = "after_pause_warmed" if warmed else "after_pause"
        yield {
            "bench": f"infer_{model}_{backend}_{name}_us_p50",
            "value": round(float(np.percentile(paused, 50)) / 1000, 1),
            "unit": "us",
            "p99_us": round(float(np.percentile(paused, 99)) / 1000, 1),
            "pause_ms": PAUSE_S * 1e3,
            "bars": PAUSED_BARS,
            "warm_step_before": warmed,
        }


def bench_full_series(
    model: str, n_bars: int = YEAR_BARS, n_features: int = N_FEATURES, threads: int | None = None
) -> Iterator[Result]:
    net = bench_net(model, n_features)
    pred = make_predictor(net, "eager")
    set_threads(threads or os.cpu_count() or 1)
    x = _features(n_bars, n_features, seed=2)
    pred.predict_series(x[:5000])  # warm-up
    t0 = time.perf_counter()
    pred.predict_series(x)
    seconds = time.perf_counter() - t0
    yield {
        "bench": f"infer_{model}_full_series_bars_per_s",
        "value": round(n_bars / seconds),
        "unit": "bars/s",
        "bars": n_bars,
        "features": n_features,
        "threads": torch.get_num_threads(),
    }


def bench_train(model: str, n_bars: int = 20_000, n_features: int = N_FEATURES) -> Iterator[Result]:
    from scalpd.models.train import TrainParams, train

    rng = np.random.default_rng(3)
    x = _features(n_bars, n_features, seed=3)
    y = rng.integers(0, 3, size=(n_bars, 2))
    mask = np.ones(n_bars, dtype=bool)
    times = np.arange(n_bars, dtype=np.int64) * 60_000
    params = TrainParams(epochs=1, device="cpu", keep_best=False, version="bench")
    with tempfile.TemporaryDirectory() as tmp:
        art = train(
            model, x, y, mask, [f"f{i}" for i in range(n_features)], "bench", params, tmp,
            open_time_ms=times,
        )  # fmt: skip
    yield {
        "bench": f"train_{model}_samples_per_s",
        "value": art.metrics["train_samples_per_s"],
        "unit": "samples/s",
        "bars": n_bars,
        "features": n_features,
        "threads": torch.get_num_threads(),
    }


def bench_models(
    models: tuple[str, ...] = MODELS, backends: tuple[str, ...] = ("eager", "int8", "onnx")
) -> Iterator[Result]:
    """Every model benchmark, in turn."""
    default_threads = torch.get_num_threads()
    try:
        for model in models:
            for backend in backends:
                yield from bench_stream(model, backend)
            set_threads(default_threads)
            yield from bench_full_series(model, threads=default_threads)
            yield from bench_train(model)
    finally:
        set_threads(default_threads)


# One entry a model (running them all, as `scalpd bench` does by default, is bench_models()).
BENCHMARKS: dict[str, Callable[[], Iterator[Result]]] = {
    f"models_{m}": (lambda m=m: bench_models((m,))) for m in MODELS
}
