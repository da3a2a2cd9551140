"""The fake Binance spot exchange: an aiohttp server on 127.0.0.1 speaking REST and WebSocket.

Time is the data's, not the wall clock's: the server time is the open time of the current bar,
and orders, fills and events carry it, so a run is the same on a fast or a slow machine. For the
same reason a signed request's `timestamp` is required but not compared with any clock (nor is
`recvWindow` enforced).

Rate-limit and failure answers (what ccxt 4.5.90 raises for each, see tests/fakex):
  429, 418 -> ccxt.DDoSProtection (Binance's body code -1003; ccxt checks the status first);
  500 -> ccxt.OperationFailed (-1001); 503 -> ccxt.RequestTimeout (-1007, "execution status
  unknown", which is what Binance means by a 503). The failed request is not processed.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import orjson
from aiohttp import WSMsgType, web

from scalpd.fakex import wire
from scalpd.fakex.matching import (
    ApiError,
    FakeMarket,
    FeeSchedule,
    LimitQueue,
    MatchingEngine,
    OrderList,
    mandatory,
)
from scalpd.fakex.timeline import BAR_MS, SymbolBars, Timeline
from scalpd.fakex.userstream import Announcer
from scalpd.live.exchange import point_at, spot_only

Json = Any
Params = Mapping[str, str]
Handler = Callable[[Params], Awaitable[Json]]

_KLINES_DEFAULT_LIMIT = 500
_KLINES_MAX_LIMIT = 1000
_LIST_DEFAULT_LIMIT = 500
_LIST_MAX_LIMIT = 1000
_FAULT_BODIES = {
    429: (
        -1003,
        "Too much request weight used; current limit is 6000 request weight per 1 MINUTE. "
        "Please use WebSocket Streams for live updates to avoid polling the API.",
    ),
    418: (
        -1003,
        "Way too much request weight used; IP banned. "
        "Please use WebSocket Streams for live updates to avoid bans.",
    ),
    500: (-1001, "Internal error; unable to process your request. Please try again."),
    503: (
        -1007,
        "Timeout waiting for response from backend server. "
        "Send status unknown; execution status unknown.",
    ),
}
_WS_PREFIXES = ("/stream", "/ws")
_WS_API_PATH = "/ws-api/v3"


@dataclass(eq=False)  # identity hashing: connections live in a set
class _Connection:
    ws: web.WebSocketResponse
    combined: bool
    streams: set[str] = field(default_factory=set)
    user_subscription: int | None = None  # WebSocket API: the user-data stream's id

    async def send(self, payload: Json) -> bool:
        """Send one frame; False when the client is gone."""
        if self.ws.closed:
            return False
        try:
            await self.ws.send_str(orjson.dumps(payload).decode())
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def push(self, stream: str, event: Json) -> bool:
        return await self.send({"stream": stream, "data": event} if self.combined else event)


# fail_next_requests(n, status=DROP_CONNECTION): close the TCP connection without an answer.
DROP_CONNECTION = 0


@dataclass
class _Faults:
    fail_requests: int = 0
    fail_status: int = 429
    retry_after_s: float = 1.0
    reject_orders: int = 0
    reject_code: int = -2010
    reject_msg: str = ""
    order_delays_s: list[float] = field(default_factory=list)
    refuse_ws: bool = False
    # (method, path) -> rewrites for the next answers there, applied in turn.
    rewrites: dict[tuple[str, str], list[Callable[[Json], Json]]] = field(default_factory=dict)


class FakeExchange:
    """A local Binance spot exchange replaying one-minute bars.

    `bars` maps a unified symbol ("BTC/USDT") to columns open_time (ms), open, high, low, close,
    volume and optionally quote_volume, trades, taker_buy_base, taker_buy_quote (estimated when
    absent). Timeline index `start_index` is the first current bar: the bars before it are
    closed history, served by /klines. With `bar_interval_s` None the caller closes bars with
    `await step()`; with a number of seconds the server steps by itself from `start()` on.

    Fees (`scalpd.fakex.matching` has the rules): `fee_bps` sets the maker and the taker rate,
    `maker_fee_bps` / `taker_fee_bps` override either; `bnb_fees=True` pays them in BNB at
    `bnb_price_usdt` with `bnb_discount` off (falling back to the received asset when BNB is
    short). Resting limit orders fill by `limit_queue` ("through" or "touch") and at most
    `max_participation` of a bar's volume (None: no cap), as the replay simulator fills them.

    Inspection: `orders` and `trades` (as Binance's JSON shows them), `balances` (free + locked
    per asset), `requests` ((method, path) of every HTTP request, WebSocket opens included),
    `unknown_requests` (paths answered 404), `subscriptions`, `current_index`.
    """

    def __init__(
        self,
        bars: Mapping[str, Mapping[str, np.ndarray]],
        *,
        markets: Mapping[str, FakeMarket] | None = None,
        api_key: str = "fake-key",
        api_secret: str = "fake-secret",
        balances: Mapping[str, float] | None = None,  # default {"USDT": 10_000.0}
        fee_bps: float = 10.0,
        start_index: int = 0,
        bar_interval_s: float | None = None,
        maker_fee_bps: float | None = None,
        taker_fee_bps: float | None = None,
        bnb_fees: bool = False,
        bnb_price_usdt: float = 600.0,
        bnb_discount: float = 0.25,
        limit_queue: LimitQueue = "through",
        max_participation: float | None = 0.1,
    ) -> None:
        markets = dict(markets or {})
        symbol_bars: dict[str, SymbolBars] = {}
        for symbol, columns in bars.items():
            market = markets.get(symbol) or FakeMarket(symbol=symbol)
            if market.symbol != symbol:
                raise ValueError(f"markets[{symbol!r}] describes {market.symbol!r}")
            symbol_bars[market.market_id] = SymbolBars.from_columns(market, columns)
        self._timeline = Timeline(symbol_bars)
        if not 0 <= start_index <= len(self._timeline):
            raise ValueError(f"start_index {start_index} outside 0..{len(self._timeline)}")
        if bar_interval_s is not None and bar_interval_s <= 0:
            raise ValueError("bar_interval_s must be positive (or None for manual stepping)")
        self.fees = FeeSchedule(
            maker_bps=fee_bps if maker_fee_bps is None else maker_fee_bps,
            taker_bps=fee_bps if taker_fee_bps is None else taker_fee_bps,
            bnb=bnb_fees,
            bnb_price_usdt=bnb_price_usdt,
            bnb_discount=bnb_discount,
        )
        self._engine = MatchingEngine(
            {s.market.symbol: s.market for s in symbol_bars.values()},
            {"USDT": 10_000.0} if balances is None else balances,
            self.fees,
            limit_queue=limit_queue,
            max_participation=max_participation,
        )
        self._api_key = api_key
        self._api_secret = api_secret
        self._bar_interval_s = bar_interval_s
        self.current_index = start_index
        self.requests: list[tuple[str, str]] = []
        self.unknown_requests: list[str] = []
        self.unsupported_streams: list[str] = []
        self._faults = _Faults()
        self._connections: set[_Connection] = set()
        self._subscriptions_changed = asyncio.Condition()
        self._step_lock = asyncio.Lock()
        self._cancel_ids = itertools.count(1)
        self._announcer = Announcer()
        self._user_subscription_ids = itertools.count(0)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._host = "127.0.0.1"
        self._auto_task: asyncio.Task[None] | None = None
        self._routes: dict[tuple[str, str], tuple[Handler, bool]] = self._route_table()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on `host`:`port` (0: any free port); returns the bound port."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._host = host
        self._port = int(self._runner.addresses[0][1])
        if self._bar_interval_s is not None:
            self._auto_task = asyncio.create_task(self._auto_step(self._bar_interval_s))
        return self._port

    async def stop(self) -> None:
        if self._auto_task is not None:
            self._auto_task.cancel()
            await asyncio.gather(self._auto_task, return_exceptions=True)
            self._auto_task = None
        await self.drop_connections()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """REST root, e.g. "http://127.0.0.1:PORT" (ccxt's spot API is under /api/v3)."""
        return f"http://{self._host}:{self._require_port()}"

    @property
    def ws_url(self) -> str:
        """WebSocket root for ccxt.pro's spot streams (must contain /stream)."""
        return f"ws://{self._host}:{self._require_port()}/stream"

    def _require_port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeExchange is not serving: await start() first")
        return self._port

    # -- time and stepping ---------------------------------------------------------------------

    @property
    def server_time_ms(self) -> int:
        """Open time of the current bar (one bar past the last once the data is exhausted)."""
        times = self._timeline.times
        if self.current_index < len(times):
            return int(times[self.current_index])
        return int(times[-1]) + BAR_MS if len(times) else 0

    @property
    def exhausted(self) -> bool:
        return self.current_index >= len(self._timeline)

    async def step(self, n: int = 1) -> bool:
        """Close the current bar n times (fill resting orders, push the closed kline, open the
        next bar). True while a bar is open afterwards; False once the data is exhausted."""
        async with self._step_lock:
            for _ in range(n):
                if self.exhausted:
                    return False
                await self._step_once()
            return not self.exhausted

    async def _step_once(self) -> None:
        index = self.current_index
        events: list[tuple[str, Json]] = []
        for bars, k in self._timeline.bars_at(index):
            market_id = bars.market.market_id
            # Fills carry the bar's close time, as the replay's do.
            self._engine.close_bar(market_id, k.prices, k.open_time_ms + BAR_MS)
            stream = market_id.lower()
            events.append((f"{stream}@trade", wire.trade_event(market_id, k, aggregate=False)))
            events.append((f"{stream}@aggTrade", wire.trade_event(market_id, k, aggregate=True)))
            closed = wire.kline_event(
                market_id, k, closed=True, event_time_ms=k.open_time_ms + BAR_MS
            )
            events.append((f"{stream}@kline_1m", closed))
        self.current_index = index + 1
        if not self.exhausted:
            for bars, k in self._timeline.bars_at(self.current_index):
                market_id = bars.market.market_id
                opening = wire.kline_event(market_id, k, closed=False, event_time_ms=k.open_time_ms)
                events.append((f"{market_id.lower()}@kline_1m", opening))
        # The bar's fills reach the user-data stream before its kline reaches the market one.
        await self._announce()
        await self._broadcast(events)

    async def _auto_step(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if not await self.step():
                return

    def _last_price(self, market_id: str) -> float | None:
        """The current bar's open: what a market order meets now."""
        if market_id not in self._timeline.symbols:
            return None
        k = self._timeline.bar_at(market_id, self.current_index)
        return None if k is None else k.open

    # -- inspection ----------------------------------------------------------------------------

    @property
    def orders(self) -> list[dict[str, Any]]:
        """Every order placed, as GET /api/v3/order shows it."""
        return [wire.order_status(o) for o in self._engine.orders]

    @property
    def trades(self) -> list[dict[str, Any]]:
        """Every fill, as GET /api/v3/myTrades shows it."""
        return [wire.my_trade(f) for f in self._engine.fills]

    @property
    def balances(self) -> dict[str, float]:
        """Total (free + locked) per asset."""
        ledger = self._engine.ledger
        return {asset: ledger.total(asset) for asset in ledger.free}

    @property
    def free_balances(self) -> dict[str, float]:
        return dict(self._engine.ledger.free)

    @property
    def locked_balances(self) -> dict[str, float]:
        return dict(self._engine.ledger.locked)

    @property
    def subscriptions(self) -> list[str]:
        """Streams subscribed now, one entry per connection and stream."""
        return sorted(s for c in self._connections for s in c.streams)

    async def wait_subscribed(self, n: int = 1) -> None:
        """Wait until at least `n` stream subscriptions are live (over all connections)."""
        async with self._subscriptions_changed:
            await self._subscriptions_changed.wait_for(lambda: len(self.subscriptions) >= n)

    # -- fault injection -----------------------------------------------------------------------

    def drop_connections(self) -> asyncio.Future[Any]:
        """Close every WebSocket now: pending ccxt watches raise NetworkError. Nothing is pushed
        to the dropped connections any more; await the result to wait for the close handshakes."""
        dropped = list(self._connections)
        self._connections.clear()
        for conn in dropped:
            conn.streams.clear()
        closing = [asyncio.ensure_future(_close_quietly(c.ws)) for c in dropped]
        return asyncio.gather(*closing)

    def fail_next_requests(self, n: int, status: int = 429, retry_after_s: float = 1) -> None:
        """The next `n` REST requests to a served path answer `status` with Retry-After, and are
        not processed."""
        self._faults.fail_requests = n
        self._faults.fail_status = status
        self._faults.retry_after_s = retry_after_s

    def reject_next_orders(
        self,
        n: int,
        code: int = -2010,
        msg: str = "Account has insufficient balance for requested action.",
    ) -> None:
        """The next `n` order placements (POST order / orderList/oco) answer 400 {code, msg}."""
        self._faults.reject_orders = n
        self._faults.reject_code = code
        self._faults.reject_msg = msg

    def refuse_websockets(self, refuse: bool = True) -> None:
        """While on, every WebSocket handshake is answered 503 (an exchange outage for the
        streams; REST still answers). Live connections are not touched: drop_connections."""
        self._faults.refuse_ws = refuse

    def delay_next_order_response(self, seconds: float) -> None:
        """The next order placement is processed at once but answered `seconds` later."""
        self._faults.order_delays_s.append(seconds)

    def rewrite_next_response(
        self, method: str, path: str, rewrite: Callable[[Json], Json], n: int = 1
    ) -> None:
        """The next `n` successful answers to `method` `path` (e.g. "GET", "/api/v3/myTrades")
        pass through `rewrite(payload) -> payload` first: an order or trade with a NaN price,
        an unknown order id, a trade for an order never sent. The books are not touched."""
        self._faults.rewrites.setdefault((method, path), []).extend([rewrite] * n)

    async def push_raw(self, stream: str, text: str) -> int:
        """Send `text` verbatim, as one WebSocket text frame, to every connection subscribed to
        `stream` (truncated JSON, a wrong type...); returns how many connections got it."""
        return await self._send_raw(text, lambda conn: stream in conn.streams)

    async def push_event(self, stream: str, event: Json) -> int:
        """Send `event` as JSON on `stream`, wrapped as each connection expects it (combined or
        raw), whatever its content; returns how many connections got it."""
        sent = 0
        for conn in list(self._connections):
            if stream in conn.streams and await conn.push(stream, event):
                sent += 1
        return sent

    async def push_user_raw(self, text: str) -> int:
        """Send `text` verbatim, as one frame, to every user-data stream subscriber (a bad or
        forged executionReport, truncated JSON); returns how many got it."""
        return await self._send_raw(text, lambda conn: conn.user_subscription is not None)

    async def _send_raw(self, text: str, to: Callable[[_Connection], bool]) -> int:
        sent = 0
        for conn in list(self._connections):
            if to(conn) and not conn.ws.closed:
                try:
                    await conn.ws.send_str(text)
                except (ConnectionError, RuntimeError):
                    continue
                sent += 1
        return sent

    def kline_event(self, symbol: str, index: int, *, closed: bool = True) -> dict[str, Any]:
        """The `<symbol>@kline_1m` event of timeline bar `index` of `symbol` ("BTC/USDT") as
        `step` would push it: a starting point for a crafted (malformed, repeated) kline."""
        market_id = symbol.replace("/", "")
        k = self._timeline.bar_at(market_id, index)
        if k is None:
            raise IndexError(f"no bar {index} for {symbol}")
        event_ms = k.open_time_ms + BAR_MS if closed else k.open_time_ms
        return wire.kline_event(market_id, k, closed=closed, event_time_ms=event_ms)

    # -- ccxt ----------------------------------------------------------------------------------

    def configure_ccxt(self, exchange: Any) -> None:
        """Point a ccxt.binance / ccxt.pro.binance at this server only.

        Every REST URL keeps its path on this host (unexpected calls land here as 404s, never
        on the internet); spot WebSocket streams go to `ws_url`; other WebSocket families go to
        paths this server does not serve. Also sets the options that keep load_markets on spot
        only, turns the rate limiter off, keeps Binance's spot error mapping (ccxt applies it
        only for its own host) and fills in this server's key and secret if none are set.
        """
        point_at(exchange, self.base_url, self.ws_url)
        spot_only(exchange)
        exchange.enableRateLimit = False
        exchange.get_exceptions_by_url = lambda url, kind: exchange.exceptions["spot"].get(kind, {})
        if not exchange.apiKey and not exchange.secret:
            exchange.apiKey = self._api_key
            exchange.secret = self._api_secret

    # -- HTTP ----------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests.append((request.method, path))
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        if is_ws and self._faults.refuse_ws:
            return _json_response({"code": -1, "msg": "streams unavailable"}, status=503)
        if is_ws and path.endswith(_WS_API_PATH):
            return await self._handle_ws_api(request)
        # Nothing else of the WebSocket API (orders over ws) is served.
        if is_ws and path.startswith(_WS_PREFIXES) and "ws-api" not in path:
            return await self._handle_ws(request)
        route = self._routes.get((request.method, path))
        if route is None:
            self.unknown_requests.append(path)
            msg = f"fakex does not serve {request.method} {path}"
            return _json_response({"code": -1, "msg": msg}, status=404)
        if self._faults.fail_requests > 0:
            self._faults.fail_requests -= 1
            if self._faults.fail_status == DROP_CONNECTION and request.transport is not None:
                request.transport.abort()  # the client sees the connection reset, no answer
            return self._fault_response()
        handler, signed = route
        try:
            body = await request.text() if request.can_read_body else ""
            raw_query = request.rel_url.raw_query_string
            if signed:
                self._authenticate(request, raw_query, body)
            params = dict(parse_qsl(raw_query, keep_blank_values=True))
            params |= dict(parse_qsl(body, keep_blank_values=True))
            if signed:
                wire.required(params, "timestamp")  # required, but not checked: see above
            payload = await handler(params)
            pending = self._faults.rewrites.get((request.method, path))
            if pending:
                payload = pending.pop(0)(payload)
            return _json_response(payload)
        except ApiError as exc:
            return _json_response({"code": exc.code, "msg": exc.msg}, status=exc.http_status)
        finally:
            if signed:  # the account may have changed: tell its user-data stream
                await self._announce()

    def _fault_response(self) -> web.Response:
        status = self._faults.fail_status
        code, msg = _FAULT_BODIES.get(status, (-1000, "An unknown error occurred."))
        headers = {"Retry-After": str(max(0, round(self._faults.retry_after_s)))}
        return _json_response({"code": code, "msg": msg}, status=status, headers=headers)

    def _authenticate(self, request: web.Request, raw_query: str, body: str) -> None:
        if request.headers.get("X-MBX-APIKEY") != self._api_key:
            raise ApiError(-2014, "API-key format invalid.", http_status=401)
        payload, signature = _split_signature(raw_query, body)
        if signature is None:
            raise mandatory("signature")
        self._check_signature(payload, signature)

    def _check_signature(self, payload: str, signature: str) -> None:
        expected = hmac.new(self._api_secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise ApiError(-1022, "Signature for this request is not valid.", http_status=401)

    def _route_table(self) -> dict[tuple[str, str], tuple[Handler, bool]]:
        public: dict[tuple[str, str], Handler] = {
            ("GET", "/api/v3/ping"): self._ping,
            ("GET", "/api/v3/time"): self._time,
            ("GET", "/api/v3/exchangeInfo"): self._exchange_info,
            ("GET", "/api/v3/klines"): self._klines,
            ("GET", "/api/v3/uiKlines"): self._klines,
            ("GET", "/api/v3/ticker/price"): self._ticker_price,
        }
        signed: dict[tuple[str, str], Handler] = {
            ("POST", "/api/v3/order"): self._new_order,
            ("POST", "/api/v3/order/test"): self._test_order,
            ("GET", "/api/v3/order"): self._get_order,
            ("DELETE", "/api/v3/order"): self._cancel_order,
            ("GET", "/api/v3/openOrders"): self._open_orders,
            ("DELETE", "/api/v3/openOrders"): self._cancel_open_orders,
            ("GET", "/api/v3/allOrders"): self._all_orders,
            ("GET", "/api/v3/account"): self._account,
            ("GET", "/api/v3/myTrades"): self._my_trades,
            ("POST", "/api/v3/orderList/oco"): self._new_oco,
            ("DELETE", "/api/v3/orderList"): self._cancel_order_list,
            ("GET", "/api/v3/orderList"): self._get_order_list,
            ("GET", "/api/v3/openOrderList"): self._open_order_lists,
            ("GET", "/api/v3/allOrderList"): self._all_order_lists,
        }
        return {k: (h, False) for k, h in public.items()} | {
            k: (h, True) for k, h in signed.items()
        }

    # -- public endpoints ----------------------------------------------------------------------

    async def _ping(self, params: Params) -> Json:
        return {}

    async def _time(self, params: Params) -> Json:
        return {"serverTime": self.server_time_ms}

    async def _exchange_info(self, params: Params) -> Json:
        markets = [s.market for s in self._timeline.symbols.values()]
        wanted = _symbols_param(params)
        if wanted is not None:
            if any(w not in self._timeline.symbols for w in wanted):
                raise ApiError(-1121, "Invalid symbol.")
            markets = [m for m in markets if m.market_id in wanted]
        return wire.exchange_info(markets, self.server_time_ms)

    async def _klines(self, params: Params) -> Json:
        bars = self._symbol_bars(wire.required(params, "symbol"))
        if wire.required(params, "interval") != "1m":
            raise ApiError(-1120, "Invalid interval.")
        limit = wire.optional_int(params, "limit") or _KLINES_DEFAULT_LIMIT
        if not 1 <= limit <= _KLINES_MAX_LIMIT:
            raise ApiError(-1130, "Invalid data sent for a parameter.")
        rows = bars.closed_rows(
            self.server_time_ms,
            wire.optional_int(params, "startTime"),
            wire.optional_int(params, "endTime"),
            limit,
        )
        return [wire.kline_row(bars.kline(r)) for r in rows]

    async def _ticker_price(self, params: Params) -> Json:
        wanted = _symbols_param(params)
        ids = list(self._timeline.symbols) if wanted is None else wanted
        out = []
        for market_id in ids:
            self._symbol_bars(market_id)
            price = self._reference_price(market_id)
            out.append({"symbol": market_id, "price": wire.fmt(price)})
        return out[0] if "symbol" in params else out

    def _reference_price(self, market_id: str) -> float:
        """Last price: the current bar's open, else the close of the last closed bar."""
        price = self._last_price(market_id)
        if price is not None:
            return price
        rows = self._timeline.symbols[market_id].closed_rows(self.server_time_ms, None, None, 1)
        return self._timeline.symbols[market_id].kline(rows[0]).close if rows else 0.0

    def _symbol_bars(self, market_id: str) -> SymbolBars:
        bars = self._timeline.symbols.get(market_id)
        if bars is None:
            raise ApiError(-1121, "Invalid symbol.")
        return bars

    # -- orders --------------------------------------------------------------------------------

    def _take_injected_rejection(self) -> None:
        if self._faults.reject_orders > 0:
            self._faults.reject_orders -= 1
            raise ApiError(self._faults.reject_code, self._faults.reject_msg)

    async def _delay_if_asked(self) -> None:
        if self._faults.order_delays_s:
            await asyncio.sleep(self._faults.order_delays_s.pop(0))

    async def _new_order(self, params: Params) -> Json:
        self._take_injected_rejection()
        req = wire.order_request(params)
        resp_type = wire.response_type(params, req.type)
        order = self._engine.place_order(
            req, last_price=self._last_price(req.market_id), now_ms=self.server_time_ms
        )
        await self._delay_if_asked()
        return wire.order_result(order, resp_type)

    async def _test_order(self, params: Params) -> Json:
        # Validate on a throw-away copy: nothing is booked, balances do not move.
        req = wire.order_request(params)
        scratch = copy.deepcopy(self._engine)
        scratch.place_order(
            req, last_price=self._last_price(req.market_id), now_ms=self.server_time_ms
        )
        return {}

    async def _get_order(self, params: Params) -> Json:
        order = self._engine.find_order(
            wire.required(params, "symbol"),
            wire.optional_int(params, "orderId"),
            params.get("origClientOrderId") or None,
        )
        return wire.order_status(order)

    async def _cancel_order(self, params: Params) -> Json:
        order = self._engine.cancel_order(
            wire.required(params, "symbol"),
            wire.optional_int(params, "orderId"),
            params.get("origClientOrderId") or None,
            self.server_time_ms,
        )
        return wire.cancel_result(order, self._cancel_id(params), self.server_time_ms)

    async def _cancel_open_orders(self, params: Params) -> Json:
        cancelled = self._engine.cancel_all(wire.required(params, "symbol"), self.server_time_ms)
        out = []
        for item in cancelled:
            if isinstance(item, OrderList):
                out.append(wire.order_list(item, with_reports=True))
            else:
                out.append(wire.cancel_result(item, self._cancel_id({}), self.server_time_ms))
        return out

    def _cancel_id(self, params: Params) -> str:
        return params.get("newClientOrderId") or f"fakexcancel{next(self._cancel_ids)}"

    async def _open_orders(self, params: Params) -> Json:
        market_id = params.get("symbol") or None
        if market_id is not None:
            self._symbol_bars(market_id)
        return [wire.order_status(o) for o in self._engine.open_orders(market_id)]

    async def _all_orders(self, params: Params) -> Json:
        market_id = wire.required(params, "symbol")
        self._symbol_bars(market_id)
        from_id = wire.optional_int(params, "orderId")
        orders = [
            o
            for o in self._engine.orders
            if o.market_id == market_id
            and (from_id is None or o.order_id >= from_id)
            and _in_time_range(o.time_ms, params)
        ]
        limit = _list_limit(params)
        # Binance returns the most recent orders unless told where to start.
        if from_id is None and "startTime" not in params:
            orders = orders[-limit:]
        return [wire.order_status(o) for o in orders[:limit]]

    async def _account(self, params: Params) -> Json:
        out = wire.account(self._engine.ledger, self.fees, self.server_time_ms)
        if params.get("omitZeroBalances") == "true":
            out["balances"] = [b for b in out["balances"] if float(b["free"]) or float(b["locked"])]
        return out

    async def _my_trades(self, params: Params) -> Json:
        market_id = wire.required(params, "symbol")
        self._symbol_bars(market_id)
        order_id = wire.optional_int(params, "orderId")
        from_id = wire.optional_int(params, "fromId")
        fills = [
            f
            for f in self._engine.fills
            if f.market_id == market_id
            and (order_id is None or f.order_id == order_id)
            and (from_id is None or f.trade_id >= from_id)
            and _in_time_range(f.time_ms, params)
        ]
        limit = _list_limit(params)
        # Binance returns the most recent trades unless told where to start.
        if from_id is None and "startTime" not in params:
            fills = fills[-limit:]
        return [wire.my_trade(f) for f in fills[:limit]]

    async def _new_oco(self, params: Params) -> Json:
        self._take_injected_rejection()
        req = wire.oco_request(params)
        order_list = self._engine.place_oco(
            req, last_price=self._last_price(req.market_id), now_ms=self.server_time_ms
        )
        await self._delay_if_asked()
        return wire.order_list(order_list, with_reports=True)

    async def _cancel_order_list(self, params: Params) -> Json:
        order_list = self._engine.cancel_order_list(
            wire.required(params, "symbol"),
            wire.optional_int(params, "orderListId"),
            params.get("listClientOrderId") or None,
            self.server_time_ms,
        )
        return wire.order_list(order_list, with_reports=True)

    async def _get_order_list(self, params: Params) -> Json:
        order_list = self._engine.find_order_list(
            wire.optional_int(params, "orderListId"), params.get("origClientOrderId") or None
        )
        return wire.order_list(order_list, with_reports=False)

    async def _open_order_lists(self, params: Params) -> Json:
        return [wire.order_list(x, with_reports=False) for x in self._engine.open_order_lists()]

    async def _all_order_lists(self, params: Params) -> Json:
        lists = [
            x for x in self._engine.order_lists if _in_time_range(x.transaction_time_ms, params)
        ]
        return [wire.order_list(x, with_reports=False) for x in lists[: _list_limit(params)]]

    # -- WebSocket -----------------------------------------------------------------------------

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = _Connection(ws, combined="streams" in request.query)
        self._connections.add(conn)
        # Streams named in the URL: /stream?streams=a/b (combined) or /ws/a (raw).
        named = request.query.get("streams", "").split("/")
        named += [part for part in request.path.split("/") if "@" in part]
        try:
            await self._subscribe(conn, [s for s in named if s])
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await self._on_ws_text(conn, message.data)
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            self._connections.discard(conn)
            await self._notify_subscriptions()
        return ws

    async def _on_ws_text(self, conn: _Connection, text: str) -> None:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            await conn.send({"code": 3, "msg": f"Invalid JSON: {exc}", "id": None})
            return
        if not isinstance(message, dict):
            await conn.send({"code": 2, "msg": "Invalid request: expected an object", "id": None})
            return
        method, req_id = message.get("method"), message.get("id")
        params = message.get("params") or []
        if method == "SUBSCRIBE" and isinstance(params, list):
            await conn.send({"result": None, "id": req_id})
            await self._subscribe(conn, [str(p) for p in params])
        elif method == "UNSUBSCRIBE" and isinstance(params, list):
            conn.streams.difference_update(str(p) for p in params)
            await conn.send({"result": None, "id": req_id})
            await self._notify_subscriptions()
        elif method == "LIST_SUBSCRIPTIONS":
            await conn.send({"result": sorted(conn.streams), "id": req_id})
        elif method == "SET_PROPERTY" and params[:1] == ["combined"] and len(params) == 2:
            conn.combined = bool(params[1])
            await conn.send({"result": None, "id": req_id})
        elif method == "GET_PROPERTY" and params == ["combined"]:
            await conn.send({"result": conn.combined, "id": req_id})
        else:
            await conn.send({"code": 2, "msg": f"Invalid request: method {method!r}", "id": req_id})

    async def _subscribe(self, conn: _Connection, streams: list[str]) -> None:
        new = [s for s in dict.fromkeys(streams) if s not in conn.streams]
        if conn in self._connections:  # a connection dropped meanwhile stays dropped
            conn.streams.update(new)
        await self._notify_subscriptions()
        for stream in new:
            market_id, channel = self._parse_stream(stream)
            if channel is None:
                self.unsupported_streams.append(stream)
            elif channel == "kline_1m":
                # Binance pushes the forming kline every ~2 s; a new subscriber gets it at once.
                k = self._timeline.bar_at(market_id, self.current_index)
                if k is not None:
                    event = wire.kline_event(
                        market_id, k, closed=False, event_time_ms=self.server_time_ms
                    )
                    await conn.push(stream, event)

    async def _handle_ws_api(self, request: web.Request) -> web.StreamResponse:
        """Binance's WebSocket API, its user-data stream requests only (userstream.py)."""
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = _Connection(ws, combined=False)
        self._connections.add(conn)
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await conn.send(self._ws_api_answer(conn, message.data))
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            self._connections.discard(conn)
        return ws

    def _ws_api_answer(self, conn: _Connection, text: str) -> Json:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return _ws_api_error(None, 400, -1100, f"Invalid JSON: {exc}")
        if not isinstance(message, dict):
            return _ws_api_error(None, 400, -1100, "Invalid request: expected an object")
        req_id, method = message.get("id"), message.get("method")
        params = message.get("params") or {}
        if method == "userDataStream.subscribe.signature" and isinstance(params, dict):
            try:
                if params.get("apiKey") != self._api_key:
                    raise ApiError(-2014, "API-key format invalid.", http_status=401)
                signature = params.get("signature")
                if not isinstance(signature, str):
                    raise mandatory("signature")
                signed = "&".join(
                    f"{k}={v}" for k, v in sorted(params.items()) if k != "signature"
                )  # fmt: skip
                self._check_signature(signed, signature)
            except ApiError as exc:
                return _ws_api_error(req_id, exc.http_status, exc.code, exc.msg)
            conn.user_subscription = sub = next(self._user_subscription_ids)
            return {"id": req_id, "status": 200, "result": {"subscriptionId": sub}}
        if method == "userDataStream.unsubscribe":
            conn.user_subscription = None
            return {"id": req_id, "status": 200, "result": {}}
        if method == "ping":
            return {"id": req_id, "status": 200, "result": {}}
        return _ws_api_error(req_id, 400, -1100, f"fakex does not serve method {method!r}")

    async def _announce(self) -> None:
        """Push what changed in the account's orders to every user-data subscriber."""
        reports = self._announcer.changes(self._engine.orders)
        if not reports:
            return
        for conn in list(self._connections):
            sub = conn.user_subscription
            if sub is None:
                continue
            for report in reports:
                if not await conn.send({"subscriptionId": sub, "event": report}):
                    break

    @property
    def user_subscribers(self) -> int:
        """Connections subscribed to the user-data stream now."""
        return sum(c.user_subscription is not None for c in self._connections)

    def _parse_stream(self, stream: str) -> tuple[str, str | None]:
        name, _, channel = stream.partition("@")
        market_id = name.upper()
        known = market_id in self._timeline.symbols and channel in ("kline_1m", "trade", "aggTrade")
        return market_id, channel if known else None

    async def _notify_subscriptions(self) -> None:
        async with self._subscriptions_changed:
            self._subscriptions_changed.notify_all()

    async def _broadcast(self, events: list[tuple[str, Json]]) -> None:
        for conn in list(self._connections):
            for stream, event in events:
                if stream in conn.streams and not await conn.push(stream, event):
                    break


# -- helpers -----------------------------------------------------------------------------------


def _ws_api_error(req_id: Any, status: int, code: int, msg: str) -> Json:
    return {"id": req_id, "status": status, "error": {"code": code, "msg": msg}}


def _json_response(
    payload: Json, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def _close_quietly(ws: web.WebSocketResponse) -> None:
    try:
        await ws.close(code=1001, message=b"fakex: connection dropped")
    except (TimeoutError, ConnectionError, RuntimeError):
        pass


def _split_signature(raw_query: str, body: str) -> tuple[str, str | None]:
    """Binance signs the query string followed by the body, `signature` left out."""
    signature = None
    kept_parts = []
    for chunk in (raw_query, body):
        kept = []
        for pair in chunk.split("&") if chunk else []:
            if pair.startswith("signature="):
                signature = pair.removeprefix("signature=")
            else:
                kept.append(pair)
        kept_parts.append("&".join(kept))
    return "".join(kept_parts), signature


def _symbols_param(params: Params) -> list[str] | None:
    if params.get("symbol"):
        return [params["symbol"]]
    if params.get("symbols"):
        try:
            symbols = orjson.loads(params["symbols"])
        except orjson.JSONDecodeError:
            raise ApiError(-1100, "Illegal characters found in parameter 'symbols'.") from None
        if not isinstance(symbols, list):
            raise ApiError(-1100, "Illegal characters found in parameter 'symbols'.")
        return [str(s) for s in symbols]
    return None


def _in_time_range(time_ms: int, params: Params) -> bool:
    start = wire.optional_int(params, "startTime")
    end = wire.optional_int(params, "endTime")
    return (start is None or time_ms >= start) and (end is None or time_ms <= end)


def _list_limit(params: Params) -> int:
    limit = wire.optional_int(params, "limit") or _LIST_DEFAULT_LIMIT
    if not 1 <= limit <= _LIST_MAX_LIMIT:
        raise ApiError(-1130, "Invalid data sent for a parameter.")
    return limit


__all__ = ["FakeExchange", "FakeMarket"]
