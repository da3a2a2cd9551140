"""A trained model trading through the engine: training's batch features and the engine's
incremental features feed the same model to the same probabilities, and the strategy enters
exactly where the model is confident."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scalpd.config.settings import ConfigError, load_settings
from scalpd.data.parquet import read_parquet
from scalpd.models.artifact import load_artifact
from scalpd.models.errors import ModelError
from scalpd.models.labels import LabelParams, label_bars
from scalpd.models.train import train
from scalpd.replay.runner import ReplayInput, run_replay
from scalpd.store.sqlite import Store
from scalpd.strategy.model import feature_matrix
from tests.conftest import shared_file

LABEL = LabelParams(take_profit_bps=20.0, stop_loss_bps=20.0, horizon_bars=30)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    bars = read_parquet(shared_file("binance-spot/BTCUSDT-1m-2024.parquet"))
    first = int(np.datetime64("2024-03-01T00:00", "ms").astype(np.int64))
    i = int(bars.open_time.searchsorted(first))
    history = bars.take(slice(i, i + 4 * 1440))  # four days to train on
    window = bars.take(slice(i, i + 5 * 1440))  # replayed: the same days and the next one
    X, names, fs_id = feature_matrix(history)
    labels = label_bars(history, LABEL)
    params = {
        "epochs": 2, "window_bars": 96, "stride_bars": 48, "seed": 1, "threads": 1,
        "label": LABEL, "net": {"hidden": 16},
    }  # fmt: skip
    root = tmp_path_factory.mktemp("models")
    artifact = train(
        "tcn", X, labels.y, labels.valid, names, fs_id, params, root,
        open_time_ms=history.open_time,
    )  # fmt: skip
    return artifact, window


def _settings(tmp_path: Path, model: Path, threshold: float):
    return load_settings(
        None,
        {
            "strategy": {"name": "model", "model_path": str(model), "min_confidence": threshold},
            "store": {"path": str(tmp_path / "r.db")},
        },
    )


def test_engine_features_and_batch_features_give_the_same_probabilities(trained, tmp_path):
    artifact, joined = trained
    X, _, _ = feature_matrix(joined)
    batch = artifact.predictor("eager").predict_series(X, joined.open_time)
    result = run_replay(
        _settings(tmp_path, artifact.path, 0.5),
        ReplayInput([joined], "test"),
        Store(tmp_path / "r.db"),
    )
    strategy = result.engine._strategy
    # The strategy's last streaming probability equals the batch one for the last bar.
    p_stream = strategy.last_probability["BTC/USDT"]
    p_batch = float(batch.probs[-1, 0, 0])
    assert p_stream == pytest.approx(p_batch, abs=1e-5)
    # Entries happen only where the batch model was confident (>= 0.5) at the decision bar.
    entries = [t.entry_time_ms for t in result.engine.trades]
    assert entries, "the model never traded: nothing was compared"
    decided = joined.open_time.searchsorted(np.array(entries) - 60_000)  # decided a bar before
    assert np.all(batch.probs[decided, 0, 0] >= 0.5 - 1e-5)


def test_model_with_another_feature_set_is_refused(trained, tmp_path):
    artifact, _ = trained
    with pytest.raises(ModelError):
        load_artifact(artifact.path, ["not", "these"], "fs-other")


def test_model_strategy_needs_a_model_path(tmp_path):
    with pytest.raises(ConfigError, match="model_path"):
        load_settings(None, {"strategy": {"name": "model"}})
