"""The ensemble's mixing weights: each member's recent log-loss on matured labels, per regime.

A label of bar s matures at bar s + H (its whole window has closed). Then each member's
log-loss on it, averaged over the two sides, updates an exponentially weighted mean for the
regime bar s was in (half-life `halflife_labels` labels). The weights for a regime are
softmax(-ewll / temperature) over the members allowed in it: a member 0.1 nats worse than
another gets exp(-0.1 / temperature) times its weight. `allowed` selects members by regime
(say, only the LSTM in a high-volatility regime). The regime id comes from the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scalpd.models.errors import ModelError

_PROB_FLOOR = 1e-7  # one confident miss costs at most ~16 nats, not infinity


def member_log_loss(member_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[M] mean over the two sides of -log p(true class). member_probs [M, 2, 3]; y [2]."""
    picked = member_probs[:, (0, 1), y.astype(np.int64)]  # [M, 2]
    return -np.log(np.maximum(picked, _PROB_FLOOR)).mean(axis=1)


@dataclass
class EnsembleWeighter:
    n_members: int
    n_regimes: int = 1
    halflife_labels: float = 500.0
    temperature: float = 0.05
    allowed: np.ndarray | None = None  # bool [R, M]; None: every member in every regime
    ewll: np.ndarray = field(init=False)  # [R, M] exponentially weighted log-loss
    seen: np.ndarray = field(init=False)  # [R] labels seen per regime

    def __post_init__(self) -> None:
        if self.allowed is None:
            self.allowed = np.ones((self.n_regimes, self.n_members), dtype=bool)
        self.allowed = np.asarray(self.allowed, dtype=bool)
        if self.allowed.shape != (self.n_regimes, self.n_members):
            raise ModelError(
                f"allowed must be [regimes, members] = [{self.n_regimes}, {self.n_members}], "
                f"got {list(self.allowed.shape)}"
            )
        if not self.allowed.any(axis=1).all():
            raise ModelError("every regime must allow at least one ensemble member")
        self.ewll = np.full((self.n_regimes, self.n_members), math.log(3.0))  # uniform guess
        self.seen = np.zeros(self.n_regimes, dtype=np.int64)
        self._alpha = 1.0 - 0.5 ** (1.0 / self.halflife_labels)

    def _regime(self, regime: int) -> int:
        if not 0 <= regime < self.n_regimes:
            raise ModelError(f"regime {regime} out of range 0..{self.n_regimes - 1}")
        return regime

    def update(self, member_probs: np.ndarray, y: np.ndarray, regime: int = 0) -> None:
        """A label matured: member_probs [M, 2, 3] as predicted at its bar, y [2] classes."""
        r = self._regime(regime)
        loss = member_log_loss(member_probs, y)
        self.ewll[r] += self._alpha * (loss - self.ewll[r])
        self.seen[r] += 1

    def weights(self, regime: int = 0) -> np.ndarray:
        """[M] mixing weights for `regime`, summing to 1."""
        r = self._regime(regime)
        assert self.allowed is not None
        score = np.where(self.allowed[r], -self.ewll[r] / self.temperature, -np.inf)
        w = np.exp(score - score.max())
        return w / w.sum()

    def state(self) -> dict[str, Any]:
        assert self.allowed is not None
        return {
            "n_members": self.n_members,
            "n_regimes": self.n_regimes,
            "halflife_labels": self.halflife_labels,
            "temperature": self.temperature,
            "allowed": self.allowed.tolist(),
            "ewll": self.ewll.tolist(),
            "seen": self.seen.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EnsembleWeighter:
        w = cls(
            int(state["n_members"]),
            int(state["n_regimes"]),
            float(state["halflife_labels"]),
            float(state["temperature"]),
            np.asarray(state["allowed"], dtype=bool),
        )
        w.ewll = np.asarray(state["ewll"], dtype=np.float64).reshape(w.ewll.shape)
        w.seen = np.asarray(state["seen"], dtype=np.int64).reshape(w.seen.shape)
        return w

    def copy(self) -> EnsembleWeighter:
        return EnsembleWeighter.from_state(self.state())


def weight_series(
    weighter: EnsembleWeighter,
    member_probs: np.ndarray,
    valid: np.ndarray,
    y: np.ndarray | None,
    label_mask: np.ndarray | None,
    regime: np.ndarray,
    horizon_bars: int,
) -> np.ndarray:
    """[T, M] the weights used at each bar when the series is streamed: at bar t the label of
    bar t - H matures first (scored if it is valid and the ensemble predicted there), then bar
    t is predicted. Updates `weighter` in place. member_probs [T, M, 2, 3]; y [T, 2]."""
    n = len(member_probs)
    out = np.empty((n, weighter.n_members))
    for t in range(n):
        s = t - horizon_bars
        if y is not None and label_mask is not None and s >= 0 and label_mask[s] and valid[s]:
            weighter.update(member_probs[s], y[s], int(regime[s]))
        out[t] = weighter.weights(int(regime[t]))
    return out
