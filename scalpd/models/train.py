"""Training: full-series batched windows, a purged and embargoed validation period, an artifact.

`train(...)` fits one network (or the three members of an ensemble) on a feature matrix and
triple-barrier labels:

1. Split by time (splits.chronological_split): the last `val_fraction` of the time range is
   validation; training samples whose label window reaches it are purged, plus an embargo.
2. Fit the normalisation on the training rows only (it is part of the saved model).
3. Train on windows of `window_bars` consecutive bars (never across a gap), `stride_bars`
   apart, scoring the positions after the model's warm-up whose label is valid, in the
   training set, and whose context holds no invalid (NaN) feature row.
4. Measure the loss on the training and validation periods as the model will be used: the
   whole series run from each segment start (as streaming), beside the base rate's log-loss
   (predicting the training class frequencies at every bar).
5. Save the artifact (artifact.py): weights, config, features, normalisation, data range and
   hash, metrics, model card.

Determinism: with the same inputs, seed and thread count (`threads`, default every core), CPU
training on one machine gives the same weights bit for bit (torch.manual_seed before the
weights are drawn, deterministic algorithms, a seeded shuffle).
On CUDA/XPU it is seeded but not guaranteed bitwise, and runs in bfloat16 autocast.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from scalpd.events import BAR_INTERVAL_MS
from scalpd.models.artifact import ModelArtifact, save_artifact
from scalpd.models.backends import make_predictor, segment_starts, valid_outputs
from scalpd.models.device import autocast, autocast_dtype, select_device, set_threads
from scalpd.models.ensemble import EnsembleWeighter, weight_series
from scalpd.models.errors import ModelError
from scalpd.models.labels import LabelParams, class_frequencies
from scalpd.models.nets import (
    MODEL_NAMES,
    NET_CLASSES,
    EnsembleNet,
    SeqNet,
    build_net,
    default_config,
)
from scalpd.models.splits import Split, chronological_split

_FLOOR = 1e-7


@dataclass
class TrainParams:
    epochs: int = 8
    batch_size: int = 64
    window_bars: int = 192
    stride_bars: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    val_fraction: float = 0.2
    embargo_bars: int = 60
    seed: int = 0
    device: str = "auto"
    # CPU threads while training (None: every core). Part of determinism: the float sums of
    # a product depend on how it is split between threads.
    threads: int | None = None
    keep_best: bool = True  # keep the epoch with the lowest validation loss
    label: LabelParams = field(default_factory=LabelParams)  # what y means (horizon: purge)
    net: dict[str, Any] = field(default_factory=dict)  # architecture settings (nets.py)
    members: tuple[str, ...] = ("tcn", "transformer", "lstm")  # ensemble only
    member_net: dict[str, dict[str, Any]] = field(default_factory=dict)  # ensemble: per kind
    ensemble_temperature: float = 0.05
    ensemble_halflife_labels: float = 500.0
    name: str | None = None  # artifact name (default: the model name)
    version: str | None = None  # artifact version (default: UTC time + content hash)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        raw = dict(raw)
        if isinstance(raw.get("label"), dict):
            raw["label"] = LabelParams(**raw["label"])
        if "members" in raw:
            raw["members"] = tuple(raw["members"])
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["members"] = list(self.members)
        return out


@dataclass
class _Data:
    x: np.ndarray  # float32 [T, F], NaN kept (the network imputes)
    y: np.ndarray  # int64 [T, 2], -1 where invalid
    times: np.ndarray  # int64 [T]
    starts: np.ndarray  # bool [T]: segment starts
    split: Split
    label_ok: np.ndarray  # bool [T]


def data_hash(X: np.ndarray, y: np.ndarray, mask: np.ndarray, times: np.ndarray) -> str:
    """sha256 over the training inputs as given (dtype and shape included)."""
    h = hashlib.sha256()
    for a in (X, y, mask, times):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _check_inputs(
    X: np.ndarray, y: np.ndarray, mask: np.ndarray, names: list[str], times: np.ndarray | None
) -> None:
    if X.ndim != 2:
        raise ModelError(f"X must be [bars, features], got shape {list(X.shape)}")
    if X.shape[1] != len(names):
        raise ModelError(f"X has {X.shape[1]} features but {len(names)} names were given")
    if y.shape != (len(X), 2):
        raise ModelError(f"y must be [bars, 2] (long, short), got {list(y.shape)}")
    if mask.shape != (len(X),):
        raise ModelError(f"mask must be [bars], got {list(mask.shape)}")
    if times is not None and times.shape != (len(X),):
        raise ModelError(f"open_time_ms must be [bars], got {list(times.shape)}")
    if len(set(names)) != len(names):
        raise ModelError("feature names are not unique")


def _windows(
    starts: np.ndarray, target: np.ndarray, length: int, stride: int, warmup: int
) -> np.ndarray:
    """Start rows of windows of `length` bars inside one segment with a scored position."""
    n = len(starts)
    bounds = [*np.flatnonzero(starts), n]
    out = []
    for lo, hi in itertools.pairwise(bounds):
        if hi - lo < length:
            continue  # a segment shorter than a window is not trained on
        begins = list(range(lo, hi - length + 1, stride))
        if begins[-1] != hi - length:
            begins.append(hi - length)
        out += [s for s in begins if target[s + warmup : s + length].any()]
    return np.asarray(out, dtype=np.int64)


def _series_logits(net: SeqNet | EnsembleNet, data: _Data) -> np.ndarray:
    """Eager logits of the whole series, restarted at each segment ([T, 2, 3]; ensemble
    [T, M, 2, 3]): what streaming gives."""
    pred = make_predictor(net, "eager")
    return pred._series_logits(data.x, data.times)[0]


def _log_loss(logits: np.ndarray, y: np.ndarray, rows: np.ndarray) -> float:
    """Mean over rows and both sides of -log softmax(logits)[y]."""
    if not rows.any():
        return math.nan
    lg = logits[rows].astype(np.float64)
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    picked = np.take_along_axis(lg, y[rows][..., None], axis=-1)[..., 0]
    return float((lse - picked).mean())


def _base_rate_loss(prior: np.ndarray, y: np.ndarray, rows: np.ndarray) -> float:
    if not rows.any():
        return math.nan
    p = prior[(0, 1), y[rows]]
    return float(-np.log(np.maximum(p, _FLOOR)).mean())


def _accuracy(probs_or_logits: np.ndarray, y: np.ndarray, rows: np.ndarray) -> float:
    if not rows.any():
        return math.nan
    return float((probs_or_logits[rows].argmax(-1) == y[rows]).mean())


def _fit(net: SeqNet, data: _Data, params: TrainParams, device: torch.device) -> dict[str, Any]:
    """Train `net` in place; returns its training record."""
    torch.manual_seed(params.seed)  # again: dropout draws from here
    rng = np.random.default_rng(params.seed)
    bad = ~np.isfinite(data.x).all(axis=1)
    # Training windows start from a zero state anyway (their warm-up is positional); the
    # validation loss is measured on what the predictor would serve.
    train_target = (
        data.label_ok & data.split.train & valid_outputs(bad, data.starts, net.context_bars, 1)
    )
    val_target = (
        data.label_ok
        & data.split.validation
        & valid_outputs(bad, data.starts, net.context_bars, net.warmup_bars)
    )
    length = max(params.window_bars, net.warmup_bars + 1)
    warm = net.warmup_bars
    starts = _windows(data.starts, train_target, length, params.stride_bars, warm)
    if not len(starts):
        raise ModelError(
            f"no training window: need a gap-free stretch of {length} bars with valid labels "
            "in the training period"
        )
    net.norm.fit(data.x[data.split.train])
    net.to(device)
    x_all = torch.from_numpy(data.x)
    y_all = torch.from_numpy(data.y)
    t_all = torch.from_numpy(train_target)
    offsets = torch.arange(length)
    score_pos = offsets >= warm
    opt = torch.optim.AdamW(net.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    scaler_needed = autocast_dtype(device) == torch.float16
    scaler = torch.amp.GradScaler(device.type) if scaler_needed else None
    curve, val_curve = [], []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    samples, seconds = 0, 0.0
    for _epoch in range(params.epochs):
        t0 = time.perf_counter()
        net.train()
        order = rng.permutation(len(starts))
        total, count = 0.0, 0
        for lo in range(0, len(order), params.batch_size):
            rows = torch.from_numpy(starts[order[lo : lo + params.batch_size]])[:, None] + offsets
            xb, yb = x_all[rows].to(device), y_all[rows].to(device)
            mb = (t_all[rows] & score_pos).to(device)
            with autocast(device):
                logits = net(xb)
            loss_all = F.cross_entropy(
                logits.float().reshape(-1, 3), yb.clamp_min(0).reshape(-1), reduction="none"
            ).view(*mb.shape, 2)
            n_scored = mb.sum()
            loss = (loss_all * mb[..., None]).sum() / (2 * n_scored.clamp_min(1))
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), params.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            total += float(loss.detach()) * int(n_scored)
            count += int(n_scored)
            samples += int(n_scored)
        curve.append(total / max(count, 1))
        seconds += time.perf_counter() - t0  # training speed: without the validation pass
        net.cpu()
        val_loss = _log_loss(_series_logits(net, data), data.y, val_target)
        net.to(device)
        val_curve.append(val_loss)
        if params.keep_best and math.isfinite(val_loss) and (best is None or val_loss < best[0]):
            best = (val_loss, {k: v.detach().clone() for k, v in net.state_dict().items()})
    net.cpu()
    if best is not None:
        net.load_state_dict(best[1])
    net.eval()
    return {
        "train_loss_curve": curve,
        "val_loss_curve": val_curve,
        "best_epoch": int(np.nanargmin(val_curve)) + 1 if params.keep_best and best else None,
        "train_windows": len(starts),
        "train_seconds": round(seconds, 3),
        "train_samples": samples,
        "train_samples_per_s": round(samples / seconds, 1) if seconds > 0 else None,
        "train_targets": int(train_target.sum()),
        "val_targets": int(val_target.sum()),
    }


def _metrics(
    logits: np.ndarray, data: _Data, ctx_ok: np.ndarray, prior: np.ndarray
) -> dict[str, Any]:
    train_rows = data.label_ok & data.split.train & ctx_ok
    val_rows = data.label_ok & data.split.validation & ctx_ok
    majority = prior.argmax(-1)  # [2]
    out: dict[str, Any] = {
        "train_loss": _log_loss(logits, data.y, train_rows),
        "val_loss": _log_loss(logits, data.y, val_rows),
        "base_rate_train_loss": _base_rate_loss(prior, data.y, train_rows),
        "base_rate_val_loss": _base_rate_loss(prior, data.y, val_rows),
        "train_accuracy": _accuracy(logits, data.y, train_rows),
        "val_accuracy": _accuracy(logits, data.y, val_rows),
        "base_rate_val_accuracy": float((data.y[val_rows] == majority).mean())
        if val_rows.any()
        else math.nan,
        "class_prior_train": prior.tolist(),
        "val_rows": int(val_rows.sum()),
        "train_rows": int(train_rows.sum()),
    }
    return out


def _prepare(
    X: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    times: np.ndarray,
    params: TrainParams,
) -> _Data:
    x = np.ascontiguousarray(X, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        x[~np.isfinite(x)] = np.nan  # inf is as invalid as NaN
    label_ok = mask & (y >= 0).all(axis=1)
    split = chronological_split(
        times, params.label.horizon_bars, params.val_fraction, params.embargo_bars
    )
    return _Data(
        x=x,
        y=np.where(label_ok[:, None], y, -1).astype(np.int64),
        times=times,
        starts=segment_starts(len(x), times),
        split=split,
        label_ok=label_ok,
    )


def train(
    model_name: str,
    X: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    feature_names: list[str],
    feature_set_id: str,
    params: TrainParams | dict[str, Any] | None,
    out_dir: Path | str,
    *,
    open_time_ms: np.ndarray | None = None,
) -> ModelArtifact:
    """Train `model_name` ("tcn" | "transformer" | "lstm" | "ensemble") and save it under
    out_dir/<name>/<version>/. X [T, F] features (NaN = invalid), y [T, 2] triple-barrier
    classes (long, short; labels.py), mask [T] valid labels, open_time_ms [T] bar open times
    (strongly advised: without them rows are taken as consecutive minutes from 0, so gaps are
    not seen and the recorded data range is meaningless)."""
    if model_name not in MODEL_NAMES:
        raise ModelError(f"unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)}")
    p = params if isinstance(params, TrainParams) else TrainParams.from_dict(params or {})
    X, y, mask = np.asarray(X), np.asarray(y), np.asarray(mask, dtype=bool)
    times = (
        np.arange(len(X), dtype=np.int64) * BAR_INTERVAL_MS
        if open_time_ms is None
        else np.asarray(open_time_ms, dtype=np.int64)
    )
    _check_inputs(X, y, mask, feature_names, times)
    if len(X) == 0:
        raise ModelError("no training data")
    device = select_device(p.device)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    data = _prepare(X, y, mask, times, p)
    n_features = X.shape[1]
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    set_threads(p.threads or os.cpu_count() or 1)
    try:
        record: dict[str, Any]
        extra: dict[str, Any] = {}
        if model_name == "ensemble":
            net, record, extra = _train_ensemble(data, n_features, p, device)
        else:
            torch.manual_seed(p.seed)  # the initial weights are part of what the seed fixes
            net = build_net(default_config(model_name, n_features, **p.net))
            assert isinstance(net, SeqNet)
            record = _fit(net, data, p, device)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        set_threads(threads_before)
    prior = class_frequencies(data.y, data.label_ok & data.split.train)
    bad = ~np.isfinite(data.x).all(axis=1)
    ctx_ok = valid_outputs(bad, data.starts, net.context_bars, net.warmup_bars)
    if isinstance(net, EnsembleNet):
        logits = np.log(np.maximum(extra.pop("_val_probs"), _FLOOR))
    else:
        logits = _series_logits(net, data)
    metrics = {**_metrics(logits, data, ctx_ok, prior), **record}
    metrics["device"] = str(device)
    metrics["val_start_ms"], metrics["val_end_ms"] = data.split.val_start_ms, data.split.val_end_ms
    train_rows = np.flatnonzero(data.split.train)
    return save_artifact(
        net,
        root=Path(out_dir),
        name=p.name or model_name,
        version=p.version,
        feature_names=list(feature_names),
        feature_set_id=feature_set_id,
        train_range_ms=(int(times[train_rows].min()), int(times[train_rows].max()))
        if len(train_rows)
        else (int(times.min()), int(times.max())),
        data_range_ms=(int(times.min()), int(times.max())),
        data_hash=data_hash(X, y, mask, times),
        metrics=metrics,
        label=asdict(p.label),
        train_params=p.to_dict(),
        extra=extra,
    )


def _train_ensemble(
    data: _Data, n_features: int, p: TrainParams, device: torch.device
) -> tuple[EnsembleNet, dict[str, Any], dict[str, Any]]:
    """Train each member alike, then start the weights from their validation-period record:
    the members' predictions over the validation period are mixed with weights that follow
    their log-loss on labels as they mature (causal), and the weighter's state at its end is
    what the saved ensemble starts from."""
    members, records = [], {}
    for i, kind in enumerate(p.members):
        if kind not in NET_CLASSES:
            raise ModelError(f"unknown ensemble member {kind!r}; choose from {list(NET_CLASSES)}")
        torch.manual_seed(p.seed + i)
        net = build_net(default_config(kind, n_features, **p.member_net.get(kind, {})))
        assert isinstance(net, SeqNet)
        records[kind] = _fit(net, data, p, device)
        members.append(net)
    ens = EnsembleNet(members)
    weighter = EnsembleWeighter(
        ens.n_members,
        halflife_labels=p.ensemble_halflife_labels,
        temperature=p.ensemble_temperature,
    )
    pred = make_predictor(ens, "eager", weighter=weighter, horizon_bars=p.label.horizon_bars)
    member_logits, valid = pred._series_logits(data.x, data.times)
    member_probs = np.exp(member_logits - member_logits.max(-1, keepdims=True))
    member_probs /= member_probs.sum(-1, keepdims=True)
    # Mixed probabilities everywhere; the weights only learn from validation-period labels.
    val_labels = data.label_ok & data.split.validation
    weights = weight_series(
        weighter,
        member_probs,
        valid,
        data.y,
        val_labels,
        np.zeros(len(data.x), dtype=np.int64),
        p.label.horizon_bars,
    )
    probs = (member_probs * weights[:, :, None, None]).sum(axis=1)
    val_rows = val_labels & valid
    member_val = [_log_loss(member_logits[:, m], data.y, val_rows) for m in range(ens.n_members)]
    record = {
        "members": list(p.members),
        "member_val_loss": member_val,
        "member_records": records,
        "final_weights": weighter.weights(0).tolist(),
        "train_samples_per_s": round(
            sum(r["train_samples"] for r in records.values())
            / max(sum(r["train_seconds"] for r in records.values()), 1e-9),
            1,
        ),
    }
    extra = {"ensemble_weighter": weighter.state(), "_val_probs": probs}
    return ens, record, extra
