"""online_walkforward: frozen against online models, walk-forward and out-of-sample, on real
BTC/USDT 1m bars of 2022.

Issue 8 asks for a report comparing frozen and online models in walk-forward, out-of-sample.
Four folds, each a test week of 2022 chosen for its regime before anything was run (from the
public record, not from any result): the LUNA/UST collapse (05-06 .. 05-13), the Celsius freeze
and the fall below $20k (06-10 .. 06-17), an August week between the crashes (08-05 .. 08-12)
and the FTX collapse (11-04 .. 11-11). 2022 has no exchange gaps. In each fold a TCN is trained
only on the `TRAIN_DAYS` days of bars before its test week (`online_replay.train_model`: the
default architecture, one epoch, seed 0, one thread; its labels come from those bars alone, so
none reaches into the week), then the week is replayed twice through the normal path
(`run_replay`, the model strategy streaming on the eager backend, fees, slippage and latency at
their defaults): frozen (`online.enabled = false`) and online (every [online] setting at its
default: hourly rounds). Nothing was tuned on these weeks: every setting is a default.

Scored per fold: the log-loss (nats, both sides averaged) of the prediction served at each bar
whose triple-barrier label matured inside the week (the online model's `matured_losses`; the
frozen model's causal prediction against the same labels; the base rate: always the training
window's label frequencies), and each replay's trades and return after fees beside
buy-and-hold and random entries with the same exits (report baselines). The replays start
cold at the week's first bar (features warm up on it).

Lines: one per fold (`online_walkforward_fold`) and a summary over the folds
(`online_walkforward`: losses pooled over every scored bar, returns compounded over the weeks).
About a minute on 2 cores (54 s measured; most of it the online replays).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Result = dict[str, Any]
DAY_MS = 86_400_000
BAR_MS = 60_000
TEST_FROM = ("2022-05-06", "2022-06-10", "2022-08-05", "2022-11-04")
TEST_DAYS = 7
TRAIN_DAYS = 28


@dataclass(frozen=True)
class Fold:
    """Train on bars opening in [train_from_ms, test_from_ms), test on [test_from_ms,
    test_to_ms)."""

    train_from_ms: int
    test_from_ms: int
    test_to_ms: int


def folds(test_from_ms: list[int], train_days: float, test_days: float) -> list[Fold]:
    return [
        Fold(int(t - train_days * DAY_MS), int(t), int(t + test_days * DAY_MS))
        for t in test_from_ms
    ]


def _iso(ms: int) -> str:
    return str(np.datetime64(int(ms), "ms")).replace("T", " ")[:16]


def _replay(result: Any) -> Result:
    from scalpd.bench.online_scoring import replay_line

    line = replay_line("", result)
    del line["bench"], line["value"], line["unit"], line["run_s"]
    return {"net_pnl_pct": result.summary["total_return_pct"], **line}


def _compounded(returns_pct: list[float]) -> float:
    return round(100 * (float(np.prod([1 + r / 100 for r in returns_pct])) - 1), 3)


def walk_forward(
    bars: Any,
    fold_list: list[Fold],
    out: Path,
    net: dict[str, Any] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    label: str = "walk-forward",
) -> Iterator[Result]:
    """One line per fold, then the summary. Each fold sees only its own bars: training on
    [train_from, test_from), replay on [test_from, test_to); `net` and `overrides` (settings
    sections) shrink the work for tests and stay None in the bench."""
    from scalpd.bench.online_replay import EPOCHS, train_model
    from scalpd.bench.online_scoring import matured_losses, replay_model
    from scalpd.models.labels import LabelParams, class_frequencies, label_bars

    pooled: dict[str, list[np.ndarray]] = {"online": [], "frozen": [], "base_rate": []}
    returns: dict[str, list[float]] = {"frozen": [], "online": [], "buy_and_hold": []}
    trades = {"frozen": 0, "online": 0}
    online_better = 0
    for i, fold in enumerate(fold_list):
        history = bars.between(fold.train_from_ms, fold.test_from_ms)
        week = bars.between(fold.test_from_ms, fold.test_to_ms)
        if len(history) == 0 or len(week) == 0:
            raise ValueError(f"fold {i}: no bars to train on or to test ({fold})")
        t0 = time.perf_counter()
        artifact = train_model(history, out / f"fold{i}", net)
        train_s = time.perf_counter() - t0
        # The artifact records the bars it saw: the last one must close by the test's start.
        train_to_ms = int(artifact.meta["training"]["data_range_ms"][1]) + BAR_MS
        assert train_to_ms <= fold.test_from_ms, (train_to_ms, fold)
        hist_labels = label_bars(history, LabelParams(**artifact.meta["label"]))
        prior = class_frequencies(hist_labels.y, hist_labels.valid)
        results = {
            mode: replay_model(
                artifact.path, week, f"{label}, fold {i}", out / f"fold{i}-{mode}.db",
                online=mode == "online", overrides=overrides,
            )
            for mode in ("frozen", "online")
        }  # fmt: skip
        online = results["online"].engine._strategy.online
        losses = matured_losses(online, artifact, week, prior)
        both = np.isfinite(losses.frozen)  # bars where the frozen model served one too
        mean = {
            key: round(float(getattr(losses, key)[both].mean()), 4) if both.any() else None
            for key in ("online", "frozen", "base_rate")
        }
        for key in pooled:
            pooled[key].append(getattr(losses, key)[both])
        online_better += int(mean["online"] is not None and mean["online"] < mean["frozen"])
        approved, rejected = online.counts()[week.symbol]
        replays = {mode: _replay(r) for mode, r in results.items()}
        for mode in ("frozen", "online"):
            returns[mode].append(replays[mode]["net_pnl_pct"])
            trades[mode] += replays[mode]["trades"]
        returns["buy_and_hold"].append(replays["online"]["buy_and_hold_return_pct"][week.symbol])
        yield {
            "bench": "online_walkforward_fold",
            "value": mean["online"],
            "unit": "nats (mean matured log-loss, online)",
            "fold": i,
            "train_window": f"{_iso(fold.train_from_ms)} .. {_iso(fold.test_from_ms)}",
            "train_to_ms": train_to_ms,
            "train_bars": len(history),
            "test_window": f"{_iso(fold.test_from_ms)} .. {_iso(fold.test_to_ms)}",
            "test_from_ms": fold.test_from_ms,
            "test_bars": len(week),
            "scored_bars": int(both.sum()),
            "loss_online": mean["online"],
            "loss_frozen": mean["frozen"],
            "loss_base_rate": mean["base_rate"],
            "versions_approved": approved,
            "versions_rejected": rejected,
            "frozen": replays["frozen"],
            "online": replays["online"],
            "model": f"{artifact.kind}, {EPOCHS} epoch(s), seed 0, one thread",
            "train_s": round(train_s, 1),
            "replay_s": {m: round(r.summary["run_s"], 1) for m, r in results.items()},
        }
    all_bars = {k: np.concatenate(v) if v else np.zeros(0) for k, v in pooled.items()}
    loss = {k: round(float(v.mean()), 4) if len(v) else None for k, v in all_bars.items()}
    yield {
        "bench": "online_walkforward",
        "value": loss["online"],
        "unit": "nats (mean matured log-loss over every scored bar, online)",
        "folds": len(fold_list),
        "scored_bars": len(all_bars["online"]),
        "loss_online": loss["online"],
        "loss_frozen": loss["frozen"],
        "loss_base_rate": loss["base_rate"],
        "folds_online_lower_loss": online_better,
        "trades": trades,
        # The weeks one after another, each from the same starting cash.
        "net_pnl_pct_compounded": {k: _compounded(v) for k, v in returns.items()},
        "net_pnl_pct_per_fold": returns,
        "settings": "defaults (nothing tuned on the test weeks)",
    }


def bench_online_walkforward() -> Iterator[Result]:
    from scalpd.bench import _need
    from scalpd.data.bars import validate
    from scalpd.data.parquet import read_parquet
    from scalpd.logs import configure_logging
    from scalpd.models.device import set_threads
    from scalpd.utc import parse_utc_ms

    path = _need("binance-spot/BTCUSDT-1m-2022.parquet")
    configure_logging("error", "json", sys.stderr)
    set_threads(1)  # one thread, one answer: float sums depend on how work is split
    t0 = time.perf_counter()
    bars, _bad = validate(read_parquet(path))
    fold_list = folds([parse_utc_ms(d) for d in TEST_FROM], TRAIN_DAYS, TEST_DAYS)
    with tempfile.TemporaryDirectory() as tmp:
        for line in walk_forward(bars, fold_list, Path(tmp), label=f"real data: {path.name}"):
            if line["bench"] == "online_walkforward":
                line["wall_s"] = round(time.perf_counter() - t0, 1)
            yield line
