"""Normalisation with running statistics only: exponentially weighted z-scores.

For each feature, over its valid values only (NaN rows leave the statistics as they are):

    m_t = a x_t + (1 - a) m_{t-1}                      (started at the first valid x)
    v_t = (1 - a) v_{t-1} + a (1 - a) (x_t - m_{t-1})^2  (started at 0)
    z_t = clip((x_t - m_t) / sqrt(v_t), -clip, clip)

with a = 1 - 2^(-1/half-life). z is NaN while x is, and until the feature has had
`norm_warmup_bars` valid values. A whole-dataset mean or min/max would be look-ahead; these
statistics at t use rows <= t only. They are not reset by a gap: a hole in the data does not
change the scale of a feature, only the neighbours of a bar.

`RunningZ` (incremental, one vector a bar) and `zscore` (batch, a whole matrix) are the same
arithmetic; a model applies one of them to the feature vectors, after all bars of a minute.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from scalpd.features.spec import DEFAULT_PARAMS, FeatureParams


def _alpha(params: FeatureParams) -> float:
    return 1.0 - 2.0 ** (-1.0 / params.norm_halflife_bars)


class RunningZ:
    """EW z-scores of a feature vector, updated in place: a fixed number of numpy calls a bar.

    A column's mean is NaN until its first valid value, so "not started" and "invalid now"
    both show as a NaN difference and need no masks of their own.
    """

    __slots__ = ("alpha", "keep", "gain", "warmup", "clip", "mean", "var", "count", "z",
                 "_ok", "_d", "_t", "_u")  # fmt: skip

    def __init__(self, n_features: int, params: FeatureParams = DEFAULT_PARAMS) -> None:
        self.alpha = _alpha(params)
        self.keep = 1.0 - self.alpha
        self.gain = self.alpha * self.keep
        self.warmup = params.norm_warmup_bars
        self.clip = params.norm_clip
        self.mean = np.full(n_features, np.nan)
        self.var = np.zeros(n_features)
        self.count = np.zeros(n_features)
        self.z = np.full(n_features, np.nan)
        self._ok = np.zeros(n_features, bool)
        self._d = np.zeros(n_features)
        self._t = np.zeros(n_features)
        self._u = np.zeros(n_features)

    def update(self, x: np.ndarray) -> np.ndarray:
        """Fold one feature vector in; returns the z-score vector (the same array each time)."""
        ok, d, t, u = self._ok, self._d, self._t, self._u
        mean, var = self.mean, self.var
        np.subtract(x, mean, out=d)  # NaN where x is invalid or the column has not started
        np.equal(d, d, out=ok)
        # var = (gain * (d * d)) + keep * var and mean = alpha * x + keep * mean: lfilter's order
        np.multiply(d, d, out=t)
        np.multiply(t, self.gain, out=t)
        np.multiply(var, self.keep, out=u)
        np.add(t, u, out=var, where=ok)
        np.multiply(x, self.alpha, out=t)
        np.multiply(mean, self.keep, out=u)
        np.add(t, u, out=mean, where=ok)
        np.isnan(mean, out=ok)
        np.copyto(mean, x, where=ok)  # a column's first valid value starts its mean
        np.equal(x, x, out=ok)
        np.add(self.count, ok, out=self.count)
        z = self.z
        np.sqrt(var, out=t)
        with np.errstate(invalid="ignore", divide="ignore"):
            np.subtract(x, mean, out=z)
            np.divide(z, t, out=z)
        np.clip(z, -self.clip, self.clip, out=z)
        # Not warm, or no spread yet (var 0 gives inf or NaN above): invalid.
        np.less(self.count, self.warmup, out=ok)
        np.logical_or(ok, t == 0.0, out=ok)
        np.copyto(z, np.nan, where=ok)
        return z


def zscore(values: np.ndarray, params: FeatureParams = DEFAULT_PARAMS) -> np.ndarray:
    """The z-scores `RunningZ` gives row by row, for a whole matrix [rows x features]."""
    alpha = _alpha(params)
    keep = 1.0 - alpha
    gain = alpha * keep
    out = np.full(values.shape, np.nan)
    for f in range(values.shape[1]):
        col = values[:, f]
        rows = np.flatnonzero(~np.isnan(col))
        if len(rows) == 0:
            continue
        x = col[rows]
        mean = np.empty(len(x))
        mean[0] = x[0]
        mean[1:] = lfilter([alpha], [1.0, -keep], x[1:], zi=[keep * x[0]])[0]
        d = x[1:] - mean[:-1]
        var = np.zeros(len(x))
        var[1:] = lfilter([1.0], [1.0, -keep], gain * (d * d), zi=[0.0])[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.clip((x - mean) / np.sqrt(var), -params.norm_clip, params.norm_clip)
        z[: params.norm_warmup_bars - 1] = np.nan
        z[~(var > 0.0)] = np.nan
        out[rows, f] = z
    return out
