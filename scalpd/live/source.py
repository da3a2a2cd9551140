"""Live market data: closed 1-minute bars from ccxt.pro, reconnected and backfilled.

ccxt.pro does not reconnect by itself: a dropped connection raises NetworkError from the
pending watch, and the next watch opens a new connection. Each symbol has its own loop that
waits with exponential backoff, backfills the bars missed meanwhile over REST, and watches
again. Whatever the path a bar came by, the strategy sees each bar once, in time order: a bar
not after the last one emitted is dropped and counted, a hole the exchange itself has (no bars
over REST either) becomes a Gap event, and a malformed bar is quarantined and logged.

Bad frames: ccxt.pro decodes and handles each WebSocket frame in a callback of its receive
loop, and an exception there (truncated JSON, a payload of the wrong shape) ends that loop
silently: the connection stays open and nothing arrives again. `guard_ws_frames` catches it per
frame, so a bad frame is logged and counted (`malformed`) and the next one is read. Klines for a
symbol we did not ask for are dropped and counted the same way.

Latency: a closed kline or a trade print is queued while its frame is handled (the exchange's
`kline_listener` / `trade_listener`), and `next()` waits on one future the queue sets. Waiting
for ccxt's watch future instead costs several event-loop hops per frame (the future resolves,
a watch task wakes, the queue's getter, the reader's task), each queued behind everything else
ready, such as the other symbols' frames of the same minute. The watch tasks still subscribe,
see disconnections and backfill; a kline that needs REST first (a hole after it, or a backfill
under way for its symbol) is left to them.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import ccxt
import numpy as np
import structlog

from scalpd.config.settings import ExchangeSettings
from scalpd.data.bars import BarColumns, row_is_clean, validate
from scalpd.events import BAR_INTERVAL_MS, Bar, Gap, Side, Trade
from scalpd.live.exchange import RECEIVED_NS, ScalpdBinance

log = structlog.get_logger("scalpd.live.source")

_KLINES_PAGE = 1000
_RECEIVED_KEPT = 1000


def _num(value: Any, default: float = math.nan) -> float:
    return default if value is None else float(value)


def bar_from_ws_kline(symbol: str, k: dict[str, Any]) -> Bar:
    """A Bar from a WebSocket kline payload; KeyError, TypeError or ValueError if malformed."""
    return Bar(
        symbol,
        int(k["t"]),
        float(k["o"]),
        float(k["h"]),
        float(k["l"]),
        float(k["c"]),
        float(k["v"]),
        _num(k.get("q")),
        int(k.get("n", -1)),
        _num(k.get("V")),
    )


def bar_from_rest_row(symbol: str, row: list[Any]) -> Bar:
    """A Bar from a REST /api/v3/klines row [t, o, h, l, c, v, T, q, n, V, Q, B]."""
    return Bar(
        symbol,
        int(row[0]),
        float(row[1]),
        float(row[2]),
        float(row[3]),
        float(row[4]),
        float(row[5]),
        _num(row[7]) if len(row) > 7 else math.nan,
        int(row[8]) if len(row) > 8 else -1,
        _num(row[9]) if len(row) > 9 else math.nan,
    )


def guard_ws_frames(exchange: Any, on_bad_frame: Callable[[Any, Exception], None]) -> None:
    """Make every WebSocket client of `exchange` survive a frame it cannot decode or handle:
    `on_bad_frame(data, exc)` is called and the receive loop goes on (see the module doc)."""
    if getattr(exchange, "_scalpd_frames_guarded", False):
        return
    make_client = exchange.client

    def client(url: str) -> Any:
        ws_client = make_client(url)
        if not getattr(ws_client, "_scalpd_guarded", False):
            handle = ws_client.handle_text_or_binary_message

            def guarded(data: Any) -> None:
                try:
                    handle(data)
                except Exception as exc:  # anything: an escaped error stops the receive loop
                    on_bad_frame(data, exc)

            on_message = ws_client.on_message_callback

            def objects_only(ws: Any, message: Any) -> None:
                # Every Binance stream event is a JSON object; ccxt ignores anything else
                # without a word.
                if not isinstance(message, dict):
                    raise TypeError(f"a {type(message).__name__}, not a JSON object")
                on_message(ws, message)

            ws_client.handle_text_or_binary_message = guarded
            ws_client.on_message_callback = objects_only
            ws_client._scalpd_guarded = True
        return ws_client

    exchange.client = client
    exchange._scalpd_frames_guarded = True


def bar_problem(bar: Bar) -> str | None:
    """Why `bar` is unusable, by the same rules as historical data (`data.bars.validate`)."""
    if row_is_clean(bar.open_time_ms, bar.open, bar.high, bar.low, bar.close, bar.volume):
        return None
    one = BarColumns(
        bar.symbol,
        *(np.array([value]) for value in bar[1:]),
    )
    _, bad = validate(one)
    return bad[0].reason if bad else None


class CcxtBarSource:
    def __init__(
        self,
        exchange: ScalpdBinance,
        symbols: list[str],
        settings: ExchangeSettings,
        *,
        trades: bool = False,
    ) -> None:
        self._exchange = exchange
        self._symbols = symbols
        self._settings = settings
        self._with_trades = trades
        self._queue: deque[Bar | Gap | Trade] = deque()
        # Told as each event is queued, before the loop takes it (the daemon's pacer: no
        # quiet-time work between a frame's arrival and its decision).
        self.on_queued: Callable[[], None] | None = None
        self._waiter: asyncio.Future[bool] | None = None  # done: an event queued (False), a stop
        self._backfilling: set[str] = set()  # symbols whose klines wait for their watch task
        self._symbol_of = {exchange.market(s)["id"]: s for s in symbols}
        self.last_trade_id: dict[str, int] = {}
        self.trades_seen = 0
        self._tasks: list[asyncio.Task] = []
        self.last_open_ms: dict[str, int] = {}
        self.reconnects = 0
        self.duplicates = 0
        self.quarantined = 0
        self.backfilled = 0
        # When the last bar returned by next() came in (time.monotonic_ns): the start of the
        # daemon's decision latency. Stamped per bar as it is parsed, read as next() returns it.
        self.received_ns = 0
        self._received_ns: dict[tuple[str, int], int] = {}
        # `received_ns` of the recent bars returned, oldest first (the bench reads them).
        self.bars_received_ns: deque[int] = deque(maxlen=_RECEIVED_KEPT)
        self._down_since_s: dict[str, float] = {}  # symbol -> monotonic s of its outage start
        self.malformed = 0  # frames that could not be decoded or handled; foreign klines
        self._market_ids = {exchange.market(s)["id"] for s in symbols}
        guard_ws_frames(exchange, self._on_bad_frame)

    def start(self) -> None:
        self._exchange.kline_listener = self._on_closed_kline
        if self._with_trades:
            self._exchange.trade_listener = self._on_trade
        self._tasks = [
            asyncio.create_task(self._watch(symbol), name=f"watch:{symbol}")
            for symbol in self._symbols
        ]
        if self._with_trades:
            self._tasks += [
                asyncio.create_task(self._watch_trades(symbol), name=f"trades:{symbol}")
                for symbol in self._symbols
            ]
        for task in self._tasks:
            task.add_done_callback(self._wake)

    async def next(self) -> Bar | Gap | Trade:
        """The next closed bar, gap or trade, from any symbol (a bar: see `received_ns`)."""
        while True:
            event = self.poll()
            if event is not None:
                return event
            await self.wait()

    def poll(self) -> Bar | Gap | Trade | None:
        """The next queued event without waiting; None when none is queued."""
        if not self._queue:
            return None
        event = self._queue.popleft()
        if type(event) is Bar:
            stamp = self._received_ns.pop((event.symbol, event.open_time_ms), 0)
            self.received_ns = stamp or time.monotonic_ns()
            self.bars_received_ns.append(self.received_ns)
        return event

    def next_bar_symbol(self) -> str | None:
        """The symbol of the first bar queued (trades skipped); None when no bar is."""
        for event in self._queue:
            if type(event) is Bar:
                return event.symbol
        return None

    async def wait(self) -> None:
        """Until an event is queued or `interrupt()` is called. A watch task that ended (it
        never should) raises its error here rather than leave the caller waiting forever."""
        while not self._queue:
            self._raise_if_watcher_ended()
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
            if waiter.result():  # interrupted
                return

    def interrupt(self) -> None:
        """Make a pending `wait()` return, queued events or not (a stop)."""
        self._wake(None, interrupted=True)

    def _wake(self, _task: Any = None, *, interrupted: bool = False) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(interrupted)

    def _raise_if_watcher_ended(self) -> None:
        for task in self._tasks:
            if task.done() and not task.cancelled():
                task.result()  # a watcher died: surface its error rather than hang
                raise RuntimeError("a market-data watcher stopped")

    def _put(self, event: Bar | Gap | Trade) -> None:
        self._queue.append(event)
        if self.on_queued is not None:
            self.on_queued()
        self._wake()

    def disconnected_since_s(self) -> float | None:
        """time.monotonic() at which market data was first lost, over the symbols still
        without their kline stream; None while every symbol's stream is connected."""
        return min(self._down_since_s.values(), default=None)

    async def close(self) -> None:
        if self._exchange.kline_listener == self._on_closed_kline:
            self._exchange.kline_listener = None
        if self._exchange.trade_listener == self._on_trade:
            self._exchange.trade_listener = None
        for task in self._tasks:
            task.remove_done_callback(self._wake)
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- per symbol ----------------------------------------------------------------------------

    async def _watch(self, symbol: str) -> None:
        market_id = self._exchange.market(symbol)["id"]
        backoff_s = self._settings.reconnect_initial_backoff_s
        while True:
            try:
                await self._exchange.watch_ohlcv(symbol, "1m")
                self._down_since_s.pop(symbol, None)
                backoff_s = self._settings.reconnect_initial_backoff_s
                await self._drain(symbol, market_id)
            except ccxt.NetworkError as exc:
                self.reconnects += 1
                self._down_since_s.setdefault(symbol, time.monotonic())
                log.warning(
                    "market_data_disconnected",
                    symbol=symbol,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(backoff_s, 3),
                )
                # Jitter keeps several symbols from reconnecting in lock-step.
                await asyncio.sleep(backoff_s * (1 + 0.2 * random.random()))
                backoff_s = min(backoff_s * 2, self._settings.reconnect_max_backoff_s)
                await self._backfill(symbol, market_id)

    async def _watch_trades(self, symbol: str) -> None:
        """Trades as they print. Trades missed while disconnected are not backfilled: bars
        carry the per-minute totals, trades only refine them."""
        backoff_s = self._settings.reconnect_initial_backoff_s
        while True:
            try:
                trades = await self._exchange.watch_trades(symbol)
                backoff_s = self._settings.reconnect_initial_backoff_s
            except ccxt.NetworkError as exc:
                self.reconnects += 1
                log.warning("trades_disconnected", symbol=symbol, error=type(exc).__name__)
                await asyncio.sleep(backoff_s * (1 + 0.2 * random.random()))
                backoff_s = min(backoff_s * 2, self._settings.reconnect_max_backoff_s)
                continue
            if self._exchange.trade_listener != self._on_trade:  # else queued already
                for raw in trades:
                    self._take_trade(symbol, raw)

    def _on_trade(self, symbol: str, raw: dict[str, Any]) -> None:
        if symbol in self._symbol_of.values():
            self._take_trade(symbol, raw)

    def _take_trade(self, symbol: str, raw: dict[str, Any]) -> None:
        """Queue a trade from ccxt's parsed form unless it was queued already or is bad."""
        last_id = self.last_trade_id.get(symbol, -1)
        try:
            trade_id = int(raw["id"])
            if trade_id <= last_id:
                return
            trade = Trade(
                symbol,
                int(raw["timestamp"]),
                float(raw["price"]),
                float(raw["amount"]),
                Side(raw["side"]),
                str(trade_id),
            )
        except (KeyError, TypeError, ValueError) as exc:
            self.quarantined += 1
            log.error("malformed_trade", symbol=symbol, error=str(exc))
            return
        if not (trade.price > 0 and trade.qty > 0):
            self.quarantined += 1
            log.error("trade_quarantined", symbol=symbol, trade=trade._asdict())
            return
        self.last_trade_id[symbol] = trade_id
        self.trades_seen += 1
        self._put(trade)

    def _on_bad_frame(self, data: Any, exc: Exception) -> None:
        self.malformed += 1
        log.error(
            "malformed_ws_frame",
            error=f"{type(exc).__name__}: {exc}"[:300],
            frame=repr(data)[:300],
        )

    def _drop_foreign_klines(self) -> None:
        closed = self._exchange.closed_klines
        for market_id in [m for m in closed if m not in self._market_ids]:
            dropped = closed.pop(market_id)
            self.malformed += len(dropped)
            log.error("kline_for_unknown_symbol", market_id=market_id[:40], klines=len(dropped))

    def _on_closed_kline(self, market_id: str) -> None:
        """A closed kline was kept: queue its bar now unless REST must come first."""
        symbol = self._symbol_of.get(market_id)
        if symbol is None or symbol in self._backfilling:
            return  # a foreign kline (dropped by a watcher), or a backfill's: the watcher's
        queue = self._exchange.closed_klines.get(market_id)
        while queue:
            kline = queue[0]
            try:
                bar = bar_from_ws_kline(symbol, kline)
            except (KeyError, TypeError, ValueError):
                return  # the watcher quarantines it, in order with the rest
            last = self.last_open_ms.get(symbol)
            if last is not None and bar.open_time_ms > last + BAR_INTERVAL_MS:
                return  # a hole: the watcher asks REST for it first
            queue.popleft()
            self._emit(bar, kline.get(RECEIVED_NS))

    async def _drain(self, symbol: str, market_id: str) -> None:
        if len(self._exchange.closed_klines) > len(self._market_ids):
            self._drop_foreign_klines()
        queue = self._exchange.closed_klines.get(market_id)
        while queue:
            kline = queue.popleft()
            try:
                bar = bar_from_ws_kline(symbol, kline)
            except (KeyError, TypeError, ValueError) as exc:
                self.quarantined += 1
                log.error("malformed_kline", symbol=symbol, error=str(exc), kline=repr(kline)[:300])
                continue
            last = self.last_open_ms.get(symbol)
            if last is not None and bar.open_time_ms > last + BAR_INTERVAL_MS:
                # A hole in the stream (messages lost around a reconnect, say): ask REST for
                # the missing bars before calling it a gap of the exchange's own.
                await self._backfill(symbol, market_id)
            self._emit(bar, kline.get(RECEIVED_NS))

    async def _backfill(self, symbol: str, market_id: str) -> None:
        """Fetch over REST the closed bars after the last one emitted."""
        since = self.last_open_ms.get(symbol)
        if since is None:
            return
        self._backfilling.add(symbol)
        try:
            now_ms = await self._exchange.fetch_time()
            while True:
                rows = await self._exchange.public_get_klines(
                    {
                        "symbol": market_id,
                        "interval": "1m",
                        "startTime": since + BAR_INTERVAL_MS,
                        "limit": _KLINES_PAGE,
                    }
                )
                closed = [r for r in rows if int(r[0]) + BAR_INTERVAL_MS <= now_ms]
                for row in closed:
                    self.backfilled += 1
                    self._emit(bar_from_rest_row(symbol, row))
                if len(rows) < _KLINES_PAGE or not closed:
                    break
                since = int(closed[-1][0])
        except ccxt.NetworkError as exc:
            # The next watch will fail too and bring us back here after the backoff.
            log.warning("backfill_failed", symbol=symbol, error=f"{type(exc).__name__}: {exc}")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            self.quarantined += 1
            log.error("malformed_klines_response", symbol=symbol, error=str(exc))
        finally:
            self._backfilling.discard(symbol)

    def _emit(self, bar: Bar, received_ns: int | None = None) -> None:
        """Queue `bar` for the engine unless it is a duplicate or malformed; `received_ns`:
        when its WebSocket frame arrived (None: fetched over REST, now)."""
        symbol = bar.symbol
        last = self.last_open_ms.get(symbol)
        if last is not None and bar.open_time_ms <= last:
            self.duplicates += 1
            log.debug("bar_dropped_not_after_last", symbol=symbol, open_time_ms=bar.open_time_ms)
            return
        problem = bar_problem(bar)
        if problem is not None:
            self.quarantined += 1
            log.error("bar_quarantined", symbol=symbol, reason=problem, bar=bar._asdict())
            return
        if last is not None and bar.open_time_ms > last + BAR_INTERVAL_MS:
            self._put(Gap(symbol, last, bar.open_time_ms))
        self.last_open_ms[symbol] = bar.open_time_ms
        self._received_ns[(symbol, bar.open_time_ms)] = received_ns or time.monotonic_ns()
        self._put(bar)
