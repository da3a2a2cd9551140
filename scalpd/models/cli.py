"""`scalpd train`: fit a model on Parquet bar files and save its artifact.

Wire-up (scalpd/cli.py): `from scalpd.models.cli import add_train_command` and
`add_train_command(sub)` in build_parser. The handler prints one line (the artifact path and
its validation loss beside the base rate) and returns an exit code; bad input is one
`scalpd: error: ...` line on stderr and exit 1 (2 for bad usage).

Features come from `features_fn(bars) -> (X, names, feature_set_id)`, by default the
stand-in set in basic_features.py until the feature engine lands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scalpd.data.bars import ARRAY_FIELDS, BarColumns, validate
from scalpd.data.parquet import DataError, read_parquet
from scalpd.models.basic_features import basic_features
from scalpd.models.device import DEVICE_CHOICES
from scalpd.models.errors import ModelError
from scalpd.models.labels import LabelParams, label_bars
from scalpd.models.nets import MODEL_NAMES
from scalpd.utc import parse_utc_ms

FeaturesFn = Callable[[BarColumns], tuple[np.ndarray, list[str], str]]
EXIT_FAILED, EXIT_USAGE = 1, 2


def _date_ms(text: str) -> int:
    try:
        return parse_utc_ms(text)
    except ValueError as exc:
        raise ModelError(str(exc)) from None


def add_train_command(
    subparsers: argparse._SubParsersAction, features_fn: FeaturesFn = basic_features
) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a model on bar files and save its artifact")
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument("--data", nargs="+", required=True, metavar="PATH", type=Path,
                   help="Parquet files of 1m bars (one symbol or several)")  # fmt: skip
    p.add_argument("--from", dest="start", metavar="DATE", help="first bar, UTC (YYYY-MM-DD)")
    p.add_argument("--to", dest="end", metavar="DATE", help="end, exclusive, UTC (YYYY-MM-DD)")
    p.add_argument("--out", type=Path, default=Path("models"), help="artifact root (models/)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="auto prefers XPU, then CUDA, then CPU")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--name", help="artifact name (default: the model name)")
    p.add_argument("--take-profit-bps", type=float, default=LabelParams.take_profit_bps)
    p.add_argument("--stop-loss-bps", type=float, default=LabelParams.stop_loss_bps)
    p.add_argument("--horizon-bars", type=int, default=LabelParams.horizon_bars)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.set_defaults(func=lambda args: cmd_train(args, features_fn))
    return p


def load_training_data(
    paths: list[Path],
    start_ms: int | None,
    end_ms: int | None,
    labels: LabelParams,
    features_fn: FeaturesFn = basic_features,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], str]:
    """(X, y, mask, open_time_ms, names, feature_set_id): files of the same symbol merged in
    time, features and labels per symbol (state never spans symbols or gaps), the symbols'
    rows then stacked (a change of symbol is a reset, as a gap is)."""
    by_symbol: dict[str, list[BarColumns]] = {}
    for path in paths:
        bars, quarantined = validate(read_parquet(path))
        if quarantined:
            print(f"scalpd: {path.name}: {len(quarantined)} bad row(s) left out", file=sys.stderr)
        by_symbol.setdefault(bars.symbol, []).append(bars)
    xs, ys, masks, times = [], [], [], []
    names: list[str] = []
    set_id = ""
    for symbol, parts in by_symbol.items():
        ot = np.concatenate([b.open_time for b in parts])
        order = np.argsort(ot, kind="stable")
        keep = np.ones(len(ot), dtype=bool)
        keep[1:] = np.diff(ot[order]) != 0  # the same bar in two files: keep one
        index = order[keep]
        merged = BarColumns(
            symbol, *(np.concatenate([getattr(b, f) for b in parts])[index] for f in ARRAY_FIELDS)
        )
        window = np.ones(len(merged), dtype=bool)
        if start_ms is not None:
            window &= merged.open_time >= start_ms
        if end_ms is not None:
            window &= merged.open_time < end_ms
        bars = merged.take(window)
        if len(bars) == 0:
            raise DataError(f"{symbol}: no bars in the chosen period")
        X, names_s, id_s = features_fn(bars)
        if names and (names_s != names or id_s != set_id):
            raise ModelError(f"{symbol}: the feature function gave a different feature set")
        names, set_id = names_s, id_s
        lab = label_bars(bars, labels)
        xs.append(X)
        ys.append(lab.y)
        masks.append(lab.valid)
        times.append(bars.open_time)
    return (
        np.concatenate(xs), np.concatenate(ys), np.concatenate(masks), np.concatenate(times),
        names, set_id,
    )  # fmt: skip


def cmd_train(args: argparse.Namespace, features_fn: FeaturesFn = basic_features) -> int:
    from scalpd.models.train import TrainParams, train

    try:
        labels = LabelParams(args.take_profit_bps, args.stop_loss_bps, args.horizon_bars)
        start = _date_ms(args.start) if args.start else None
        end = _date_ms(args.end) if args.end else None
        X, y, mask, times, names, set_id = load_training_data(
            args.data, start, end, labels, features_fn
        )
        params = TrainParams(
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            label=labels,
            val_fraction=args.val_fraction,
            name=args.name,
        )
        art = train(args.model, X, y, mask, names, set_id, params, args.out, open_time_ms=times)
    except ValueError as exc:
        print(f"scalpd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ModelError, DataError) as exc:
        print(f"scalpd: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    m = art.metrics

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    print(
        f"{art.path}: validation log-loss {fmt(m.get('val_loss'))} "
        f"(base rate {fmt(m.get('base_rate_val_loss'))}), "
        f"training {fmt(m.get('train_loss'))} (base rate {fmt(m.get('base_rate_train_loss'))})"
    )
    return 0
