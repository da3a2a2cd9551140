"""Model artifacts: models/<name>/<version>/ with weights, metadata and a model card.

Files:
- weights.pt: the state dict (torch.save; loaded with weights_only=True, so loading never runs
  code from the file). The normalisation fitted on the training window is in it (buffers).
- model.json: everything else, and the sha256 of weights.pt: architecture config, the exact
  feature list and feature-set id, the normalisation state (again, for people and to cross-
  check), the label definition, training data range and hash, training parameters, metrics,
  and (ensemble) the weighter's state.
- MODEL_CARD.md: generated from model.json for people.

A version directory is written under a temporary name and renamed when complete, and never
overwritten. Loading checks the checksum and the config against the weights: a corrupt or
altered file is a one-line ModelError, as is a feature list or feature-set id that differs
from the caller's.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from scalpd.models.backends import OnnxGraphs, Predictor, export_onnx_bytes, make_predictor
from scalpd.models.ensemble import EnsembleWeighter
from scalpd.models.errors import ModelError
from scalpd.models.labels import CLASS_NAMES, SIDE_NAMES
from scalpd.models.nets import EnsembleNet, SeqNet, StreamingNet, build_net

FORMAT = "scalpd-model"
FORMAT_VERSION = 1
WEIGHTS = "weights.pt"
META = "model.json"
CARD = "MODEL_CARD.md"


@dataclass
class ModelArtifact:
    path: Path
    name: str
    version: str
    kind: str
    net: StreamingNet
    feature_names: list[str]
    feature_set_id: str
    meta: dict[str, Any] = field(repr=False)
    _onnx: OnnxGraphs | None = field(default=None, repr=False)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.meta["metrics"]

    @property
    def horizon_bars(self) -> int:
        return int(self.meta["label"]["horizon_bars"])

    def weighter(self) -> EnsembleWeighter | None:
        state = self.meta.get("extra", {}).get("ensemble_weighter")
        return EnsembleWeighter.from_state(state) if state else None

    def predictor(self, backend: str = "eager", **kw: Any) -> Predictor:
        """A predictor on `backend` ("eager" | "onnx" | "int8"); see backends.make_predictor.
        Each predictor has its own stream state; the ONNX export is done once per artifact."""
        kw.setdefault("weighter", self.weighter())
        kw.setdefault("horizon_bars", self.horizon_bars)
        if backend == "onnx" and "onnx_graphs" not in kw:
            if self._onnx is None:
                self._onnx = export_onnx_bytes(self.net)
            kw["onnx_graphs"] = self._onnx
        return make_predictor(self.net, backend, **kw)

    def predictors(self, backend: str, symbols: Sequence[str], **kw: Any) -> dict[str, Predictor]:
        """One predictor per symbol, each with its own stream (and ensemble weights), all on
        one runner: one copy of the weights (one ONNX session), so that the second and third
        symbols' steps of a minute find them in the CPU's caches where the first left them.
        Timed in `scalpd bench decision_latency` (ensemble, ONNX): the second and third
        symbols' strategy steps took ~470 us each with a session each, as the first did, and
        ~300 us sharing one."""
        out: dict[str, Predictor] = {}
        for symbol in symbols:
            shared = next(iter(out.values())).runner if out else None
            out[symbol] = self.predictor(backend, runner=shared, **kw)
        return out

    def check_features(self, feature_names: list[str], feature_set_id: str) -> None:
        check_features(self.meta, feature_names, feature_set_id)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _normalisers(net: StreamingNet) -> list[dict[str, Any]]:
    members = list(net.members) if isinstance(net, EnsembleNet) else [net]
    return [
        {"mean": m.norm.mean.tolist(), "std": m.norm.std.tolist(), "clip": m.norm.clip}
        for m in members
        if isinstance(m, SeqNet)
    ]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in model.json")


def _clean(obj: Any) -> Any:
    """NaN and infinity as null (JSON has neither)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def save_artifact(
    net: StreamingNet,
    *,
    root: Path,
    name: str,
    version: str | None,
    feature_names: list[str],
    feature_set_id: str,
    train_range_ms: tuple[int, int],
    data_range_ms: tuple[int, int],
    data_hash: str,
    metrics: dict[str, Any],
    label: dict[str, Any],
    train_params: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> ModelArtifact:
    """Write the artifact under root/name/version and return it (loaded from disk)."""
    if not name or "/" in name or name.startswith("."):
        raise ModelError(f"bad model name {name!r}")
    if len(feature_names) != net.n_features:
        raise ModelError(f"{len(feature_names)} feature names for a {net.n_features}-wide model")
    now = datetime.now(UTC)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if version is None:
        digest = hashlib.sha256(data_hash.encode())
        for key in sorted(state):
            digest.update(key.encode() + state[key].numpy().tobytes())
        version = f"{now:%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:8]}"
    final = root / name / version
    if final.exists():
        raise ModelError(f"{final} already exists; artifacts are never overwritten")
    tmp = root / name / f".{version}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        torch.save(state, tmp / WEIGHTS)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name,
            "version": version,
            "kind": net.kind,
            "created_utc": now.isoformat(timespec="seconds"),
            "torch_version": torch.__version__,
            "config": net.config(),
            "context_bars": net.context_bars,
            "warmup_bars": net.warmup_bars,
            "parameters": sum(p.numel() for p in net.parameters()),
            "features": {
                "feature_set_id": feature_set_id,
                "count": len(feature_names),
                "names": list(feature_names),
            },
            "normalisation": _normalisers(net),
            "label": dict(label),
            "outputs": {"sides": list(SIDE_NAMES), "classes": list(CLASS_NAMES)},
            "training": {
                "train_range_ms": list(train_range_ms),
                "data_range_ms": list(data_range_ms),
                "data_hash_sha256": data_hash,
                "params": train_params,
            },
            "metrics": metrics,
            "extra": extra or {},
            "files": {WEIGHTS: _sha256(tmp / WEIGHTS)},
        }
        raw = orjson.dumps(
            _clean(meta),
            default=_json_default,
            option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
        )
        (tmp / META).write_bytes(raw)
        (tmp / CARD).write_text(model_card(orjson.loads(raw)))
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_artifact(final)


def check_features(meta: dict[str, Any], feature_names: list[str], feature_set_id: str) -> None:
    """ModelError (one line) unless the caller's features are exactly the model's."""
    want = meta["features"]
    label = f"model {meta['name']}/{meta['version']}"
    if feature_set_id != want["feature_set_id"]:
        raise ModelError(
            f"{label} was trained on feature set {want['feature_set_id']!r}, not {feature_set_id!r}"
        )
    names = list(feature_names)
    if names != want["names"]:
        diff = next(
            (i for i, (a, b) in enumerate(zip(names, want["names"], strict=False)) if a != b),
            min(len(names), len(want["names"])),
        )
        theirs = want["names"][diff] if diff < len(want["names"]) else "(end)"
        ours = names[diff] if diff < len(names) else "(end)"
        raise ModelError(
            f"{label} expects {len(want['names'])} features, got {len(names)}; first "
            f"difference at column {diff}: model {theirs!r}, caller {ours!r}"
        )


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META
    if not meta_path.is_file():
        raise ModelError(f"{path} is not a model artifact (no {META})")
    try:
        meta = orjson.loads(meta_path.read_bytes())
    except (orjson.JSONDecodeError, OSError) as exc:
        raise ModelError(f"{meta_path} is corrupt: {exc}".splitlines()[0]) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{meta_path} is not a scalpd model file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{meta_path} has format version {meta.get('format_version')}, "
            f"this scalpd reads {FORMAT_VERSION}"
        )
    return meta


def latest_version(root: Path, name: str) -> Path:
    """The newest complete version directory of model `name` under root."""
    versions = sorted(
        p for p in (root / name).glob("*") if p.is_dir() and not p.name.startswith(".")
    )
    if not versions:
        raise ModelError(f"no versions of model {name!r} under {root}")
    return versions[-1]


def load_artifact(
    path: Path | str,
    feature_names: list[str] | None = None,
    feature_set_id: str | None = None,
) -> ModelArtifact:
    """Load models/<name>/<version>/. With feature_names and feature_set_id, they must match
    the model's exactly (ModelError otherwise)."""
    path = Path(path)
    meta = _read_meta(path)
    try:
        if feature_names is not None or feature_set_id is not None:
            check_features(meta, list(feature_names or []), feature_set_id or "")
        weights = path / WEIGHTS
        if not weights.is_file():
            raise ModelError(f"{path} lacks {WEIGHTS}")
        if _sha256(weights) != meta["files"][WEIGHTS]:
            raise ModelError(f"{weights} does not match its checksum in {META} (corrupt)")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types on a damaged file
            raise ModelError(f"{weights} cannot be read: {exc}".splitlines()[0]) from None
        net = build_net(meta["config"])
        want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        have = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) else {}
        if want != have:
            wrong = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
            raise ModelError(
                f"{weights} does not fit the architecture in {META}: {len(wrong)} tensor(s) "
                f"missing, unexpected or of another shape (first: {wrong[0]})"
            )
        net.load_state_dict(state, strict=True)
        if _normalisers(net) != meta["normalisation"]:
            raise ModelError(f"normalisation in {META} disagrees with {WEIGHTS} (corrupt)")
        return ModelArtifact(
            path=path,
            name=meta["name"],
            version=meta["version"],
            kind=meta["kind"],
            net=net.eval(),
            feature_names=list(meta["features"]["names"]),
            feature_set_id=meta["features"]["feature_set_id"],
            meta=meta,
        )
    except KeyError as exc:
        raise ModelError(f"{path / META} lacks the field {exc}") from None


# -- model card ------------------------------------------------------------------------------


def _utc(ms: int | None) -> str:
    if ms is None:
        return "?"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _num(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def model_card(meta: dict[str, Any]) -> str:
    """MODEL_CARD.md from model.json's content."""
    m, tr, lab, feats = meta["metrics"], meta["training"], meta["label"], meta["features"]
    cfg = meta["config"]
    arch = {k: v for k, v in cfg.items() if k not in ("kind", "members")}
    lines = [
        f"# Model card: {meta['name']} / {meta['version']}",
        "",
        "## Architecture",
        "",
        f"- kind: **{meta['kind']}**, {meta['parameters']:,} parameters, "
        f"context {meta['context_bars']} bars, warm-up {meta['warmup_bars']} bars",
        f"- config: `{orjson.dumps(arch).decode()}`",
    ]
    for member in cfg.get("members", []):
        lines.append(f"- member: `{orjson.dumps(member).decode()}`")
    lines += [
        "- output: logits for sides (long, short) x classes (take_profit, stop_loss, timeout)",
        f"- created {meta['created_utc']} with torch {meta['torch_version']}",
        "",
        "## Training data",
        "",
        f"- data: {_utc(tr['data_range_ms'][0])} to {_utc(tr['data_range_ms'][1])} "
        f"(sha256 {tr['data_hash_sha256'][:16]}...)",
        f"- training period: {_utc(tr['train_range_ms'][0])} to {_utc(tr['train_range_ms'][1])}",
        f"- validation period: {_utc(m.get('val_start_ms'))} to {_utc(m.get('val_end_ms'))} "
        f"(purged by the label horizon, embargo {tr['params'].get('embargo_bars')} bars)",
        f"- features: {feats['count']}, feature set `{feats['feature_set_id']}`: "
        + ", ".join(f"`{n}`" for n in feats["names"]),
        f"- labels: triple barrier, take-profit {lab['take_profit_bps']} bps, stop-loss "
        f"{lab['stop_loss_bps']} bps, time limit {lab['horizon_bars']} bars; entry at the close "
        "of the bar; a bar touching both barriers counts as a stop-loss",
        f"- labelled rows scored: {m.get('train_rows')} training, {m.get('val_rows')} validation",
        "",
        "## Performance (log-loss in nats, mean over both sides; lower is better)",
        "",
        "| period | model | base rate | model accuracy | majority-class accuracy |",
        "|---|---|---|---|---|",
        f"| training | {_num(m.get('train_loss'))} | {_num(m.get('base_rate_train_loss'))} "
        f"| {_num(m.get('train_accuracy'), 3)} | |",
        f"| validation | {_num(m.get('val_loss'))} | {_num(m.get('base_rate_val_loss'))} "
        f"| {_num(m.get('val_accuracy'), 3)} | {_num(m.get('base_rate_val_accuracy'), 3)} |",
        "",
        "Base rate: the training period's class frequencies predicted at every bar. A model "
        "that does not beat it on the validation period has learnt nothing usable.",
        "",
    ]
    curve = m.get("train_loss_curve")
    if curve:
        lines += [
            f"Training loss by epoch: {', '.join(_num(v) for v in curve)}",
            f"Validation loss by epoch: {', '.join(_num(v) for v in m.get('val_loss_curve', []))}",
            "",
        ]
    if m.get("member_val_loss"):
        pairs = zip(m["members"], m["member_val_loss"], m.get("final_weights", []), strict=False)
        lines += [
            "Ensemble members on the validation period (log-loss, final weight): "
            + ", ".join(f"{k} {_num(v)} ({_num(w, 3)})" for k, v, w in pairs),
            "",
        ]
    lines += [
        "## Known limitations",
        "",
        "- Trained and validated on one period; markets change, and one validation period "
        "says little about the next. The log-loss is not a trading result: no fees, spread, "
        "slippage or position sizing are involved.",
        "- Labels assume entry at the bar's close; replay fills at the next bar's open.",
        "- Invalid (NaN) features are imputed with the training mean and every output whose "
        f"context ({meta['context_bars']} bars) holds one is withheld; for an LSTM that "
        "context is a set horizon, not a hard limit of its memory.",
        "- Normalisation is fixed at the training window's mean and std; a regime far outside "
        "it is clipped at the normaliser's limit.",
        "- INT8 and ONNX outputs differ slightly from eager; only eager is bit-reproducible.",
        "",
    ]
    return "\n".join(lines)
