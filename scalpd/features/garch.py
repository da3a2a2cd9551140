"""GARCH(1,1) conditional volatility of 1-minute log returns: offline fit, online recursion.

Model (returns in bps, zero mean: a 1-minute mean return is noise next to its spread):

    r_t = sqrt(h_{t-1}) z_t,   z_t ~ N(0, 1)
    h_t = omega + alpha r_t^2 + beta h_{t-1}

`h_t` is the variance forecast for the minute after t, known at the close of t. The recursion
starts at the unconditional variance omega / (1 - alpha - beta) at the first bar after a reset.
Parameters are fitted offline (Gaussian quasi-maximum likelihood on a training window, `fit`),
then handed to the feature engine, which only runs the recursion (`step`, or
`variance_path` for a whole series): the fit never sees the bars it is applied to.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize
from scipy.signal import lfilter


class GarchParams(NamedTuple):
    omega_bps2: float  # variance intercept per minute, bps^2
    alpha: float
    beta: float

    @property
    def unconditional_var_bps2(self) -> float:
        return self.omega_bps2 / (1.0 - self.alpha - self.beta)

    def validate(self) -> None:
        ok = (
            self.omega_bps2 > 0.0
            and self.alpha >= 0.0
            and self.beta >= 0.0
            and self.alpha + self.beta < 1.0
        )
        if not ok:
            raise ValueError(f"GARCH parameters not stationary and positive: {self}")


# Fitted by `fit` on the 525,518 BTC/USDT 1m log returns of 2023 (the return across the one
# exchange gap left out). Persistence alpha + beta is 0.99989: 1-minute BTC volatility is
# nearly integrated, so the start value matters little; its weight decays as beta^t (0.9^t).
# Per-symbol parameters are a FeatureParams input.
BTC_2023 = GarchParams(omega_bps2=0.136843, alpha=0.0997965, beta=0.900092)


def step(h_bps2: float, r_bps: float, p: GarchParams) -> float:
    """One online update: the forecast variance after observing return `r_bps`."""
    return (p.omega_bps2 + p.alpha * (r_bps * r_bps)) + p.beta * h_bps2


def variance_path(r_bps: np.ndarray, p: GarchParams, h0_bps2: float | None = None) -> np.ndarray:
    """h_1..h_n for returns r_1..r_n, starting from h0 (default: unconditional variance).

    Same operations, in the same order, as `step` repeated: lfilter computes
    y_t = x_t + beta * y_{t-1} with x_t = omega + alpha r_t^2.
    """
    h0 = p.unconditional_var_bps2 if h0_bps2 is None else h0_bps2
    if len(r_bps) == 0:
        return np.empty(0)
    x = p.omega_bps2 + p.alpha * (r_bps * r_bps)
    y, _ = lfilter([1.0], [1.0, -p.beta], x, zi=[p.beta * h0])
    return y


def neg_log_likelihood(p: GarchParams, r_bps: np.ndarray) -> float:
    """Gaussian negative log-likelihood (without the constant) of r_1..r_n; r_t ~ N(0, h_{t-1})."""
    h = variance_path(r_bps[:-1], p)
    h_prev = np.concatenate(([p.unconditional_var_bps2], h))
    return 0.5 * float(np.sum(np.log(h_prev) + r_bps * r_bps / h_prev))


def fit(r_bps: np.ndarray) -> GarchParams:
    """Quasi-maximum-likelihood GARCH(1,1) on one contiguous series of returns in bps.

    Optimised over (log omega, logit persistence, share of alpha in the persistence) so that
    every trial point is a stationary, positive model and the optimizer needs no constraints.
    """
    r = np.asarray(r_bps, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) < 100:
        raise ValueError(f"GARCH fit needs at least 100 returns, got {len(r)}")
    var = float(np.mean(r * r))
    if var <= 0.0:
        raise ValueError("GARCH fit needs returns that are not all zero")

    def unpack(theta: np.ndarray) -> GarchParams:
        persistence = 1.0 / (1.0 + math.exp(-theta[1]))
        share = 1.0 / (1.0 + math.exp(-theta[2]))
        return GarchParams(math.exp(theta[0]), persistence * share, persistence * (1.0 - share))

    def objective(theta: np.ndarray) -> float:
        return neg_log_likelihood(unpack(theta), r) / len(r)

    start = np.array([math.log(var * 0.05), math.log(0.95 / 0.05), math.log(0.1 / 0.9)])
    options = {"xatol": 1e-6, "fatol": 1e-10, "maxiter": 4000}
    result = minimize(objective, start, method="Nelder-Mead", options=options)
    return unpack(result.x)
