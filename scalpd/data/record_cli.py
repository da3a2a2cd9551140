"""`scalpd record SYMBOL...`: record live order books, book tops and trades into the store.

Runs a BookFeed into a TickRecorder until Ctrl-C / SIGTERM (or --max-seconds), then writes
what is buffered and prints one summary line on stdout (logs go to stderr). Exchange URLs come
from the settings (`SCALPD_EXCHANGE__REST_URL` / `SCALPD_EXCHANGE__WS_URL`, or --config).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ccxt
import structlog

from scalpd.config import ConfigError, find_config, load_settings
from scalpd.config.settings import ExchangeSettings
from scalpd.data.cli import DEFAULT_ROOT
from scalpd.data.recorder import DEFAULT_FLUSH_ROWS, DEFAULT_FLUSH_S, KINDS, TickRecorder
from scalpd.live.book_feed import BookFeed, FeedStats
from scalpd.live.exchange import make_exchange

log = structlog.get_logger("scalpd.data.record")

# How often buffers are checked for age, at most: a quiet symbol is still written every
# --flush-s seconds.
_FLUSH_CHECK_S = 1.0


@dataclass
class RecordSummary:
    symbols: list[str]
    root: Path
    elapsed_s: float
    feed: FeedStats
    rows: dict[str, int] = field(default_factory=dict)
    files: int = 0

    def line(self) -> str:
        rows = ", ".join(f"{kind} {self.rows.get(kind, 0)}" for kind in KINDS)
        f = self.feed
        return (
            f"recorded {' '.join(self.symbols)} for {self.elapsed_s:.1f} s: "
            f"{f.messages} messages; rows {rows} in {self.files} files under {self.root}; "
            f"gaps {f.gaps}, resyncs {f.resyncs}, reconnects {f.reconnects}, "
            f"malformed {f.malformed}"
        )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def add_record_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `record` on the main parser's subparsers."""
    p = subparsers.add_parser(
        "record", help="record live order books, book tops and trades into the market store"
    )
    p.add_argument("symbols", nargs="+", metavar="SYMBOL", help="e.g. BTC/USDT ETH/USDT")
    p.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help=f"store directory (default: {DEFAULT_ROOT})"
    )
    p.add_argument(
        "--flush-rows",
        type=_positive_int,
        default=DEFAULT_FLUSH_ROWS,
        metavar="N",
        help=f"write a part file when a buffer holds N rows (default: {DEFAULT_FLUSH_ROWS})",
    )
    p.add_argument(
        "--flush-s",
        type=_positive_float,
        default=DEFAULT_FLUSH_S,
        metavar="S",
        help=f"... or when its oldest row is S seconds old (default: {DEFAULT_FLUSH_S:g})",
    )
    p.add_argument("--max-seconds", type=_positive_float, metavar="S", help="stop after S seconds")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_record)


def cmd_record(args: argparse.Namespace) -> int:
    from scalpd.logs import configure_logging

    settings = load_settings(find_config(getattr(args, "config", None)))
    configure_logging(args.log_level or "info", settings.logging.format, sys.stderr)
    recorder = TickRecorder(args.root, flush_rows=args.flush_rows, flush_s=args.flush_s)
    summary = asyncio.run(
        record(settings.exchange, args.symbols, recorder, max_seconds=args.max_seconds)
    )
    print(summary.line(), flush=True)
    return 0


async def record(
    settings: ExchangeSettings,
    symbols: Sequence[str],
    recorder: TickRecorder,
    *,
    max_seconds: float | None = None,
    stop: asyncio.Event | None = None,
) -> RecordSummary:
    """Record until `stop` is set, SIGINT/SIGTERM, or `max_seconds`; the recorder is closed."""
    stop = stop or asyncio.Event()
    started_s = time.monotonic()
    exchange = make_exchange(settings)
    feed = BookFeed(
        exchange,
        symbols,
        recorder.add,
        ws_url=settings.ws_url,
        initial_backoff_s=settings.reconnect_initial_backoff_s,
        max_backoff_s=settings.reconnect_max_backoff_s,
    )
    feed_task = asyncio.create_task(feed.run(), name="book-feed")
    flusher = asyncio.create_task(_flush_periodically(recorder), name="recorder-flush")
    stopper = asyncio.create_task(stop.wait(), name="record-stop")
    handled = _handle_signals(stop)
    try:
        await asyncio.wait(
            [feed_task, flusher, stopper], timeout=max_seconds, return_when=asyncio.FIRST_COMPLETED
        )
        await feed.stop()
        try:
            await feed_task  # raises what stopped the feed: a consumer (write) error, a symbol
        except ccxt.BadSymbol as exc:
            raise ConfigError(f"unknown symbol: {exc}") from None
        if flusher.done():
            flusher.result()  # a failed timed flush
    finally:
        for task in (feed_task, flusher, stopper):
            task.cancel()
        await asyncio.gather(feed_task, flusher, stopper, return_exceptions=True)
        for signum in handled:
            asyncio.get_running_loop().remove_signal_handler(signum)
        await exchange.close()
        recorder.close()
    return RecordSummary(
        symbols=list(symbols),
        root=recorder.root,
        elapsed_s=time.monotonic() - started_s,
        feed=feed.stats,
        rows=dict(recorder.rows_written),
        files=len(recorder.files_written),
    )


async def _flush_periodically(recorder: TickRecorder) -> None:
    while True:
        await asyncio.sleep(min(_FLUSH_CHECK_S, recorder.flush_s))
        recorder.flush_due()


def _handle_signals(stop: asyncio.Event) -> list[int]:
    """Ctrl-C and SIGTERM set `stop` (a clean shutdown that writes the buffers); only possible
    on the main thread, so elsewhere (tests) nothing is installed."""
    loop = asyncio.get_running_loop()
    handled = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
    return handled


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m scalpd.data.record_cli`), until `scalpd record` is wired."""
    parser = argparse.ArgumentParser(prog="scalpd")
    add_record_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["record", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"scalpd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
