"""Small models trained on synthetic bars, for the tests of the model strategy and of online
learning (one torch thread while training: float sums depend on how work is split)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scalpd.data.bars import BarColumns
from scalpd.models.artifact import ModelArtifact
from scalpd.models.labels import LabelParams, Labels, label_bars
from scalpd.models.train import TrainParams, train
from scalpd.strategy.model import feature_matrix


def train_tcn(
    bars: BarColumns,
    label: LabelParams,
    out: Path,
    params: TrainParams | dict[str, Any],
    *,
    n: int | None = None,
) -> tuple[ModelArtifact, np.ndarray, Labels]:
    """A TCN trained on the first `n` bars (all: None) of `bars` on the strategy's own inputs,
    with the triple-barrier labels of `label`; also the feature matrix and labels of all."""
    import torch

    X, names, feature_set = feature_matrix(bars)
    labels = label_bars(bars, label)
    n = len(bars) if n is None else n
    before = torch.get_num_threads()
    try:
        artifact = train(
            "tcn", X[:n], labels.y[:n], labels.valid[:n], names, feature_set, params, out,
            open_time_ms=bars.open_time[:n],
        )  # fmt: skip
    finally:
        torch.set_num_threads(before)
    return artifact, X, labels


def tiny_daemon_model(root: Path, horizon_bars: int) -> Path:
    """A TCN of 8 channels trained one epoch on 1.5 synthetic days before 2024-01-01 (the
    daemon tests' bars follow them), 20 bps barriers over `horizon_bars`: its artifact path."""
    from scalpd.data.synthetic import generate

    history = generate(days=1.5, seed=4, start="2023-12-30T00:00:00Z")
    label = LabelParams(take_profit_bps=20.0, stop_loss_bps=20.0, horizon_bars=horizon_bars)
    params = {
        "epochs": 1, "window_bars": 96, "stride_bars": 48, "seed": 1, "threads": 1,
        "label": label, "net": {"hidden": 8},
    }  # fmt: skip
    artifact, _, _ = train_tcn(history, label, root, params)
    return artifact.path
