"""replay_online_bars_per_s: a year of BTC/USDT 1m bars replayed with online learning on.

Issue 8's target: a year with hourly updates replays in under 5 minutes here (>= 1,750
bars/s). A TCN of the default architecture is trained briefly (speed does not depend on how
well: `EPOCHS` epochs, seed 0, one thread) on the last two weeks of 2023, then all of 2024
is replayed through the normal path (`run_replay`, the model strategy streaming bar by bar on
the eager backend) with `[online] enabled = true` and every other [online] setting at its
default (`update_every = "hour"`: 8,784 rounds of `max_steps` steps, each judged by the
guard and, if approved, served from the next bar). One run on one thread, as the daemon runs.

One line: bars/s (value), with the replay's wall time and the rounds approved and rejected
(`results` adds the frozen model's streaming bars/s beside it when given that replay too).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Result = dict[str, Any]
TRAIN_FROM, TRAIN_TO = "2023-12-18", "2024-01-01"  # [from, to)
REPLAY_FROM, REPLAY_TO = "2024-01-01", "2025-01-01"
KIND = "tcn"
EPOCHS = 1
SEED = 0


def train_model(history: Any, out: Path, net: dict[str, Any] | None = None, epochs: int = EPOCHS):
    """A model artifact of `KIND` trained on `history` (bars); its quality is beside the point."""
    from scalpd.models.labels import label_bars
    from scalpd.models.train import TrainParams, train
    from scalpd.strategy.model import feature_matrix

    params = TrainParams(
        epochs=epochs, seed=SEED, device="cpu", threads=1, version="bench", net=net or {}
    )
    x, names, fs_id = feature_matrix(history)
    labels = label_bars(history, params.label)
    return train(
        KIND, x, labels.y, labels.valid, names, fs_id, params, out, open_time_ms=history.open_time
    )


def replay_online(
    artifact_path: Path, bars: Any, db: Path, online: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """(replay result, online model) of `bars` through the model strategy, online learning on
    with `online` overriding the [online] defaults; `online = {"enabled": False}` streams the
    frozen model instead (the online model is then None)."""
    from scalpd.bench.online_scoring import replay_model

    keys = {"enabled": True, **(online or {})}
    result = replay_model(
        artifact_path, bars, "bench", db, keys["enabled"], baselines=False,
        overrides={"online": keys},
    )  # fmt: skip
    return result, getattr(result.engine._strategy, "online", None)


def results(result: Any, online: Any, frozen: Any | None, symbol: str) -> Iterator[Result]:
    s = result.summary
    approved, rejected = online.counts()[symbol] if online is not None else (0, 0)
    line: Result = {
        "bench": "replay_online_bars_per_s",
        "value": round(s["bars"] / s["run_s"], 1),
        "unit": "bars/s",
        "bars": s["bars"],
        "run_s": round(s["run_s"], 1),
        "update_every": online.settings.update_every if online is not None else None,
        "max_steps": online.settings.max_steps if online is not None else None,
        "approved": approved,
        "rejected": rejected,
        "threads": 1,
    }
    if frozen is not None:
        line["frozen_streaming_bars_per_s"] = round(
            frozen.summary["bars"] / frozen.summary["run_s"], 1
        )
    yield line


def bench_online_replay(replay_to: str = REPLAY_TO) -> Iterator[Result]:
    """The year (`replay_to` earlier: a shorter span from 2024-01-01, for a quick look)."""
    from scalpd.bench import _need
    from scalpd.data.bars import validate
    from scalpd.data.parquet import read_parquet
    from scalpd.logs import configure_logging
    from scalpd.models.device import set_threads
    from scalpd.utc import parse_utc_ms

    def window(path: Path, lo: str, hi: str) -> Any:
        bars, _bad = validate(read_parquet(path))
        return bars.between(parse_utc_ms(lo), parse_utc_ms(hi))

    history = window(_need("binance-spot/BTCUSDT-1m-2023.parquet"), TRAIN_FROM, TRAIN_TO)
    year = window(_need("binance-spot/BTCUSDT-1m-2024.parquet"), REPLAY_FROM, replay_to)
    configure_logging("error", "json", sys.stderr)
    set_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        artifact = train_model(history, Path(tmp))
        train_s = time.perf_counter() - t0
        result, online = replay_online(artifact.path, year, Path(tmp) / "online.db")
        for line in results(result, online, None, year.symbol):
            line["train_s"] = round(train_s, 1)
            line["replay_window"] = f"{REPLAY_FROM}..{replay_to}"
            yield line
