"""Training, artifacts, backends: a model learns on real BTC bars, its artifact round-trips
exactly and refuses wrong features and damaged files, ONNX and INT8 stay close to eager, and
invalid features give "no prediction", never a crash or a NaN probability."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from scalpd.data.bars import BarColumns
from scalpd.data.parquet import read_parquet
from scalpd.models.artifact import ModelArtifact, load_artifact
from scalpd.models.backends import EnsemblePredictor
from scalpd.models.cli import add_train_command
from scalpd.models.device import select_device
from scalpd.models.errors import ModelError
from scalpd.models.labels import LabelParams, label_bars
from scalpd.models.nets import build_net
from scalpd.models.online import OnlineTrainer, ReplayBuffer, VolatilityLr
from scalpd.models.train import TrainParams, train
from tests.conftest import shared_file

MARCH_2024_MS = 1_709_251_200_000
DAY_MS = 86_400_000
LABELS = LabelParams(take_profit_bps=10, stop_loss_bps=10, horizon_bars=15)
FEATURE_SET = "test-simple-v1"


def simple_features(bars: BarColumns) -> tuple[np.ndarray, list[str]]:
    """A few causal columns (bar t and earlier only): log returns over 1/5/15 bars, rolling
    volatility of 1-bar returns over 15 bars, the taker-buy share of volume."""
    log_close = np.log(bars.close)
    cols, names = [], []
    for k in (1, 5, 15):
        r = np.full(len(bars), np.nan)
        r[k:] = (log_close[k:] - log_close[:-k]) * 1e4
        cols.append(r)
        names.append(f"ret_{k}b_bps")
    r1 = cols[0]
    vol = np.full(len(bars), np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(r1[1:], 15)
    vol[15:] = windows.std(axis=1)
    cols.append(vol)
    names.append("vol_15b_bps")
    cols.append(bars.taker_buy_volume / bars.volume - 0.5)
    names.append("taker_buy_share")
    return np.column_stack(cols), names


@pytest.fixture(scope="module")
def btc() -> BarColumns:
    bars = read_parquet(shared_file("binance-spot/BTCUSDT-1m-2024.parquet"))
    t = bars.open_time
    return bars.take((t >= MARCH_2024_MS) & (t < MARCH_2024_MS + 3 * DAY_MS))


@pytest.fixture(scope="module")
def dataset(btc: BarColumns) -> dict:
    X, names = simple_features(btc)
    labels = label_bars(btc, LABELS)
    return {"X": X, "names": names, "y": labels.y, "mask": labels.valid, "t": btc.open_time}


@pytest.fixture(scope="module")
def trained(dataset: dict, tmp_path_factory: pytest.TempPathFactory) -> ModelArtifact:
    """A TCN trained to overfit three days: proof that it can learn, not that it predicts."""
    params = TrainParams(
        epochs=40, lr=5e-3, window_bars=128, stride_bars=16, val_fraction=0.25,
        keep_best=False, label=LABELS, net={"hidden": 64, "levels": 4}, seed=0,
        device="cpu", version="v1", threads=1,  # one thread: immune to a busy machine
    )  # fmt: skip
    d = dataset
    return train(
        "tcn", d["X"], d["y"], d["mask"], d["names"], FEATURE_SET, params,
        tmp_path_factory.mktemp("models"), open_time_ms=d["t"],
    )  # fmt: skip


def test_training_learns_and_the_card_records_it(trained: ModelArtifact) -> None:
    m = trained.metrics
    print(
        f"train loss {m['train_loss']:.4f} vs base rate {m['base_rate_train_loss']:.4f}; "
        f"validation {m['val_loss']:.4f} vs base rate {m['base_rate_val_loss']:.4f}"
    )
    assert m["train_loss"] < 0.7 * m["base_rate_train_loss"]
    curve = m["train_loss_curve"]
    assert len(curve) == 40 and curve[-1] < 0.7 * curve[0]
    assert len(m["val_loss_curve"]) == 40
    assert m["device"] == "cpu" and m["train_samples_per_s"] > 0

    card = (trained.path / "MODEL_CARD.md").read_text()
    val_row = next(line for line in card.splitlines() if line.startswith("| validation"))
    assert f"{m['val_loss']:.4f}" in val_row and f"{m['base_rate_val_loss']:.4f}" in val_row
    for heading in ("## Architecture", "## Training data", "## Performance", "## Known limit"):
        assert heading in card
    assert FEATURE_SET in card and "2024-03-01 00:00 UTC" in card

    meta = trained.meta
    assert meta["features"]["names"] == ["ret_1b_bps", "ret_5b_bps", "ret_15b_bps",
                                         "vol_15b_bps", "taker_buy_share"]  # fmt: skip
    assert meta["training"]["data_range_ms"] == [MARCH_2024_MS, MARCH_2024_MS + 3 * DAY_MS - 60_000]
    assert len(meta["training"]["data_hash_sha256"]) == 64
    assert meta["label"] == {"take_profit_bps": 10, "stop_loss_bps": 10, "horizon_bars": 15}
    # The normaliser was fitted on the training period only.
    d_mean = np.asarray(meta["normalisation"][0]["mean"])
    assert np.all(np.isfinite(d_mean))


def test_training_is_deterministic_on_cpu(dataset: dict, tmp_path: Path) -> None:
    d = dataset
    n = 1440
    params = TrainParams(epochs=2, window_bars=96, stride_bars=48, label=LABELS,
                         net={"hidden": 16}, device="cpu", seed=3)  # fmt: skip
    arts = [
        train(
            "lstm",
            d["X"][:n],
            d["y"][:n],
            d["mask"][:n],
            d["names"],
            FEATURE_SET,
            params,
            tmp_path / str(i),
            open_time_ms=d["t"][:n],
        )  # fmt: skip
        for i in range(2)
    ]
    a, b = (art.net.state_dict() for art in arts)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (
        arts[0].meta["training"]["data_hash_sha256"] == arts[1].meta["training"]["data_hash_sha256"]
    )


def test_save_load_round_trips_exactly(trained: ModelArtifact, dataset: dict) -> None:
    again = load_artifact(trained.path, dataset["names"], FEATURE_SET)
    x = torch.from_numpy(dataset["X"].astype(np.float32))[None]
    with torch.inference_mode():
        assert torch.equal(trained.net(x), again.net(x))
    one = trained.predictor().predict_series(dataset["X"], dataset["t"])
    two = again.predictor().predict_series(dataset["X"], dataset["t"])
    assert np.array_equal(one.probs, two.probs, equal_nan=True)
    assert np.array_equal(one.valid, two.valid)


def test_other_features_are_refused(trained: ModelArtifact, dataset: dict) -> None:
    names = dataset["names"]
    cases = [
        (names, "another-feature-set"),
        ([*names[:2], names[3], names[2], *names[4:]], FEATURE_SET),  # same set, other order
        (names[:-1], FEATURE_SET),
    ]
    for feature_names, set_id in cases:
        with pytest.raises(ModelError) as err:
            load_artifact(trained.path, feature_names, set_id)
        assert "\n" not in str(err.value)
        print(err.value)


def test_damaged_files_are_refused(trained: ModelArtifact, tmp_path: Path) -> None:
    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(trained.path, dst)
        return dst

    flipped = copy("flipped")
    raw = bytearray((flipped / "weights.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (flipped / "weights.pt").write_bytes(bytes(raw))

    truncated = copy("truncated")
    meta = (truncated / "model.json").read_bytes()
    (truncated / "model.json").write_bytes(meta[: len(meta) // 2])

    no_weights = copy("no_weights")
    (no_weights / "weights.pt").unlink()

    # A readable file of the wrong architecture, checksum updated: caught by the state dict.
    other = copy("other")
    import hashlib

    torch.save(build_net({"kind": "tcn", "n_features": 5, "hidden": 8}).state_dict(),
               other / "weights.pt")  # fmt: skip
    text = (other / "model.json").read_text()
    old_sum = hashlib.sha256((trained.path / "weights.pt").read_bytes()).hexdigest()
    new_sum = hashlib.sha256((other / "weights.pt").read_bytes()).hexdigest()
    (other / "model.json").write_text(text.replace(old_sum, new_sum))

    for path in (flipped, truncated, no_weights, other, tmp_path / "missing"):
        with pytest.raises(ModelError) as err:
            load_artifact(path)
        assert "\n" not in str(err.value)
        print(f"{path.name}: {err.value}")


def test_onnx_and_int8_stay_close_to_eager(trained: ModelArtifact, dataset: dict) -> None:
    X, t, y = dataset["X"], dataset["t"], dataset["y"]
    eager = trained.predictor("eager").predict_series(X, t)
    rows = eager.valid & dataset["mask"]
    results = {}
    for backend in ("onnx", "int8"):
        pred = trained.predictor(backend)
        series = pred.predict_series(X, t)
        np.testing.assert_array_equal(series.valid, eager.valid)
        gap = np.abs(series.probs[eager.valid] - eager.probs[eager.valid])
        diff, mean_diff = float(gap.max()), float(gap.mean())
        acc = float((series.probs[rows].argmax(-1) == y[rows]).mean())
        acc_eager = float((eager.probs[rows].argmax(-1) == y[rows]).mean())
        # Streaming on the backend (ONNX: the exported step graph) against eager's series.
        stream = np.array([pred.predict_step(x) for x in X[:600]][-400:])
        stream_diff = float(np.abs(stream - eager.probs[200:600]).max())
        results[backend] = (diff, stream_diff, acc - acc_eager, mean_diff)
        print(
            f"{backend}: max |p - p_eager| series {diff:.2e} (mean {mean_diff:.2e}), "
            f"streaming {stream_diff:.2e}; "
            f"accuracy {acc:.4f} vs eager {acc_eager:.4f} ({acc - acc_eager:+.4f})"
        )
    assert trained._onnx is not None  # exported once; more predictors (symbols) reuse it
    assert trained.predictor("onnx").predict_step(X[0]) is None  # its own, fresh stream
    assert results["onnx"][0] < 1e-4 and results["onnx"][1] < 1e-4
    assert abs(results["onnx"][2]) < 1e-3
    # INT8 moves single probabilities of this deliberately overfit (sharp) model by up to a
    # few tenths, but little on average, and hardly changes which class is picked.
    assert results["int8"][0] < 0.5 and results["int8"][1] < 0.5 and results["int8"][3] < 0.03
    assert abs(results["int8"][2]) < 0.03


def test_invalid_features_give_no_prediction(trained: ModelArtifact, dataset: dict) -> None:
    X = dataset["X"].copy()
    X[1000, 2] = np.nan
    X[2000, :] = np.inf
    context = trained.net.context_bars
    pred = trained.predictor()
    out = [pred.predict_step(x) for x in X[:2100]]
    for bad in (1000, 2000):
        assert all(p is None for p in out[bad : bad + context])
        assert out[bad + context] is not None
    assert all(np.isfinite(p).all() for p in out if p is not None)
    series = pred.predict_series(X, dataset["t"])
    assert not series.valid[1000 : 1000 + context].any() and series.valid[1000 + context]
    assert np.isfinite(series.probs[series.valid]).all()
    assert np.isnan(series.probs[~series.valid]).all()
    with pytest.raises(ModelError, match="shape"):
        pred.predict_step(X[0, :3])
    with pytest.raises(ModelError):
        pred.predict_series(X[:, :3])

    # A gap in the bar times restarts the stream: warm-up again, as after a reset.
    t = dataset["t"]
    pred.reset()
    out = [pred.predict_step(X[i], time_ms=int(t[i])) for i in range(100)]
    out += [pred.predict_step(X[i], time_ms=int(t[i]) + 3_600_000) for i in range(100, 200)]
    warm = trained.net.warmup_bars
    assert out[99] is not None and all(p is None for p in out[100 : 100 + warm - 1])
    assert out[100 + warm - 1] is not None


def test_ensemble_trains_saves_and_predicts(dataset: dict, tmp_path: Path) -> None:
    d = dataset
    n = 2 * 1440
    params = TrainParams(
        epochs=1, window_bars=96, stride_bars=48, label=LABELS, device="cpu",
        member_net={
            "tcn": {"hidden": 16, "levels": 2},
            "transformer": {"d_model": 16, "layers": 1, "window_bars": 32},
            "lstm": {"hidden": 16},
        },
    )  # fmt: skip
    art = train("ensemble", d["X"][:n], d["y"][:n], d["mask"][:n], d["names"], FEATURE_SET,
                params, tmp_path, open_time_ms=d["t"][:n])  # fmt: skip
    m = art.metrics
    assert len(m["member_val_loss"]) == 3 and abs(sum(m["final_weights"]) - 1) < 1e-9
    assert "Ensemble members" in (art.path / "MODEL_CARD.md").read_text()
    again = load_artifact(art.path, d["names"], FEATURE_SET)
    pred = again.predictor()
    assert isinstance(pred, EnsemblePredictor)
    np.testing.assert_allclose(pred.weighter.weights(0), m["final_weights"])
    series = pred.predict_series(d["X"][:n], d["t"][:n])
    np.testing.assert_allclose(series.probs[series.valid].sum(-1), 1.0, atol=1e-5)


def test_online_lstm_buffer_lr_and_step(dataset: dict) -> None:
    d = dataset
    net = build_net({"kind": "lstm", "n_features": len(d["names"]), "hidden": 16})
    net.norm.fit(d["X"][:2000])
    trainer = OnlineTrainer(net, VolatilityLr(base_lr=1e-2, reference_vol=5.0), seq_len=32,
                            batch_size=16)  # fmt: skip
    for i in range(len(d["X"])):
        trainer.buffer.push(d["X"][i], d["y"][i], bool(d["mask"][i]))
    assert len(trainer.buffer) == 4320  # three days: below the 10,000 kept
    small = ReplayBuffer(len(d["names"]), capacity=100)
    for i in range(250):
        small.push(d["X"][i], d["y"][i], True)
    assert len(small) == 100 and np.array_equal(
        small._ordered(small._x)[0], d["X"][150].astype(np.float32)
    )

    rule = trainer.lr_rule
    assert rule(5.0) == pytest.approx(1e-2) and rule(10.0) == pytest.approx(2e-2)
    assert rule(1000.0) == pytest.approx(4e-2) and rule(float("nan")) == pytest.approx(2.5e-3)

    batch = trainer.buffer.sample(16, 32, np.random.default_rng(0))
    assert batch is not None and batch.x.shape == (16, 32, len(d["names"]))
    losses = [trainer.train_step(batch, recent_vol=5.0) for _ in range(30)]
    assert losses[-1] < losses[0]
    assert np.isfinite(trainer.train_step(recent_vol=7.0))  # a fresh sample from the buffer


def test_device_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    assert select_device("auto").type == "cpu"
    with pytest.raises(ModelError):
        select_device("cuda")
    with pytest.raises(ModelError):
        select_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto").type == "cuda"
    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    assert select_device("auto").type == "xpu"  # XPU first
    assert select_device("cpu").type == "cpu"  # an explicit choice wins


def test_train_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="scalpd")
    add_train_command(parser.add_subparsers(dest="command"))
    path = shared_file("binance-spot/BTCUSDT-1m-2024.parquet")
    args = parser.parse_args([
        "train", "--model", "lstm", "--data", str(path), "--from", "2024-03-01",
        "--to", "2024-03-03", "--out", str(tmp_path), "--epochs", "1", "--seed", "1",
        "--device", "cpu", "--horizon-bars", "15",
    ])  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "validation log-loss" in out and "base rate" in out
    (version,) = (tmp_path / "lstm").iterdir()
    art = load_artifact(version)
    assert art.meta["training"]["data_range_ms"] == [
        MARCH_2024_MS,
        MARCH_2024_MS + 2 * DAY_MS - 60_000,
    ]

    bad = parser.parse_args(["train", "--model", "tcn", "--data", str(tmp_path / "none.parquet"),
                             "--out", str(tmp_path)])  # fmt: skip
    assert bad.func(bad) == 1
    assert capsys.readouterr().err.count("\n") == 1
