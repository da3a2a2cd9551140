"""The networks: TCN, sliding-window Transformer, online LSTM, and the ensemble of them.

Every network reads raw features [batch, time, F] and returns logits [batch, time, 2, 3]: two
sides (long, short) by three classes (take_profit, stop_loss, timeout; see labels.py). The
output at time t depends on inputs <= t only.

One function serves training, full-series inference and chained chunks:
`forward_chunk(x, state)` runs T bars from a state and returns the state after them. The
one-bar step (`stepper()`) is the same computation written for latency, and the tests hold
it equal to the full series. The state is a flat list of tensors, so the step exports to ONNX
with explicit state inputs and outputs:
- TCN: per convolution, its last (k-1)*dilation inputs;
- Transformer: per layer, the keys and values of the last W-1 positions, and one additive
  mask saying which of those exist yet (after a reset, none);
- LSTM: h and c.
The buffers are fixed-length FIFOs (oldest first; each bar drops the oldest entry and appends
the newest): ring buffers whose order is kept in memory, so reading them needs no index
arithmetic and their layout is the same in the step, the chunk and the ONNX graphs. The copy
is at most W x d floats a layer, less than the attention over them.

The normalisation fitted on the training window is part of each network (`Normaliser`
buffers), so it is saved, loaded and exported with the weights. NaN features become 0 after
normalisation, i.e. the training mean: the state stays finite, and the predictor marks the
outputs whose context held such a row as "no prediction" (see backends.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from scalpd.models import kernels
from scalpd.models.errors import ModelError

N_SIDES, N_CLASSES = 2, 3
N_OUT = N_SIDES * N_CLASSES
State = list[Tensor]
_MASKED = -1e4  # an additive attention mask: exp(-1e4) is exactly 0 in float32


Step = Callable[[Tensor, State], tuple[Tensor, State]]
Backward = Callable[[Tensor], list[Tensor]]  # d loss / d output -> parameters' gradients
ModuleT = TypeVar("ModuleT", bound=nn.Module)


# At one bar, the cost of a step is per-operation overhead, not arithmetic: nn.Module's call
# costs ~3 us and each attribute lookup on a module ~1 us, as much as a 48x144 product. The
# one-bar steps are therefore closures over their weights (`stepper()`), built once.


def _relu_backward(grad: Tensor, out: Tensor) -> Tensor:
    """grad where relu's output `out` is positive, else 0: the kernel autograd uses for
    relu (~8 us at a training batch's size against ~60 for torch.where or a cast mask)."""
    return torch.ops.aten.threshold_backward(grad, out, 0)


def _bind_linear(mod: nn.Module) -> Callable[[Tensor], Tensor]:
    """x -> mod(x) with the weights bound; a quantised Linear (int8) keeps its own call."""
    if type(mod) is nn.Linear:
        w, b = mod.weight, mod.bias
        return lambda x: F.linear(x, w, b)
    return mod


def _bind_layer_norm(mod: nn.Module) -> Callable[[Tensor], Tensor]:
    assert isinstance(mod, nn.LayerNorm)
    shape, w, b, eps = mod.normalized_shape, mod.weight, mod.bias, mod.eps
    return lambda x: F.layer_norm(x, shape, w, b, eps)


def _bind_norm(norm: Normaliser) -> Callable[[Tensor], Tensor]:
    mean, std, clip = norm.mean, norm.std, norm.clip
    return lambda x: torch.nan_to_num((x - mean) / std, nan=0.0).clamp(-clip, clip)


class Normaliser(nn.Module):
    """(x - mean) / std per feature, fitted on the training window; NaN -> 0; clipped."""

    def __init__(self, n_features: int, clip: float = 10.0) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def fit(self, rows: np.ndarray) -> None:
        """Mean and std of each feature over the finite values of `rows` (training only)."""
        x = np.asarray(rows, dtype=np.float64)
        finite = np.isfinite(x)
        count = finite.sum(axis=0)
        filled = np.where(finite, x, 0.0)
        mean = filled.sum(axis=0) / np.maximum(count, 1)
        var = (np.where(finite, x - mean, 0.0) ** 2).sum(axis=0) / np.maximum(count - 1, 1)
        std = np.sqrt(var)
        std[~(std > 1e-12)] = 1.0  # a constant (or never seen) feature passes through
        self.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        self.std.copy_(torch.from_numpy(std.astype(np.float32)))

    def forward(self, x: Tensor) -> Tensor:
        z = (x - self.mean) / self.std
        return torch.nan_to_num(z, nan=0.0).clamp(-self.clip, self.clip)


@dataclass
class NetConfig:
    n_features: int
    warmup_bars: int = 32  # outputs this soon after a reset are not scored nor served
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SeqNet(nn.Module):
    """Base of the single networks: normaliser, config, state, chunked forward."""

    kind: ClassVar[str] = ""
    config_class: ClassVar[type[NetConfig]] = NetConfig

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.cfg = config
        self.norm = Normaliser(config.n_features)

    @property
    def n_features(self) -> int:
        return self.cfg.n_features

    @property
    def context_bars(self) -> int:
        """How many bars (the current one included) an output depends on."""
        raise NotImplementedError

    @property
    def warmup_bars(self) -> int:
        return self.cfg.warmup_bars

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.cfg.to_dict()}

    def initial_state(self, batch: int = 1) -> State:
        raise NotImplementedError

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def stepper(self) -> Step:
        """The one-bar step, x [B, F] -> logits [B, 2, 3]: the same as forward_chunk on a
        chunk of one bar, with as few tensor operations as possible. Inference only (no
        dropout). It binds the current weight tensors: build it again after moving the model
        or quantising it (in-place updates, as by an optimiser, are seen)."""
        raise NotImplementedError

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self.stepper()(x, state)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a whole series from the reset state (training, full-series inference)."""
        state = [s.to(x.device) for s in self.initial_state(x.shape[0])]
        return self.forward_chunk(x, state)[0]


# -- TCN -------------------------------------------------------------------------------------


@dataclass
class TcnConfig(NetConfig):
    hidden: int = 48
    levels: int = 4  # dilations 1, 2, 4, ... 2**(levels-1)
    kernel: int = 3


class CausalConv(nn.Module):
    """A dilated causal convolution written as one Linear over its k taps, so the same weights
    serve a one-bar step and a whole series, and dynamic INT8 quantisation (Linear only)
    applies to it. Its state: the last (k-1)*dilation inputs, oldest first."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.c_in, self.kernel, self.dilation = c_in, kernel, dilation
        self.memory = (kernel - 1) * dilation
        self.lin = nn.Linear(c_in * kernel, c_out)

    def forward(self, x: Tensor, buf: Tensor) -> tuple[Tensor, Tensor]:
        t = x.shape[1]
        xp = torch.cat([buf, x], dim=1)  # [B, memory + T, C]
        d = self.dilation
        taps = torch.cat([xp[:, j * d : j * d + t] for j in range(self.kernel)], dim=-1)
        return self.lin(taps), xp[:, t:]


class TcnBlock(nn.Module):
    def __init__(self, hidden: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = CausalConv(hidden, hidden, kernel, dilation)
        self.conv2 = CausalConv(hidden, hidden, kernel, dilation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, b1: Tensor, b2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, b1 = self.conv1(x, b1)
        h, b2 = self.conv2(self.drop(torch.relu(h)), b2)
        return torch.relu(x + self.drop(torch.relu(h))), b1, b2


class TCN(SeqNet):
    """Temporal convolutional network: residual blocks of two dilated causal convolutions."""

    kind = "tcn"
    config_class = TcnConfig
    cfg: TcnConfig

    def __init__(self, config: TcnConfig) -> None:
        super().__init__(config)
        h = config.hidden
        self.inp = nn.Linear(config.n_features, h)
        self.blocks = nn.ModuleList(
            TcnBlock(h, config.kernel, 2**i, config.dropout) for i in range(config.levels)
        )
        self.head = nn.Linear(h, N_OUT)
        self._plans: dict[int, Any] = {}  # forward_last's row plans by window length

    @property
    def context_bars(self) -> int:
        return 1 + sum(b.conv1.memory + b.conv2.memory for b in self.blocks)  # type: ignore[union-attr]

    def initial_state(self, batch: int = 1) -> State:
        out = []
        for block in self.blocks:
            for conv in (block.conv1, block.conv2):  # type: ignore[union-attr]
                out.append(torch.zeros(batch, conv.memory, conv.c_in))
        return out

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h = torch.relu(self.inp(self.norm(x)))
        new: State = []
        for i, block in enumerate(self.blocks):
            h, b1, b2 = block(h, state[2 * i], state[2 * i + 1])
            new += [b1, b2]
        logits = self.head(h)
        return logits.view(*logits.shape[:-1], N_SIDES, N_CLASSES), new

    def _last_plan(self, t: int) -> list[tuple[Tensor, Tensor, Tensor]] | None:
        """Per block, which rows to keep for the output at the last of t bars: (rows of its
        input the block needs, conv1's taps into them, conv2's taps into conv1's outputs);
        the rows are offsets back from the last bar. None: the context reaches past t bars."""
        if self.context_bars > t:
            return None
        cached = self._plans.get(t)
        if cached is not None:
            return cached
        k = self.cfg.kernel
        plan = []
        need = [0]  # offsets (bars back from the last) whose block output is needed
        for block in reversed(self.blocks):
            d = block.conv1.dilation  # type: ignore[union-attr]
            # Tap j of an output at offset o reads the input at o + (k - 1 - j) * d.
            mid = sorted({o + j * d for o in need for j in range(k)}, reverse=True)
            rows = sorted({o + j * d for o in mid for j in range(k)}, reverse=True)
            at_mid, at_rows = {o: i for i, o in enumerate(mid)}, {o: i for i, o in enumerate(rows)}
            taps1 = [[at_rows[o + (k - 1 - j) * d] for j in range(k)] for o in mid]
            taps2 = [[at_mid[o + (k - 1 - j) * d] for j in range(k)] for o in need]
            keep = [at_rows[o] for o in need]
            # Flat: index_select's backward (index_add) beats advanced indexing's by ~15%.
            flat1, flat2 = torch.tensor(taps1).flatten(), torch.tensor(taps2).flatten()
            plan.append((rows, flat1, flat2, torch.tensor(keep)))
            need = rows
        out = [
            (torch.tensor([t - 1 - o for o in rows]) if i == 0 else None, taps1, taps2, keep)
            for i, (rows, taps1, taps2, keep) in enumerate(reversed(plan))
        ]
        self._plans[t] = out  # type: ignore[assignment]
        return out  # type: ignore[return-value]

    def forward_last(self, x: Tensor) -> Tensor:
        """forward(x)[:, -1] (logits [B, 2, 3] of the last bar) computing only the rows that
        output depends on: ~1/3 of forward's arithmetic at the default size on 64 bars, for
        training batches that score only their last bar. Equal to float tolerance."""
        plan = self._last_plan(x.shape[1])
        if plan is None:
            return self.forward(x)[:, -1]
        _, saved = self._last_pass(x, plan)
        return self.head(saved[-1][-1][:, -1]).view(x.shape[0], N_SIDES, N_CLASSES)

    def _last_pass(self, x: Tensor, plan: list[Any]) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
        """forward_last's pass over the plan's rows: the normalised input rows, and per block
        (its input, conv1's gathered inputs, conv1's relu output, conv2's gathered inputs,
        conv2's relu output, the block's output), the activations its backward reads."""
        b, k = x.shape[0], self.cfg.kernel
        z = self.norm(x.index_select(1, plan[0][0]))
        h = torch.relu(self.inp(z))
        saved = []
        for block, (_, taps1, taps2, keep) in zip(self.blocks, plan, strict=True):
            c1, c2 = block.conv1.lin, block.conv2.lin  # type: ignore[union-attr]
            g1 = h.index_select(1, taps1).view(b, len(taps1) // k, -1)
            r1 = torch.relu(c1(g1))
            g2 = block.drop(r1).index_select(1, taps2).view(b, len(taps2) // k, -1)
            r2 = torch.relu(c2(g2))
            out = torch.relu(h.index_select(1, keep) + block.drop(r2))
            saved.append((h, g1, r1, g2, r2, out))
            h = out
        return z, saved

    def last_with_backward(self, x: Tensor) -> tuple[Tensor, Backward] | None:
        """forward_last(x), without an autograd graph, and its backward pass written out: a
        function from d loss / d logits [B, 2, 3] to every parameter's gradient (parameters()
        order). For the online learner's optimiser steps: at its size a step's matrix
        products are ~half of autograd's step, the rest was autograd's bookkeeping, the
        module calls and masks cast to float; this pays for the products and little else.
        None where it does not apply: a window shorter than the context, dropout on."""
        plan = self._last_plan(x.shape[1])
        if plan is None or (self.training and self.cfg.dropout > 0):
            return None
        b = x.shape[0]
        with torch.no_grad():
            z, saved = self._last_pass(x, plan)
            h = saved[-1][-1]
            last = h[:, -1]
            logits = self.head(last).view(b, N_SIDES, N_CLASSES)

        def backward(d_logits: Tensor) -> list[Tensor]:
            with torch.no_grad():
                d_out = d_logits.reshape(b, N_OUT)
                grads: list[Tensor] = []
                tail = [d_out.t().mm(last), d_out.sum(0)]
                dh = torch.zeros_like(h)
                dh[:, -1] = d_out.mm(self.head.weight)
                for i in reversed(range(len(saved))):
                    h_in, g1, r1, g2, r2, out = saved[i]
                    _, taps1, taps2, keep = plan[i]
                    block = self.blocks[i]
                    w1, w2 = block.conv1.lin.weight, block.conv2.lin.weight  # type: ignore[union-attr]
                    d_sum = _relu_backward(dh, out)
                    du2 = _relu_backward(d_sum, r2).flatten(0, 1)
                    dg2 = du2.mm(w2).view(b, -1, h_in.shape[-1])
                    dr1 = torch.zeros_like(r1).index_add_(1, taps2, dg2)
                    du1 = _relu_backward(dr1, r1).flatten(0, 1)
                    dg1 = du1.mm(w1).view(b, -1, h_in.shape[-1])
                    dh = torch.zeros_like(h_in).index_add_(1, taps1, dg1).index_add_(1, keep, d_sum)
                    grads = [
                        du1.t().mm(g1.flatten(0, 1)), du1.sum(0),
                        du2.t().mm(g2.flatten(0, 1)), du2.sum(0),
                        *grads,
                    ]  # fmt: skip
                h0 = saved[0][0]
                da0 = _relu_backward(dh, h0).flatten(0, 1)
                return [da0.t().mm(z.flatten(0, 1)), da0.sum(0), *grads, *tail]

        return logits, backward

    def stepper(self) -> Step:
        norm, inp, head = _bind_norm(self.norm), _bind_linear(self.inp), _bind_linear(self.head)
        # Tensor methods, not Python slicing: x[:, 1:] costs ~2 us of argument parsing.
        convs = [
            (torch.arange(0, conv.memory + 1, conv.dilation), conv.memory, _bind_linear(conv.lin))
            for block in self.blocks
            for conv in (block.conv1, block.conv2)  # type: ignore[union-attr]
        ]

        def conv(i: int, x: Tensor, buf: Tensor) -> tuple[Tensor, Tensor]:
            taps_at, memory, lin = convs[i]
            xp = torch.cat([buf, x.unsqueeze(1)], dim=1)  # [B, memory + 1, C]
            taps = xp.index_select(1, taps_at).view(x.shape[0], -1)  # x[t-(k-1)d], .., x[t]
            return lin(taps), xp.narrow(1, 1, memory)

        def step(x: Tensor, state: State) -> tuple[Tensor, State]:
            h = torch.relu(inp(norm(x)))
            new: State = []
            for i in range(0, len(convs), 2):
                a, b1 = conv(i, h, state[i])
                a, b2 = conv(i + 1, torch.relu(a), state[i + 1])
                h = torch.relu(h + torch.relu(a))
                new += [b1, b2]
            return head(h).view(-1, N_SIDES, N_CLASSES), new

        return step

    def array_stepper(self) -> ArrayStep | None:
        """`stepper()` compiled (kernels.tcn_step), on a copy of the weights: see ArrayStep.
        None when a layer is not a plain Linear on CPU (int8 keeps the torch step)."""
        convs = [conv for block in self.blocks for conv in (block.conv1, block.conv2)]  # type: ignore[union-attr]
        if not _plain_cpu([self.inp, self.head, *(conv.lin for conv in convs)]):
            return None
        weights = (
            (*_norm_arrays(self.norm), _own(self.inp.weight.T), _own(self.inp.bias)),
            np.stack([_own(conv.lin.weight.T) for conv in convs]),
            np.stack([_own(conv.lin.bias) for conv in convs]),
            np.array([conv.dilation for conv in convs], dtype=np.int64),
            np.concatenate([[0], np.cumsum([conv.memory for conv in convs])]).astype(np.int64),
            _own(self.head.weight.T),
            _own(self.head.bias),
        )
        return ArrayStep(self, kernels.tcn_step, weights, (-1, self.cfg.hidden))


def _own(t: Tensor) -> np.ndarray:
    """A tensor's values as a C-order float32 array with memory of its own."""
    return np.array(t.detach().numpy(), dtype=np.float32, order="C", copy=True)


def _plain_cpu(mods: list[nn.Module]) -> bool:
    return all(type(m) is nn.Linear and m.weight.device.type == "cpu" for m in mods)


def _norm_arrays(norm: Normaliser) -> tuple[np.ndarray, np.ndarray, np.float32]:
    return _own(norm.mean), _own(norm.std), np.float32(norm.clip)


class ArrayStep:
    """A network's one-bar step compiled (scalpd/models/kernels.py): `stepper()`'s arithmetic
    to float tolerance in one call, without torch's or numpy's per-operation overhead. It runs
    on a copy of the weights taken when built (unlike stepper(), it does not see later in-place
    updates: a view would dangle once torch moves a tensor's storage, as it does to send the
    network to the learning worker's process, share_memory_).

    Its state is one array: the network's `initial_state(1)` tensors flattened and put end to
    end, in the shape its kernel reads (`shape`); `to_torch` and `from_torch` convert it to and
    from the list `forward_chunk` takes (views one way, no copy). A step returns a new state
    and leaves the one it was given as it was."""

    def __init__(
        self,
        net: SeqNet,
        kernel: Callable[..., Any],
        weights: tuple[Any, ...],
        shape: tuple[int, ...],
    ) -> None:
        self._kernel, self._weights = kernel, weights
        initial = net.initial_state(1)
        self._shapes = [tuple(t.shape) for t in initial]
        self._sizes = np.cumsum([0] + [int(np.prod(s)) for s in self._shapes])
        self._shape = shape
        self._initial = self.from_torch(initial)
        # Compiled (or loaded from numba's disk cache) now, never at a bar that counts: the
        # first call of a kernel compiles it, seconds without a cache.
        self(np.zeros(net.n_features, dtype=np.float32), self._initial)

    def initial_state(self) -> np.ndarray:
        return self._initial.copy()

    def __call__(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x [F] -> logits [2, 3] and the new state."""
        # Always a fresh float32, C-order, writable array: another dtype, layout or a
        # read-only input would be a new type to numba, compiled at this bar.
        x = np.array(x, dtype=np.float32, order="C", copy=True)
        logits, new = self._kernel(x, *self._weights, state)
        return logits.reshape(N_SIDES, N_CLASSES), new

    def to_torch(self, state: np.ndarray) -> State:
        flat, at = state.reshape(-1), self._sizes
        return [
            torch.from_numpy(flat[at[i] : at[i + 1]].reshape(shape))
            for i, shape in enumerate(self._shapes)
        ]

    def from_torch(self, state: State) -> np.ndarray:
        flat = np.concatenate([s.detach().numpy().reshape(-1) for s in state])
        return np.ascontiguousarray(flat, dtype=np.float32).reshape(self._shape)


class EnsembleArrayStep:
    """The members' compiled steps side by side: logits stacked [M, 2, 3]; the state is the
    list of the members' states."""

    def __init__(self, members: list[ArrayStep], splits: list[int]) -> None:
        self._members, self._splits = members, splits

    def initial_state(self) -> list[np.ndarray]:
        return [m.initial_state() for m in self._members]

    def __call__(
        self, x: np.ndarray, state: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        outs, new = [], []
        for member, s in zip(self._members, state, strict=True):
            logits, s = member(x, s)
            outs.append(logits)
            new.append(s)
        return np.stack(outs), new

    def to_torch(self, state: list[np.ndarray]) -> State:
        return [t for m, s in zip(self._members, state, strict=True) for t in m.to_torch(s)]

    def from_torch(self, state: State) -> list[np.ndarray]:
        out, at = [], 0
        for member, n in zip(self._members, self._splits, strict=True):
            out.append(member.from_torch(state[at : at + n]))
            at += n
        return out


# -- sliding-window Transformer --------------------------------------------------------------


@dataclass
class TransformerConfig(NetConfig):
    d_model: int = 48
    heads: int = 4
    layers: int = 2
    window_bars: int = 128  # W: each layer attends to the last W positions, itself included
    ffn_mult: int = 2
    block_bars: int = 64  # queries per attention block in a long chunk (memory bound)


def _alibi_slopes(heads: int) -> list[float]:
    return [2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)]


class WindowAttention(nn.Module):
    """Multi-head attention over the last W positions with a learned bias per head and age
    (bars back, 0..W-1): a relative, time-aware position encoding (one bar = one minute inside
    a segment), started as ALiBi's linear decay. Being relative, it means the same at bar 10 of
    a training window and at bar 500,000 of a year streamed bar by bar."""

    def __init__(self, d_model: int, heads: int, window: int, block: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ModelError(f"d_model {d_model} is not a multiple of heads {heads}")
        self.heads, self.dh, self.window, self.block = heads, d_model // heads, window, block
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        ages = torch.arange(window - 1, -1, -1, dtype=torch.float32)
        slopes = torch.tensor(_alibi_slopes(heads))[:, None]
        # Indexed oldest first (slot j = W-1-j bars old), the order of the key cache, so the
        # one-bar step adds it as is.
        self.slot_bias = nn.Parameter(-slopes * ages)  # [H, W]

    def _band(self, c: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """For c queries and their c + W - 1 keys: the bias slot index and in-window mask."""
        p = self.window - 1
        i = torch.arange(c, device=device)[:, None]
        j = torch.arange(c + p, device=device)[None, :]
        age = p + i - j  # query i sits at key index p + i
        inside = (age >= 0) & (age <= p)
        return p - age.clamp(0, p), inside

    def forward(
        self, x: Tensor, cache_k: Tensor, cache_v: Tensor, key_ok: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, d]; caches [B, H, W-1, dh]; key_ok [B, W-1+T] bool (cached keys that
        exist, then the T new ones). Returns the output and the new caches."""
        b, t, d = x.shape
        p = self.window - 1
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        k_all = torch.cat([cache_k, k], dim=2)  # [B, H, P+T, dh]
        v_all = torch.cat([cache_v, v], dim=2)
        c = min(self.block, t)
        nb = -(-t // c)
        pad = nb * c - t
        if pad:  # padded queries (and keys) at the end only see themselves; dropped below
            q = torch.cat([q, q.new_zeros(b, self.heads, pad, self.dh)], dim=2)
            k_all = torch.cat([k_all, k_all.new_zeros(b, self.heads, pad, self.dh)], dim=2)
            v_all = torch.cat([v_all, v_all.new_zeros(b, self.heads, pad, self.dh)], dim=2)
            key_ok = torch.cat([key_ok, key_ok.new_ones(b, pad)], dim=1)
        qb = q.reshape(b, self.heads, nb, c, self.dh)
        if nb == 1:
            kb, vb, okb = k_all.unsqueeze(2), v_all.unsqueeze(2), key_ok.unsqueeze(1)
        else:  # block n's keys are k_all[n*c : n*c + c + p]
            idx = (
                torch.arange(nb, device=x.device)[:, None] * c
                + torch.arange(c + p, device=x.device)[None, :]
            ).reshape(-1)
            kb = k_all.index_select(2, idx).view(b, self.heads, nb, c + p, self.dh)
            vb = v_all.index_select(2, idx).view(b, self.heads, nb, c + p, self.dh)
            okb = key_ok.index_select(1, idx).view(b, nb, c + p)
        slot, inside = self._band(c, x.device)
        bias = self.slot_bias[:, slot].masked_fill(~inside, _MASKED)  # [H, c, c+p]
        keymask = torch.zeros(okb.shape, dtype=q.dtype, device=x.device).masked_fill(~okb, _MASKED)
        mask = bias[None, :, None] + keymask[:, None, :, None, :]  # [B, H, nb, c, c+p]
        g = self.heads * nb  # heads and blocks as one batch axis: ONNX's attention is 4-D
        o = F.scaled_dot_product_attention(
            qb.reshape(b, g, c, self.dh),
            kb.reshape(b, g, c + p, self.dh),
            vb.reshape(b, g, c + p, self.dh),
            attn_mask=mask.to(qb.dtype).reshape(b, g, c, c + p),
        )
        o = o.reshape(b, self.heads, nb * c, self.dh)[:, :, :t].transpose(1, 2).reshape(b, t, d)
        keep = k_all.shape[2] - pad
        return self.out(o), k_all[:, :, keep - p : keep], v_all[:, :, keep - p : keep]


class TransformerLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = WindowAttention(d, cfg.heads, cfg.window_bars, cfg.block_bars)
        self.ffn = nn.Sequential(
            nn.Linear(d, cfg.ffn_mult * d),
            nn.GELU(approximate="tanh"),  # exact erf GELU costs 5x more at one bar
            nn.Linear(cfg.ffn_mult * d, d),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, ck: Tensor, cv: Tensor, key_ok: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        a, ck, cv = self.attn(self.ln1(x), ck, cv, key_ok)
        x = x + self.drop(a)
        return x + self.drop(self.ffn(self.ln2(x))), ck, cv


class SlidingTransformer(SeqNet):
    """Pre-norm Transformer whose every layer attends to the last W positions only."""

    kind = "transformer"
    config_class = TransformerConfig
    cfg: TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        if not 2 <= config.window_bars <= 4096:
            raise ModelError(f"window_bars must be in 2..4096, got {config.window_bars}")
        super().__init__(config)
        self.inp = nn.Linear(config.n_features, config.d_model)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.layers))
        self.ln = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, N_OUT)

    @property
    def context_bars(self) -> int:
        return self.cfg.layers * (self.cfg.window_bars - 1) + 1

    def initial_state(self, batch: int = 1) -> State:
        c = self.cfg
        p, dh = c.window_bars - 1, c.d_model // c.heads
        caches = [torch.zeros(batch, c.heads, p, dh) for _ in range(2 * c.layers)]
        # First: an additive mask over the cached keys, 0 where one exists and _MASKED where
        # not yet (after a reset): the form the one-bar step adds to its scores as is.
        return [torch.full((batch, 1, 1, p), _MASKED), *caches]

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        b, t = x.shape[0], x.shape[1]
        keymask, caches = state[0], state[1:]
        p = keymask.shape[-1]
        key_ok = torch.cat([keymask.view(b, p) == 0, keymask.new_ones(b, t, dtype=torch.bool)], 1)
        h = self.inp(self.norm(x))
        new_ok = key_ok[:, key_ok.shape[1] - p :]
        new: State = [torch.zeros_like(keymask).masked_fill(~new_ok.view(b, 1, 1, p), _MASKED)]
        for i, layer in enumerate(self.layers):
            h, ck, cv = layer(h, caches[2 * i], caches[2 * i + 1], key_ok)
            new += [ck, cv]
        logits = self.head(self.ln(h))
        return logits.view(*logits.shape[:-1], N_SIDES, N_CLASSES), new

    def stepper(self) -> Step:
        c = self.cfg
        heads, dh, p = c.heads, c.d_model // c.heads, c.window_bars - 1
        norm, inp = _bind_norm(self.norm), _bind_linear(self.inp)
        ln, head = _bind_layer_norm(self.ln), _bind_linear(self.head)
        layers = [
            (
                _bind_layer_norm(layer.ln1),
                _bind_linear(layer.attn.qkv),
                layer.attn.slot_bias[None, :, None, :],  # a view: sees in-place updates
                _bind_linear(layer.attn.out),
                _bind_layer_norm(layer.ln2),
                _bind_linear(layer.ffn[0]),
                _bind_linear(layer.ffn[2]),
            )
            for layer in self.layers  # type: ignore[union-attr]
        ]

        def step(x: Tensor, state: State) -> tuple[Tensor, State]:
            b = x.shape[0]
            keymask = torch.cat([state[0], state[0].new_zeros(b, 1, 1, 1)], dim=3)  # [B,1,1,W]
            h = inp(norm(x))
            new: State = [keymask.narrow(3, 1, p)]
            for i, (ln1, qkv, slot_bias, out, ln2, ffn1, ffn2) in enumerate(layers):
                q, k, v = qkv(ln1(h)).view(b, 3, heads, 1, dh).unbind(1)
                k_all = torch.cat([state[1 + 2 * i], k], dim=2)  # [B, H, W, dh], oldest first
                v_all = torch.cat([state[2 + 2 * i], v], dim=2)
                o = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=slot_bias + keymask)
                h = h + out(o.reshape(b, -1))
                h = h + ffn2(F.gelu(ffn1(ln2(h)), approximate="tanh"))
                new += [k_all.narrow(2, 1, p), v_all.narrow(2, 1, p)]
            return head(ln(h)).view(-1, N_SIDES, N_CLASSES), new

        return step

    def array_stepper(self) -> ArrayStep | None:
        """`stepper()` compiled (kernels.transformer_step), on a copy of the weights: see
        ArrayStep. None when a layer is not a plain Linear on CPU (int8)."""
        layers = list(self.layers)
        linears = [self.inp, self.head]
        for layer in layers:
            linears += [layer.attn.qkv, layer.attn.out, layer.ffn[0], layer.ffn[2]]  # type: ignore[union-attr, index]
        if not _plain_cpu(linears):
            return None

        def stacked(get: Callable[[Any], Tensor]) -> np.ndarray:
            return np.stack([_own(get(layer)) for layer in layers])

        eps = {m.eps for m in self.modules() if isinstance(m, nn.LayerNorm)}
        if len(eps) != 1:
            return None  # one epsilon for every LayerNorm is what the kernel takes
        weights = (
            (*_norm_arrays(self.norm), _own(self.inp.weight.T), _own(self.inp.bias)),
            stacked(lambda m: m.ln1.weight),
            stacked(lambda m: m.ln1.bias),
            stacked(lambda m: m.attn.qkv.weight.T),
            stacked(lambda m: m.attn.qkv.bias),
            stacked(lambda m: m.attn.slot_bias),
            stacked(lambda m: m.attn.out.weight.T),
            stacked(lambda m: m.attn.out.bias),
            stacked(lambda m: m.ln2.weight),
            stacked(lambda m: m.ln2.bias),
            stacked(lambda m: m.ffn[0].weight.T),
            stacked(lambda m: m.ffn[0].bias),
            stacked(lambda m: m.ffn[2].weight.T),
            stacked(lambda m: m.ffn[2].bias),
            _own(self.ln.weight),
            _own(self.ln.bias),
            _own(self.head.weight.T),
            _own(self.head.bias),
            np.float32(eps.pop()),
            self.cfg.heads,
        )
        return ArrayStep(self, kernels.transformer_step, weights, (-1,))


# -- online LSTM -----------------------------------------------------------------------------


@dataclass
class LstmConfig(NetConfig):
    hidden: int = 48
    layers: int = 1
    # An LSTM's memory has no hard end; after this many bars an imputed (NaN) input is taken
    # to have washed out of its state, and outputs count as valid again.
    context: int = 128


class OnlineLSTM(SeqNet):
    """A stateful LSTM: streaming is one cell step a bar, the state carried across bars.
    Online fine-tuning (replay buffer, volatility-scaled learning rate) is in online.py."""

    kind = "lstm"
    config_class = LstmConfig
    cfg: LstmConfig

    def __init__(self, config: LstmConfig) -> None:
        super().__init__(config)
        self.lstm = nn.LSTM(
            config.n_features,
            config.hidden,
            config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.hidden, N_OUT)

    @property
    def context_bars(self) -> int:
        return self.cfg.context

    def initial_state(self, batch: int = 1) -> State:
        shape = (self.cfg.layers, batch, self.cfg.hidden)
        return [torch.zeros(shape), torch.zeros(shape)]

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        out, (h, c) = self.lstm(self.norm(x), (state[0], state[1]))
        logits = self.head(out)
        return logits.view(*logits.shape[:-1], N_SIDES, N_CLASSES), [h, c]

    def stepper(self) -> Step:
        head = _bind_linear(self.head)
        if not hasattr(self.lstm, "weight_ih_l0"):  # quantised (int8): its own one-bar call
            forward_chunk = self.forward_chunk

            def quantised_step(x: Tensor, state: State) -> tuple[Tensor, State]:
                logits, new = forward_chunk(x.unsqueeze(1), state)
                return logits[:, 0], new

            return quantised_step
        # The cell written out: nn.LSTM on one bar costs ~70 us of set-up, this ~15 us.
        norm = _bind_norm(self.norm)
        names = ("weight_ih_l{}", "weight_hh_l{}", "bias_ih_l{}", "bias_hh_l{}")
        cells = [
            tuple(getattr(self.lstm, name.format(n)) for name in names)
            for n in range(self.cfg.layers)
        ]

        def step(x: Tensor, state: State) -> tuple[Tensor, State]:
            z = norm(x)
            hs, cs = [], []
            for n, (w_ih, w_hh, b_ih, b_hh) in enumerate(cells):
                gates = F.linear(z, w_ih, b_ih) + F.linear(state[0].select(0, n), w_hh, b_hh)
                i, f, g, o = gates.chunk(4, dim=1)
                c = torch.sigmoid(f) * state[1].select(0, n) + torch.sigmoid(i) * torch.tanh(g)
                z = torch.sigmoid(o) * torch.tanh(c)
                hs.append(z)
                cs.append(c)
            return head(z).view(-1, N_SIDES, N_CLASSES), [torch.stack(hs), torch.stack(cs)]

        return step

    def array_stepper(self) -> ArrayStep | None:
        """`stepper()` compiled (kernels.lstm_step), on a copy of the weights: see ArrayStep.
        None when quantised (int8) or not on CPU."""
        lstm = self.lstm
        if not hasattr(lstm, "weight_ih_l0") or not _plain_cpu([self.head]):
            return None
        n, hidden = self.cfg.layers, self.cfg.hidden

        def each(name: str, transpose: bool = False) -> list[np.ndarray]:
            ts = [getattr(lstm, f"{name}_l{i}") for i in range(n)]
            return [_own(t.T if transpose else t) for t in ts]

        w_ih = each("weight_ih", transpose=True)
        rest = np.stack(w_ih[1:]) if n > 1 else np.zeros((0, hidden, 4 * hidden), np.float32)
        weights = (
            _norm_arrays(self.norm),
            w_ih[0],
            rest,
            np.stack(each("weight_hh", transpose=True)),
            np.stack(each("bias_ih")),
            np.stack(each("bias_hh")),
            _own(self.head.weight.T),
            _own(self.head.bias),
        )
        return ArrayStep(self, kernels.lstm_step, weights, (2, n, hidden))


# -- ensemble --------------------------------------------------------------------------------


def combine_logits(member_logits: Tensor, weights: Tensor) -> Tensor:
    """log(sum_m w_m softmax(logits_m)): the log of the weighted mixture of the members'
    probabilities, itself a valid set of logits. member_logits [..., M, 2, 3]; weights
    broadcastable to [..., M]."""
    logp = torch.log_softmax(member_logits, dim=-1)
    logw = torch.log(weights.clamp_min(1e-12))[..., None, None]
    return torch.logsumexp(logp + logw, dim=-3)


class EnsembleNet(nn.Module):
    """The members side by side. The mixing weights are not learned by gradient: they follow
    each member's recent log-loss on matured labels, per market regime (EnsembleWeighter in
    ensemble.py), and are passed in."""

    kind = "ensemble"

    def __init__(self, members: list[SeqNet]) -> None:
        super().__init__()
        if not members:
            raise ModelError("an ensemble needs at least one member")
        widths = {m.n_features for m in members}
        if len(widths) != 1:
            raise ModelError(f"ensemble members disagree on the feature count: {sorted(widths)}")
        self.members = nn.ModuleList(members)
        self._splits = [len(m.initial_state(1)) for m in members]

    @property
    def n_features(self) -> int:
        return self.members[0].n_features  # type: ignore[union-attr]

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def context_bars(self) -> int:
        return max(m.context_bars for m in self.members)  # type: ignore[union-attr]

    @property
    def warmup_bars(self) -> int:
        return max(m.warmup_bars for m in self.members)  # type: ignore[union-attr]

    def config(self) -> dict[str, Any]:
        members = [m.config() for m in self.members]  # type: ignore[union-attr]
        return {"kind": self.kind, "n_features": self.n_features, "members": members}

    def initial_state(self, batch: int = 1) -> State:
        return [s for m in self.members for s in m.initial_state(batch)]  # type: ignore[union-attr]

    def members_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Each member's logits, stacked: [B, T, M, 2, 3]."""
        outs, new, at = [], [], 0
        for member, n in zip(self.members, self._splits, strict=True):
            logits, s = member.forward_chunk(x, state[at : at + n])  # type: ignore[operator]
            outs.append(logits)
            new += s
            at += n
        return torch.stack(outs, dim=-3), new

    def members_stepper(self) -> Step:
        """Each member's one-bar step, their logits stacked: [B, M, 2, 3]."""
        parts, at = [], 0
        for member, n in zip(self.members, self._splits, strict=True):
            parts.append((member.stepper(), at, at + n))  # type: ignore[operator]
            at += n

        def step(x: Tensor, state: State) -> tuple[Tensor, State]:
            outs, new = [], []
            for member_step, lo, hi in parts:
                logits, s = member_step(x, state[lo:hi])
                outs.append(logits)
                new += s
            return torch.stack(outs, dim=1), new

        return step

    def array_stepper(self) -> EnsembleArrayStep | None:
        """Every member's compiled step (None unless each member has one)."""
        steps = [getattr(m, "array_stepper", lambda: None)() for m in self.members]
        if any(step is None for step in steps):
            return None
        return EnsembleArrayStep(steps, self._splits)

    def members_step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self.members_stepper()(x, state)

    def forward_chunk(
        self, x: Tensor, state: State, weights: Tensor | None = None
    ) -> tuple[Tensor, State]:
        member_logits, new = self.members_chunk(x, state)
        if weights is None:
            weights = torch.full((self.n_members,), 1.0 / self.n_members, device=x.device)
        return combine_logits(member_logits, weights), new

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        state = [s.to(x.device) for s in self.initial_state(x.shape[0])]
        return self.forward_chunk(x, state, weights)[0]


# -- registry --------------------------------------------------------------------------------

NET_CLASSES: dict[str, type[SeqNet]] = {c.kind: c for c in (TCN, SlidingTransformer, OnlineLSTM)}
MODEL_NAMES = (*NET_CLASSES, "ensemble")
StreamingNet = SeqNet | EnsembleNet


def clone_net(net: ModuleT) -> ModuleT:
    """A copy of `net` with parameters and buffers of its own, ~15x faster than
    copy.deepcopy, which walks every attribute of every module in Python (a round of online
    learning trains one, per symbol each hour). Containers among the other attributes (hooks,
    caches) are copied one level; the rest (configuration, numbers) is immutable and shared.
    An RNN's list of flat weights is rebuilt to name the copies."""
    twin = net.__class__.__new__(net.__class__)
    attrs = {k: v.copy() if isinstance(v, (dict, list, set)) else v for k, v in vars(net).items()}
    attrs["_parameters"] = {
        k: None if p is None else nn.Parameter(p.detach().clone(), p.requires_grad)
        for k, p in net._parameters.items()
    }
    attrs["_buffers"] = {k: None if b is None else b.clone() for k, b in net._buffers.items()}
    attrs["_modules"] = {k: None if m is None else clone_net(m) for k, m in net._modules.items()}
    twin.__dict__ = attrs
    if isinstance(twin, nn.RNNBase):
        twin._init_flat_weights()
    return twin


def build_net(config: dict[str, Any]) -> StreamingNet:
    """A network from its `config()` (kind included); unknown keys are a ModelError."""
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind == "ensemble":
        return EnsembleNet([build_net(m) for m in cfg.get("members", [])])  # type: ignore[misc]
    if kind not in NET_CLASSES:
        raise ModelError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_NAMES)}")
    cls = NET_CLASSES[kind]
    known = {f.name for f in fields(cls.config_class)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ModelError(f"unknown {kind} setting(s) {unknown}; known: {sorted(known)}")
    return cls(cls.config_class(**cfg))


def default_config(kind: str, n_features: int, **overrides: Any) -> dict[str, Any]:
    """The config of a `kind` network with its defaults and `overrides`."""
    if kind not in NET_CLASSES:
        raise ModelError(f"unknown model {kind!r}; choose one of {', '.join(NET_CLASSES)}")
    return build_net({"kind": kind, "n_features": n_features, **overrides}).config()
