"""`scalpd download`: candle history over the exchange's REST API into the bar store.

- Chunked (7 days of 1m bars by default), each chunk written atomically: a run killed at any
  point (Ctrl-C, kill -9) leaves whole chunks only, and the same command continues after the
  last stored bar, so nothing is fetched twice or missed.
- Retries with exponential backoff and jitter on network errors, 5xx and rate limits (waiting
  at least the server's Retry-After); a permanent error (unknown symbol, bad range) stops at
  once with one clear line.
- Only closed candles are stored: a candle still open at the exchange's time is left for later.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ccxt
import numpy as np
import structlog

from scalpd.data.bars import BarColumns, from_arrays
from scalpd.data.parquet import DataError
from scalpd.data.store import BarStore, timeframe_minutes

log = structlog.get_logger("scalpd.data.download")

KLINES_PAGE = 1000
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_tries: int = 8
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0


@dataclass
class DownloadReport:
    symbol: str
    timeframe: str
    resumed_from_ms: int | None
    bars_written: int = 0
    requests: int = 0
    retries: int = 0
    chunks: int = 0
    quarantined: int = 0
    conflicts: int = 0
    elapsed_s: float = 0.0


@dataclass
class Progress:
    """A progress line on a TTY (bars, rate, ETA); a log line per chunk otherwise."""

    total_bars: int
    tty: bool = field(default_factory=lambda: sys.stderr.isatty())
    done_bars: int = 0
    _t0: float = field(default_factory=time.perf_counter)

    def advance(self, symbol: str, bars: int, upto_ms: int) -> None:
        self.done_bars += bars
        elapsed_s = time.perf_counter() - self._t0
        rate = self.done_bars / elapsed_s if elapsed_s > 0 else 0.0
        left = max(self.total_bars - self.done_bars, 0)
        eta_s = left / rate if rate > 0 else float("nan")
        if self.tty:
            pct = 100 * self.done_bars / self.total_bars if self.total_bars else 100.0
            sys.stderr.write(
                f"\r{symbol}: {self.done_bars:,}/{self.total_bars:,} bars ({pct:5.1f}%) "
                f"{rate:,.0f} bars/s, ETA {eta_s:,.0f} s   "
            )
            sys.stderr.flush()
        else:
            log.info(
                "download_progress",
                symbol=symbol,
                bars_done=self.done_bars,
                bars_total=self.total_bars,
                bars_per_s=round(rate),
                eta_s=round(eta_s) if eta_s == eta_s else None,
                upto_ms=upto_ms,
            )

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


async def with_retries(
    call: Callable[[], Awaitable[_T]],
    exchange: ccxt.Exchange,
    policy: RetryPolicy,
    report: DownloadReport,
) -> _T:
    """Run `call`, retrying what is worth retrying; DataError for what is not."""
    backoff_s = policy.initial_backoff_s
    for attempt in range(1, policy.max_tries + 1):
        report.requests += 1
        try:
            return await call()
        except (ccxt.BadSymbol, ccxt.BadRequest, ccxt.AuthenticationError) as exc:
            raise DataError(f"{report.symbol}: the exchange refused the request: {exc}") from None
        except ccxt.OperationFailed as exc:  # network errors, 5xx, rate limits: transient
            if attempt == policy.max_tries:
                raise DataError(
                    f"{report.symbol}: giving up after {attempt} tries: {type(exc).__name__}"
                ) from None
            wait_s = backoff_s * (1 + random.random())  # jitter: don't retry in lock-step
            retry_after = _retry_after_s(exchange)
            if isinstance(exc, (ccxt.RateLimitExceeded, ccxt.DDoSProtection)) and retry_after:
                wait_s = max(wait_s, retry_after)
            report.retries += 1
            log.warning(
                "download_retry",
                symbol=report.symbol,
                error=f"{type(exc).__name__}: {str(exc)[:200]}",
                attempt=attempt,
                wait_s=round(wait_s, 2),
            )
            await asyncio.sleep(wait_s)
            backoff_s = min(backoff_s * 2, policy.max_backoff_s)
    raise AssertionError("unreachable")


def _retry_after_s(exchange: ccxt.Exchange) -> float | None:
    headers = getattr(exchange, "last_response_headers", None) or {}
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def rows_to_bars(symbol: str, rows: list[list[Any]]) -> tuple[BarColumns, np.ndarray]:
    """Binance kline rows [t, o, h, l, c, v, T, q, n, V, Q, B] -> bars and taker-buy quote."""
    if not rows:
        return from_arrays(symbol, {k: np.array([]) for k in _KEYS}), np.array([])
    try:
        table = np.array([[float(x) for x in row[:11]] for row in rows], dtype=np.float64)
    except (TypeError, ValueError, IndexError) as exc:
        raise DataError(f"{symbol}: malformed klines from the exchange: {exc}") from None
    cols = {
        "open_time": table[:, 0].astype(np.int64),
        "open": table[:, 1],
        "high": table[:, 2],
        "low": table[:, 3],
        "close": table[:, 4],
        "volume": table[:, 5],
        "quote_volume": table[:, 7],
        "trades": table[:, 8].astype(np.int64),
        "taker_buy_base": table[:, 9],
    }
    return from_arrays(symbol, cols), table[:, 10]


_KEYS = ("open_time", "open", "high", "low", "close", "volume")


async def download_symbol(
    exchange: ccxt.Exchange,
    store: BarStore,
    symbol: str,
    *,
    since_ms: int,
    until_ms: int,
    timeframe: str = "1m",
    chunk_days: float = 7.0,
    policy: RetryPolicy | None = None,
    progress: Progress | None = None,
    exchange_name: str = "binance",
) -> DownloadReport:
    policy = policy or RetryPolicy()
    tf_ms = timeframe_minutes(timeframe) * 60_000
    chunk_ms = max(int(chunk_days * 86_400_000) // tf_ms, 1) * tf_ms
    market_id = exchange.market(symbol)["id"]
    stored = store.manifest(exchange_name, symbol, timeframe)
    last_ms = _last_stored_before(store, exchange_name, symbol, timeframe, until_ms, stored)
    start_ms = since_ms if last_ms is None or last_ms < since_ms else last_ms + tf_ms
    report = DownloadReport(symbol, timeframe, last_ms if start_ms != since_ms else None)
    t0 = time.perf_counter()
    now_ms = await with_retries(exchange.fetch_time, exchange, policy, report)
    end_ms = min(until_ms, now_ms - now_ms % tf_ms)  # the candle now open is not closed yet
    chunk_start = start_ms
    while chunk_start < end_ms:
        chunk_end = min(chunk_start + chunk_ms, end_ms)
        rows: list[list[Any]] = []
        cursor = chunk_start
        while cursor < chunk_end:
            params = {
                "symbol": market_id,
                "interval": timeframe,
                "startTime": cursor,
                "endTime": chunk_end - 1,
                "limit": KLINES_PAGE,
            }
            page = await with_retries(
                lambda p=params: exchange.public_get_klines(p), exchange, policy, report
            )
            if not page:
                break
            rows += page
            cursor = int(page[-1][0]) + tf_ms
            if len(page) < KLINES_PAGE:
                break
        bars, taker_buy_quote = rows_to_bars(symbol, rows)
        if len(bars):
            written = store.write(
                exchange_name, symbol, timeframe, bars, "rest", taker_buy_quote=taker_buy_quote
            )
            report.bars_written += written.rows_added
            report.quarantined += written.quarantined
            report.conflicts += written.conflicts
        report.chunks += 1
        if progress is not None:
            progress.advance(symbol, (chunk_end - chunk_start) // tf_ms, chunk_end)
        chunk_start = chunk_end
    report.elapsed_s = round(time.perf_counter() - t0, 3)
    return report


def _last_stored_before(
    store: BarStore, exchange: str, symbol: str, timeframe: str, until_ms: int, manifest: Any
) -> int | None:
    """Open time of the last stored bar before `until_ms`, or None: where a rerun resumes.

    The manifest says which year file holds it; only that file is read, not every year."""
    if manifest is None:
        return None
    files = [f for f in manifest.files if f.first_open_time_ms < until_ms]
    if not files:
        return None
    last_file = max(files, key=lambda f: f.first_open_time_ms)
    if last_file.last_open_time_ms < until_ms:
        return last_file.last_open_time_ms
    bars = store.read(exchange, symbol, timeframe, last_file.first_open_time_ms, until_ms)
    return int(bars.open_time[-1]) if len(bars) else None


async def download(
    exchange: ccxt.Exchange,
    store: BarStore,
    symbols: list[str],
    *,
    since_ms: int,
    until_ms: int,
    timeframe: str = "1m",
    chunk_days: float = 7.0,
    policy: RetryPolicy | None = None,
) -> list[DownloadReport]:
    """Download every symbol in turn; checks every argument before the first request."""
    if until_ms <= since_ms:
        raise DataError("the end date is not after the start date")
    if chunk_days <= 0:
        raise DataError(f"chunk size must be positive, not {chunk_days} days")
    tf_ms = timeframe_minutes(timeframe) * 60_000
    setup = DownloadReport("(markets)", timeframe, None)
    await with_retries(exchange.load_markets, exchange, policy or RetryPolicy(), setup)
    unknown = [s for s in symbols if s not in exchange.markets]
    if unknown:
        raise DataError(f"unknown symbol(s) on {exchange.id}: {', '.join(unknown)}")
    progress = Progress(total_bars=len(symbols) * ((until_ms - since_ms) // tf_ms))
    reports = []
    try:
        for symbol in symbols:
            reports.append(
                await download_symbol(
                    exchange,
                    store,
                    symbol,
                    since_ms=since_ms,
                    until_ms=until_ms,
                    timeframe=timeframe,
                    chunk_days=chunk_days,
                    policy=policy,
                    progress=progress,
                )
            )
    finally:
        progress.finish()
    return reports
