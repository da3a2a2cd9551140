"""Online learning pieces: an experience-replay buffer, a learning rate that follows
volatility, one optimiser step for the stateful LSTM (`OnlineTrainer.train_step`), and the
guarded fine-tuning mechanics for any network (`OnlineLearner`). When to fine-tune, in replay
and live, is decided by the model strategy's online model (scalpd/strategy/online.py).

Replay: each bar whose label has matured is pushed (features, label, label-valid flag) in
time order; the buffer keeps the last `capacity` (10,000) bars. A training sample is a window
of `seq_len` consecutive bars ending at a random labelled bar, never across a gap (a reset
starts a new segment), so the LSTM is trained on sequences as it runs on them.

Learning rate: lr = base_lr * clip((recent_vol / reference_vol) ** power, min_mult, max_mult).
With power = 1 (the default), the model adapts faster when the market moves more than it did
in training (a regime change usually announces itself by a volatility change) and slower in
quiet markets, where one-minute labels are mostly noise; power = -1 gives the opposite rule
(smaller steps when noisy), power = 0 a constant rate.

`OnlineLearner`: the fine-tuning mechanics for any single network (TCN, Transformer, LSTM).
- Maturity, no look-ahead: `on_bar` is given each closed bar (features, high, low, close). A
  bar enters the replay buffer only when the bar `horizon_bars` later has closed: its triple
  barrier label is computed then, by the learner, from the bars it has been given (the same
  rule as labels.triple_barrier), so the buffer at bar t depends on bars <= t only. Bars
  still pending at a data gap enter without a label (context only), and the gap is marked.
- Fine-tuning (`fine_tune`) trains a COPY of the approved network (`clone_net`) for a number
  of steps and/or a time budget; the approved network, which a predictor may be running, is
  never touched. Each batch mixes recent windows with `replay_share` of older ones, and the loss
  adds an L2 pull toward the approved weights (L2-SP: anchor_l2 / 2 * |w - w_approved|^2).
- The result is a `Candidate`: a new network object plus its judgement. `approve` swaps it in
  by one reference assignment (atomic for any reader); a predictor is then built from it.
- Poisoned-update guard (`guard_candidate`, pure): the candidate and the approved weights
  are scored on the last `holdout_bars` matured bars, which are never trained on (and a
  purge of one label horizon before them, as in train.py, so no training label overlaps
  them). A candidate with non-finite weights or loss, or worse by more than
  `guard_margin_nats`, is rejected, and the approved weights stay.

Why L2-SP and not EWC: EWC weighs the pull per weight by the Fisher information of the old
data, so it pins hardest the weights the old regime relied on, which are the ones a regime
change needs to move; it also needs a Fisher pass over the anchor's data at each approval,
a cost paid between bars. The uniform L2 pull is free, has one knob, and bounds how far one
round can move; what the old data taught is kept by the replay mix instead, through data
rather than a curvature estimate. The anchor moves with each approval, so the model can
follow a lasting change over several rounds while no single round can run away.

Determinism: with steps as the only budget, a seed gives the same candidates bit for bit on
one machine and thread count (each round draws from its own generator, seeded by (seed,
round)). A time budget makes the step count, hence the weights, depend on the machine.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from scalpd.config.settings import OnlineSettings
from scalpd.events import BAR_INTERVAL_MS
from scalpd.models.errors import ModelError
from scalpd.models.labels import LabelParams, matured_label
from scalpd.models.nets import SeqNet, clone_net

# Networks whose output at a bar depends on their last context_bars rows only (the LSTM's
# state carries everything before).
_CONTEXT_BOUND = ("tcn", "transformer")
# The defaults are the [online] settings' (defined once, in scalpd/config/settings.py).
_DEFAULTS = OnlineSettings()


class Batch(NamedTuple):
    x: torch.Tensor  # float32 [B, L, F]
    y: torch.Tensor  # int64 [B, L, 2]; -1 where not labelled
    mask: torch.Tensor  # bool [B, L]: scored positions


class ReplayBuffer:
    """The last `capacity` labelled bars, in time order, with segment boundaries."""

    def __init__(self, n_features: int, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ModelError("replay capacity must be positive")
        self.capacity, self.n_features = capacity, n_features
        self._x = np.zeros((capacity, n_features), dtype=np.float32)
        self._y = np.full((capacity, 2), -1, dtype=np.int64)
        self._ok = np.zeros(capacity, dtype=bool)
        self._seg = np.zeros(capacity, dtype=np.int64)
        self._finite = np.zeros(capacity, dtype=bool)  # the row's features are all finite
        self._next = 0  # total pushed; slot = index % capacity
        self._segment = 0
        self._new_segment = True

    def __len__(self) -> int:
        return min(self._next, self.capacity)

    def last(self) -> tuple[np.ndarray, bool]:
        """The newest bar's label [long, short] and whether it is valid."""
        if not self._next:
            raise ModelError("the replay buffer is empty")
        i = (self._next - 1) % self.capacity
        return self._y[i].copy(), bool(self._ok[i])

    def mark_gap(self) -> None:
        """The next bar does not follow the last one (data gap): windows never span it."""
        self._new_segment = True

    def push(self, x: np.ndarray, y: np.ndarray, label_ok: bool) -> None:
        if self._new_segment:
            self._segment += 1
            self._new_segment = False
        i = self._next % self.capacity
        self._x[i] = x
        self._y[i] = y if label_ok else -1
        self._ok[i] = label_ok and bool((np.asarray(y) >= 0).all())
        self._seg[i] = self._segment
        self._finite[i] = bool(np.isfinite(self._x[i]).all())
        self._next += 1

    def _slots(self, positions: np.ndarray) -> np.ndarray:
        """Storage slots of positions (0 = oldest kept): reading through them, not through a
        reordered copy of the whole buffer, costs the rows read only."""
        if self._next <= self.capacity:
            return positions
        return (positions + self._next) % self.capacity

    def _ordered(self, a: np.ndarray) -> np.ndarray:
        if self._next <= self.capacity:
            return a[: self._next]
        i = self._next % self.capacity
        return np.concatenate([a[i:], a[:i]])

    def valid_ends(
        self, seq_len: int, lo: int = 0, hi: int | None = None, finite_only: bool = False
    ) -> np.ndarray:
        """Positions (0 = oldest kept) in [lo, hi) of labelled bars with a whole window of
        seq_len bars in their segment behind them (finite_only: no non-finite feature in it)."""
        n = len(self)
        hi = n if hi is None else min(hi, n)
        lo = max(lo, seq_len - 1)
        if hi <= lo:
            return np.zeros(0, dtype=np.int64)
        ok, seg = self._ordered(self._ok), self._ordered(self._seg)
        ends = np.arange(lo, hi)
        fits = ok[ends] & (seg[ends] == seg[ends - seq_len + 1])
        if finite_only:
            bad = np.concatenate([[0], np.cumsum(~self._ordered(self._finite))])
            fits &= bad[ends + 1] == bad[ends - seq_len + 1]
        return ends[fits]

    def batch_at(self, ends: np.ndarray, seq_len: int) -> Batch:
        """The windows of seq_len bars ending at `ends` (positions), the last bar scored."""
        rows = np.asarray(ends, dtype=np.int64)[:, None] + np.arange(-seq_len + 1, 1)[None, :]
        slots = self._slots(rows)
        x, y = self._x[slots], self._y[slots]
        mask = np.zeros(rows.shape, dtype=bool)
        mask[:, -1] = True
        return Batch(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask))

    def span_batch(self, ends: np.ndarray, seq_len: int) -> Batch:
        """One sequence over the bars from seq_len - 1 before the first of `ends` to the last,
        those at `ends` scored. For a network whose outputs depend on its last context_bars
        <= seq_len rows only, each scored output equals the last of `batch_at`'s window there
        (the window holds its whole context), for about len(ends) times fewer bar passes when
        the ends are dense: a window that would cross a gap or a non-finite row is not among
        `ends`, so what the longer sequence adds before a scored bar is outside its context."""
        ends = np.asarray(ends, dtype=np.int64)
        lo, hi = int(ends[0]) - seq_len + 1, int(ends[-1]) + 1
        slots = self._slots(np.arange(lo, hi))
        x, y = self._x[slots], self._y[slots]
        mask = np.zeros((1, hi - lo), dtype=bool)
        mask[0, ends - lo] = True
        return Batch(torch.from_numpy(x[None]), torch.from_numpy(y[None]), torch.from_numpy(mask))

    def sample(self, batch_size: int, seq_len: int, rng: np.random.Generator) -> Batch | None:
        """Windows of seq_len bars ending at random labelled bars (the last bar of each
        window scored); None when no window fits yet."""
        ends = self.valid_ends(seq_len)
        if not len(ends):
            return None
        pick = rng.choice(ends, size=batch_size, replace=len(ends) < batch_size)
        return self.batch_at(pick, seq_len)


def _scored(batch: Batch) -> torch.Tensor:
    """The positions a loss counts [B, T]: scored by the mask, both sides labelled."""
    return batch.mask & (batch.y >= 0).all(dim=-1)


def _last_bar_only(batch: Batch) -> Batch | None:
    """The batch cut to its last bar when that is the only one scored (training windows),
    else None."""
    if bool(batch.mask[:, :-1].any()):
        return None
    return Batch(batch.x, batch.y[:, -1:], batch.mask[:, -1:])


def batch_loss(net: SeqNet, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the scored, labelled positions and both sides (train.py's)."""
    forward_last = getattr(net, "forward_last", None)
    last = _last_bar_only(batch) if forward_last is not None else None
    if forward_last is not None and last is not None:
        # Training windows score their last bar only: the TCN computes just what it needs.
        batch = last
        logits = forward_last(batch.x).unsqueeze(1)
    else:
        logits = net(batch.x)
    scored = _scored(batch)
    loss_all = F.cross_entropy(
        logits.reshape(-1, 3), batch.y.clamp_min(0).reshape(-1), reduction="none"
    ).view(*scored.shape, 2)
    return (loss_all * scored[..., None]).sum() / (2 * scored.sum().clamp_min(1))


def batch_loss_and_grads(net: SeqNet, batch: Batch) -> tuple[float, list[torch.Tensor]] | None:
    """batch_loss and its gradient per parameter (parameters() order) through the network's
    hand-written backward pass (`last_with_backward`: the TCN's, on windows scored at their
    last bar); None where it has none, and autograd does it."""
    with_backward = getattr(net, "last_with_backward", None)
    last = _last_bar_only(batch) if with_backward is not None else None
    out = with_backward(batch.x) if with_backward is not None and last is not None else None
    if out is None or last is None:
        return None
    logits, backward = out
    y = last.y[:, 0]
    scored = _scored(last)[:, 0]
    weight = (scored / (2 * scored.sum().clamp_min(1))).view(-1, 1, 1)  # per window and side
    target = y.clamp_min(0).unsqueeze(-1)
    log_p = torch.log_softmax(logits, dim=-1)
    loss = -(log_p.gather(-1, target) * weight).sum()
    # d cross-entropy / d logits = softmax - one-hot, each window at its weight.
    d_logits = log_p.exp_().scatter_add_(-1, target, torch.full_like(log_p, -1.0)).mul_(weight)
    return float(loss), backward(d_logits)


def eval_loss(net: SeqNet, batch: Batch | None) -> float:
    """batch_loss without gradients, in eval mode; NaN when there is nothing to score."""
    if batch is None or not bool(_scored(batch).any()):
        return math.nan
    if net.training:  # .eval() walks every module even when nothing changes
        net.eval()
    with torch.inference_mode():
        return float(batch_loss(net, batch))


def weights_finite(net: torch.nn.Module) -> bool:
    """Every parameter and buffer finite. One check over them all: 0 * w is 0 for a finite w
    and NaN for an infinite or NaN one, so the sum of 0 * w is 0 exactly when all are finite
    (a sum of the weights themselves could overflow); ~10x less time than isfinite().all()."""
    tensors = [t.detach().reshape(-1) for t in itertools.chain(net.parameters(), net.buffers())]
    floats = [t for t in tensors if t.is_floating_point()]
    return not floats or bool(torch.cat(floats).mul_(0).sum() == 0)


def _weights_in_one_tensor(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The parameters' values moved into one flat tensor, each parameter now a view of its
    slice: the pull, the clip and the Adam update are then a few operations on one tensor
    (~0.1 ms a step at the online learner's size) where torch's optimiser and clip spent
    ~0.6 ms on per-parameter calls and Python around a 0.06 ms update."""
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


class FlatAdam:
    """torch.optim.Adam's update (no weight decay, no amsgrad) on one flat tensor of weights,
    moved in place."""

    def __init__(
        self, weights: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:  # fmt: skip
        self.weights, self.lr, self.betas, self.eps = weights, lr, betas, eps
        self.steps = 0
        self.mean = torch.zeros_like(weights)
        self.square = torch.zeros_like(weights)
        self._tiny = torch.finfo(weights.dtype).tiny

    def step(self, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.steps += 1
        self.mean.lerp_(grad, 1 - b1)
        self.square.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        # The square's floor changes no result (its root is far below eps, absorbed in the
        # sum) but keeps zeros and subnormals off sqrt's slow path (~3x to ~20x the time of
        # normal numbers here): a weight whose gradient has always been 0 has a square of 0.
        root = self.square.clamp_min(self._tiny).sqrt_()
        denom = (root / math.sqrt(1 - b2**self.steps)).add_(self.eps)
        self.weights.addcdiv_(self.mean, denom, value=-self.lr / (1 - b1**self.steps))


def fine_tune_copy(
    approved: SeqNet,
    next_batch: Callable[[], Batch],
    *,
    max_steps: int,
    lr: float,
    anchor_l2: float,
    grad_clip: float = _DEFAULTS.grad_clip,
    budget_ms: float | None = None,
) -> tuple[SeqNet, list[float]]:
    """A copy of `approved` (`clone_net`: weights of its own) after up to `max_steps` Adam
    steps (fewer when `budget_ms` runs out) on batches from `next_batch`, each step's loss
    plus the L2-SP pull anchor_l2 / 2 * |w - w_approved|^2, the gradient's norm clipped to
    `grad_clip` (as clip_grad_norm_); returns it (eval mode) and the data losses.
    `approved` is not modified. Adam, not AdamW: the anchor, not zero, is where weights
    decay to. The gradient comes from the network's hand-written backward pass where it has
    one (`batch_loss_and_grads`), else from autograd; the copy's parameters are views of one
    flat tensor, which the update moves."""
    net = clone_net(approved)
    params = list(net.parameters())
    weights = _weights_in_one_tensor(params)
    anchor = torch.cat([p.detach().reshape(-1) for p in approved.parameters()])
    adam = FlatAdam(weights, lr)
    deadline = None if budget_ms is None else time.perf_counter() + budget_ms / 1e3
    losses: list[float] = []
    net.train()
    for _ in range(max_steps):
        if deadline is not None and losses and time.perf_counter() >= deadline:
            break
        batch = next_batch()
        by_hand = batch_loss_and_grads(net, batch)
        if by_hand is None:
            for p in params:
                p.grad = None
            data = batch_loss(net, batch)
            data.backward()
            loss = float(data.detach())
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        else:
            loss, grads = by_hand
        with torch.no_grad():
            grad = torch.cat([g.reshape(-1) for g in grads])
            # The pull's gradient, anchor_l2 * (w - w_approved), added as is.
            grad.add_(torch.sub(weights, anchor), alpha=anchor_l2)
            norm = torch.linalg.vector_norm(grad)
            grad.mul_((grad_clip / (norm + 1e-6)).clamp_(max=1.0))
            adam.step(grad)
        losses.append(loss)
    for p in params:
        p.grad = None
    net.eval()
    return net, losses


@dataclass(frozen=True)
class GuardVerdict:
    accept: bool
    reason: str


def guard_candidate(
    candidate_loss: float,
    approved_loss: float,
    *,
    candidate_finite: bool,
    margin_nats: float,
) -> GuardVerdict:
    """Whether a fine-tuned candidate may replace the approved weights, from both losses on
    the same held-out matured samples (nats): never with non-finite weights or loss, nor
    when worse than the approved weights by more than `margin_nats`."""
    if not candidate_finite:
        return GuardVerdict(False, "candidate has non-finite weights")
    if not math.isfinite(candidate_loss):
        return GuardVerdict(False, f"candidate held-out loss is {candidate_loss}")
    if not math.isfinite(approved_loss):
        return GuardVerdict(False, "no held-out loss for the approved weights to compare")
    worse = candidate_loss - approved_loss
    if worse > margin_nats:
        return GuardVerdict(
            False,
            f"held-out loss {candidate_loss:.4f} is {worse:.4f} nats worse than the "
            f"approved {approved_loss:.4f} (margin {margin_nats})",
        )
    return GuardVerdict(True, f"held-out loss {candidate_loss:.4f} vs approved {approved_loss:.4f}")


@dataclass(frozen=True)
class VolatilityLr:
    """lr = base_lr * clip((recent_vol / reference_vol) ** power, min_mult, max_mult)."""

    base_lr: float = _DEFAULTS.base_lr
    reference_vol: float = 1.0  # e.g. the training period's median volatility, same unit
    power: float = _DEFAULTS.lr_vol_power
    min_mult: float = _DEFAULTS.lr_min_mult
    max_mult: float = _DEFAULTS.lr_max_mult

    @classmethod
    def from_settings(cls, s: OnlineSettings) -> VolatilityLr:
        """Volatility in bps of 1m log returns, the reference from the settings."""
        return cls(s.base_lr, s.lr_vol_reference_bps, s.lr_vol_power, s.lr_min_mult, s.lr_max_mult)

    def __call__(self, recent_vol: float) -> float:
        if not np.isfinite(recent_vol) or recent_vol <= 0 or self.reference_vol <= 0:
            return self.base_lr * self.min_mult  # unknown volatility: the cautious end
        mult = (recent_vol / self.reference_vol) ** self.power
        return self.base_lr * float(np.clip(mult, self.min_mult, self.max_mult))


class OnlineTrainer:
    """Fine-tunes a network from its replay buffer, one step at a time."""

    def __init__(
        self,
        net: SeqNet,
        lr_rule: VolatilityLr | None = None,
        capacity: int = _DEFAULTS.capacity_bars,
        seq_len: int = _DEFAULTS.seq_len,
        batch_size: int = _DEFAULTS.batch_size,
        seed: int = _DEFAULTS.seed,
        grad_clip: float = _DEFAULTS.grad_clip,
    ) -> None:
        self.net, self.lr_rule = net, lr_rule or VolatilityLr()
        self.buffer = ReplayBuffer(net.n_features, capacity)
        self.seq_len, self.batch_size, self.grad_clip = seq_len, batch_size, grad_clip
        self.rng = np.random.default_rng(seed)
        self.opt = torch.optim.AdamW(net.parameters(), lr=self.lr_rule.base_lr)

    def train_step(self, batch: Batch | None = None, recent_vol: float = float("nan")) -> float:
        """One optimiser step on `batch` (default: a sample from the replay buffer) at the
        learning rate the volatility rule gives; returns the batch loss (NaN: nothing to
        train on yet). The network is left in eval mode."""
        batch = batch or self.buffer.sample(self.batch_size, self.seq_len, self.rng)
        if batch is None or not bool(batch.mask.any()):
            return float("nan")
        lr = self.lr_rule(recent_vol)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.net.train()
        loss = batch_loss(self.net, batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.opt.step()
        self.net.eval()
        return float(loss.detach())


@dataclass(frozen=True)
class OnlineParams:
    """The learner's knobs; their meaning and units are the [online] settings' of one name."""

    seq_len: int = _DEFAULTS.seq_len
    batch_size: int = _DEFAULTS.batch_size
    recent_bars: int = _DEFAULTS.recent_bars
    replay_share: float = _DEFAULTS.replay_share
    anchor_l2: float = _DEFAULTS.anchor_l2
    holdout_bars: int = _DEFAULTS.holdout_bars
    guard_margin_nats: float = _DEFAULTS.guard_margin_nats
    grad_clip: float = _DEFAULTS.grad_clip
    capacity_bars: int = _DEFAULTS.capacity_bars
    seed: int = _DEFAULTS.seed

    @classmethod
    def from_settings(cls, s: OnlineSettings) -> OnlineParams:
        return cls(**{name: getattr(s, name) for name in cls.__dataclass_fields__})

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.batch_size < 1 or self.recent_bars < 1:
            raise ModelError(f"online seq_len, batch_size, recent_bars must be >= 1: {self}")
        if not 0.0 <= self.replay_share < 1.0:
            raise ModelError(f"online replay_share must be in [0, 1), got {self.replay_share}")
        if self.anchor_l2 < 0 or self.guard_margin_nats < 0 or self.holdout_bars < 1:
            raise ModelError(f"online anchor_l2, guard margin >= 0, holdout >= 1: {self}")


@dataclass(frozen=True)
class Candidate:
    """Fine-tuned weights (a network object of their own) and their judgement."""

    net: SeqNet
    round: int
    steps: int
    train_losses: list[float] = field(repr=False)
    holdout_loss: float
    approved_loss: float
    verdict: GuardVerdict


class OnlineLearner:
    """Matured samples in, guarded candidate weights out (see the module doc)."""

    def __init__(
        self,
        net: SeqNet,
        label: LabelParams,
        params: OnlineParams | None = None,
        lr_rule: VolatilityLr | None = None,
    ) -> None:
        self.approved = net  # never modified here; replaced (not mutated) by approve()
        self.approved.eval()
        self.version = 0  # approvals so far
        self.label, self.params = label, params or OnlineParams()
        self.lr_rule = lr_rule or VolatilityLr()
        self.buffer = ReplayBuffer(net.n_features, self.params.capacity_bars)
        self.rounds = 0
        # Bars whose label has not matured: (x, close), oldest first; their highs and lows in
        # `_extremes` ([high, low] x 2H: each bar written at n % H and n % H + H, so the
        # newest H of them are always one ordered slice, no copy).
        self._pending: deque[tuple[np.ndarray, float]] = deque()
        self._extremes = np.zeros((2, 2 * self.label.horizon_bars))
        self._since_gap = 0
        self._last_ms: int | None = None

    @property
    def matured(self) -> int:
        """Bars pushed to the buffer so far (labelled or not)."""
        return self.buffer._next

    def on_bar(
        self, open_time_ms: int, x: np.ndarray, high: float, low: float, close: float
    ) -> int:
        """Bar `open_time_ms` has closed: returns how many bars entered the buffer (1 once
        the bar horizon_bars back matures; the whole pending set, unlabelled, at a gap)."""
        h = self.label.horizon_bars
        pushed = 0
        if self._last_ms is not None and open_time_ms - self._last_ms != BAR_INTERVAL_MS:
            while self._pending:  # their horizon spans the gap: no valid label, ever
                self.buffer.push(self._pending.popleft()[0], np.full(2, -1), False)
                pushed += 1
            self.buffer.mark_gap()
            self._since_gap = 0
        self._last_ms = int(open_time_ms)
        self._pending.append((np.asarray(x, dtype=np.float32), float(close)))
        at = self._since_gap % h
        self._extremes[0, at] = self._extremes[0, at + h] = high
        self._extremes[1, at] = self._extremes[1, at + h] = low
        self._since_gap += 1
        if len(self._pending) > h:
            x0, close0 = self._pending.popleft()
            newest = self._since_gap % h  # the bars after x0's, oldest first
            highs, lows = self._extremes[:, newest : newest + h]
            self.buffer.push(x0, matured_label(close0, highs, lows, self.label), True)
            pushed += 1
        return pushed

    def _regions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Valid window ends: older, recent (trainable), and held out."""
        p, n = self.params, len(self.buffer)
        hold_from = n - p.holdout_bars
        train_to = hold_from - self.label.horizon_bars  # purge: no label reaches the holdout
        recent_from = train_to - p.recent_bars

        def ends(lo: int, hi: int) -> np.ndarray:
            return self.buffer.valid_ends(p.seq_len, lo, hi, finite_only=True)

        return ends(0, recent_from), ends(recent_from, train_to), ends(hold_from, n)

    def _judged_on(self, ends: np.ndarray) -> Batch:
        """The held-out windows ending at `ends`, as one sequence where that gives the same
        outputs (a TCN or Transformer whose context fits the window; not the LSTM, whose
        windows truncate its state): 240 windows of 64 bars cost 64x the bar passes."""
        net, seq_len = self.approved, self.params.seq_len
        if net.kind in _CONTEXT_BOUND and net.context_bars <= seq_len:
            return self.buffer.span_batch(ends, seq_len)
        return self.buffer.batch_at(ends, seq_len)

    def holdout_batch(self) -> Batch | None:
        ends = self._regions()[2]
        return self._judged_on(ends) if len(ends) else None

    def fine_tune(
        self,
        max_steps: int,
        budget_ms: float | None = None,
        recent_vol: float = float("nan"),
    ) -> Candidate | None:
        """One round of fine-tuning on a copy of the approved weights, judged on the held-out
        bars; None while there is no recent window to train on or nothing held out."""
        older, recent, held = self._regions()
        if not len(recent) or not len(held):
            return None
        p = self.params
        rng = np.random.default_rng([p.seed, self.rounds])
        n_old = round(p.batch_size * p.replay_share) if len(older) else 0

        def next_batch() -> Batch:
            pick = rng.choice(recent, size=p.batch_size - n_old, replace=True)
            if n_old:
                pick = np.concatenate([rng.choice(older, size=n_old, replace=True), pick])
            return self.buffer.batch_at(pick, p.seq_len)

        net, losses = fine_tune_copy(
            self.approved,
            next_batch,
            max_steps=max_steps,
            lr=self.lr_rule(recent_vol),
            anchor_l2=p.anchor_l2,
            grad_clip=p.grad_clip,
            budget_ms=budget_ms,
        )
        holdout = self._judged_on(held)
        cand_loss, approved_loss = eval_loss(net, holdout), eval_loss(self.approved, holdout)
        verdict = guard_candidate(
            cand_loss,
            approved_loss,
            candidate_finite=weights_finite(net),
            margin_nats=p.guard_margin_nats,
        )
        self.rounds += 1
        return Candidate(net, self.rounds, len(losses), losses, cand_loss, approved_loss, verdict)

    def approve(self, candidate: Candidate) -> bool:
        """Swap in an accepted candidate (one assignment: a reader sees the old or the new
        network, never a mix); a rejected one changes nothing. Returns whether it swapped."""
        if not candidate.verdict.accept:
            return False
        self.approved = candidate.net
        self.version += 1
        return True
