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
only the first process pays the compilation (~8 s for all of them here; a cached load ~0.4 s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numba
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])
# A network's input stage: the normaliser's (mean, std, clip), then the first Linear's W^T, b.
Input = tuple[np.ndarray, np.ndarray, np.float32, np.ndarray, np.ndarray]


def compiled(f: F) -> F:
    """numba.njit with an on-disk cache where one can be written (numba finds none when this
    folder, the user's cache and NUMBA_CACHE_DIR are all read-only or unset: it then compiles
    in memory at each start). Compiled at the first call: a caller that must not compile at
    a bar makes that call first (ArrayStep does when built)."""
    return _njit(f, None)


def compiled_as(signature: str) -> Callable[[F], F]:
    """`compiled` for one signature only, compiled (or loaded from the cache) when the module
    is imported, for functions called first on a bar's path; another type is a TypeError,
    never a compilation there."""
    return lambda f: _njit(f, signature)


def _njit(f: F, signature: str | None) -> F:
    options: dict[str, Any] = {"nogil": True, "error_model": "numpy"}
    args = () if signature is None else (signature,)
    try:
        return numba.njit(*args, cache=True, **options)(f)  # type: ignore[no-any-return]
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(*args, cache=False, **options)(f)  # type: ignore[no-any-return]


@compiled
def _add_product(out: np.ndarray, v: np.ndarray, wt: np.ndarray) -> None:
    """out += v @ wt, wt [in, out]: one input at a time, its row added to every output (a
    loop the compiler vectorises without reordering any output's sum). A zero input is
    skipped (half of a ReLU's outputs are zero): it adds nothing, unless a weight is infinite
    (torch's 0 x inf is NaN), and the online guard never serves non-finite weights."""
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
def normalise(x: np.ndarray, norm: tuple[np.ndarray, np.ndarray, np.float32]) -> np.ndarray:
    """(x - mean) / std, NaN -> 0, clipped to +-clip (inf -> +-clip): `Normaliser`'s; norm is
    (mean, std, clip)."""
    mean, std, clip = norm
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
def _input_layer(x: np.ndarray, inp: Input) -> np.ndarray:
    """The normalised input through the first Linear: inp is (mean, std, clip, W^T, b)."""
    h = inp[4].copy()
    _add_product(h, normalise(x, (inp[0], inp[1], inp[2])), inp[3])
    return h


@compiled
def tcn_step(
    x: np.ndarray,
    inp: Input,
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
    c = inp[4].shape[0]
    k = conv_wt.shape[1] // c
    new = np.empty_like(state)
    h = _input_layer(x, inp)
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


@compiled_as("float32[:, ::1](float32[:, ::1])")
def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis of [rows, classes] float32 logits, in float32 (called
    through backends.softmax, which takes any shape; a tenth of numpy's time at one bar)."""
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


@compiled
def _sigmoid(v: np.float32) -> np.float32:
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-v))


@compiled
def lstm_step(
    x: np.ndarray,
    norm: tuple[np.ndarray, np.ndarray, np.float32],
    w_ih0_t: np.ndarray,
    w_ih_t: np.ndarray,
    w_hh_t: np.ndarray,
    b_ih: np.ndarray,
    b_hh: np.ndarray,
    head_wt: np.ndarray,
    head_b: np.ndarray,
    state: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The LSTM's one-bar step (nets.OnlineLSTM.stepper's cell): x [F] -> logits [6] and the
    new state [2, layers, H] (h, then c). Gates in torch's order (input, forget, cell,
    output); layer 0 reads the input (w_ih0_t [F, 4H]), layer n > 0 the layer below
    (w_ih_t[n - 1] [H, 4H])."""
    n_layers, hidden = state.shape[1], state.shape[2]
    new = np.empty_like(state)
    z = normalise(x, norm)
    for n in range(n_layers):
        gates = b_ih[n].copy()
        _add_product(gates, z, w_ih0_t if n == 0 else w_ih_t[n - 1])
        recurrent = b_hh[n].copy()
        _add_product(recurrent, state[0, n], w_hh_t[n])
        gates += recurrent
        out = np.empty(hidden, dtype=np.float32)
        for i in range(hidden):
            c = _sigmoid(gates[hidden + i]) * state[1, n, i] + _sigmoid(gates[i]) * np.tanh(
                gates[2 * hidden + i]
            )
            new[1, n, i] = c
            out[i] = _sigmoid(gates[3 * hidden + i]) * np.tanh(c)
        new[0, n] = out
        z = out
    logits = head_b.copy()
    _add_product(logits, z, head_wt)
    return logits, new


@compiled
def _layer_norm(v: np.ndarray, w: np.ndarray, b: np.ndarray, eps: np.float32) -> np.ndarray:
    n = v.shape[0]
    mu = v.sum() / np.float32(n)
    d = v - mu
    var = (d * d).sum() / np.float32(n)
    return d / np.sqrt(var + eps) * w + b


@compiled
def transformer_step(
    x: np.ndarray,
    inp: Input,
    ln1_w: np.ndarray,
    ln1_b: np.ndarray,
    qkv_wt: np.ndarray,
    qkv_b: np.ndarray,
    slot_bias: np.ndarray,
    out_wt: np.ndarray,
    out_b: np.ndarray,
    ln2_w: np.ndarray,
    ln2_b: np.ndarray,
    ffn1_wt: np.ndarray,
    ffn1_b: np.ndarray,
    ffn2_wt: np.ndarray,
    ffn2_b: np.ndarray,
    ln_w: np.ndarray,
    ln_b: np.ndarray,
    head_wt: np.ndarray,
    head_b: np.ndarray,
    eps: np.float32,
    heads: int,
    state: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The sliding-window Transformer's one-bar step (nets.SlidingTransformer.stepper): x [F]
    -> logits [6] and the new state. Per-layer weights stacked on a first axis, transposed
    ([in, out]). The state is flat: the additive key mask [P] (P = W - 1: 0 where a cached
    key exists, -1e4 where not yet), then per layer the key and the value caches [H, P, dh],
    oldest first."""
    d = inp[4].shape[0]
    dh = d // heads
    p = slot_bias.shape[2] - 1
    size = heads * p * dh
    scale = np.float32(1.0 / np.sqrt(np.float32(dh)))
    new = np.empty_like(state)
    new[: p - 1] = state[1:p]  # the mask slides: the newest key exists
    new[p - 1] = 0.0
    h = _input_layer(x, inp)
    scores = np.empty(p + 1, dtype=np.float32)
    for layer in range(qkv_wt.shape[0]):
        at = p + 2 * layer * size
        cache_k = state[at : at + size].reshape(heads, p, dh)
        cache_v = state[at + size : at + 2 * size].reshape(heads, p, dh)
        new_k = new[at : at + size].reshape(heads, p, dh)
        new_v = new[at + size : at + 2 * size].reshape(heads, p, dh)
        qkv = qkv_b[layer].copy()
        _add_product(qkv, _layer_norm(h, ln1_w[layer], ln1_b[layer], eps), qkv_wt[layer])
        o = np.zeros(d, dtype=np.float32)
        for hh in range(heads):
            q, k, v = hh * dh, d + hh * dh, 2 * d + hh * dh  # where each head's part starts
            for j in range(p + 1):  # keys oldest first; the newest is this bar's own
                dot = np.float32(0.0)
                for e in range(dh):
                    key = cache_k[hh, j, e] if j < p else qkv[k + e]
                    dot += qkv[q + e] * key
                scores[j] = dot * scale + slot_bias[layer, hh, j] + (state[j] if j < p else 0.0)
            top = scores.max()
            total = np.float32(0.0)
            for j in range(p + 1):
                scores[j] = np.exp(scores[j] - top)
                total += scores[j]
            for j in range(p + 1):
                w = scores[j] / total
                for e in range(dh):
                    value = cache_v[hh, j, e] if j < p else qkv[v + e]
                    o[hh * dh + e] += w * value
            new_k[hh, : p - 1] = cache_k[hh, 1:]
            new_k[hh, p - 1] = qkv[k : k + dh]
            new_v[hh, : p - 1] = cache_v[hh, 1:]
            new_v[hh, p - 1] = qkv[v : v + dh]
        attended = out_b[layer].copy()
        _add_product(attended, o, out_wt[layer])
        h = h + attended
        f = ffn1_b[layer].copy()
        _add_product(f, _layer_norm(h, ln2_w[layer], ln2_b[layer], eps), ffn1_wt[layer])
        for i in range(f.shape[0]):  # GELU, tanh form (as the network's)
            u = f[i]
            inner = np.float32(0.7978845608) * (u + np.float32(0.044715) * u * u * u)
            f[i] = np.float32(0.5) * u * (np.float32(1.0) + np.tanh(inner))
        g = ffn2_b[layer].copy()
        _add_product(g, f, ffn2_wt[layer])
        h = h + g
    logits = head_b.copy()
    _add_product(logits, _layer_norm(h, ln_w, ln_b, eps), head_wt)
    return logits, new
