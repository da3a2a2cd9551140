"""The ccxt / ccxt.pro client, built from settings and pointed at Binance, a testnet or a fake.

The subclass keeps one thing ccxt's unified candles drop: the kline's closed flag (`x`), and
with it the taker-buy volume and trade count, so a live bar carries the same fields as a
replayed one and a bar is acted on exactly when the exchange closes it. It also notes two
moments the decision latency is measured between: when a closed kline's frame was handled
(`RECEIVED_NS`, in the kept payload) and when an order request left (`first_order_sent_ns`).

Listeners (`kline_listener`, `trade_listener`) hear of each closed kline and each trade print
while its frame is handled, so the bar source can queue it at once rather than after ccxt's
watch future resolves and a waiting task wakes: several hops of the event loop per frame, each
behind whatever else is ready (see scalpd/live/source.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import ccxt.pro

from scalpd.config.settings import ExchangeSettings, MarketRules

# Closed klines kept per symbol between two reads by the source: far more than can pile up.
_CLOSED_KLINES_KEPT = 10_000
# Key under which a kept kline payload carries time.monotonic_ns() of its frame's arrival.
RECEIVED_NS = "_received_ns"
_ORDER_PATH = "/api/v3/order"


class RequestPacer:
    """Client-side pacing of REST requests by their weight: a token bucket holding up to
    `burst_weight`, refilled at `weight_per_s`. A request waits only when the bucket is short.

    ccxt's own leaky bucket refills only while a request waits, so a bucket emptied once
    stays empty and every request then waits for the weight of the one before it (a 4-weight
    order lookup made the next order wait 200 ms). This one refills with the time that passed.
    """

    def __init__(
        self, weight_per_s: float, burst_weight: float, clock: Any = time.monotonic
    ) -> None:
        self.weight_per_s = weight_per_s
        self.burst_weight = burst_weight
        self._clock = clock
        self._tokens = burst_weight
        self._last_s = clock()

    def wait_s(self, cost: float) -> float:
        """Take `cost` from the bucket; the seconds to wait before sending (0: at once)."""
        now = self._clock()
        self._tokens = min(
            self.burst_weight, self._tokens + (now - self._last_s) * self.weight_per_s
        )
        self._last_s = now
        self._tokens -= cost
        return 0.0 if self._tokens >= 0 else -self._tokens / self.weight_per_s


class ScalpdBinance(ccxt.pro.binance):
    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config or {})
        # Market id ("BTCUSDT") -> raw closed kline payloads, oldest first.
        self.closed_klines: dict[str, deque[dict[str, Any]]] = {}
        # monotonic_ns of the first order placement sent since the daemon reset it to None.
        self.first_order_sent_ns: int | None = None
        self.pacer: RequestPacer | None = None  # None: ccxt's own rate limiter
        # Called with the market id once a closed kline is kept in `closed_klines`.
        self.kline_listener: Callable[[str], None] | None = None
        # Called with the unified symbol and ccxt's parsed trade of each trade print.
        self.trade_listener: Callable[[str, dict[str, Any]], None] | None = None

    async def throttle(self, cost=None):  # type: ignore[override]
        if self.pacer is None:
            return await super().throttle(cost)
        wait_s = self.pacer.wait_s(1.0 if cost is None else float(cost))
        if wait_s > 0:
            await asyncio.sleep(wait_s)

    async def fetch(self, url, method="GET", headers=None, body=None):  # type: ignore[override]
        if (
            self.first_order_sent_ns is None
            and method == "POST"
            and url.partition("?")[0].endswith(_ORDER_PATH)
        ):
            self.first_order_sent_ns = time.monotonic_ns()
        return await super().fetch(url, method, headers, body)

    def handle_ohlcv(self, client: Any, message: dict) -> None:
        kline = message.get("k") if isinstance(message, dict) else None
        if isinstance(kline, dict) and kline.get("x") is True and message.get("e") == "kline":
            market_id = kline.get("s")
            if isinstance(market_id, str):
                queue = self.closed_klines.get(market_id)
                if queue is None:
                    queue = self.closed_klines[market_id] = deque(maxlen=_CLOSED_KLINES_KEPT)
                kline[RECEIVED_NS] = time.monotonic_ns()
                queue.append(kline)
                if self.kline_listener is not None:
                    self.kline_listener(market_id)
        super().handle_ohlcv(client, message)

    def handle_trade(self, client: Any, message: dict) -> None:
        super().handle_trade(client, message)
        listener = self.trade_listener
        if listener is not None:
            # The market exactly as ccxt resolved it, so the symbol is the cache's key.
            spot = "spot" if self.is_spot_url(client) else "contract"
            symbol = self.safe_market(self.safe_string(message, "s"), None, None, spot)["symbol"]
            cached = self.trades.get(symbol)
            if cached:
                listener(symbol, cached[-1])


def point_at(exchange: ccxt.Exchange, rest_url: str | None, ws_url: str | None) -> None:
    """Send every REST and WebSocket URL of `exchange` to another host, keeping the paths.

    All families (sapi, fapi, ...) move, not only spot's: an unexpected call must reach the
    configured host, never the real exchange.
    """

    def move(url: str, base: str) -> str:
        return base.rstrip("/") + urlsplit(url).path

    def walk(node: dict[str, Any], in_ws: bool) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, in_ws or key == "ws")
            elif isinstance(value, str):
                if in_ws and ws_url:
                    node[key] = move(value, ws_url)
                elif not in_ws and rest_url:
                    node[key] = move(value, rest_url)

    walk(exchange.urls["api"], False)


def spot_only(exchange: ccxt.Exchange) -> None:
    """Keep ccxt on the spot API: load_markets would otherwise also ask the futures and margin
    endpoints; and map Binance's spot error codes whatever the host (ccxt maps them only for
    its own spot host), so a filter failure is InvalidOrder against a testnet or a fake too."""
    exchange.options["defaultType"] = "spot"
    exchange.options["fetchMarkets"] = {"types": ["spot"]}
    exchange.options["fetchCurrencies"] = False
    exchange.options["fetchMargins"] = False
    exchange.get_exceptions_by_url = lambda url, kind: exchange.exceptions["spot"].get(kind, {})


def make_exchange(settings: ExchangeSettings) -> ScalpdBinance:
    config: dict[str, Any] = {"timeout": settings.request_timeout_ms, "enableRateLimit": True}
    if settings.api_key is not None and settings.api_secret is not None:
        config["apiKey"] = settings.api_key.get_secret_value()
        config["secret"] = settings.api_secret.get_secret_value()
    exchange = ScalpdBinance(config)
    exchange.pacer = RequestPacer(1000.0 / exchange.rateLimit, settings.rate_limit_burst_weight)
    spot_only(exchange)
    if settings.rest_url or settings.ws_url:
        point_at(exchange, settings.rest_url, settings.ws_url)
    return exchange


def market_rules(exchange: ccxt.Exchange, symbol: str) -> MarketRules:
    """The exchange's filters for `symbol` (after load_markets), as the sim broker uses them."""
    market = exchange.market(symbol)
    info = {f["filterType"]: f for f in market["info"].get("filters", [])}
    price = info.get("PRICE_FILTER", {})
    lot = info.get("LOT_SIZE", {})
    notional = info.get("NOTIONAL") or info.get("MIN_NOTIONAL") or {}
    extra: dict[str, float] = {}
    max_qty = lot.get("maxQty", market["limits"]["amount"]["max"])
    # MarketRules gains max_qty with the simulator's max-quantity check; read it once it has.
    if "max_qty" in MarketRules.model_fields and max_qty is not None:
        extra["max_qty"] = float(max_qty)
    return MarketRules(
        tick_size=float(price.get("tickSize", market["precision"]["price"])),
        step_size=float(lot.get("stepSize", market["precision"]["amount"])),
        min_qty=float(lot.get("minQty", market["limits"]["amount"]["min"] or 0) or 1e-12),
        min_notional_usdt=float(notional.get("minNotional", market["limits"]["cost"]["min"] or 0)),
        **extra,
    )
