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
        probabilities="streaming",  # the engine's incremental features, bar by bar
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


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_the_symbols_predictors_share_one_runner_and_keep_their_own_streams(trained, backend):
    """One copy of the weights for every symbol (ModelArtifact.predictors), and symbols
    stepped in turn each get what a predictor of their own would give."""
    artifact, joined = trained
    X, _, _ = feature_matrix(joined.take(slice(0, 400)))
    X = np.nan_to_num(X)  # the first bars' warm-up NaNs would only delay the first output
    series = {"A": X, "B": X[::-1].copy()}
    shared = artifact.predictors(backend, list(series))
    assert shared["A"].runner is shared["B"].runner
    alone = {s: artifact.predictor(backend) for s in series}
    served = 0
    for t in range(len(X)):
        for s, x in series.items():
            a, b = shared[s].predict_step(x[t]), alone[s].predict_step(x[t])
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(a, b, atol=1e-6)
                served += 1
    assert served > 100


def test_model_with_another_feature_set_is_refused(trained, tmp_path):
    artifact, _ = trained
    with pytest.raises(ModelError):
        load_artifact(artifact.path, ["not", "these"], "fs-other")


def test_model_strategy_needs_a_model_path(tmp_path):
    with pytest.raises(ConfigError, match="model_path"):
        load_settings(None, {"strategy": {"name": "model"}})


def _orders(store: Store, run_id: int) -> list[tuple]:
    # Client ids carry the run id, so they differ between runs by design: compare the rest.
    return store.conn.execute(
        "SELECT symbol, side, type, qty, price, reason, reduce_only, status, filled_qty, "
        "created_ms FROM orders WHERE run_id = ? ORDER BY created_ms, rowid",
        (run_id,),
    ).fetchall()


def test_precomputed_and_streaming_probabilities_replay_identically(trained, tmp_path):
    artifact, joined = trained
    # A gap of 17 missing minutes in the middle: both sources must restart there alike.
    cut = 3 * 1440 + 700
    keep = np.ones(len(joined), dtype=bool)
    keep[cut : cut + 17] = False
    bars = joined.take(keep)
    settings = _settings(tmp_path, artifact.path, 0.5)
    store = Store(tmp_path / "r.db")
    runs = {
        mode: run_replay(settings, ReplayInput([bars], "test"), store, probabilities=mode)
        for mode in ("streaming", "precomputed")
    }
    stream, pre = runs["streaming"], runs["precomputed"]
    assert stream.summary["gaps"] == pre.summary["gaps"] == 1
    assert stream.engine.trades, "the model never traded: nothing was compared"
    assert pre.engine.trades == stream.engine.trades
    assert _orders(store, pre.run_id) == _orders(store, stream.run_id)
    assert len(_orders(store, pre.run_id)) >= 2 * len(stream.engine.trades)
    assert pre.engine.equity_curve.equity == stream.engine.equity_curve.equity
    for symbol, p in stream.engine._strategy.last_probability.items():
        assert pre.engine._strategy.last_probability[symbol] == pytest.approx(p, abs=1e-5)


def test_precomputed_probabilities_refuse_a_bar_they_do_not_know():
    from scalpd.events import Bar
    from scalpd.strategy.model import PrecomputedProbabilities

    times = np.array([0, 60_000, 180_000], dtype=np.int64)
    source = PrecomputedProbabilities(
        {"BTC/USDT": (times, np.array([1.0, 2.0, 3.0]), np.array([0.1, np.nan, 0.7]))}
    )

    def bar(t: int, close: float, symbol: str = "BTC/USDT") -> Bar:
        return Bar(symbol, t, close, close, close, close, 1.0, close, 1, 0.5)

    assert source.on_bar(bar(0, 1.0)) == 0.1
    assert np.isnan(source.on_bar(bar(60_000, 2.0)))
    assert source.on_bar(bar(60_000, 2.0)) is None  # again: out of order, refused
    with pytest.raises(ModelError, match="no precomputed probability"):
        source.on_bar(bar(120_000, 2.5))  # inside the gap: never computed
    assert source.on_bar(bar(180_000, 3.0)) == 0.7
    with pytest.raises(ModelError, match="differs"):
        PrecomputedProbabilities(
            {"BTC/USDT": (times, np.array([1.0, 2.0, 3.0]), np.zeros(3))}
        ).on_bar(bar(0, 1.5))
    with pytest.raises(ModelError, match="ETH/USDT"):
        source.on_bar(bar(0, 1.0, "ETH/USDT"))
