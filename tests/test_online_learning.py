"""Online learning mechanics (issue 8): matured samples only, fine-tuning on a copy, the
poisoned-update guard, and recovery after a planted regime change on the synthetic market."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from scalpd.data.bars import BarColumns
from scalpd.data.synthetic import RegimeChange, generate
from scalpd.models.basic_features import basic_features
from scalpd.models.labels import (
    STOP_LOSS,
    TAKE_PROFIT,
    LabelParams,
    class_frequencies,
    label_bars,
    triple_barrier,
)
from scalpd.models.nets import SeqNet, build_net, clone_net, default_config
from scalpd.models.online import (
    Batch,
    Candidate,
    OnlineLearner,
    OnlineParams,
    ReplayBuffer,
    VolatilityLr,
    batch_loss,
    batch_loss_and_grads,
    eval_loss,
    fine_tune_copy,
    guard_candidate,
    matured_label,
    weights_finite,
)
from scalpd.models.train import TrainParams, train

START = "2024-01-01T00:00:00Z"
LABEL = LabelParams(take_profit_bps=15, stop_loss_bps=15, horizon_bars=15)
FLOW = 0.5
# 5 days: the model is trained on the first 1.5, the learner runs from there; at day 2 the
# informed order flow becomes faded flow (the pattern's sign flips) and volatility rises 1.5x.
CHANGE = RegimeChange(at_fraction=0.4, flow_drift_sigmas_after=-FLOW, volatility_mult=1.5)
PRETRAIN_BARS = int(1.5 * 1440)
ROUND_BARS = 120  # a fine-tuning round every two hours of bars
PARAMS = OnlineParams(
    seq_len=32, batch_size=32, recent_bars=240, replay_share=0.25, anchor_l2=1e-2,
    holdout_bars=120, guard_margin_nats=0.02, seed=0,
)  # fmt: skip
LR = VolatilityLr(base_lr=2.5e-3, power=0.0)  # a constant rate; vol passed as 1.0
VOL = 1.0


def feed(learner: OnlineLearner, bars: BarColumns, X: np.ndarray, lo: int, hi: int) -> None:
    for i in range(lo, hi):
        learner.on_bar(int(bars.open_time[i]), X[i], bars.high[i], bars.low[i], bars.close[i])


def _tiny_net(n_features: int) -> SeqNet:
    torch.manual_seed(0)
    net = build_net({"kind": "tcn", "n_features": n_features, "hidden": 8, "levels": 2})
    assert isinstance(net, SeqNet)
    return net


@pytest.fixture(scope="module")
def market() -> dict:
    bars = generate(5, 11, START, flow_drift_sigmas=FLOW, regime_change=CHANGE)
    X, names, feature_set = basic_features(bars)
    labels = label_bars(bars, LABEL)
    return {"bars": bars, "X": X, "names": names, "fs": feature_set, "labels": labels}


@pytest.fixture(scope="module")
def pretrained(market: dict, tmp_path_factory: pytest.TempPathFactory) -> SeqNet:
    """A small TCN (receptive field 29 bars) trained before the change, on one thread."""
    m, n = market, PRETRAIN_BARS
    params = TrainParams(
        epochs=10, lr=3e-3, window_bars=64, stride_bars=8, val_fraction=0.2, keep_best=False,
        label=LABEL, net={"hidden": 16, "levels": 3, "warmup_bars": 16}, seed=0,
        device="cpu", version="v1", threads=1,
    )  # fmt: skip
    art = train(
        "tcn", m["X"][:n], m["labels"].y[:n], m["labels"].valid[:n], m["names"], m["fs"],
        params, tmp_path_factory.mktemp("models"), open_time_ms=m["bars"].open_time[:n],
    )  # fmt: skip
    assert art.metrics["val_loss"] < art.metrics["base_rate_val_loss"]  # it learned something
    assert isinstance(art.net, SeqNet)
    return art.net


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- maturity and no look-ahead ---------------------------------------------------------------


def test_matured_labels_equal_triple_barrier_and_skip_gaps() -> None:
    bars = generate(0.5, 5, START)  # 720 bars
    keep = np.ones(len(bars.close), dtype=bool)
    keep[300:305] = False  # five missing minutes
    bars = bars.take(keep)
    X = np.column_stack([bars.close, bars.volume])
    ref = label_bars(bars, LABEL)
    learner = OnlineLearner(_tiny_net(2), LABEL, OnlineParams(seq_len=8, holdout_bars=10))
    feed(learner, bars, X, 0, len(X))
    h = LABEL.horizon_bars
    # Everything but the last h bars (still pending) is in, in order.
    assert len(learner.buffer) == learner.matured == len(X) - h
    got_y = learner.buffer._ordered(learner.buffer._y)
    got_ok = learner.buffer._ordered(learner.buffer._ok)
    np.testing.assert_array_equal(got_ok, ref.valid[: len(X) - h])
    np.testing.assert_array_equal(got_y[got_ok], ref.y[: len(X) - h][got_ok])
    assert not got_ok[300 - h : 300].any()  # their horizon spans the gap: never labelled
    # The one-bar rule on hand-made bars, beside the reference: a take-profit before any
    # stop wins; a bar touching both barriers is a stop.
    hi = np.array([100.0, 100.2, 100.0])
    lo = np.array([99.9, 99.9, 99.8])
    three = LabelParams(take_profit_bps=15, stop_loss_bps=15, horizon_bars=3)
    assert matured_label(100.0, hi, lo, three).tolist() == [TAKE_PROFIT, STOP_LOSS]
    full = triple_barrier(np.arange(4) * 60_000, np.r_[100.0, hi], np.r_[100.0, lo],
                          np.r_[100.0, hi], three)  # fmt: skip
    assert full.y[0].tolist() == [TAKE_PROFIT, STOP_LOSS]
    one = LabelParams(take_profit_bps=15, stop_loss_bps=15, horizon_bars=1)
    both = matured_label(100.0, np.array([100.2]), np.array([99.8]), one)
    assert both.tolist() == [STOP_LOSS, STOP_LOSS]


def test_a_sample_enters_only_after_its_horizon_and_the_future_cannot_change_it() -> None:
    bars = generate(0.3, 8, START)  # 432 bars
    X = np.column_stack([bars.close, bars.taker_buy_volume])
    t = 200
    # Another future: every bar after t moved 2% up, with its own features.
    moved = bars.take(np.ones(len(bars.close), dtype=bool))
    for name in ("open", "high", "low", "close"):
        getattr(moved, name)[t + 1 :] *= 1.02
    X_moved = X.copy()
    X_moved[t + 1 :] *= -1
    h = LABEL.horizon_bars
    a = OnlineLearner(_tiny_net(2), LABEL)
    b = OnlineLearner(_tiny_net(2), LABEL)
    snapshot = None
    for i in range(len(X)):
        a.on_bar(int(bars.open_time[i]), X[i], bars.high[i], bars.low[i], bars.close[i])
        b.on_bar(int(moved.open_time[i]), X_moved[i], moved.high[i], moved.low[i],
                 moved.close[i])  # fmt: skip
        if i == t:
            assert len(a.buffer) == t + 1 - h  # bar t-h matured at t; bar t-h+1 not yet
            snapshot = [arr.copy() for arr in (a.buffer._x, a.buffer._y, a.buffer._ok)]
            for mine, theirs in zip(
                snapshot, (b.buffer._x, b.buffer._y, b.buffer._ok), strict=True
            ):
                np.testing.assert_array_equal(mine, theirs)
            # and the labels are those the bars up to t alone give
            past = label_bars(bars.take(np.arange(len(X)) <= t), LABEL)
            np.testing.assert_array_equal(a.buffer._ok[: t + 1 - h], past.valid[: t + 1 - h])
    # Later bars only append: what was in at t is untouched.
    assert snapshot is not None
    for before, after in zip(snapshot, (a.buffer._x, a.buffer._y, a.buffer._ok), strict=True):
        np.testing.assert_array_equal(before[: t + 1 - h], after[: t + 1 - h])


def test_windows_with_invalid_features_are_not_trained_on() -> None:
    buf = ReplayBuffer(2, capacity=50)
    for i in range(20):
        buf.push(np.array([i, np.nan if i == 10 else 1.0]), np.array([0, 1]), True)
    assert buf.valid_ends(4).tolist() == list(range(3, 20))
    assert buf.valid_ends(4, finite_only=True).tolist() == [3, 4, 5, 6, 7, 8, 9, 14, 15, 16,
                                                             17, 18, 19]  # fmt: skip
    assert buf.valid_ends(4, lo=15, hi=18, finite_only=True).tolist() == [15, 16, 17]


# -- fine-tuning on a copy, the guard ----------------------------------------------------------


def _warm_learner(market: dict, net: SeqNet, bars_fed: int) -> OnlineLearner:
    learner = OnlineLearner(net, LABEL, PARAMS, LR)
    feed(learner, market["bars"], market["X"], 0, bars_fed)
    return learner


def test_fine_tune_works_on_a_copy_deterministically(market: dict, pretrained: SeqNet) -> None:
    approved = copy.deepcopy(pretrained)
    before = {k: v.clone() for k, v in approved.state_dict().items()}
    runs = []
    for _ in range(2):
        learner = _warm_learner(market, approved, PRETRAIN_BARS + 600)
        cand = learner.fine_tune(max_steps=15, recent_vol=VOL)
        assert cand is not None and cand.steps == 15 and cand.net is not approved
        runs.append((learner, cand))
    for k, v in approved.state_dict().items():  # the served weights never moved
        assert torch.equal(v, before[k])
    (l1, c1), (_, c2) = runs
    assert any(
        not torch.equal(a, b)
        for a, b in zip(c1.net.parameters(), approved.parameters(), strict=True)
    )
    for a, b in zip(c1.net.state_dict().values(), c2.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # same seed, same data: the same candidate bit for bit
    assert c1.holdout_loss == c2.holdout_loss
    # Better on the held-out bars (seen: 0.499 vs 0.518): swapped in as a whole new object.
    assert c1.verdict.accept and c1.holdout_loss < c1.approved_loss
    assert l1.approve(c1) and l1.approved is c1.net and l1.version == 1


def test_guard_rules() -> None:
    ok = guard_candidate(0.60, 0.62, candidate_finite=True, margin_nats=0.02)
    assert ok.accept
    assert guard_candidate(0.635, 0.62, candidate_finite=True, margin_nats=0.02).accept
    worse = guard_candidate(0.65, 0.62, candidate_finite=True, margin_nats=0.02)
    assert not worse.accept and "0.0300 nats worse" in worse.reason
    assert not guard_candidate(math.nan, 0.62, candidate_finite=True, margin_nats=0.02).accept
    assert not guard_candidate(math.inf, 0.62, candidate_finite=True, margin_nats=0.02).accept
    assert not guard_candidate(0.5, 0.62, candidate_finite=False, margin_nats=0.02).accept
    assert not guard_candidate(0.5, math.nan, candidate_finite=True, margin_nats=0.02).accept


def test_a_poisoned_batch_is_rejected_and_never_served(market: dict, pretrained: SeqNet) -> None:
    learner = _warm_learner(market, copy.deepcopy(pretrained), PRETRAIN_BARS)
    served = learner.approved
    holdout = learner.holdout_batch()
    assert holdout is not None
    approved_loss = eval_loss(served, holdout)
    rng = np.random.default_rng(0)
    ends = learner.buffer.valid_ends(PARAMS.seq_len, hi=len(learner.buffer) - 200)

    def flipped() -> Batch:  # take-profit and stop-loss swapped: the labels of a bad feed
        b = learner.buffer.batch_at(rng.choice(ends, 64), PARAMS.seq_len)
        y = torch.where(b.y == TAKE_PROFIT, STOP_LOSS, torch.where(b.y == STOP_LOSS,
                                                                    TAKE_PROFIT, b.y))  # fmt: skip
        return Batch(b.x, y, b.mask)

    poisoned, _ = fine_tune_copy(served, flipped, max_steps=30, lr=1e-2, anchor_l2=1e-2)
    loss = eval_loss(poisoned, holdout)
    verdict = guard_candidate(loss, approved_loss, candidate_finite=weights_finite(poisoned),
                              margin_nats=PARAMS.guard_margin_nats)  # fmt: skip
    assert loss > approved_loss + 0.1 and not verdict.accept  # seen: 0.67 -> 1.09
    # Non-finite weights (e.g. a step that overflowed): rejected whatever the loss says.
    assert weights_finite(served)
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = copy.deepcopy(served)
        with torch.no_grad():
            list(broken.parameters())[3].view(-1)[-1] = bad
        assert not weights_finite(broken)
    huge = copy.deepcopy(served)  # finite, though their sum overflows
    with torch.no_grad():
        for p in huge.parameters():
            p.fill_(3e38)
    assert weights_finite(huge)
    assert not guard_candidate(eval_loss(broken, holdout), approved_loss,
                               candidate_finite=False, margin_nats=0.02).accept  # fmt: skip
    # Through the learner: a rejected candidate never replaces the served weights.
    cand = learner.fine_tune(max_steps=5, recent_vol=VOL)
    assert cand is not None
    rejected = Candidate(poisoned, cand.round, 30, [], loss, approved_loss, verdict)
    assert not learner.approve(rejected)
    assert learner.approved is served and learner.version == 0


# -- recovery after a regime change ------------------------------------------------------------


def bar_losses(net: SeqNet, X: np.ndarray, y: np.ndarray, valid: np.ndarray, lo: int, hi: int):
    """Log-loss at bars lo..hi-1 of the predictions `net` makes at their close (the TCN's
    output depends on its last 29 bars only, so a run from lo - context equals streaming)."""
    ctx = net.context_bars
    x = torch.from_numpy(X[lo - ctx : hi].astype(np.float32))[None]
    with torch.no_grad():
        logits = net(x)[0, ctx:]
    target = torch.from_numpy(y[lo:hi].astype(np.int64)).clamp_min(0)
    loss = F.cross_entropy(logits.reshape(-1, 3), target.reshape(-1), reduction="none")
    return np.where(valid[lo:hi], loss.view(-1, 2).mean(1).numpy(), np.nan)


def test_online_loss_recovers_after_a_regime_change(market: dict, pretrained: SeqNet) -> None:
    bars, X, labels = market["bars"], market["X"], market["labels"]
    n, at = len(X), CHANGE.bar_index(len(X))
    frozen = copy.deepcopy(pretrained)
    learner = _warm_learner(market, copy.deepcopy(pretrained), PRETRAIN_BARS)
    online_loss, frozen_loss = np.full(n, np.nan), np.full(n, np.nan)
    approved = rejected = 0
    for lo in range(PRETRAIN_BARS, n, ROUND_BARS):
        hi = min(n, lo + ROUND_BARS)
        # Decisions at bars lo..hi-1 use the weights approved before lo; then those bars
        # close, their matured predecessors enter the buffer, and a round runs.
        online_loss[lo:hi] = bar_losses(learner.approved, X, labels.y, labels.valid, lo, hi)
        frozen_loss[lo:hi] = bar_losses(frozen, X, labels.y, labels.valid, lo, hi)
        feed(learner, bars, X, lo, hi)
        cand = learner.fine_tune(max_steps=20, recent_vol=VOL)
        if cand is not None:
            approved += learner.approve(cand)
            rejected += not cand.verdict.accept
    assert approved > 10 and rejected > 0  # the guard is active, not a formality
    prior = class_frequencies(labels.y[:PRETRAIN_BARS], labels.valid[:PRETRAIN_BARS])
    base = -np.log(prior[[0, 1], labels.y.clip(0)]).mean(1)
    base[~labels.valid] = np.nan
    late = slice(n - 1440, n)  # the last day: two days after the change
    frozen_late = np.nanmean(frozen_loss[late])
    online_late = np.nanmean(online_loss[late])
    base_late = np.nanmean(base[late])
    # Before the change the frozen model beats the base rate (seen: 0.64 vs 0.71) ...
    assert np.nanmean(frozen_loss[PRETRAIN_BARS:at]) < np.nanmean(base[PRETRAIN_BARS:at]) - 0.03
    # ... after it, it is worse than knowing nothing (seen: 0.75 vs 0.70), while the online
    # model has learned the new pattern (seen: 0.66): its loss recovers, the frozen one not.
    assert frozen_late > base_late + 0.02
    assert online_late < base_late - 0.01
    assert online_late < frozen_late - 0.05  # seen: 0.095; each quarter of the day > 0.05


@pytest.mark.parametrize("kind", ["tcn", "transformer", "lstm"])
def test_clone_net_has_weights_of_its_own(kind: str) -> None:
    """A round's candidate is a `clone_net` copy: the same outputs, and training it (in place,
    as Adam does) leaves the network it was copied from as it was; the LSTM's flat weights
    name the copy's parameters, so the copy's update shows in its own output."""
    torch.manual_seed(0)
    net = build_net(default_config(kind, 6)).eval()
    twin = clone_net(net).eval()
    x = torch.randn(2, 40, 6)
    before = net(x)
    assert torch.equal(twin(x), before)
    assert all(a is not b for a, b in zip(net.parameters(), twin.parameters(), strict=True))
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.05)
        twin.norm.std.mul_(2.0)
    assert torch.equal(net(x), before)
    assert not torch.allclose(twin(x), before)
    assert net.norm.std.eq(1.0).all()


def _scored_at_last(n_features: int, bars: int, seed: int) -> Batch:
    """Training windows as the learner draws them (each scored at its last bar), with the
    cases the loss must handle: an invalid feature, an unlabelled side, an unscored window."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, bars, n_features, generator=g) * 2
    x[0, -1, 1], x[2, -5, 0] = float("nan"), float("inf")
    y = torch.randint(0, 3, (6, bars, 2), generator=g)
    y[1, -1, 0] = -1
    mask = torch.zeros(6, bars, dtype=torch.bool)
    mask[:, -1] = True
    mask[3, -1] = False
    return Batch(x, y, mask)


@pytest.mark.parametrize(
    ("net_cfg", "bars"),
    [({}, 64), ({"hidden": 8, "levels": 2, "dropout": 0.3}, 13), ({"kernel": 2}, 20)],
)
def test_tcn_backward_by_hand_equals_autograd(net_cfg: dict, bars: int) -> None:
    """The online learner's gradient: the TCN's hand-written backward pass gives batch_loss
    and autograd's gradient of every parameter; where it does not apply (a window shorter
    than the context, dropout in training mode, windows scored before their last bar, a
    network without one) it says so and autograd does the step."""
    torch.manual_seed(0)
    net = build_net({"kind": "tcn", "n_features": 5, **net_cfg})
    assert isinstance(net, SeqNet)
    with torch.no_grad():
        net.norm.mean.uniform_(-0.5, 0.5)
        net.norm.std.uniform_(0.5, 2.0)
    batch = _scored_at_last(5, bars, seed=1)
    net.eval()  # the dropout case: eval mode, then training mode below
    by_hand = batch_loss_and_grads(net, batch)
    if net.context_bars > bars:
        assert by_hand is None
        return
    assert by_hand is not None
    loss, grads = by_hand
    reference = batch_loss(net, batch)
    expected = torch.autograd.grad(reference, list(net.parameters()))
    assert loss == pytest.approx(float(reference.detach()), rel=1e-6)
    assert len(grads) == len(expected)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    net.train()
    assert (batch_loss_and_grads(net, batch) is None) == (net.cfg.dropout > 0)
    early = Batch(batch.x, batch.y, batch.mask.roll(-1, dims=1))  # scored one bar early
    assert batch_loss_and_grads(net, early) is None
    assert batch_loss_and_grads(build_net(default_config("lstm", 5)), batch) is None


def _torch_fine_tune(
    approved: SeqNet, batches: list[Batch], lr: float, l2: float, clip: float
) -> SeqNet:
    """fine_tune_copy as torch's parts do it: autograd, the pull, clip_grad_norm_, Adam."""
    net = copy.deepcopy(approved).train()
    anchor = [p.detach().clone() for p in approved.parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for batch in batches:
        opt.zero_grad()
        loss = batch_loss(net, batch)
        pull = sum((p - a).square().sum() for p, a in zip(net.parameters(), anchor, strict=True))
        (loss + l2 / 2 * pull).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
    return net.eval()


@pytest.mark.parametrize(("kind", "clip"), [("tcn", 3.3), ("transformer", 2.5), ("lstm", 0.5)])
def test_fine_tune_copy_equals_torchs_optimiser(kind: str, clip: float) -> None:
    """fine_tune_copy's update (the hand-written TCN gradient, one flat tensor of weights,
    its own Adam, pull and clip) moves the weights as autograd and torch.optim.Adam do; the
    clip (a bound per kind between its gradient norms, ~0.3 to ~19 here) cuts some steps
    and not others. The approved network is left as it was."""
    torch.manual_seed(0)
    approved = build_net(default_config(kind, 5))
    assert isinstance(approved, SeqNet)
    before = [p.detach().clone() for p in approved.parameters()]
    batches = [_scored_at_last(5, 64, seed) for seed in range(6)]
    batches[2].x.mul_(40.0)  # a large gradient: clipped
    draw = iter(batches)
    tuned, losses = fine_tune_copy(
        approved, lambda: next(draw), max_steps=6, lr=3e-3, anchor_l2=0.5, grad_clip=clip
    )
    expected = _torch_fine_tune(approved, batches, lr=3e-3, l2=0.5, clip=clip)
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    for got, want, old in zip(tuned.parameters(), expected.parameters(), before, strict=True):
        # Adam divides by the gradient's scale: float noise in a near-zero gradient moves a
        # weight by up to a few 1e-6 (one step moves it by up to lr, 3e-3).
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)
        assert not torch.equal(got, old)
    for p, old in zip(approved.parameters(), before, strict=True):
        assert torch.equal(p, old)
    x = torch.randn(2, 64, 5)
    torch.testing.assert_close(tuned(x), expected(x), rtol=1e-4, atol=1e-5)
