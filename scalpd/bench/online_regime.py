"""online_regime: frozen against online models on real BTC/USDT across the March 2020 crash.

Issue 8 asks for the rolling loss of online against frozen models on a real regime change.
Here: a TCN (default architecture, default training settings: 8 epochs, seed 0, one thread)
is trained on BTC/USDT 1m bars of 2020-01-15 .. 2020-02-29 only, then March 2020 (the crash
is 2020-03-12) is replayed twice through the normal replay path (`run_replay`, the model
strategy, probabilities streamed bar by bar, eager backend for both so that they differ by the
learning only): frozen (`online.enabled = false`) and online (`online.enabled = true`).
Every other setting is the default, the [online] section included (hourly rounds, its
learning rate, guard and replay mix): they were never tuned on this data, so the figures
say what the defaults do on a market they did not see, as do the strategy's (sizing, thresholds,
bracket, costs). Nothing is subsampled: the whole bench takes about 1.5 minutes on 2 cores, most
of it the online replay (744 hourly rounds of `max_steps` steps).

Scored: the log-loss (nats, both sides averaged) of the prediction served at each bar, once
its triple-barrier label has matured, as the online model records it (`matured_losses`: no
look-ahead). The frozen model's loss is its causal series prediction (equal to what the
frozen replay streamed, to 1e-5) scored on the same bars with the same labels; until the
first approval the two must agree, and `frozen_check_max_abs_nats` says how closely they
did. The base rate is the loss of always predicting the training period's label
frequencies. The replays start cold on 2020-03-01 (features warm up on its first bars).

Lines: the mean loss over the month and over 2020-03-12 .. 03-31 (value: online; frozen and
base rate beside), daily means (the rolling loss), the versions approved and rejected, each
replay's trades and return after fees beside buy-and-hold and the rule and random-entry
baselines, and the wall times.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

Result = dict[str, Any]
DAY_MS = 86_400_000
TRAIN_FROM, TRAIN_TO = "2020-01-15", "2020-03-01"  # [from, to): the weeks before the crash
REPLAY_FROM, REPLAY_TO = "2020-03-01", "2020-04-01"
CRASH = "2020-03-12"
KIND = "tcn"
SEED = 0


def _need(relative: str) -> Path:
    from scalpd.bench import _need as need

    return need(relative)


def _day(ms: int) -> str:
    return str(np.datetime64(ms, "ms").astype("datetime64[D]"))


def bench_online_regime() -> Iterator[Result]:
    from scalpd.bench.online_scoring import matured_losses, replay_line, replay_model
    from scalpd.data.bars import validate
    from scalpd.data.parquet import read_parquet
    from scalpd.logs import configure_logging
    from scalpd.models.device import set_threads
    from scalpd.models.labels import class_frequencies, label_bars
    from scalpd.models.train import TrainParams, train
    from scalpd.strategy.model import ModelStrategy, feature_matrix
    from scalpd.utc import parse_utc_ms

    path = _need("binance-spot/BTCUSDT-1m-2020.parquet")
    configure_logging("error", "json", sys.stderr)
    t_start = time.perf_counter()
    set_threads(1)  # one thread, one answer: float sums depend on how work is split
    bars, _bad = validate(read_parquet(path))
    history = bars.between(parse_utc_ms(TRAIN_FROM), parse_utc_ms(TRAIN_TO))
    march = bars.between(parse_utc_ms(REPLAY_FROM), parse_utc_ms(REPLAY_TO))
    params = TrainParams(seed=SEED, device="cpu", threads=1, version="online-regime")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        x_hist, names, fs_id = feature_matrix(history)
        hist_labels = label_bars(history, params.label)
        artifact = train(
            KIND, x_hist, hist_labels.y, hist_labels.valid, names, fs_id, params, tmp,
            open_time_ms=history.open_time,
        )  # fmt: skip
        train_s = time.perf_counter() - t0
        results = {
            mode: replay_model(
                artifact.path, march, f"real data: {path.name}", Path(tmp) / f"{mode}.db",
                online=mode == "online",
            )
            for mode in ("frozen", "online")
        }  # fmt: skip
        strategy = results["online"].engine._strategy
        assert isinstance(strategy, ModelStrategy) and strategy.online is not None
        online = strategy.online
        approved, rejected = online.counts()[march.symbol]
        # The frozen model, scored on the same bars with the same labels.
        prior = class_frequencies(hist_labels.y, hist_labels.valid)
        t_ms, online_loss, frozen_loss, base_loss = matured_losses(online, artifact, march, prior)
        first_ms = online.lineage[0]["bar_close_ms"] if online.lineage else None
        horizon_ms = params.label.horizon_bars * 60_000
        before = np.ones_like(t_ms, bool)
        if first_ms is not None:
            before = t_ms < (first_ms - horizon_ms)
        check = float(np.abs(online_loss[before] - frozen_loss[before]).max(initial=0.0))
        model = (
            f"{KIND} (default size), {params.epochs} epochs, seed {SEED}, on BTC/USDT "
            f"{TRAIN_FROM}..2020-02-29 ({len(history)} bars)"
        )
        # Both served a prediction: a bar the online model scored but the frozen series calls
        # invalid means the two are not aligned on the same bar (it should count 0).
        both = np.isfinite(frozen_loss)
        windows = {
            "month": (both, f"{REPLAY_FROM}..2020-03-31"),
            "post_crash": (both & (t_ms >= parse_utc_ms(CRASH)), f"{CRASH}..2020-03-31"),
        }
        for key, (mask, span) in windows.items():
            yield {
                "bench": f"online_regime_loss_{key}",
                "value": round(float(online_loss[mask].mean()), 4),
                "unit": "nats (mean matured log-loss, online)",
                "frozen": round(float(frozen_loss[mask].mean()), 4),
                "online": round(float(online_loss[mask].mean()), 4),
                "base_rate": round(float(base_loss[mask].mean()), 4),
                "scored_bars": int(mask.sum()),
                "window": span,
                "model": model,
            }
        day = t_ms // DAY_MS
        days = np.unique(day)
        post = both & (t_ms >= parse_utc_ms(CRASH))
        yield {
            "bench": "online_regime_loss_daily",
            "value": round(float((online_loss - frozen_loss)[post].mean()), 4),
            "unit": "nats (online - frozen, post-crash mean)",
            "date": [_day(int(d) * DAY_MS) for d in days],
            "frozen": [round(float(frozen_loss[both & (day == d)].mean()), 4) for d in days],
            "online": [round(float(online_loss[both & (day == d)].mean()), 4) for d in days],
            "base_rate": [round(float(base_loss[both & (day == d)].mean()), 4) for d in days],
            "frozen_check_max_abs_nats": round(check, 6),
            "frozen_check_bars": int(before.sum()),
            "online_only_bars": int((~both).sum()),
        }
        yield {
            "bench": "online_regime_versions",
            "value": approved,
            "unit": "versions approved",
            "rejected": rejected,
            "update_every": online.settings.update_every,
            "online_settings": "defaults (never tuned on this data)",
        }
        yield replay_line("online_regime_replay_frozen", results["frozen"])
        yield replay_line("online_regime_replay_online", results["online"])
    yield {
        "bench": "online_regime_wall_s",
        "value": round(time.perf_counter() - t_start, 1),
        "unit": "s",
        "train_s": round(train_s, 1),
        "frozen_replay_s": results["frozen"].summary["run_s"],
        "online_replay_s": results["online"].summary["run_s"],
        "bars_replayed": results["online"].summary["bars"],
        "threads": 1,
    }
