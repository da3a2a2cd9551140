"""`scalpd`: the command line. Each subcommand is a thin shell over a package function.

Exit codes: 0 success, 1 a run failed (bad data, exchange error), 2 bad configuration or usage.
Bad input gives one line on stderr, never a traceback (SCALPD_DEBUG=1 shows it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from scalpd import __version__
from scalpd.config.settings import ConfigError, Settings, find_config, load_settings
from scalpd.utc import parse_utc_ms

EXIT_FAILED = 1
EXIT_CONFIG = 2


class CliError(Exception):
    """A usage error caught after argparse (bad date, conflicting flags)."""


def _parse_date_ms(text: str) -> int:
    try:
        return parse_utc_ms(text)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _settings(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Settings:
    over = overrides or {}
    if getattr(args, "db", None):
        over.setdefault("store", {})["path"] = args.db
    return load_settings(find_config(args.config), over)


# -- replay ----------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    import orjson

    from scalpd.logs import configure_logging
    from scalpd.replay.runner import load_input, load_stored, run_replay
    from scalpd.replay.summary import format_summary
    from scalpd.store.sqlite import Store

    over: dict[str, Any] = {}
    if args.data:
        over["data"] = {"paths": args.data}
    settings = _settings(args, over)
    configure_logging(args.log_level or "warning", settings.logging.format, sys.stderr)
    start_ms = _parse_date_ms(args.start) if args.start else None
    end_ms = _parse_date_ms(args.end) if args.end else None
    if args.stored and args.data:
        raise CliError("give --data files or --stored symbols, not both")
    if args.stored:
        inp = load_stored(settings, args.stored, start_ms, end_ms)
    else:
        inp = load_input(settings, args.symbol or None, start_ms, end_ms)
    if args.capital:
        return _replay_capital_levels(args, settings, inp)
    store = Store(settings.store.path)
    try:
        result = run_replay(settings, inp, store, baselines=not args.no_baselines)
    finally:
        store.close()
    if args.report:
        from scalpd.replay.report import render_html

        assert result.report is not None
        _write_text(Path(args.report), render_html(result.report))
    if args.json:
        sys.stdout.write(orjson.dumps({"run_id": result.run_id, **result.summary}).decode() + "\n")
    else:
        from scalpd.replay.report import format_baselines

        print(format_summary(result.summary, result.run_id, str(settings.store.path)))
        if result.report is not None:
            print(format_baselines(result.report))
    # stderr: --json keeps stdout one JSON object.
    if args.report:
        print(f"report written to {args.report}", file=sys.stderr)
    else:
        print(
            f"report: scalpd report {result.run_id} --db {settings.store.path} --out FILE.html",
            file=sys.stderr,
        )
    return 0


def _write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


# -- report ----------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    import orjson

    from scalpd.replay.report import render_html
    from scalpd.store.sqlite import Store, StoreError

    settings = _settings(args)
    path = settings.store.path
    if not path.is_file():
        raise StoreError(f"no store at {path}")
    store = Store(path)
    try:
        text = store.report_json(args.run)
        run = store.conn.execute("SELECT mode, status FROM runs WHERE id=?", (args.run,)).fetchone()
    finally:
        store.close()
    if text is None:
        if run is None:
            raise StoreError(f"no run {args.run} in {path}")
        raise StoreError(
            f"run {args.run} ({run[0]}, {run[1]}) has no report: completed replays store one"
        )
    if args.json:
        sys.stdout.write(text + "\n")
    if args.out or not args.json:
        out = Path(args.out or f"report-{args.run}.html")
        _write_text(out, render_html(orjson.loads(text)))
        print(f"report of run {args.run} written to {out}", file=sys.stderr)
    return 0


def _replay_capital_levels(args: argparse.Namespace, settings: Settings, inp: Any) -> int:
    import orjson

    from scalpd.replay.capital import format_levels, parse_levels, run_levels
    from scalpd.replay.report import render_html
    from scalpd.store.sqlite import Store

    levels = parse_levels(args.capital)
    store = Store(settings.store.path)
    try:
        results, rows = run_levels(settings, inp, store, levels, baselines=not args.no_baselines)
    finally:
        store.close()
    if args.report:
        # Every level's report holds the side-by-side table; the file shows the first level.
        _write_text(Path(args.report), render_html(results[0].report))
    if args.json:
        sys.stdout.write(orjson.dumps({"capital_levels": rows}).decode() + "\n")
    else:
        print(f"replay at {len(levels)} capital levels: {inp.label}")
        print(format_levels(rows))
        ids = ", ".join(str(row["run_id"]) for row in rows)
        print(f"stored in {settings.store.path} (runs.id = {ids}; scalpd report RUN rebuilds each)")
    return 0


# -- run (paper / live) ------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from scalpd.live.daemon import run_daemon

    settings = _settings(args)
    return run_daemon(settings, paper=args.paper, max_bars=args.max_bars)


# -- ctl (the running daemon's control socket) -------------------------------------------------


def cmd_ctl(args: argparse.Namespace) -> int:
    import orjson

    from scalpd.ops.control import ControlError, call, format_result

    operands = args.operands
    if args.action == "restore-model":
        if len(operands) != 2:
            raise CliError("ctl restore-model takes SYMBOL VERSION (e.g. BTC/USDT 3)")
    elif len(operands) > (1 if args.action == "reload-model" else 0):
        raise CliError(f"ctl {args.action} takes no PATH (only reload-model does, one)")
    if args.run is not None and args.action not in ("models", "restore-model"):
        raise CliError(f"ctl {args.action} takes no --run (only models and restore-model do)")
    if args.symbol is not None and args.action != "models":
        raise CliError(f"ctl {args.action} takes no --symbol (only models does)")
    if not args.timeout_s > 0:
        raise CliError(f"--timeout-s {args.timeout_s}: allowed > 0")
    socket_path = Path(args.socket) if args.socket else _settings(args).control.socket_path
    extra: dict[str, Any] = {}
    if args.action == "pause":
        extra["reason"] = args.reason
    elif args.action == "resume":
        extra["breaker"] = args.breaker
    elif args.action == "reload-model" and operands:
        # The daemon's working directory may not be ours.
        extra["path"] = str(Path(operands[0]).resolve())
    elif args.action == "models":
        extra.update(run=args.run, symbol=args.symbol)
    elif args.action == "restore-model":
        symbol, version = operands
        if not version.isdigit():
            raise CliError(f"VERSION {version!r}: allowed an integer >= 0 (0: the trained model)")
        extra.update(symbol=symbol, version=int(version), run=args.run)
    try:
        result = call(socket_path, args.action, timeout_s=args.timeout_s, **extra)
    except ControlError as exc:
        print(f"scalpd: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif result is None or result == {}:
        print(f"{args.action}: ok")
    elif args.action == "models":
        print(_models_table(result))
    else:
        print(format_result(result))
    return 0


def _models_table(result: dict[str, Any]) -> str:
    """`scalpd ctl models` for people: one line per version, the champion marked with *."""
    versions = result.get("versions") or []
    head = f"run {result.get('run_id')}: {len(versions)} model version(s)"
    if not result.get("online"):
        head += " (this daemon does not learn online)"
    if not versions:
        return head
    rows = [("SYMBOL", "VERSION", "PARENT", "STATE", "CREATED", "METRICS")]
    for v in versions:
        metrics = " ".join(
            f"{k}={x:.4g}" if isinstance(x, float) else f"{k}={x}"
            for k, x in (v.get("metrics") or {}).items()
        )
        rows.append(
            (
                v["symbol"],
                f"{v['version']}{'*' if v.get('champion') else ''}",
                str(v["parent"]),
                v.get("state") or "-",
                v["created"],
                metrics,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    models = ", ".join(sorted({v["model"] for v in versions}))
    now = [
        f"{symbol} now: champion v{s['champion']}"
        + (f", challenger v{s['challenger']} ({s['share']:.0%})" if s.get("challenger") else "")
        for symbol, s in (result.get("serving") or {}).items()
    ]
    legend = f"model: {models}; *: the champion, by the events stored"
    return "\n".join([head, *lines, legend, *now])


# -- tui (the terminal UI: the control socket plus the store, read-only) ----------------------


def cmd_tui(args: argparse.Namespace) -> int:
    from scalpd.ui.app import ScalpdApp
    from scalpd.ui.data import LiveSource

    if not args.interval_s > 0:
        raise CliError(f"--interval-s {args.interval_s}: allowed > 0")
    settings = _settings(args)  # --db lands in store.path
    socket_path = Path(args.socket) if args.socket else settings.control.socket_path
    ScalpdApp(LiveSource(socket_path, settings.store.path), interval_s=args.interval_s).run()
    return 0


# -- download --------------------------------------------------------------------------------


def cmd_download(args: argparse.Namespace) -> int:
    import asyncio

    import orjson

    from scalpd.data.archive import import_archive
    from scalpd.data.download import download
    from scalpd.data.store import BarStore
    from scalpd.live.exchange import make_exchange
    from scalpd.logs import configure_logging

    settings = _settings(args)
    configure_logging(args.log_level or "info", settings.logging.format, sys.stderr)
    store = BarStore(args.root)
    if args.from_archive:
        if args.symbols or args.since:
            raise CliError("--from-archive takes files only: no symbols, no --since")
        report = import_archive(args.from_archive, store)
        print(orjson.dumps(report, default=vars).decode())
        return 0
    if not args.symbols or not args.since:
        raise CliError("give SYMBOL... and --since DATE (or --from-archive PATH...)")
    since_ms = _parse_date_ms(args.since)
    until_ms = _parse_date_ms(args.until) if args.until else int(time.time() * 1000)

    async def run() -> list:
        exchange = make_exchange(settings.exchange)
        try:
            return await download(
                exchange,
                store,
                args.symbols,
                since_ms=since_ms,
                until_ms=until_ms,
                timeframe=args.timeframe,
                chunk_days=args.chunk_days,
            )
        finally:
            await exchange.close()

    for report in asyncio.run(run()):
        print(orjson.dumps(vars(report)).decode())
    return 0


# -- bench -------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from scalpd.bench import run_benchmarks

    return run_benchmarks(args.names, as_json=args.json)


# -- walkforward -----------------------------------------------------------------------------


def cmd_walkforward(args: argparse.Namespace) -> int:
    import orjson

    from scalpd.logs import configure_logging
    from scalpd.models.errors import ModelError
    from scalpd.replay.runner import load_input, load_stored
    from scalpd.replay.walkforward import format_walkforward, run_walkforward
    from scalpd.store.sqlite import Store

    over: dict[str, Any] = {"data": {"paths": args.data}} if args.data else {}
    settings = _settings(args, over)
    configure_logging(args.log_level or "warning", settings.logging.format, sys.stderr)
    if bool(args.stored) == bool(args.data):
        raise CliError("give --data files or --stored symbols (one of them)")
    start_ms = _parse_date_ms(args.start) if args.start else None
    end_ms = _parse_date_ms(args.end) if args.end else None
    wf = settings.walkforward
    # Training needs train_days before the first test window (and its features a warm-up).
    load_from = None
    if start_ms is not None:
        load_from = start_ms - round((wf.train_days + wf.warmup_days) * 86_400_000)
    if args.stored:
        inp = load_stored(settings, args.stored, load_from, end_ms)
    else:
        inp = load_input(settings, None, load_from, end_ms)
    if inp.quarantined and settings.data.on_bad_rows == "fail":
        n = sum(len(rows) for rows in inp.quarantined.values())
        raise CliError(f'{n} bad row(s) in the data; fix it or set data.on_bad_rows = "skip"')

    def progress(result: Any, n_steps: int) -> None:
        if not args.json:
            m = result.metrics
            print(
                f"# step {result.step.index}/{n_steps}: run {result.run_id}, "
                f"{m['trades']} trades, train {result.train_s:.1f} s, "
                f"replay {result.replay_s:.1f} s",
                file=sys.stderr,
            )

    store = Store(settings.store.path)
    try:
        result = run_walkforward(
            settings, inp.series, store, start_ms=start_ms, end_ms=end_ms,
            max_steps=args.steps, label=inp.label, on_step=progress,
        )  # fmt: skip
    except ModelError as exc:
        print(f"scalpd: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    if args.json:
        sys.stdout.write(orjson.dumps(result.to_json()).decode() + "\n")
    else:
        print(format_walkforward(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scalpd",
        description="Crypto scalping daemon: one engine for replay, paper and live trading.",
    )
    parser.add_argument("--version", action="version", version=f"scalpd {__version__}")
    parser.add_argument(
        "--config", help="TOML settings file (default: ./config.toml if present, or $SCALPD_CONFIG)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("replay", help="run history through the engine (a backtest)")
    p.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        help="Parquet files of 1m bars (default: a synthetic market, labelled as such)",
    )
    p.add_argument("--symbol", action="append", help="symbol of each --data file, in order")
    p.add_argument(
        "--stored", nargs="+", metavar="SYMBOL",
        help="replay symbols from the bar store (data.market_root) that `scalpd download` fills",
    )  # fmt: skip
    p.add_argument("--from", dest="start", metavar="DATE", help="first bar, UTC (YYYY-MM-DD)")
    p.add_argument("--to", dest="end", metavar="DATE", help="end, exclusive, UTC (YYYY-MM-DD)")
    p.add_argument("--db", help="SQLite store (default: store.path)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument(
        "--capital",
        metavar="USDT[,USDT...]",
        help="replay at each starting capital, side by side ('default' = 100,1000,10000,100000)",
    )
    p.add_argument("--report", metavar="PATH", help="write the HTML report here")
    p.add_argument(
        "--no-baselines", action="store_true",
        help="skip the random-entry and rule baselines (report.random_trials more replays)",
    )  # fmt: skip
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("report", help="rebuild a replay's HTML report (and JSON) from the store")
    p.add_argument("run", type=int, metavar="RUN", help="run id (runs.id)")
    p.add_argument("--db", help="SQLite store (default: store.path)")
    p.add_argument("--out", metavar="FILE.html", help="HTML file (default: report-RUN.html)")
    p.add_argument(
        "--json", action="store_true", help="print the report JSON (no HTML unless --out)"
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("run", help="trade live market data (real orders, or --paper)")
    p.add_argument("--paper", action="store_true", help="simulated fills, no real orders")
    p.add_argument("--db", help="SQLite store (default: store.path)")
    p.add_argument("--max-bars", type=int, help="stop after this many closed bars (testing)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ctl", help="talk to the running daemon through its control socket")
    p.add_argument(
        "action",
        choices=["status", "pause", "resume", "flatten", "reload-model", "models", "restore-model"],
        help="status; pause/resume entries (exits go on); flatten: close every position; "
        "reload-model: load the model at PATH (default: the configured one); models: the "
        "versions online learning made, with their lineage; restore-model SYMBOL VERSION: "
        "serve an earlier version again (0: the trained model)",
    )  # fmt: skip
    p.add_argument(
        "operands", nargs="*", metavar="ARG",
        help="reload-model: PATH (the model directory); restore-model: SYMBOL VERSION",
    )  # fmt: skip
    p.add_argument(
        "--run", type=int, metavar="RUN_ID",
        help="models, restore-model: the run whose versions (default: the daemon's own)",
    )  # fmt: skip
    p.add_argument("--symbol", help="models: only this symbol")
    p.add_argument("--socket", metavar="PATH", help="socket (default: control.socket_path)")
    p.add_argument("--reason", help="pause: why, shown in status and the logs")
    p.add_argument("--breaker", help="resume: only this breaker (default: every one)")
    p.add_argument("--timeout-s", type=float, default=10.0, help="s to wait for the answer")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_ctl)

    p = sub.add_parser("tui", help="terminal UI: watch and steer the running daemon")
    p.add_argument("--socket", metavar="PATH", help="socket (default: control.socket_path)")
    p.add_argument("--db", help="SQLite store, read-only (default: store.path)")
    p.add_argument("--interval-s", type=float, default=1.0, help="s between refreshes")
    p.set_defaults(func=cmd_tui)

    from scalpd.data.cli import DEFAULT_ROOT

    p = sub.add_parser("download", help="download candle history into the bar store")
    p.add_argument("symbols", nargs="*", metavar="SYMBOL", help="e.g. BTC/USDT ETH/USDT")
    p.add_argument("--since", metavar="DATE", help="first candle, UTC (YYYY-MM-DD)")
    p.add_argument("--until", metavar="DATE", help="end, exclusive, UTC (default: now)")
    p.add_argument("--timeframe", default="1m", help="candle size (default: 1m)")
    p.add_argument("--chunk-days", type=float, default=7.0, help="days a chunk (default: 7)")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="store directory")
    p.add_argument(
        "--from-archive", nargs="+", type=Path, metavar="PATH",
        help="import Binance archive kline files (.csv/.zip) instead of downloading",
    )  # fmt: skip
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("bench", help="run benchmarks; one JSON object a line")
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    p.add_argument("--json", action="store_true", help="JSON lines only (the default output)")
    p.set_defaults(func=cmd_bench)

    # The handler imports torch (training) only when it runs.
    p = sub.add_parser(
        "walkforward",
        help="retrain on a sliding window and trade the days after it (walkforward.*)",
    )
    p.add_argument("--data", nargs="+", metavar="PATH", help="Parquet files of 1m bars")
    p.add_argument("--stored", nargs="+", metavar="SYMBOL", help="symbols from the bar store")
    p.add_argument(
        "--from", dest="start", metavar="DATE",
        help="first test window, UTC (default: train_days after the data start)",
    )  # fmt: skip
    p.add_argument("--to", dest="end", metavar="DATE", help="end of testing, exclusive, UTC")
    p.add_argument("--steps", type=int, metavar="N", help="stop after N steps")
    p.add_argument("--db", help="SQLite store (default: store.path)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_walkforward)

    from scalpd.data.cli import add_data_commands
    from scalpd.data.record_cli import add_record_command

    add_data_commands(sub)
    add_record_command(sub)

    # Built on demand by main (it imports torch); listed here for --help.
    sub.add_parser(
        "train", help="train a model (tcn, transformer, lstm, ensemble) and save its artifact"
    )
    # Parsed by scalpd.fakex.cli (see main); listed here for --help.
    sub.add_parser(
        "fake-exchange",
        help="serve a local fake Binance from Parquet bars (try `scalpd run` without an account)",
        add_help=False,
    )
    return parser


def _train_parser() -> argparse.ArgumentParser:
    from scalpd.models.cli import add_train_command
    from scalpd.strategy.model import feature_matrix

    parser = argparse.ArgumentParser(prog="scalpd")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_command(sub, features_fn=feature_matrix)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fake-exchange"]:
        # Its options are its own (argparse cannot pass them through a sub-parser whole).
        from scalpd.fakex.cli import main as fake_main

        return fake_main(argv[1:])
    if argv[:1] == ["train"]:
        parser = _train_parser()  # imports torch: only for this command
    else:
        parser = build_parser()
    args = parser.parse_args(argv)
    from scalpd.data.parquet import DataError
    from scalpd.store.sqlite import StoreError

    try:
        return args.func(args)
    except (ConfigError, CliError) as exc:
        print(f"scalpd: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (DataError, StoreError) as exc:
        print(f"scalpd: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("scalpd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
