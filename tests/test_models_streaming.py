"""Streaming (bar by bar) equals batch (full series) for every architecture, on a month of real
BTC/USDT bars with the stand-in features; random (seeded) weights, as equality needs no
training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalpd.data.bars import BarColumns
from scalpd.data.parquet import read_parquet
from scalpd.models.backends import EnsemblePredictor, make_predictor, quantize_int8
from scalpd.models.basic_features import basic_features
from scalpd.models.ensemble import EnsembleWeighter
from scalpd.models.labels import LabelParams, label_bars
from scalpd.models.nets import EnsembleNet, SeqNet, build_net
from tests.conftest import shared_file

MARCH_2024_MS = 1_709_251_200_000
APRIL_2024_MS = 1_711_929_600_000
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def month() -> tuple[BarColumns, np.ndarray]:
    bars = read_parquet(shared_file("binance-spot/BTCUSDT-1m-2024.parquet"))
    t = bars.open_time
    march = bars.take((t >= MARCH_2024_MS) & (t < APRIL_2024_MS))
    X, _, _ = basic_features(march)
    return march, X


def _net(config: dict, X: np.ndarray, seed: int = 0) -> SeqNet:
    torch.manual_seed(seed)
    net = build_net(config)
    assert isinstance(net, SeqNet)
    net.norm.fit(X[: len(X) // 2])
    return net.eval()


def _stream(pred, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.full((len(X), 2, 3), np.nan, dtype=np.float32)
    valid = np.zeros(len(X), dtype=bool)
    for t in range(len(X)):
        p = pred.predict_step(X[t])
        if p is not None:
            probs[t], valid[t] = p, True
    return probs, valid


CONFIGS = {
    "tcn": {"kind": "tcn", "hidden": 48, "levels": 4},
    "transformer": {"kind": "transformer", "d_model": 48, "layers": 2, "window_bars": 120},
    "lstm": {"kind": "lstm", "hidden": 48},
}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_streaming_equals_batch(month: tuple[BarColumns, np.ndarray], kind: str) -> None:
    bars, X = month
    assert len(X) == 31 * 1440 and bars.gaps() == []
    net = _net({**CONFIGS[kind], "n_features": X.shape[1]}, X)
    # Batch: the whole month in one forward call, as in training.
    with torch.inference_mode():
        batch_logits = net(torch.from_numpy(X.astype(np.float32))[None])[0]
    batch_probs = torch.softmax(batch_logits, dim=-1).numpy()

    pred = make_predictor(net, "eager", threads=1)
    stream_probs, stream_valid = _stream(pred, X)
    series = pred.predict_series(X, bars.open_time)  # chunked full series: the same again

    # The stand-in features warm up for 60 bars (NaN): those and the model's context after
    # them are "no prediction", the same way in both paths.
    np.testing.assert_array_equal(stream_valid, series.valid)
    assert not stream_valid[: 60 + net.context_bars - 1].any()
    assert stream_valid[60 + net.context_bars - 1 :].all()
    v = stream_valid
    diff_batch = float(np.abs(stream_probs[v] - batch_probs[v]).max())
    diff_series = float(np.abs(stream_probs[v] - series.probs[v]).max())
    print(f"{kind}: max |stream - batch| {diff_batch:.2e}, |stream - series| {diff_series:.2e}")
    assert diff_batch < TOLERANCE and diff_series < TOLERANCE
    assert np.isnan(series.probs[~v]).all() and np.isfinite(series.probs[v]).all()


def test_ensemble_streaming_equals_batch(month: tuple[BarColumns, np.ndarray]) -> None:
    """Members side by side, weights following their log-loss on labels as they mature, per
    regime; regime 1 (volatile bars) may use the LSTM only."""
    bars, X = month
    f = X.shape[1]
    # Smaller members than the single tests' (fewer layers): the point here is the mixing.
    members = [
        _net({"kind": "tcn", "n_features": f, "hidden": 32, "levels": 2}, X, seed=1),
        _net(
            {
                "kind": "transformer",
                "n_features": f,
                "d_model": 32,
                "layers": 1,
                "window_bars": 100,
            },
            X,
            seed=2,
        ),  # fmt: skip
        _net({"kind": "lstm", "n_features": f, "hidden": 32}, X, seed=3),
    ]
    net = EnsembleNet(members)
    params = LabelParams(10, 10, 15)
    labels = label_bars(bars, params)
    vol = X[:, 3]  # volatility_15b_bps
    regime = (np.nan_to_num(vol) > np.nanmedian(vol) * 1.5).astype(np.int64)
    allowed = np.array([[True, True, True], [False, False, True]])

    def predictor() -> EnsemblePredictor:
        weighter = EnsembleWeighter(3, n_regimes=2, temperature=0.02, allowed=allowed)
        pred = make_predictor(net, "eager", threads=1, weighter=weighter, horizon_bars=15)
        assert isinstance(pred, EnsemblePredictor)
        return pred

    stream = predictor()
    probs = np.full((len(X), 2, 3), np.nan, dtype=np.float32)
    valid = np.zeros(len(X), dtype=bool)
    h = params.horizon_bars
    times = bars.open_time.tolist()
    for t in range(len(X)):
        if t >= h and labels.valid[t - h]:
            stream.observe_label(times[t - h], labels.y[t - h])  # bar t closed: t-H matured
        p = stream.predict_step(X[t], time_ms=times[t], regime=int(regime[t]))
        if p is not None:
            probs[t], valid[t] = p, True

    series = predictor().predict_series(X, bars.open_time, regime, labels.y, labels.valid)
    np.testing.assert_array_equal(valid, series.valid)
    diff = float(np.abs(probs[valid] - series.probs[valid]).max())
    print(f"ensemble: max |stream - batch| {diff:.2e}")
    assert diff < TOLERANCE
    # The weights did follow performance (not uniform any more), per regime.
    assert series.weights is not None
    assert np.abs(series.weights[-1] - 1 / 3).max() > 0.01
    # The weights follow float32 log-losses: equal to float32's tolerance, as the probabilities.
    np.testing.assert_allclose(
        stream.weighter.weights(int(regime[-1])), series.weights[-1], rtol=TOLERANCE
    )
    # In regime 1 only the LSTM counts: the mixture is the LSTM's own forecast.
    lstm = make_predictor(members[2], "eager").predict_series(X, bars.open_time)
    both = valid & (regime == 1) & lstm.valid
    assert both.any()
    assert np.abs(series.probs[both] - lstm.probs[both]).max() < TOLERANCE


SMALL = {
    "tcn": {"kind": "tcn", "n_features": 12, "hidden": 16, "levels": 3},
    "transformer": {"kind": "transformer", "n_features": 12, "d_model": 16, "heads": 4,
                    "layers": 2, "window_bars": 24},
    "lstm": {"kind": "lstm", "n_features": 12, "hidden": 16, "layers": 2},
}  # fmt: skip


@pytest.mark.parametrize("kind", list(SMALL))
def test_compiled_step_equals_the_torch_step(kind: str) -> None:
    """Each network's compiled step (scalpd/models/nets.py array_stepper): bar by bar it gives
    the torch step's logits, through NaN and infinite features and after state built by a torch
    chunk, and its state converts back to the chunk's; a step leaves the state it was given as
    it was; it keeps its own copy of the weights, so it still gives them after the network's
    storage moved to shared memory (as when a round is sent to the learning worker); int8 keeps
    torch."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((400, 12)).astype(np.float32)
    x[50, 3], x[51, 0], x[52, 5] = np.nan, np.inf, -1e38
    net = _net(SMALL[kind], x)
    array_step, torch_step = net.array_stepper(), net.stepper()  # type: ignore[operator]
    assert array_step is not None

    def both(rows: np.ndarray, a_state: np.ndarray, t_state: list) -> tuple[np.ndarray, list]:
        for row in rows:
            before = a_state.copy()
            a, new = array_step(row, a_state)
            np.testing.assert_array_equal(a_state, before)
            with torch.inference_mode():
                b, t_state = torch_step(torch.from_numpy(row)[None], t_state)
            np.testing.assert_allclose(a, b[0].numpy(), atol=1e-5, rtol=1e-5)
            a_state = new
        for ours, theirs in zip(array_step.to_torch(a_state), t_state, strict=True):
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5, rtol=1e-5)
        return a_state, t_state

    # From the reset state (the Transformer's keys masked), then from a torch chunk's state.
    both(x[:40], array_step.initial_state(), net.initial_state(1))
    with torch.inference_mode():  # state after a chunk of 100 bars, shared by both paths
        _, chunked = net.forward_chunk(torch.from_numpy(x[:100])[None], net.initial_state(1))
    a_state, t_state = both(x[100:250], array_step.from_torch(chunked), chunked)
    net.share_memory()  # the weights' storage moves (and the old is freed)
    torch.randn(1_000_000).add_(1.0)  # reuse of the freed memory, were it still read
    both(x[250:], a_state, t_state)
    assert quantize_int8(net).array_stepper() is None  # type: ignore[operator]


def test_ensemble_compiled_step_stacks_its_members() -> None:
    """An ensemble of the three kinds steps every member compiled: logits [M, 2, 3] equal to
    its torch members' step."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((80, 12)).astype(np.float32)
    net = EnsembleNet([_net(SMALL[k], x, seed=i) for i, k in enumerate(SMALL)]).eval()
    array_step, torch_step = net.array_stepper(), net.members_stepper()
    assert array_step is not None
    a_state, t_state = array_step.initial_state(), net.initial_state(1)
    for row in x:
        a, a_state = array_step(row, a_state)
        with torch.inference_mode():
            b, t_state = torch_step(torch.from_numpy(row)[None], t_state)
        assert a.shape == (3, 2, 3)
        np.testing.assert_allclose(a, b[0].numpy(), atol=1e-5, rtol=1e-5)
