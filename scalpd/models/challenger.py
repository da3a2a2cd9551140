"""Champion/challenger for online learning (issue 8): the statistics and the share/rollback
state machine, pure (no torch, no I/O). The online strategy (scalpd/strategy/online.py) feeds
it per-bar log-losses of two models scored on the same matured labels and acts on what it says.

The test: Diebold-Mariano on the per-bar loss differences d_t = loss_old - loss_new (nats;
positive when the new model is better), one-sided. Why this test and not a sign test: a bar's
triple-barrier label spans the next `horizon_bars` bars, so neighbouring labels overlap and the
d_t are autocorrelated up to lag horizon_bars - 1; a sign test (or a plain paired t-test)
assumes independent pairs and would be far too confident. DM's long-run variance uses the
Newey-West (Bartlett) estimator with that lag, which stays non-negative, and the statistic gets
the Harvey-Leybourne-Newbold small-sample correction (our tests run on a few hundred bars, a
few dozen independent labels). It compares mean loss, which is what the strategy pays for,
where a sign test would only count which model wins more bars.

The state machine (`Trial`): a challenger starts with no share of the decisions. Every
`min_bars` new scored pairs, the test runs on all the pairs since the trial began: better at
level `alpha` moves it one step up `shares` (the last step, 1.0, is promotion); worse at
`alpha` rolls it back. Repeated looks at growing data inflate the false-alarm rate of each
direction a little; the `min_bars` spacing keeps the looks few, and a promotion still has to
survive probation. A promoted champion is then watched (`Trial(probation=True)`) against the
champion it replaced for `probation_bars`: worse at `alpha` rolls it back; otherwise the old
champion is dropped when probation ends.

Which model decides a bar (`challenger_decides`) is a hash of (seed, symbol, bar time) against
the share: deterministic, so a replay with a seed is reproducible, and independent of the
models' outputs, so the shadow comparison stays fair.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# What a trial says after a pair of losses; None when nothing changes.
TrialAction = Literal["advance", "promote", "rollback", "confirm"]


@dataclass(frozen=True, slots=True)
class PairedTest:
    """A Diebold-Mariano test of mean(d) > 0 (see the module doc)."""

    n: int
    mean_nats: float  # mean of d = loss_old - loss_new: positive, the new model is better
    se_nats: float  # HAC standard error of the mean
    stat: float  # HLN-corrected statistic
    p_better: float  # one-sided p-value of "the new model is not better"
    p_worse: float  # one-sided p-value of "the new model is not worse"


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def newey_west_variance(d: Sequence[float], lag_bars: int) -> float:
    """Long-run variance of the series d: gamma_0 + 2 * sum_k (1 - k / (L + 1)) gamma_k for
    k = 1..L (Bartlett weights, never negative); autocovariances divided by n."""
    n = len(d)
    if n == 0:
        return math.nan
    c = np.asarray(d, dtype=np.float64)
    c = c - c.mean()
    var = float(c @ c) / n
    for k in range(1, min(lag_bars, n - 1) + 1):
        gamma = float(c[k:] @ c[:-k]) / n
        var += 2.0 * (1.0 - k / (lag_bars + 1)) * gamma
    return max(var, 0.0)


def paired_test(d: Sequence[float], lag_bars: int) -> PairedTest:
    """Diebold-Mariano on d (loss_old - loss_new per bar) with a Newey-West variance at
    `lag_bars` (horizon_bars - 1 for overlapping labels) and the HLN correction."""
    n = len(d)
    if n < 2:
        return PairedTest(n, math.nan, math.nan, math.nan, 1.0, 1.0)
    mean = math.fsum(d) / n
    se = math.sqrt(newey_west_variance(d, lag_bars) / n)
    h = lag_bars + 1
    hln = math.sqrt(max(n + 1 - 2 * h + h * (h - 1) / n, 0.0) / n)
    if se > 0:
        stat = hln * mean / se
    else:  # identical losses throughout: no evidence either way, unless the mean says so
        stat = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return PairedTest(n, mean, se, stat, _normal_sf(stat), _normal_sf(-stat))


def challenger_decides(seed: int, symbol: str, time_ms: int, share: float) -> bool:
    """Whether the challenger decides this bar: a uniform number from a hash of (seed, symbol,
    bar time), below `share`. Stable across processes (Python's hash() of a str is not)."""
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    digest = hashlib.blake2b(f"{seed}|{symbol}|{time_ms}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < share


@dataclass
class Trial:
    """One model on trial against another on the same scored bars (see the module doc).

    Challenger mode: `share` (of decisions) climbs `shares` on each significant win; "advance"
    and then "promote" when it reaches the last step; "rollback" on a significant loss.
    Probation mode (`probation=True`): the share is 1.0 throughout; "rollback" on a significant
    loss, "confirm" once `probation_bars` pairs have passed without one."""

    shares: tuple[float, ...]
    min_bars: int
    alpha: float
    lag_bars: int
    probation: bool = False
    probation_bars: int = 0
    stage: int = 0  # steps climbed; shares[stage - 1] is the share (0 before the first)
    diffs: list[float] = field(default_factory=list)
    last: PairedTest | None = None  # the latest test run
    done: bool = False

    def __post_init__(self) -> None:
        if not self.shares or any(not 0.0 < s <= 1.0 for s in self.shares):
            raise ValueError(f"trial shares must be in (0, 1], got {self.shares}")
        if list(self.shares) != sorted(self.shares) or self.shares[-1] != 1.0:
            raise ValueError(f"trial shares must rise to 1.0, got {self.shares}")
        if self.min_bars < 2 or not 0.0 < self.alpha < 0.5 or self.lag_bars < 0:
            raise ValueError(
                f"trial needs min_bars >= 2, alpha in (0, 0.5), lag >= 0: {self.min_bars}, "
                f"{self.alpha}, {self.lag_bars}"
            )

    @property
    def share(self) -> float:
        if self.probation:
            return 1.0
        return self.shares[self.stage - 1] if self.stage else 0.0

    def add(self, loss_old_nats: float, loss_new_nats: float) -> TrialAction | None:
        """One bar scored for both models (non-finite pairs are skipped)."""
        if self.done:
            return None
        d = loss_old_nats - loss_new_nats
        if not math.isfinite(d):
            return None
        self.diffs.append(d)
        n = len(self.diffs)
        if n % self.min_bars:
            return None
        self.last = test = paired_test(self.diffs, self.lag_bars)
        if test.p_worse < self.alpha:
            self.done = True
            return "rollback"
        if self.probation:
            if n >= self.probation_bars:
                self.done = True
                return "confirm"
            return None
        if test.p_better < self.alpha:
            self.stage += 1
            if self.stage == len(self.shares):
                self.done = True
                return "promote"
            return "advance"
        return None

    def reason(self) -> str:
        """The latest test, in words, for the records."""
        t = self.last
        if t is None:
            return "no test yet"
        return (
            f"{t.n} bars: mean loss difference (old - new) {t.mean_nats:+.4f} nats, "
            f"se {t.se_nats:.4f}, DM {t.stat:+.2f}, p(better) {t.p_better:.3g}, "
            f"p(worse) {t.p_worse:.3g}"
        )
