"""`scalpd bench online_walkforward`: its core on a tiny synthetic market (shape, not
numbers), and each fold's model trained on bars before its test window only: changing the
bars after a fold's window leaves that fold's line as it was."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from scalpd.bench.online_walkforward import DAY_MS, folds, walk_forward
from scalpd.data.synthetic import generate

NET = {"hidden": 8, "levels": 2}
SMALL = {
    "online": {"max_steps": 2, "seq_len": 16, "recent_bars": 120, "holdout_bars": 60},
    "report": {"random_trials": 2},
}
TIMES = ("train_s", "replay_s")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(bars, fold_list, out: Path) -> list[dict]:
    return list(walk_forward(bars, fold_list, out, net=NET, overrides=SMALL))


def _no_times(line: dict) -> dict:
    out = {k: v for k, v in line.items() if k not in TIMES}
    for mode in ("frozen", "online"):
        out[mode] = {k: v for k, v in line[mode].items() if k != "run_s"}
    return out


def test_folds_train_before_their_window_and_ignore_later_bars(tmp_path: Path) -> None:
    bars = generate(4, 5, "2024-01-01T00:00:00Z")
    start = int(bars.open_time[0])
    # Training windows of 1 day, test windows of 1.5 (the features' normalisation warms up
    # over the first day), back to back.
    fold_list = folds([start + DAY_MS, start + DAY_MS * 5 // 2], 1, 1.5)
    lines = _run(bars, fold_list, tmp_path / "a")
    *per_fold, summary = lines
    assert [line["bench"] for line in per_fold] == ["online_walkforward_fold"] * 2
    assert summary["bench"] == "online_walkforward" and summary["folds"] == 2
    for fold, line in zip(fold_list, per_fold, strict=True):
        assert line["train_to_ms"] <= line["test_from_ms"] == fold.test_from_ms
        assert line["train_bars"] == 1440 and line["test_bars"] == 2160
        assert 0 < line["scored_bars"] <= line["test_bars"]
        for key in ("loss_online", "loss_frozen", "loss_base_rate"):
            assert np.isfinite(line[key]) and line[key] > 0
        assert line["versions_approved"] + line["versions_rejected"] > 0  # rounds ran
        for mode in ("frozen", "online"):
            replay = line[mode]
            assert replay["trades"] >= 0 and np.isfinite(replay["net_pnl_pct"])
            assert replay["random_entries_trials"] == 2
        assert (
            line["frozen"]["buy_and_hold_return_pct"] == line["online"]["buy_and_hold_return_pct"]
        )
    assert summary["scored_bars"] == sum(line["scored_bars"] for line in per_fold)
    assert summary["trades"]["online"] == sum(line["online"]["trades"] for line in per_fold)
    assert set(summary["net_pnl_pct_compounded"]) == {"frozen", "online", "buy_and_hold"}

    # Everything after the first fold's test window changes (prices doubled, volume halved):
    # the first fold's line must not move; the second fold trains and tests on changed bars.
    later = bars.open_time >= fold_list[0].test_to_ms
    changed = replace(
        bars,
        open=np.where(later, bars.open * 2, bars.open),
        high=np.where(later, bars.high * 2, bars.high),
        low=np.where(later, bars.low * 2, bars.low),
        close=np.where(later, bars.close * 2, bars.close),
        volume=np.where(later, bars.volume / 2, bars.volume),
    )
    first, second, _ = _run(changed, fold_list, tmp_path / "b")
    assert _no_times(first) == _no_times(per_fold[0])
    assert second["loss_frozen"] != per_fold[1]["loss_frozen"]  # the change is seen later


def test_a_fold_without_bars_is_refused(tmp_path: Path) -> None:
    bars = generate(1, 5, "2024-01-01T00:00:00Z")
    late = int(bars.open_time[-1]) + DAY_MS
    with pytest.raises(ValueError, match="fold 0"):
        _run(bars, folds([late], 0.5, 0.25), tmp_path)
