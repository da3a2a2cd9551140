"""`scalpd bench replay_online_bars_per_s`: its machinery on a tiny synthetic market (shape
only, no timing), and the guard's one-sequence holdout equal to its windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scalpd.bench.online_replay import replay_online, results, train_model
from scalpd.data.synthetic import generate
from scalpd.models.labels import LabelParams
from scalpd.models.nets import build_net
from scalpd.models.online import OnlineLearner, OnlineParams, eval_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bench_wiring_runs_on_a_tiny_market(tmp_path: Path) -> None:
    bars = generate(2, 3, "2024-01-01T00:00:00Z")
    n = len(bars) // 2
    art = train_model(bars.take(slice(0, n)), tmp_path, net={"hidden": 8, "levels": 2})
    online = {"max_steps": 2, "seq_len": 16, "recent_bars": 120, "holdout_bars": 60}
    replay = bars.take(slice(n, len(bars)))
    result, model = replay_online(art.path, replay, tmp_path / "o.db", online)
    frozen, none = replay_online(art.path, replay, tmp_path / "f.db", {"enabled": False})
    assert none is None
    (line,) = results(result, model, frozen, replay.symbol)
    assert line["bench"] == "replay_online_bars_per_s" and line["unit"] == "bars/s"
    assert line["bars"] == len(replay) and line["value"] > 0
    assert line["frozen_streaming_bars_per_s"] > 0
    assert line["update_every"] == "hour" and line["max_steps"] == 2
    assert line["approved"] + line["rejected"] > 0  # rounds ran


@pytest.mark.parametrize("kind", ["tcn", "transformer"])
def test_holdout_as_one_sequence_equals_its_windows(kind: str) -> None:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    net_cfg = {"hidden": 8, "levels": 3} if kind == "tcn" else {"d_model": 8, "window_bars": 8}
    net = build_net({"kind": kind, "n_features": 5, **net_cfg})
    params = OnlineParams(seq_len=32, recent_bars=50, holdout_bars=80, capacity_bars=400)
    learner = OnlineLearner(net, LabelParams(horizon_bars=5), params)
    assert net.context_bars <= params.seq_len
    x = rng.standard_normal((300, 5)).astype(np.float32)
    x[250, 2] = np.nan  # a non-finite row inside the holdout: windows over it are skipped
    close = 100 * np.exp(np.cumsum(rng.standard_normal(300) * 1e-3))
    for i in range(300):
        t = i * 60_000 + (3_600_000 if i >= 230 else 0)  # a gap inside the holdout
        learner.on_bar(t, x[i], close[i] * 1.001, close[i] * 0.999, close[i])
    ends = learner._regions()[2]
    one = learner.holdout_batch()
    windows = learner.buffer.batch_at(ends, params.seq_len)
    assert one.x.shape[0] == 1 and windows.x.shape[0] == len(ends) > 10
    assert eval_loss(net, one) == pytest.approx(eval_loss(net, windows), abs=1e-5)


@pytest.mark.parametrize("kind", ["tcn", "transformer", "lstm"])
def test_feeding_rows_equals_stepping_them(kind: str) -> None:
    from scalpd.models.backends import make_predictor

    torch.manual_seed(0)
    small = {"tcn": {"hidden": 8, "levels": 2}, "transformer": {"window_bars": 8}, "lstm": {}}
    net = build_net({"kind": kind, "n_features": 5, "warmup_bars": 4, **small[kind]})
    x = np.random.default_rng(1).standard_normal((70, 5)).astype(np.float32)
    x[50, 1] = np.inf  # an invalid row: validity is carried over as stepping would
    stepped, fed = make_predictor(net, threads=1), make_predictor(net, threads=1)
    for row in x[:60]:
        stepped.predict_step(row)
    fed.feed(x[:60])
    served = 0
    for row in x[60:]:
        a, b = stepped.predict_step(row), fed.predict_step(row)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, atol=1e-5)
            served += 1
    assert served or kind == "lstm"  # the LSTM's context still holds the invalid row


@pytest.mark.parametrize(
    ("net_cfg", "bars"),
    [({}, 64), ({"hidden": 8, "levels": 2}, 13), ({"kernel": 2, "levels": 5}, 40)],
)
def test_tcn_last_bar_forward_equals_the_full_one(net_cfg: dict, bars: int) -> None:
    torch.manual_seed(0)
    net = build_net({"kind": "tcn", "n_features": 7, **net_cfg})
    x = torch.randn(4, bars, 7, requires_grad=True)
    full, last = net(x)[:, -1], net.forward_last(x)  # 40 bars < 63 of context: the fallback
    torch.testing.assert_close(last, full, rtol=0, atol=1e-6)
    (g_full,) = torch.autograd.grad(full.square().sum(), x)
    (g_last,) = torch.autograd.grad(last.square().sum(), x)
    torch.testing.assert_close(g_last, g_full, rtol=0, atol=1e-6)
