"""`scalpd data ...`: list, verify, find gaps in and import into the versioned bar store.

Handlers return an exit code: 0 fine, 1 problems found. Bad input raises DataError, which the
main CLI prints as one `scalpd: error: ...` line.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from scalpd.config.settings import DataSettings
from scalpd.data.parquet import DataError
from scalpd.data.store import BarStore, DatasetInfo, symbol_dir

# The setting's default (data.market_root), so the two never disagree.
DEFAULT_ROOT: Path = DataSettings.model_fields["market_root"].default
EXIT_PROBLEMS = 1


def add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `data` and its sub-commands on the main parser's subparsers."""
    data = subparsers.add_parser("data", help="the versioned market-data store")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    p = sub.add_parser("list", help="datasets in the store, with their version ids")
    _common(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("verify", help="check files against their manifests (sha256, rows, order)")
    _common(p)
    _selection(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("gaps", help="missing bars in datasets")
    _common(p)
    _selection(p)
    p.set_defaults(func=cmd_gaps)

    p = sub.add_parser("import", help="import Binance archive kline files (.csv or .zip)")
    p.add_argument("paths", nargs="+", metavar="PATH", type=Path)
    _common(p)
    p.add_argument("--exchange", default="binance", help="exchange name (default: binance)")
    p.add_argument("--symbol", help="symbol of every file (default: from each file name)")
    p.set_defaults(func=cmd_import)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help=f"store directory (default: {DEFAULT_ROOT})"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exchange", help="only this exchange")
    p.add_argument("--symbol", help="only this symbol (BTCUSDT or BTC/USDT)")
    p.add_argument("--timeframe", help="only this timeframe (1m, 5m, 1h...)")


def _selected(store: BarStore, args: argparse.Namespace) -> list[DatasetInfo]:
    """Datasets matching --exchange/--symbol/--timeframe; an error when none does."""
    want_symbol = symbol_dir(args.symbol) if args.symbol else None
    found = [
        d
        for d in store.datasets()
        if (args.exchange is None or d.exchange == args.exchange)
        and (want_symbol is None or d.symbol.replace("/", "") == want_symbol)
        and (args.timeframe is None or d.timeframe == args.timeframe)
    ]
    if not found:
        raise DataError(f"no matching dataset under {store.root}")
    return found


def _name(d: DatasetInfo) -> str:
    return f"{d.exchange}/{d.symbol.replace('/', '')}/{d.timeframe}"


def _utc(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")


def cmd_list(args: argparse.Namespace) -> int:
    infos = BarStore(args.root).datasets()
    if args.json:
        _print_json({"root": str(args.root), "datasets": [_info_json(d) for d in infos]})
        return 0
    if not infos:
        print(f"no datasets under {args.root}")
    for d in infos:
        print(
            f"{_name(d):28} {d.rows:>12,} rows  {_utc(d.first_open_time_ms)} .. "
            f"{_utc(d.last_open_time_ms)}  {d.files} file(s)  version {d.version[:12]}"
        )
    return 0


def _info_json(d: DatasetInfo) -> dict[str, Any]:
    return {
        "dataset": _name(d),
        "exchange": d.exchange,
        "symbol": d.symbol,
        "timeframe": d.timeframe,
        "files": d.files,
        "rows": d.rows,
        "first_open_time_ms": d.first_open_time_ms,
        "last_open_time_ms": d.last_open_time_ms,
        "version": d.version,
    }


def cmd_verify(args: argparse.Namespace) -> int:
    store = BarStore(args.root)
    results = []
    for d in _selected(store, args):
        problems = store.verify(d.exchange, d.symbol, d.timeframe)
        results.append((d, problems))
    ok = not any(problems for _, problems in results)
    if args.json:
        _print_json(
            {
                "ok": ok,
                "datasets": [
                    {"dataset": _name(d), "version": d.version, "problems": problems}
                    for d, problems in results
                ],
            }
        )
    else:
        for d, problems in results:
            status = "ok" if not problems else f"{len(problems)} problem(s)"
            print(f"{_name(d):28} version {d.version[:12]}  {status}")
            for problem in problems:
                print(f"  {problem}")
    if not ok:
        count = sum(len(p) for _, p in results)
        print(f"scalpd: error: verify found {count} problem(s)", file=sys.stderr)
    return 0 if ok else EXIT_PROBLEMS


def cmd_gaps(args: argparse.Namespace) -> int:
    store = BarStore(args.root)
    out = []
    for d in _selected(store, args):
        gaps = store.gaps(d.exchange, d.symbol, d.timeframe)
        out.append((d, gaps))
    if args.json:
        _print_json(
            {
                "datasets": [
                    {
                        "dataset": _name(d),
                        "gaps": len(gaps),
                        "missing_bars": sum(g.missing_bars for g in gaps),
                        "list": [
                            {
                                "last_open_time_ms": g.last_open_time_ms,
                                "next_open_time_ms": g.next_open_time_ms,
                                "missing_bars": g.missing_bars,
                            }
                            for g in gaps
                        ],
                    }
                    for d, gaps in out
                ]
            }
        )
        return 0
    for d, gaps in out:
        missing = sum(g.missing_bars for g in gaps)
        print(f"{_name(d)}: {len(gaps)} gap(s), {missing:,} missing bar(s)")
        for g in gaps:
            print(
                f"  {_utc(g.last_open_time_ms)} -> {_utc(g.next_open_time_ms)}  "
                f"{g.missing_bars:,} missing"
            )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from scalpd.data.archive import import_archive

    report = import_archive(args.paths, BarStore(args.root), args.exchange, args.symbol)
    if args.json:
        _print_json(
            {
                "files": report.files,
                "rows_read": report.rows_read,
                "duplicates_in_input": report.duplicates_in_input,
                "rows_added": report.rows_added,
                "quarantined": report.quarantined,
                "conflicts": report.conflicts,
                "writes": [
                    {
                        "dataset": w.dataset,
                        "rows_added": w.rows_added,
                        "rows_unchanged": w.rows_unchanged,
                        "quarantined": w.quarantined,
                        "conflicts": w.conflicts,
                        "files_written": w.files_written,
                        "version": w.version,
                        "quarantine_path": w.quarantine_path,
                    }
                    for w in report.writes
                ],
            }
        )
        return 0
    print(f"read {report.rows_read:,} rows from {len(report.files)} file(s)")
    for w in report.writes:
        line = (
            f"{w.dataset}: +{w.rows_added:,} rows, {w.rows_unchanged:,} already stored, "
            f"version {w.version[:12] or '-'}"
        )
        if w.quarantined or w.conflicts:
            line += (
                f"; quarantined {w.quarantined:,} bad row(s) and {w.conflicts:,} conflict(s) "
                f"in {w.quarantine_path}"
            )
        print(line)
    return 0
