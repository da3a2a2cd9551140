"""Live order books, book tickers and trades from Binance's combined WebSocket stream.

One connection carries `<sym>@depth@100ms`, `<sym>@bookTicker` and `<sym>@trade` of every
symbol. Each symbol keeps an `OrderBook` built by Binance's snapshot + diff procedure: diffs
are buffered from the first one a connection brings, a REST snapshot (`GET /api/v3/depth`,
through the ccxt client so rate limits and the configured host apply) starts the book, and a
sequence gap empties it and fetches a new snapshot. A dropped connection is reopened with
exponential backoff and every book starts over, since a new connection's diffs do not
continue the old ones.

The consumer gets, synchronously and in arrival order, `(event, recv_time_ns)` with event:
  Trade        every trade;
  BookTicker   every book ticker (binance_ws's record: the BookTop and its update id);
  BookLevels   the best `levels` of each side after each depth diff applied to a synced book
               (a snapshot that applies buffered diffs gives one, as of the last of them).
For an asyncio consumer pass `lambda event, ns: queue.put_nowait((event, ns))`. A malformed
message is counted, logged and skipped. An exception from the consumer stops the feed (a
recorder that cannot write must not silently drop data): `run` raises it.

The URL is `<ws_url>?streams=...` where `ws_url` is the `exchange.ws_url` setting, which ends
in `/stream` (default `wss://stream.binance.com:9443/stream`); see `combined_stream_url`.

Spot book tickers carry no time. Their BookTop.time_ms is the latest exchange time (`E`/`T`)
seen on the symbol's streams, so tops sort with trades and depth on the exchange clock (at most
one 100 ms depth interval stale); the local receive time is passed alongside.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import ccxt
import orjson
import structlog

from scalpd.data.binance_ws import (
    BookTicker,
    MessageError,
    parse_book_ticker,
    parse_depth_snapshot,
    parse_depth_update,
    parse_trade,
    unwrap,
)
from scalpd.data.orderbook import BookLevels, OrderBook, Outcome
from scalpd.events import Trade

log = structlog.get_logger("scalpd.live.book_feed")

DEFAULT_WS_BASE = "wss://stream.binance.com:9443"
SNAPSHOT_LIMIT = 1000  # levels a side in a REST snapshot: Binance's largest cheap size
DEPTH_CHANNEL = "depth@100ms"
CHANNELS = (DEPTH_CHANNEL, "bookTicker", "trade")
# The first retry of a snapshot that does not bridge the buffered diffs comes soon: the next
# one normally does.
_SNAPSHOT_RETRY_S = 0.05
_HEARTBEAT_S = 20.0

FeedEvent = Trade | BookTicker | BookLevels


class _Fatal(Exception):
    """Unwinds the connection after the consumer failed; `run` raises the consumer's error."""


Consumer = Callable[[FeedEvent, int], None]


def combined_stream_url(ws_url: str | None, streams: Sequence[str]) -> str:
    """`<base>/stream?streams=a/b/c`.

    `ws_url` is the project's `exchange.ws_url` setting, which ends in `/stream` (what ccxt.pro
    is pointed at); a bare host (`wss://stream.binance.com:9443`) or ccxt's raw-stream `/ws`
    URL works too. None means Binance itself.
    """
    base = (ws_url or DEFAULT_WS_BASE).rstrip("/")
    if base.endswith("/ws"):
        base = base[: -len("/ws")]
    if not base.endswith("/stream"):
        base += "/stream"
    return f"{base}?streams={'/'.join(streams)}"


@dataclass
class FeedStats:
    messages: int = 0  # frames received, malformed ones included
    malformed: int = 0
    ignored: int = 0  # well-formed but not ours (another symbol or channel)
    trades: int = 0
    book_tickers: int = 0
    depth_updates: int = 0
    gaps: int = 0  # depth sequence breaks seen (each empties the book)
    snapshots: int = 0  # REST snapshots that started a book
    resyncs: int = 0  # ... of which after a gap, on the same connection
    snapshot_failures: int = 0  # snapshots that failed or did not bridge the diffs: refetched
    connects: int = 0
    reconnects: int = 0  # connections lost (or refused), each followed by a backoff

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class _SymbolState:
    symbol: str  # unified, "BTC/USDT": what events carry
    market_id: str  # "BTCUSDT": what REST takes
    book: OrderBook
    last_exchange_ms: int = -1  # latest E/T seen: the time given to book tickers
    resync_after_gap: bool = False
    fetching: asyncio.Task[None] | None = None


class BookFeed:
    """Binance order books, tops and trades for `symbols`; run with `await feed.run()`."""

    def __init__(
        self,
        exchange: Any,  # a ccxt (async) binance client, e.g. scalpd.live.exchange.make_exchange
        symbols: Sequence[str],
        consumer: Consumer,
        *,
        ws_url: str | None = None,
        initial_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        levels: int = 5,
    ) -> None:
        if not symbols:
            raise ValueError("BookFeed needs at least one symbol")
        self._exchange = exchange
        self._wanted = list(symbols)
        self._consumer = consumer
        self._ws_url = ws_url
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._levels = levels
        self._states: dict[str, _SymbolState] = {}  # by stream prefix, "btcusdt"
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stop = asyncio.Event()
        # What stops the feed for good (a consumer's error), re-raised by `run`.
        self._fatal: BaseException | None = None
        self.stats = FeedStats()
        self.url: str | None = None

    # -- public --------------------------------------------------------------------------------

    @property
    def books(self) -> dict[str, OrderBook]:
        """Unified symbol -> its book (empty until `run` has resolved the symbols)."""
        return {s.symbol: s.book for s in self._states.values()}

    def synced(self, symbol: str | None = None) -> bool:
        """Whether the book of `symbol` (of every symbol when None) is live."""
        states = [s for s in self._states.values() if symbol in (None, s.symbol, s.market_id)]
        return bool(states) and all(not s.book.needs_resync for s in states)

    async def run(self) -> None:
        """Connect, keep the books and call the consumer until `stop()` or cancellation.

        Raises what the consumer raised, and ccxt's BadSymbol for an unknown symbol."""
        backoff_s = self._initial_backoff_s
        async with aiohttp.ClientSession() as session:
            try:
                while not self._stop.is_set():
                    try:
                        if not self._states:
                            await self._resolve_symbols()
                        if await self._connection(session):
                            backoff_s = self._initial_backoff_s
                    except _Fatal:
                        pass
                    except (aiohttp.ClientError, ccxt.NetworkError, OSError, TimeoutError) as exc:
                        log.warning("book_feed_error", error=f"{type(exc).__name__}: {exc}")
                    if self._fatal is not None:
                        raise self._fatal
                    if self._stop.is_set():
                        break
                    self.stats.reconnects += 1
                    log.warning("book_feed_disconnected", retry_in_s=round(backoff_s, 3))
                    # Jitter keeps several recorders from reconnecting in lock-step.
                    delay_s = backoff_s * (1 + 0.2 * random.random())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay_s)
                    backoff_s = min(backoff_s * 2, self._max_backoff_s)
            finally:
                self._cancel_fetches()
                self._ws = None

    async def stop(self) -> None:
        """Make `run` return: closes the connection."""
        self._stop.set()
        if self._ws is not None:
            await self._ws.close()

    # -- connection ----------------------------------------------------------------------------

    async def _resolve_symbols(self) -> None:
        await self._exchange.load_markets()
        for wanted in self._wanted:
            market = self._exchange.market(wanted)
            market_id = str(market["id"])
            self._states[market_id.lower()] = _SymbolState(
                str(market["symbol"]), market_id, OrderBook(str(market["symbol"]))
            )
        streams = [f"{prefix}@{ch}" for prefix in self._states for ch in CHANNELS]
        self.url = combined_stream_url(self._ws_url, streams)

    async def _connection(self, session: aiohttp.ClientSession) -> bool:
        """One connection, until it closes; True if it brought messages (a connection that
        the server closes at once does not reset the backoff)."""
        assert self.url is not None
        messages_before = self.stats.messages
        for state in self._states.values():
            self._cancel_fetch(state)
            state.book.reset()
            state.resync_after_gap = False
        # Binance pings every 20 s; our own heartbeat notices a dead TCP connection.
        async with session.ws_connect(self.url, heartbeat=_HEARTBEAT_S, autoping=True) as ws:
            self._ws = ws
            self.stats.connects += 1
            log.info("book_feed_connected", url=self.url)
            if self._stop.is_set():
                return True
            try:
                async for message in ws:
                    recv_time_ns = time.time_ns()
                    self.stats.messages += 1
                    if message.type == aiohttp.WSMsgType.TEXT:
                        self._on_text(message.data, recv_time_ns)
                    elif message.type == aiohttp.WSMsgType.ERROR:
                        log.warning("book_feed_ws_error", error=str(ws.exception()))
                        break
                    else:
                        self._malformed(f"unexpected {message.type.name} frame", message.data)
            finally:
                self._ws = None
                self._cancel_fetches()
        return self.stats.messages > messages_before

    # -- messages ------------------------------------------------------------------------------

    def _on_text(self, text: str, recv_time_ns: int) -> None:
        try:
            event = self._parse(text, recv_time_ns)
        except ValueError as exc:  # MessageError, and orjson.JSONDecodeError
            self._malformed(str(exc), text)
            return
        if event is not None:
            self._emit(event, recv_time_ns)

    def _emit(self, event: FeedEvent, recv_time_ns: int) -> None:
        try:
            self._consumer(event, recv_time_ns)
        except Exception as exc:
            # Kept apart from network errors: a consumer that fails with an OSError (a full
            # disk) must stop the feed, not look like a dropped connection.
            self._fatal = exc
            raise _Fatal from exc

    def _parse(self, text: str, recv_time_ns: int) -> FeedEvent | None:
        """The event to hand on, if any; depth diffs go to their book here."""
        prefix, channel, data = unwrap(orjson.loads(text))
        state = self._states.get(prefix)
        if state is None or channel not in CHANNELS:
            self.stats.ignored += 1
            return None
        if channel == DEPTH_CHANNEL:
            return self._on_depth(state, data)
        if channel == "trade":
            trade = parse_trade(data, state.symbol)
            state.last_exchange_ms = max(state.last_exchange_ms, trade.time_ms)
            self.stats.trades += 1
            return trade
        time_ms = state.last_exchange_ms
        if time_ms < 0:  # nothing with an exchange time seen yet on this symbol
            time_ms = recv_time_ns // 1_000_000
        ticker = parse_book_ticker(data, state.symbol, time_ms)
        self.stats.book_tickers += 1
        return ticker

    def _on_depth(self, state: _SymbolState, data: Any) -> BookLevels | None:
        update = parse_depth_update(data)
        self.stats.depth_updates += 1
        state.last_exchange_ms = max(state.last_exchange_ms, update.time_ms)
        outcome = state.book.on_depth(update)
        if outcome is Outcome.GAP:
            self.stats.gaps += 1
            state.resync_after_gap = True
            log.warning(
                "book_gap",
                symbol=state.symbol,
                first_update_id=update.first_update_id,
                final_update_id=update.final_update_id,
            )
        if state.book.needs_resync and state.fetching is None:
            # Binance's order: buffer first, then the snapshot, so it is not older than the
            # first buffered diff.
            state.fetching = asyncio.create_task(
                self._sync(state), name=f"snapshot:{state.market_id}"
            )
        return state.book.levels(self._levels) if outcome is Outcome.APPLIED else None

    def _malformed(self, reason: str, raw: Any) -> None:
        self.stats.malformed += 1
        log.error("malformed_message", error=reason, message=repr(raw)[:300])

    # -- snapshots -----------------------------------------------------------------------------

    async def _sync(self, state: _SymbolState) -> None:
        """Fetch snapshots until one starts the book; cancelled when the connection ends."""
        retry_s = _SNAPSHOT_RETRY_S
        try:
            while state.book.needs_resync:
                if await self._try_snapshot(state):
                    break
                self.stats.snapshot_failures += 1
                await asyncio.sleep(retry_s * (1 + 0.2 * random.random()))
                retry_s = min(retry_s * 2, self._max_backoff_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the consumer's (or a bug): stop the feed, `run` raises it
            if self._fatal is None:
                self._fatal = exc
            if self._ws is not None:
                await self._ws.close()
        finally:
            if state.fetching is asyncio.current_task():
                state.fetching = None

    async def _try_snapshot(self, state: _SymbolState) -> bool:
        raw: Any = None
        try:
            raw = await self._exchange.public_get_depth(
                {"symbol": state.market_id, "limit": SNAPSHOT_LIMIT}
            )
            snapshot = parse_depth_snapshot(raw)
        except ccxt.BaseError as exc:  # network trouble, or an answer ccxt rejects: retry
            log.warning(
                "snapshot_failed", symbol=state.symbol, error=f"{type(exc).__name__}: {exc}"
            )
            return False
        except MessageError as exc:
            self._malformed(f"snapshot: {exc}", raw)
            return False
        book = state.book
        gaps_before = book.gaps
        applied = book.apply_snapshot(snapshot)
        self.stats.gaps += book.gaps - gaps_before  # a gap among the buffered diffs
        if not applied:
            log.info(
                "snapshot_not_bridging",
                symbol=state.symbol,
                last_update_id=snapshot.last_update_id,
            )
            return False
        self.stats.snapshots += 1
        if state.resync_after_gap:
            self.stats.resyncs += 1
            state.resync_after_gap = False
        log.info("book_synced", symbol=state.symbol, update_id=book.update_id, levels=len(book))
        if book.time_ms >= 0:  # buffered diffs were applied on top of the snapshot
            self._emit(book.levels(self._levels), time.time_ns())
        return True

    def _cancel_fetch(self, state: _SymbolState) -> None:
        if state.fetching is not None:
            state.fetching.cancel()
            state.fetching = None

    def _cancel_fetches(self) -> None:
        for state in self._states.values():
            self._cancel_fetch(state)
