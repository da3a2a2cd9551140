"""Compiled one-bar steps (numba): the arithmetic of a network's step as one machine-code call.

Why: at one bar a step is ~60 small operations, and each costs ~1 us of interpreter and
dispatch overhead in torch or numpy whatever its size, while the arithmetic itself (~57,000
multiply-adds for the default TCN) takes a few microseconds. One compiled call removes the
per-operation cost, and its code and weights are all a cold cache has to fetch.

The functions take plain float32 arrays (the weights as a network's `*_stepper()` packs them)
and allocate what they return, so a step never changes the state it was given (a predictor's
`warm()` relies on it). They compute what torch computes, to float tolerance: sums run in a
fixed order, without fast-math reassociation, so a result does not depend on the machine's
thread count. Compiled code is cached on disk beside this module (or in NUMBA_CACHE_DIR), so
a process pays the compilation (~2 s) only the first time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numba
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])


def compiled(f: F) -> F:
    """numba.njit with an on-disk cache where one can be written (numba finds none when this
    folder, the user's cache and NUMBA_CACHE_DIR are all read-only or unset: it then compiles
    in memory at each start)."""
    options = {"nogil": True, "error_model": "numpy"}
    try:
        return numba.njit(cache=True, **options)(f)  # type: ignore[no-any-return]
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, **options)(f)  # type: ignore[no-any-return]


@compiled
def _add_product(out: np.ndarray, v: np.ndarray, wt: np.ndarray) -> None:
    """out += v @ wt, wt [in, out]: one input at a time, its row added to every output (a
    loop the compiler vectorises without reordering any output's sum). A zero input adds
    nothing, and half of a ReLU's outputs are zero; weights are finite (the guard never serves
    others), so skipping it changes no result."""
    for j in range(wt.shape[0]):
        vj = v[j]
        if vj != 0.0:
            for i in range(wt.shape[1]):
                out[i] += wt[j, i] * vj


@compiled
def _relu(v: np.ndarray) -> None:
    for i in range(v.shape[0]):
        if v[i] < 0.0:  # NaN stays NaN, as in torch.relu
            v[i] = 0.0


@compiled
def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: np.float32) -> np.ndarray:
    """(x - mean) / std, NaN -> 0, clipped to +-clip (inf -> +-clip): `Normaliser`'s."""
    z = np.empty_like(x)
    for j in range(x.shape[0]):
        v = (x[j] - mean[j]) / std[j]
        if v != v:
            v = np.float32(0.0)
        elif v > clip:
            v = clip
        elif v < -clip:
            v = -clip
        z[j] = v
    return z


@compiled
def tcn_step(
    x: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    clip: np.float32,
    inp_wt: np.ndarray,
    inp_b: np.ndarray,
    conv_wt: np.ndarray,
    conv_b: np.ndarray,
    dilation: np.ndarray,
    offset: np.ndarray,
    head_wt: np.ndarray,
    head_b: np.ndarray,
    state: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The TCN's one-bar step (nets.TCN.stepper's arithmetic): x [F] -> logits [6] and the new
    state. Weights transposed ([in, out]); convolution i's taps are the rows of conv_wt[i] in
    blocks of C per tap, oldest first (CausalConv's Linear). The state is every convolution's
    last (k-1)*d inputs in one array [rows, C], convolution i's at rows offset[i]:offset[i+1],
    oldest first; convolutions come in pairs, one residual block each."""
    c = inp_b.shape[0]
    k = conv_wt.shape[1] // c
    new = np.empty_like(state)
    h = inp_b.copy()
    _add_product(h, normalise(x, mean, std, clip), inp_wt)
    _relu(h)
    for block in range(conv_wt.shape[0] // 2):
        a = h
        for i in (2 * block, 2 * block + 1):
            lo, hi, d = offset[i], offset[i + 1], dilation[i]
            out = conv_b[i].copy()
            for tap in range(k - 1):
                _add_product(out, state[lo + tap * d], conv_wt[i, tap * c : (tap + 1) * c])
            _add_product(out, a, conv_wt[i, (k - 1) * c :])
            _relu(out)
            if hi > lo:  # the FIFO: oldest dropped, `a` appended (none at kernel 1)
                new[lo : hi - 1] = state[lo + 1 : hi]
                new[hi - 1] = a
            a = out
        h = h + a
        _relu(h)
    logits = head_b.copy()
    _add_product(logits, h, head_wt)
    return logits, new


@compiled
def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis of [rows, classes] float32 logits, in float32
    (backends' numpy softmax, in a tenth of its time at one bar)."""
    out = np.empty_like(logits)
    for r in range(logits.shape[0]):
        top = logits[r].max()
        total = np.float32(0.0)
        for c in range(logits.shape[1]):
            out[r, c] = np.exp(logits[r, c] - top)
            total += out[r, c]
        for c in range(logits.shape[1]):
            out[r, c] /= total
    return out
