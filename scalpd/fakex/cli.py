"""Run the fake exchange by hand.

    python -m scalpd.fakex.cli --data ../shared/data/binance-spot/BTCUSDT-1m-2024.parquet \\
        --from 2024-03-01 --bar-interval-s 1

prints one line with the REST and WebSocket URLs and the API key and secret to use, then pushes
one bar every --bar-interval-s seconds until Ctrl-C (SIGINT) or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scalpd.fakex.matching import KNOWN_QUOTES
from scalpd.fakex.server import FakeExchange
from scalpd.fakex.timeline import OPTIONAL_COLUMNS, REQUIRED_COLUMNS


class UsageError(Exception):
    """Bad arguments or input files; the message is one line for the user."""


def symbol_from_filename(path: Path) -> str | None:
    """'BTCUSDT-1m-2024.parquet' -> 'BTC/USDT'; None when no known quote ends the pair."""
    pair = path.stem.split("-")[0].split("_")[0].upper()
    for quote in KNOWN_QUOTES:
        if pair.endswith(quote) and len(pair) > len(quote):
            return f"{pair[: -len(quote)]}/{quote}"
    return None


def read_bars(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UsageError(f"data file not found: {path}")
    try:
        names = pq.read_schema(path).names
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise UsageError(f"{path.name} lacks column(s) {', '.join(missing)}")
        wanted = [*REQUIRED_COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in names)]
        table = pq.read_table(path, columns=wanted)
    except (pa.ArrowException, OSError) as exc:
        raise UsageError(f"{path} is not a readable Parquet file: {exc}") from None
    return {name: table.column(name).to_numpy() for name in wanted}


def parse_time_ms(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--from {text!r} is not an ISO date or time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_balances(items: Sequence[str]) -> dict[str, float]:
    balances: dict[str, float] = {}
    for item in items:
        asset, sep, amount = item.partition("=")
        try:
            balances[asset.strip().upper()] = float(amount)
        except ValueError:
            sep = ""
        if not sep or not asset.strip():
            raise UsageError(f"--balance {item!r} is not ASSET=AMOUNT, e.g. USDT=10000")
    return balances


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scalpd fake-exchange",
        description="Serve a fake Binance spot exchange on localhost, replaying 1m bars.",
    )
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        type=Path,
        metavar="PATH",
        help="Parquet file of 1m bars (Binance kline columns); repeat for more symbols",
    )
    parser.add_argument(
        "--symbol",
        action="append",
        default=[],
        metavar="BASE/QUOTE",
        help="symbol of each --data file, in order (default: from the file name)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (default)")
    parser.add_argument(
        "--bar-interval-s",
        type=float,
        default=1.0,
        help="seconds between two bars (default 1.0; 60 is real time)",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--start-index",
        type=int,
        default=0,
        help="bars before this index are already closed history (default 0)",
    )
    start.add_argument(
        "--from",
        dest="from_time",
        metavar="DATE",
        help="start trading at this UTC date/time; earlier bars are history",
    )
    parser.add_argument(
        "--fee-bps", type=float, default=10.0, help="maker and taker fee, bps (default 10)"
    )
    parser.add_argument("--maker-fee-bps", type=float, help="maker fee, bps (default --fee-bps)")
    parser.add_argument("--taker-fee-bps", type=float, help="taker fee, bps (default --fee-bps)")
    parser.add_argument(
        "--bnb-fees",
        action="store_true",
        help="pay fees in BNB (25%% off, at --bnb-price-usdt) while the BNB balance lasts",
    )
    parser.add_argument("--bnb-price-usdt", type=float, default=600.0)
    parser.add_argument(
        "--limit-queue",
        choices=("through", "touch"),
        default="through",
        help="a resting limit fills when the price trades through it (default) or touches it",
    )
    parser.add_argument(
        "--max-participation",
        type=float,
        default=0.1,
        help="largest share of a bar's volume a resting limit order fills (default 0.1; 0: all)",
    )
    parser.add_argument(
        "--balance",
        action="append",
        default=[],
        metavar="ASSET=AMOUNT",
        help="starting balance; repeat per asset (default USDT=10000)",
    )
    parser.add_argument("--api-key", default="fake-key")
    parser.add_argument("--api-secret", default="fake-secret")
    return parser  # fmt: skip


def _exchange_from_args(args: argparse.Namespace) -> tuple[FakeExchange, str]:
    if args.symbol and len(args.symbol) != len(args.data):
        raise UsageError("give one --symbol per --data file, or none")
    if args.bar_interval_s <= 0:
        raise UsageError("--bar-interval-s must be positive")
    bars: dict[str, dict[str, np.ndarray]] = {}
    for i, path in enumerate(args.data):
        columns = read_bars(path)
        symbol = args.symbol[i] if args.symbol else symbol_from_filename(path)
        if symbol is None or "/" not in symbol:
            raise UsageError(f"cannot tell the symbol of {path.name}; pass --symbol BASE/QUOTE")
        bars[symbol.upper()] = columns
    times = np.unique(np.concatenate([b["open_time"] for b in bars.values()]))
    start_index = args.start_index
    if args.from_time is not None:
        start_index = int(np.searchsorted(times, parse_time_ms(args.from_time)))
    if not 0 <= start_index < len(times):
        raise UsageError(f"the start is outside the data ({len(times)} bars)")
    fx = FakeExchange(
        bars,
        api_key=args.api_key,
        api_secret=args.api_secret,
        balances=parse_balances(args.balance) if args.balance else None,
        fee_bps=args.fee_bps,
        start_index=start_index,
        bar_interval_s=args.bar_interval_s,
        maker_fee_bps=args.maker_fee_bps,
        taker_fee_bps=args.taker_fee_bps,
        bnb_fees=args.bnb_fees,
        bnb_price_usdt=args.bnb_price_usdt,
        limit_queue=args.limit_queue,
        max_participation=args.max_participation or None,
    )
    first = datetime.fromtimestamp(int(times[start_index]) / 1000, UTC)
    about = (
        f"{', '.join(bars)}: {len(times) - start_index} bars from {first:%Y-%m-%dT%H:%MZ} "
        f"after {start_index} of history, one every {args.bar_interval_s:g} s"
    )
    return fx, about


async def _serve(fx: FakeExchange, host: str, port: int, about: str, key: str, secret: str) -> None:
    await fx.start(host, port)
    print(
        f"fakex: REST {fx.base_url} WS {fx.ws_url} API key {key} secret {secret} ({about})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fx.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: argparse has printed it
        return exc.code if isinstance(exc.code, int) else 2
    try:
        fx, about = _exchange_from_args(args)
    except (UsageError, ValueError) as exc:
        print(f"scalpd fake-exchange: error: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(fx, args.host, args.port, about, args.api_key, args.api_secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
