"""Online learning pieces for the stateful LSTM: an experience-replay buffer, a learning rate
that follows volatility, and one optimiser step (`OnlineTrainer.train_step`). Deciding when
to fine-tune in the live loop is a later issue; these are its parts.

Replay: each bar whose label has matured is pushed (features, label, label-valid flag) in
time order; the buffer keeps the last `capacity` (10,000) bars. A training sample is a window
of `seq_len` consecutive bars ending at a random labelled bar, never across a gap (a reset
starts a new segment), so the LSTM is trained on sequences as it runs on them.

Learning rate: lr = base_lr * clip((recent_vol / reference_vol) ** power, min_mult, max_mult).
With power = 1 (the default), the model adapts faster when the market moves more than it did
in training (a regime change usually announces itself by a volatility change) and slower in
quiet markets, where one-minute labels are mostly noise; power = -1 gives the opposite rule
(smaller steps when noisy), power = 0 a constant rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from scalpd.models.errors import ModelError
from scalpd.models.nets import SeqNet


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
        self._next = 0  # total pushed; slot = index % capacity
        self._segment = 0
        self._new_segment = True

    def __len__(self) -> int:
        return min(self._next, self.capacity)

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
        self._next += 1

    def _ordered(self, a: np.ndarray) -> np.ndarray:
        if self._next <= self.capacity:
            return a[: self._next]
        i = self._next % self.capacity
        return np.concatenate([a[i:], a[:i]])

    def sample(self, batch_size: int, seq_len: int, rng: np.random.Generator) -> Batch | None:
        """Windows of seq_len bars ending at random labelled bars (the last bar of each
        window scored); None when no window fits yet."""
        x, y, ok, seg = (self._ordered(a) for a in (self._x, self._y, self._ok, self._seg))
        n = len(x)
        if n < seq_len:
            return None
        ends = np.arange(seq_len - 1, n)
        fits = ok[ends] & (seg[ends] == seg[ends - seq_len + 1])
        ends = ends[fits]
        if not len(ends):
            return None
        pick = rng.choice(ends, size=batch_size, replace=len(ends) < batch_size)
        rows = pick[:, None] + np.arange(-seq_len + 1, 1)[None, :]
        mask = np.zeros((batch_size, seq_len), dtype=bool)
        mask[:, -1] = True
        return Batch(torch.from_numpy(x[rows]), torch.from_numpy(y[rows]), torch.from_numpy(mask))


@dataclass(frozen=True)
class VolatilityLr:
    """lr = base_lr * clip((recent_vol / reference_vol) ** power, min_mult, max_mult)."""

    base_lr: float = 1e-4
    reference_vol: float = 1.0  # e.g. the training period's median volatility, same unit
    power: float = 1.0
    min_mult: float = 0.25
    max_mult: float = 4.0

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
        capacity: int = 10_000,
        seq_len: int = 64,
        batch_size: int = 32,
        seed: int = 0,
        grad_clip: float = 1.0,
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
        logits = self.net(batch.x)
        scored = batch.mask & (batch.y >= 0).all(dim=-1)
        loss_all = F.cross_entropy(
            logits.reshape(-1, 3), batch.y.clamp_min(0).reshape(-1), reduction="none"
        ).view(*scored.shape, 2)
        loss = (loss_all * scored[..., None]).sum() / (2 * scored.sum().clamp_min(1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.opt.step()
        self.net.eval()
        return float(loss.detach())
