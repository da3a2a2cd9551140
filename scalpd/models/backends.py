"""Inference backends behind one `Predictor`: eager PyTorch, ONNX Runtime, INT8 (dynamic).

- "eager": the PyTorch network as trained (float32); its one-bar step compiled by numba
  (kernels.py, `array_stepper()`: every kind on CPU), its chunks and series in torch. The
  default for live and replay: the fastest one-bar step here (`scalpd bench models_*`).
- "int8": `torch.ao.quantization.quantize_dynamic` on every Linear and LSTM (weights int8,
  activations quantised per call). The TCN's convolutions are Linears over their taps, so they
  are quantised too. Activation scales are computed per call, so an int8 step and an int8
  series differ slightly (the eager backend is the one where streaming equals batch).
- "onnx": two graphs exported with torch's exporter, both run by onnxruntime: the one-bar
  step with its state as explicit inputs and outputs (streaming stays in ONNX), and a chunk of
  `chunk_bars` bars with the same state in and out, chained (and the last chunk zero-padded:
  outputs are causal, so padding after the end changes nothing before it) for a full series.

Probabilities are [2, 3]: sides (long, short) by classes (take_profit, stop_loss, timeout).

Invalid features: a row with a NaN or infinite feature is fed as the training mean (0 after
normalisation) so the state stays finite, and every output whose context (the model's
`context_bars` rows, the current one included) holds such a row, or that comes fewer than
`warmup_bars` bars after a reset, is "no prediction": `predict_step` returns None, and
`predict_series` marks it False in `valid` (its probabilities are NaN, never a number that
could be mistaken for a forecast).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from scalpd.events import BAR_INTERVAL_MS
from scalpd.models import kernels
from scalpd.models.device import set_threads
from scalpd.models.ensemble import EnsembleWeighter, weight_series
from scalpd.models.errors import ModelError
from scalpd.models.nets import EnsembleNet, SeqNet, StreamingNet

BACKENDS = ("eager", "onnx", "int8")
DEFAULT_CHUNK_BARS = 4096
# The ONNX chunk graph's fixed length: export time grows with it (an LSTM of 4096 steps takes
# ~30 s to export), and 1024 bars already amortise the per-call overhead.
ONNX_CHUNK_BARS = 1024


class SeriesPrediction(NamedTuple):
    probs: np.ndarray  # float32 [T, 2, 3]; NaN where not valid
    valid: np.ndarray  # bool [T]
    weights: np.ndarray | None = None  # ensemble only: [T, M] mixing weights used


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis of logits of any leading shape, in float32: one
    compiled pass (kernels.softmax) for a bar's [2, 3] and for a series' [T, M, 2, 3] alike."""
    x = np.require(logits, np.float32, ["C", "W"])  # the one array type it is compiled for
    return kernels.softmax(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def segment_starts(n: int, open_time_ms: np.ndarray | None) -> np.ndarray:
    """bool [n]: rows where the state restarts (the first, and the first after a gap)."""
    starts = np.zeros(n, dtype=bool)
    if n:
        starts[0] = True
    if open_time_ms is not None:
        if len(open_time_ms) != n:
            raise ModelError(f"open_time_ms has {len(open_time_ms)} rows, features {n}")
        starts[1:] = np.diff(np.asarray(open_time_ms, dtype=np.int64)) != BAR_INTERVAL_MS
    return starts


def valid_outputs(
    bad: np.ndarray, starts: np.ndarray, context_bars: int, warmup_bars: int
) -> np.ndarray:
    """valid[t]: at least `warmup_bars` rows since the segment began (t included) and no bad
    row among the last `context_bars` rows of the segment."""
    n = len(bad)
    idx = np.arange(n)
    seg_start = np.maximum.accumulate(np.where(starts, idx, 0))
    last_bad = np.maximum.accumulate(np.where(bad, idx, -1))
    since_bad = np.where(last_bad >= seg_start, idx - last_bad, np.iinfo(np.int64).max)
    return (idx - seg_start + 1 >= warmup_bars) & (since_bad >= context_bars)


class _Validity:
    """The streaming form of `valid_outputs`."""

    def __init__(self, context_bars: int, warmup_bars: int) -> None:
        self.context_bars, self.warmup_bars = context_bars, warmup_bars
        self.reset()

    def reset(self) -> None:
        self.seen = 0
        self.since_bad = self.context_bars

    def push(self, bad: bool) -> bool:
        self.seen += 1
        self.since_bad = 0 if bad else self.since_bad + 1
        return self.seen >= self.warmup_bars and self.since_bad >= self.context_bars


# -- runners: one backend's way to run a step and a chunk ------------------------------------


class Runner(Protocol):
    def initial_state(self) -> Any: ...

    def step(self, x: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """x [F] -> probabilities [2, 3] (ensemble: [M, 2, 3]) and the new state."""
        ...

    def chunk(self, x: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """x [T, F] float32 -> logits [T, 2, 3] (ensemble: [T, M, 2, 3]) and the new state."""
        ...


class TorchRunner:
    """Eager or int8: the network on CPU, under inference mode. A compiled step copies the
    weights when the runner is built: weights changed later need a new runner (the online
    model builds one per version; nothing trains a served network in place)."""

    def __init__(self, net: StreamingNet) -> None:
        self.net = net if not net.training else net.eval()
        # The one-bar input is copied (and cast) into a fixed tensor through its numpy view:
        # torch.from_numpy on every bar costs ~6 us. No state keeps a reference to it.
        self._x = torch.zeros(1, net.n_features)
        self._x_np = self._x.numpy()[0]
        # A network with a compiled one-bar step (every kind on CPU but int8) keeps its state
        # as the step's arrays and converts it for torch chunks; the torch step is then
        # never built.
        array_stepper = getattr(net, "array_stepper", None)
        self._array_step = array_stepper() if array_stepper is not None else None
        members = isinstance(net, EnsembleNet)
        self._chunk = net.members_chunk if members else net.forward_chunk
        self._step: Any = None
        if self._array_step is None:
            self._step = net.members_stepper() if members else net.stepper()

    def initial_state(self) -> Any:
        if self._array_step is not None:
            return self._array_step.initial_state()
        return self.net.initial_state(1)

    def step(self, x: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        if self._array_step is not None:
            logits, state = self._array_step(x, state)
            return softmax(logits), state
        self._x_np[:] = x
        with torch.inference_mode():
            logits, state = self._step(self._x, state)
            return torch.softmax(logits, dim=-1).numpy()[0], state

    def chunk(self, x: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        arrays = self._array_step
        with torch.inference_mode():
            logits, state = self._chunk(
                torch.from_numpy(x).unsqueeze(0),
                state if arrays is None else arrays.to_torch(state),
            )
            return logits[0].numpy(), state if arrays is None else arrays.from_torch(state)


def quantize_int8(net: StreamingNet) -> StreamingNet:
    """A copy of `net` with int8 dynamic quantisation of its Linear and LSTM layers."""
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao (not a dependency here);
        # quantize_dynamic still works in torch 2.13.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(net).eval(), {nn.Linear, nn.LSTM}, dtype=torch.qint8
        )


class _StepGraph(nn.Module):
    def __init__(self, net: StreamingNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        net = self.net
        step = net.members_stepper() if isinstance(net, EnsembleNet) else net.stepper()
        logits, new = step(x, list(state))
        return (logits, *new)


class _ChunkGraph(_StepGraph):
    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        net = self.net
        run = net.members_chunk if isinstance(net, EnsembleNet) else net.forward_chunk
        logits, new = run(x, list(state))
        return (logits, *new)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter warns (deprecations, torchvision absent) and logs; none of it matters."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(
    net: StreamingNet, out_dir: Path, chunk_bars: int = ONNX_CHUNK_BARS
) -> tuple[Path, Path]:
    """Write `step.onnx` (x [1, F], state... -> logits, state...) and `chunk.onnx`
    (x [1, chunk_bars, F], state... -> logits, state...) under out_dir. Inputs are named x,
    state_0..; outputs logits, state_out_0..; initial states are zeros (transformer: the first
    state is bool) of the shapes in the graph."""
    net = copy.deepcopy(net).eval()
    state = net.initial_state(1)
    names_in = ["x"] + [f"state_{i}" for i in range(len(state))]
    names_out = ["logits"] + [f"state_out_{i}" for i in range(len(state))]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for graph, x, name in (
        (_StepGraph(net), torch.zeros(1, net.n_features), "step.onnx"),
        (_ChunkGraph(net), torch.zeros(1, chunk_bars, net.n_features), "chunk.onnx"),
    ):
        path = out_dir / name
        with _quiet_exporter():
            try:
                program = torch.onnx.export(
                    graph.eval(), (x, *state), dynamo=True, verbose=False,
                    input_names=names_in, output_names=names_out,
                )  # fmt: skip
            except Exception as exc:  # the exporter raises many types; one line for the caller
                raise ModelError(f"ONNX export of {name} failed: {exc}".splitlines()[0]) from exc
            if program is None:
                raise ModelError(f"ONNX export of {name} returned nothing")
            program.save(str(path))
        paths.append(path)
    return paths[0], paths[1]


class OnnxGraphs(NamedTuple):
    step: bytes
    chunk: bytes
    chunk_bars: int


def export_onnx_bytes(net: StreamingNet, chunk_bars: int = ONNX_CHUNK_BARS) -> OnnxGraphs:
    """The two graphs of `export_onnx`, in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        step_path, chunk_path = export_onnx(net, Path(tmp), chunk_bars)
        return OnnxGraphs(step_path.read_bytes(), chunk_path.read_bytes(), chunk_bars)


class OnnxRunner:
    """onnxruntime sessions for the step and the chunk graphs."""

    def __init__(
        self, net: StreamingNet, graphs: OnnxGraphs | None = None, threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        graphs = graphs or export_onnx_bytes(net)
        self.chunk_bars = graphs.chunk_bars
        self.n_features = net.n_features
        self._initial = [s.numpy() for s in net.initial_state(1)]
        step_opts = ort.SessionOptions()
        step_opts.intra_op_num_threads = threads or 1  # one bar: threads only add latency
        step_opts.inter_op_num_threads = 1
        chunk_opts = ort.SessionOptions()
        if threads:
            chunk_opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self._step = ort.InferenceSession(graphs.step, step_opts, providers=providers)
        self._chunk = ort.InferenceSession(graphs.chunk, chunk_opts, providers=providers)
        self._names = [f"state_{i}" for i in range(len(self._initial))]
        self._x = np.zeros((1, self.n_features), dtype=np.float32)

    def initial_state(self) -> list[np.ndarray]:
        return [s.copy() for s in self._initial]

    def _run(self, session: Any, x: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        feeds = dict(zip(self._names, state, strict=True))
        feeds["x"] = x
        return session.run(None, feeds)

    def step(self, x: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list]:
        self._x[0] = x
        out = self._run(self._step, self._x, state)
        return softmax(out[0][0]), out[1:]

    def chunk(self, x: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list]:
        n, c = len(x), self.chunk_bars
        outs = []
        for lo in range(0, n, c):
            part = x[lo : lo + c]
            if len(part) < c:  # causal outputs: zero padding after the end changes nothing
                part = np.concatenate([part, np.zeros((c - len(part), x.shape[1]), x.dtype)])
            res = self._run(self._chunk, part[None], state)
            outs.append(res[0][0][: min(c, n - lo)])
            state = res[1:]  # after padding this state is wrong, but nothing follows
        return np.concatenate(outs), state


# -- predictors ------------------------------------------------------------------------------


class Predictor:
    """Streaming (`predict_step`, one bar) and full-series (`predict_series`) probabilities."""

    def __init__(
        self,
        runner: Runner,
        *,
        backend: str,
        n_features: int,
        context_bars: int,
        warmup_bars: int,
        chunk_bars: int = DEFAULT_CHUNK_BARS,
    ) -> None:
        self.runner, self.backend = runner, backend
        self.n_features, self.chunk_bars = n_features, chunk_bars
        self.context_bars, self.warmup_bars = context_bars, warmup_bars
        self._validity = _Validity(context_bars, warmup_bars)
        self._state = runner.initial_state()
        self._last_ms: int | None = None
        self._warm_x = np.zeros(n_features, dtype=np.float32)

    def reset(self) -> None:
        """Forget the stream (after a gap in the data: state never spans one)."""
        self._validity.reset()
        self._state = self.runner.initial_state()
        self._last_ms = None

    def _step_probs(self, x_t: np.ndarray, time_ms: int | None) -> tuple[np.ndarray, bool]:
        if time_ms is not None:
            if self._last_ms is not None and time_ms - self._last_ms != BAR_INTERVAL_MS:
                self.reset()  # a gap (or a bar out of order): never bridged
            self._last_ms = time_ms
        x = np.asarray(x_t)
        if x.shape != (self.n_features,):
            raise ModelError(
                f"a bar's features must have shape ({self.n_features},), got {x.shape}"
            )
        probs, self._state = self.runner.step(x, self._state)
        return probs, self._validity.push(not np.isfinite(x).all())

    def predict_step(self, x_t: np.ndarray, time_ms: int | None = None) -> np.ndarray | None:
        """Probabilities [2, 3] after this bar, or None: no prediction (warming up, or the
        model's context holds a bar with invalid features). With the bar's open time, a gap
        since the last bar resets the stream (else call `reset` at gaps)."""
        probs, ok = self._step_probs(x_t, time_ms)
        return probs if ok else None

    def warm(self) -> None:
        """A throwaway step from the current state (the runners' steps return a new state and
        leave the old one as it was): the network's weights and buffers back in the CPU's
        caches before a bar that counts, nothing of the stream changed."""
        self.runner.step(self._warm_x, self._state)

    def feed(self, rows: np.ndarray) -> None:
        """Advance the stream over `rows` [T, F] (consecutive bars, oldest first) as T calls
        of `predict_step` would, in chunked calls: rebuilding a new network's state from its
        context then costs one forward pass, not T one-bar steps (~10x less for a TCN's 61
        rows). Equal to stepping to float tolerance (streaming = series, 1e-5)."""
        x = np.ascontiguousarray(rows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ModelError(f"rows must be [T, {self.n_features}], got {list(x.shape)}")
        if not isinstance(self.runner, TorchRunner):  # ONNX pads its chunks: step instead
            for row in x:
                self._step_probs(row, None)
            return
        for a in range(0, len(x), self.chunk_bars):
            _, self._state = self.runner.chunk(x[a : a + self.chunk_bars], self._state)
        for bad in ~np.isfinite(x).all(axis=1):
            self._validity.push(bool(bad))
        if len(x):
            self._last_ms = None  # rows carry no times: the next bar's time is not checked

    def _series_logits(
        self, X: np.ndarray, open_time_ms: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(X, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ModelError(f"features must be [T, {self.n_features}], got {list(x.shape)}")
        starts = segment_starts(len(x), open_time_ms)
        bounds = [*np.flatnonzero(starts), len(x)]
        parts = []
        for lo, hi in itertools.pairwise(bounds):
            state = self.runner.initial_state()
            for a in range(lo, hi, self.chunk_bars):
                logits, state = self.runner.chunk(x[a : min(a + self.chunk_bars, hi)], state)
                parts.append(logits)
        logits = np.concatenate(parts) if parts else np.zeros((0, 2, 3), np.float32)
        bad = ~np.isfinite(x).all(axis=1)
        return logits, valid_outputs(bad, starts, self.context_bars, self.warmup_bars)

    def predict_series(
        self, X: np.ndarray, open_time_ms: np.ndarray | None = None
    ) -> SeriesPrediction:
        """The whole series from a fresh state (restarted after each gap when open_time_ms is
        given); the streaming state is not touched."""
        logits, valid = self._series_logits(X, open_time_ms)
        probs = softmax(logits).astype(np.float32)
        probs[~valid] = np.nan
        return SeriesPrediction(probs, valid)


def mix(member_probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_m w_m p_m: [..., M, 2, 3] and [..., M] -> [..., 2, 3]."""
    return (member_probs * weights[..., :, None, None]).sum(axis=-3)


class EnsemblePredictor(Predictor):
    """Mixes its members' probabilities with weights that follow their recent log-loss on
    matured labels, per regime. Feed labels as they mature with `observe_label`."""

    def __init__(
        self, runner: Runner, *, weighter: EnsembleWeighter, horizon_bars: int, **kw: Any
    ) -> None:
        super().__init__(runner, **kw)
        self.weighter, self.horizon_bars = weighter, horizon_bars
        self._pending: OrderedDict[int, tuple[np.ndarray, int]] = OrderedDict()
        self._count = 0

    def predict_step(
        self, x_t: np.ndarray, time_ms: int | None = None, regime: int = 0
    ) -> np.ndarray | None:
        """As Predictor.predict_step; `regime` selects the weights. The bar is remembered
        for `observe_label` under time_ms (or, without it, the count of bars so far)."""
        member_probs, ok = self._step_probs(x_t, time_ms)
        key = self._count if time_ms is None else time_ms
        self._count += 1
        if not ok:
            return None
        self._pending[key] = (member_probs, regime)
        while len(self._pending) > 4 * self.horizon_bars + 64:
            self._pending.popitem(last=False)
        return mix(member_probs, self.weighter.weights(regime))

    def observe_label(self, key: int, y: np.ndarray) -> bool:
        """The label of bar `key` (its time_ms, or its count) matured: score the members'
        predictions made there. False when that bar had no prediction (or is too old)."""
        pending = self._pending.pop(key, None)
        if pending is None:
            return False
        self.weighter.update(pending[0], np.asarray(y), pending[1])
        return True

    def predict_series(  # type: ignore[override]
        self,
        X: np.ndarray,
        open_time_ms: np.ndarray | None = None,
        regime: np.ndarray | None = None,
        y: np.ndarray | None = None,
        label_mask: np.ndarray | None = None,
    ) -> SeriesPrediction:
        """The series as if streamed with labels observed as they mature (y [T, 2] and
        label_mask [T]; none: the weights stay as they are), from a copy of the weighter."""
        logits, valid = self._series_logits(X, open_time_ms)
        member_probs = softmax(logits)
        regime = np.zeros(len(X), dtype=np.int64) if regime is None else np.asarray(regime)
        weights = weight_series(
            self.weighter.copy(), member_probs, valid, y, label_mask, regime, self.horizon_bars
        )
        probs = mix(member_probs, weights).astype(np.float32)
        probs[~valid] = np.nan
        return SeriesPrediction(probs, valid, weights)


def _runner(
    net: StreamingNet, backend: str, threads: int | None, onnx_graphs: OnnxGraphs | None
) -> Runner:
    if backend == "eager":
        return TorchRunner(net)
    if backend == "int8":
        return TorchRunner(quantize_int8(net))
    # Exporting takes seconds: callers that build several predictors of one model (one per
    # symbol) pass the graphs exported once (ModelArtifact does).
    return OnnxRunner(net, onnx_graphs, threads)


def make_predictor(
    net: StreamingNet,
    backend: str = "eager",
    *,
    threads: int | None = None,
    chunk_bars: int = DEFAULT_CHUNK_BARS,
    weighter: EnsembleWeighter | None = None,
    horizon_bars: int = 30,
    onnx_graphs: OnnxGraphs | None = None,
    runner: Runner | None = None,
) -> Predictor:
    """A predictor for `net` on `backend` ("eager" | "onnx" | "int8"). `threads` sets torch's
    intra-op threads (process-wide; 1 gives the lowest one-bar latency) and onnxruntime's.
    For an ensemble, `weighter` (default: uniform) and the label horizon drive the weights.
    `runner`: another predictor's of the same net and backend, to share (see
    ModelArtifact.predictors); the stream state is the new predictor's own either way."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    # Each call moves and switches only what needs it: .cpu() and .eval() walk every module
    # even when nothing changes (~0.3 ms of a TCN predictor's ~0.6), and the online model
    # builds a predictor per approved version.
    if any(t.device.type != "cpu" for t in itertools.chain(net.parameters(), net.buffers())):
        net = net.cpu()
    if net.training:
        net.eval()
    set_threads(threads)
    if backend == "int8":
        # Dynamic quantisation scales activations per call: shorter chunks keep one outlier
        # bar from coarsening a whole chunk's resolution (mean error 0.02 -> 0.011).
        chunk_bars = min(chunk_bars, 256)
    if runner is None:
        runner = _runner(net, backend, threads, onnx_graphs)
    common: dict[str, Any] = {
        "backend": backend,
        "n_features": net.n_features,
        "context_bars": net.context_bars,
        "warmup_bars": net.warmup_bars,
        "chunk_bars": chunk_bars,
    }
    if isinstance(net, EnsembleNet):
        weighter = weighter or EnsembleWeighter(net.n_members)
        if weighter.n_members != net.n_members:
            raise ModelError(
                f"weighter has {weighter.n_members} members, the ensemble {net.n_members}"
            )
        return EnsemblePredictor(runner, weighter=weighter, horizon_bars=horizon_bars, **common)
    assert isinstance(net, SeqNet)
    return Predictor(runner, **common)
