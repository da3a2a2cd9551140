"""Order matching of the fake exchange: pure rules and state, no I/O.

Fill rules (the replay simulator fills the same way, so a live run against the fake and a
replay of the same bars agree):
- The "current bar" is the one after the last closed bar. A MARKET order fills at once,
  completely, at the current bar's open, as a taker. So does a LIMIT order that is marketable
  when it arrives (a buy at or above the open, a sell at or below it).
- Resting orders are evaluated when the current bar closes, against its open/high/low/volume;
  orders placed during the bar are evaluated against it.
  - LIMIT / LIMIT_MAKER rest in the book's queue: with `limit_queue="through"` (the default) a
    sell at P fills only when the high trades above P (a buy: the low below P), because orders
    ahead of ours at P may take all the volume traded at P; `"touch"` (high >= P) assumes the
    front of the queue. They fill at P, as a maker, and at most `max_participation` of the
    bar's volume (floored to the lot step) each bar: the rest stays on the book
    (PARTIALLY_FILLED) for the next bars.
  - STOP_LOSS sell at stop S: triggers when low <= S, fills completely at min(S, open) as a
    taker; the buy side mirrors it (high >= S, at max(S, open)). TAKE_PROFIT (a stop-market
    triggered by a favourable move) fills at max(S, open) for a sell.
  - STOP_LOSS_LIMIT / TAKE_PROFIT_LIMIT: the trigger above turns them into a LIMIT at their
    price, which is evaluated from the next bar on (a minute bar cannot say whether the limit
    was reachable after the trigger within the bar), at max(P, open) for a sell: the limit was
    marketable when it appeared.
  - An OCO is evaluated stop leg first: when one bar touches both legs the stop wins (a minute
    bar does not say which came first; the worse outcome is the honest one) and the other leg
    is EXPIRED, as Binance reports it. When the limit leg fills only in part, the stop leg is
    EXPIRED at once and the rest of the limit leg keeps resting (Binance's OCO rule). An OCO
    locks its quantity once, not once per leg, and is rejected (-2010, insufficient balance)
    when the free base balance is below its quantity.
- Fees, as Binance charges them (`FeeSchedule`): maker or taker rate on the fill's notional,
  taken from the asset the fill RECEIVES: the base asset on a buy (the account gets
  qty - fee), the quote asset on a sell. With `bnb=True` the fee is `1 - bnb_discount` of that
  value, paid in BNB at the fixed `bnb_price_usdt` (BNB's price moves are not modelled); when
  the free BNB balance cannot pay it, the fill pays the normal fee in the normal asset, as
  Binance falls back. A buy locks price * qty of the quote asset, fee not included (it is paid
  from what is received).

Differences from the replay simulator, by design: none in the rules above; the simulator adds
slippage and latency to taker fills, which the fake does not model (its market orders meet the
open exactly), so a lock-step comparison sets those to zero.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal, NamedTuple

BUY, SELL = "BUY", "SELL"
SIDES = (BUY, SELL)

LIMIT_TYPES = frozenset({"LIMIT", "LIMIT_MAKER"})
STOP_TYPES = frozenset({"STOP_LOSS", "STOP_LOSS_LIMIT"})
TAKE_PROFIT_TYPES = frozenset({"TAKE_PROFIT", "TAKE_PROFIT_LIMIT"})
# Types that become a limit order once their stop price is touched.
TRIGGERED_LIMIT_TYPES = frozenset({"STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"})
ORDER_TYPES = ("LIMIT", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT")
ORDER_TYPES += ("TAKE_PROFIT_LIMIT", "LIMIT_MAKER")
TIME_IN_FORCE = frozenset({"GTC", "IOC", "FOK"})
OPEN_STATUSES = frozenset({"NEW", "PARTIALLY_FILLED"})

# Filter bounds Binance publishes besides the ones FakeMarket carries.
MAX_PRICE = Decimal("10000000")
MAX_QTY = Decimal("9000000")  # MARKET_LOT_SIZE's
MAX_NOTIONAL = Decimal("9000000")

# Balances are floats (as in the replay); this absorbs their rounding in comparisons.
_BALANCE_EPS = 1e-9
_CLIENT_ID_RE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
_CLIENT_ID_RANGE = r"^[\.A-Z\:/a-z0-9_-]{1,36}$"

MSG_INSUFFICIENT = "Account has insufficient balance for requested action."
MSG_DUPLICATE = "Duplicate order sent."
MSG_NO_ORDER = "Order does not exist."
MSG_UNKNOWN_ORDER = "Unknown order sent."
MSG_WOULD_TAKE = "Order would immediately match and take."
MSG_WOULD_TRIGGER = "Stop price would trigger immediately."
MSG_OCO_PRICES = "The relationship of the prices for the orders is not correct."
MSG_MARKET_CLOSED = "Market is closed."

KNOWN_QUOTES = ("USDT", "USDC", "BUSD", "FDUSD", "BTC", "ETH", "BNB")


class ApiError(Exception):
    """A request the exchange refuses, with Binance's error code, message and HTTP status."""

    def __init__(self, code: int, msg: str, http_status: int = 400) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.http_status = http_status


@dataclass(frozen=True)
class FakeMarket:
    """One spot market's filters, with Binance's BTC/USDT values as defaults."""

    symbol: str = "BTC/USDT"
    tick_size: float = 0.01
    step_size: float = 0.00001
    min_qty: float = 0.00001
    min_notional: float = 5.0
    max_qty: float = 9_000_000.0  # LOT_SIZE maxQty

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/")[1]

    @property
    def market_id(self) -> str:
        """Binance's symbol: "BTC/USDT" -> "BTCUSDT"."""
        return self.base + self.quote


class BarPrices(NamedTuple):
    open: float
    high: float
    low: float
    close: float
    volume: float = math.inf  # base units traded; caps resting limit fills (participation)


LimitQueue = Literal["through", "touch"]


@dataclass(frozen=True)
class FeeSchedule:
    """The account's fee rates, as Binance charges them (see the module docstring)."""

    maker_bps: float = 10.0
    taker_bps: float = 10.0
    bnb: bool = False  # pay fees in BNB ("use BNB to pay for fees")
    bnb_price_usdt: float = 600.0  # fixed conversion price: BNB's moves are not modelled
    bnb_discount: float = 0.25

    def __post_init__(self) -> None:
        if self.maker_bps < 0 or self.taker_bps < 0:
            raise ValueError("fee rates must not be negative")
        if self.bnb_price_usdt <= 0:
            raise ValueError("bnb_price_usdt must be positive")
        if not 0 <= self.bnb_discount < 1:
            raise ValueError("bnb_discount must be in [0, 1)")


class Outcome(NamedTuple):
    """What one bar does to a resting order: it fills at `price`, or its stop triggers."""

    kind: Literal["fill", "trigger"]
    price: float


# -- the fill rules (pure) ---------------------------------------------------------------------


def favourable_touch(side: str, level: float, bar: BarPrices) -> float | None:
    """Fill price of an order waiting for the price to move its way (a limit or take-profit):
    a sell at `level` needs the high to reach it, a buy needs the low to."""
    if side == SELL:
        return max(level, bar.open) if bar.high >= level else None
    return min(level, bar.open) if bar.low <= level else None


def adverse_touch(side: str, level: float, bar: BarPrices) -> float | None:
    """Fill price of a stop-loss: a sell stop triggers when the low reaches it, a buy stop when
    the high does; a gap through the stop fills at the (worse) open."""
    if side == SELL:
        return min(level, bar.open) if bar.low <= level else None
    return max(level, bar.open) if bar.high >= level else None


def queued_limit_fill(side: str, level: float, bar: BarPrices, queue: LimitQueue) -> float | None:
    """Fill price of a limit order resting in the book's queue at `level`: its own price (the
    maker's price), once the bar trades through it ("through") or reaches it ("touch")."""
    if side == SELL:
        hit = bar.high > level if queue == "through" else bar.high >= level
    else:
        hit = bar.low < level if queue == "through" else bar.low <= level
    return level if hit else None


def evaluate(
    order_type: str,
    side: str,
    price: float,
    stop_price: float,
    triggered: bool,
    bar: BarPrices,
    queue: LimitQueue = "through",
) -> Outcome | None:
    """What `bar` does to one resting order (None: nothing)."""
    if order_type in LIMIT_TYPES:
        hit = queued_limit_fill(side, price, bar, queue)
        return None if hit is None else Outcome("fill", hit)
    if order_type in TRIGGERED_LIMIT_TYPES and triggered:
        hit = favourable_touch(side, price, bar)
        return None if hit is None else Outcome("fill", hit)
    if order_type in STOP_TYPES:
        hit = adverse_touch(side, stop_price, bar)
    elif order_type in TAKE_PROFIT_TYPES:
        hit = favourable_touch(side, stop_price, bar)
    else:
        return None
    if hit is None:
        return None
    if order_type in TRIGGERED_LIMIT_TYPES:
        return Outcome("trigger", hit)
    return Outcome("fill", hit)


def oco_legs_in_priority(legs: Iterable[Order]) -> list[Order]:
    """Stop legs first: when one bar touches both legs, the stop wins."""
    return sorted(legs, key=lambda leg: 0 if leg.type in STOP_TYPES else 1)


def commission(
    side: str,
    qty: float,
    price: float,
    is_maker: bool,
    market: FakeMarket,
    fees: FeeSchedule,
    bnb_free: float,
) -> tuple[float, str]:
    """(amount, asset) of the fee on one fill, Binance's way: in BNB when the account pays in
    BNB and has enough free BNB, else in the asset the fill receives."""
    bps = fees.maker_bps if is_maker else fees.taker_bps
    notional = qty * price
    if fees.bnb:
        in_bnb = notional * bps / 1e4 * (1 - fees.bnb_discount) / fees.bnb_price_usdt
        if bnb_free >= in_bnb - _BALANCE_EPS:
            return in_bnb, "BNB"
    if side == BUY:
        return qty * bps / 1e4, market.base
    return notional * bps / 1e4, market.quote


def participation_cap(volume: float, max_participation: float | None, market: FakeMarket) -> float:
    """Most a resting limit order can fill in a bar of `volume`: a share of what traded, in
    whole lot steps."""
    if max_participation is None or math.isinf(volume):
        return math.inf
    cap = floor_to_step(to_decimal(max(volume, 0.0) * max_participation), market)
    return float(cap)


# -- filters (Decimal, exactly as the exchange checks strings) ----------------------------------


def to_decimal(value: float) -> Decimal:
    # repr gives the shortest string that round-trips: 0.01 -> Decimal("0.01"), not 0.0100000002
    return Decimal(repr(float(value)))


def check_price_filter(market: FakeMarket, price: Decimal) -> None:
    tick = to_decimal(market.tick_size)
    if price < tick or price > MAX_PRICE or (price - tick) % tick != 0:
        raise ApiError(-1013, "Filter failure: PRICE_FILTER")


def check_lot_size(market: FakeMarket, qty: Decimal) -> None:
    min_qty = to_decimal(market.min_qty)
    step = to_decimal(market.step_size)
    if qty < min_qty or qty > to_decimal(market.max_qty) or (qty - min_qty) % step != 0:
        raise ApiError(-1013, "Filter failure: LOT_SIZE")


def check_notional(market: FakeMarket, qty: Decimal, price: Decimal) -> None:
    notional = qty * price
    if notional < to_decimal(market.min_notional) or notional > MAX_NOTIONAL:
        raise ApiError(-1013, "Filter failure: NOTIONAL")


def floor_to_step(qty: Decimal, market: FakeMarket) -> Decimal:
    step = to_decimal(market.step_size)
    return (qty / step).to_integral_value(rounding="ROUND_FLOOR") * step


def check_client_order_id(name: str, value: str) -> None:
    if not _CLIENT_ID_RE.match(value):
        raise ApiError(
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '{_CLIENT_ID_RANGE}'.",
        )


def parse_decimal(name: str, raw: str | None) -> Decimal | None:
    """A numeric parameter as Binance accepts it (plain decimal, no sign or exponent)."""
    if raw is None or raw == "":
        return None
    if not re.fullmatch(r"[0-9]{1,20}(\.[0-9]{1,20})?", raw):
        raise ApiError(
            -1100,
            f"Illegal characters found in parameter '{name}'; "
            r"legal range is '^([0-9]{1,20})(\.[0-9]{1,20})?$'.",
        )
    try:
        return Decimal(raw)
    except InvalidOperation:  # pragma: no cover - the regex already excludes it
        raise ApiError(-1100, f"Illegal characters found in parameter '{name}'.") from None


def mandatory(name: str) -> ApiError:
    return ApiError(
        -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


# -- state -------------------------------------------------------------------------------------


@dataclass
class Reservation:
    """Balance locked for resting orders; an OCO's legs share one."""

    asset: str
    amount: float
    released: bool = False


@dataclass
class Fill:
    trade_id: int
    order_id: int
    order_list_id: int
    market_id: str
    side: str
    price: float
    qty: float
    commission: float
    commission_asset: str
    time_ms: int
    is_maker: bool

    @property
    def quote_qty(self) -> float:
        return self.price * self.qty


@dataclass
class Order:
    order_id: int
    client_order_id: str
    market_id: str
    side: str
    type: str
    qty: float
    price: float  # limit price, 0.0 when the type has none
    stop_price: float  # 0.0 when the type has none
    time_in_force: str  # Binance shows "GTC" even for types that take none
    time_ms: int
    update_time_ms: int
    status: str = "NEW"
    executed_qty: float = 0.0
    cum_quote_qty: float = 0.0
    orig_quote_order_qty: float = 0.0
    order_list_id: int = -1
    triggered: bool = False
    fills: list[Fill] = field(default_factory=list)
    reservation: Reservation | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def is_working(self) -> bool:
        """On the book: stops are not until they trigger."""
        untriggered = self.type in STOP_TYPES | TAKE_PROFIT_TYPES and not self.triggered
        return self.is_open and not untriggered


@dataclass
class OrderList:
    order_list_id: int
    list_client_order_id: str
    market_id: str
    legs: list[Order]  # in Binance's report order: below leg first
    transaction_time_ms: int
    list_status_type: str = "EXEC_STARTED"
    list_order_status: str = "EXECUTING"

    @property
    def is_open(self) -> bool:
        return self.list_order_status == "EXECUTING"


@dataclass(frozen=True)
class OrderRequest:
    market_id: str
    side: str
    type: str
    quantity: Decimal | None = None
    quote_order_qty: Decimal | None = None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: str | None = None
    client_order_id: str | None = None


@dataclass(frozen=True)
class OcoLegRequest:
    type: str
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: str | None = None
    client_order_id: str | None = None


@dataclass(frozen=True)
class OcoRequest:
    market_id: str
    side: str
    quantity: Decimal
    above: OcoLegRequest
    below: OcoLegRequest
    list_client_order_id: str | None = None


class Ledger:
    """Free and locked balance per asset."""

    def __init__(self, balances: Mapping[str, float]) -> None:
        self.free: dict[str, float] = {a: float(v) for a, v in balances.items()}
        self.locked: dict[str, float] = {a: 0.0 for a in balances}

    def ensure(self, asset: str) -> None:
        self.free.setdefault(asset, 0.0)
        self.locked.setdefault(asset, 0.0)

    def total(self, asset: str) -> float:
        return self.free.get(asset, 0.0) + self.locked.get(asset, 0.0)

    def has_free(self, asset: str, amount: float) -> bool:
        return self.free.get(asset, 0.0) >= amount - _BALANCE_EPS

    def reserve(self, asset: str, amount: float) -> Reservation:
        if not self.has_free(asset, amount):
            raise ApiError(-2010, MSG_INSUFFICIENT)
        self.ensure(asset)
        self.free[asset] -= amount
        self.locked[asset] += amount
        return Reservation(asset, amount)

    def release(self, reservation: Reservation | None) -> None:
        if reservation is None or reservation.released:
            return
        reservation.released = True
        self.free[reservation.asset] += reservation.amount
        self.locked[reservation.asset] -= reservation.amount
        if abs(self.locked[reservation.asset]) < _BALANCE_EPS:
            self.locked[reservation.asset] = 0.0

    def add(self, asset: str, amount: float) -> None:
        self.ensure(asset)
        self.free[asset] += amount


class MatchingEngine:
    """Orders, fills and balances of one account. The caller supplies prices and times."""

    def __init__(
        self,
        markets: Mapping[str, FakeMarket],
        balances: Mapping[str, float],
        fees: FeeSchedule | None = None,
        *,
        limit_queue: LimitQueue = "through",
        max_participation: float | None = None,
    ) -> None:
        if limit_queue not in ("through", "touch"):
            raise ValueError(f"limit_queue must be 'through' or 'touch', not {limit_queue!r}")
        if max_participation is not None and not 0 < max_participation <= 1:
            raise ValueError("max_participation must be in (0, 1], or None for no cap")
        self.markets = {m.market_id: m for m in markets.values()}
        self.ledger = Ledger(balances)
        for market in self.markets.values():
            self.ledger.ensure(market.base)
            self.ledger.ensure(market.quote)
        self.fees = fees or FeeSchedule()
        self.limit_queue: LimitQueue = limit_queue
        self.max_participation = max_participation
        self.orders: list[Order] = []
        self.order_lists: list[OrderList] = []
        self.fills: list[Fill] = []
        self._open: dict[int, Order] = {}  # by order id, in placement order
        self._lists: dict[int, OrderList] = {}
        self._next_order_id = 1
        self._next_trade_id = 1
        self._next_list_id = 1

    # -- placing ---------------------------------------------------------------------------

    def market(self, market_id: str) -> FakeMarket:
        market = self.markets.get(market_id)
        if market is None:
            raise ApiError(-1121, "Invalid symbol.")
        return market

    def place_order(self, req: OrderRequest, *, last_price: float | None, now_ms: int) -> Order:
        """Validate, lock balance and book one order; a MARKET (or IOC/FOK) order executes now
        against `last_price` (the current bar's open; None when no bar is open)."""
        market = self.market(req.market_id)
        _check_side(req.side)
        if req.type not in ORDER_TYPES:
            raise ApiError(-1116, "Invalid orderType.")
        _check_required(req)
        if req.type == "MARKET" and last_price is None:
            raise ApiError(-1013, MSG_MARKET_CLOSED)
        qty, ref_price = self._validate_filters(market, req, last_price)
        if req.client_order_id is not None:
            check_client_order_id("newClientOrderId", req.client_order_id)
            self._check_unique_client_id([req.client_order_id])
        if last_price is not None:
            _check_not_immediate(req.type, req.side, req.price, req.stop_price, last_price)
        immediate = req.type == "MARKET" or req.time_in_force in ("IOC", "FOK")
        reservation = None
        if immediate:
            self._check_can_pay_now(market, req.side, float(qty), float(ref_price))
        else:
            reservation = self._reserve(market, req.side, float(qty), float(ref_price))
        order = self._new_order(req, market, float(qty), now_ms, reservation)
        if req.quote_order_qty is not None:
            order.orig_quote_order_qty = float(req.quote_order_qty)
        if req.type == "MARKET":
            assert last_price is not None
            self._execute(order, last_price, now_ms, is_maker=False)
        elif immediate:
            self._execute_or_expire_now(order, last_price, now_ms)
        elif req.type == "LIMIT" and _marketable(order, last_price):
            # It takes what rests on the other side: the open, as a taker, in full.
            assert last_price is not None
            self._execute(order, last_price, now_ms, is_maker=False)
        return order

    def place_oco(self, req: OcoRequest, *, last_price: float | None, now_ms: int) -> OrderList:
        """Validate, lock the quantity once and book both legs of an OCO."""
        market = self.market(req.market_id)
        _check_side(req.side)
        _check_oco_types(req.side, req.above.type, req.below.type)
        _check_oco_filters(market, req)
        self._check_oco_client_ids(req)
        if last_price is not None:
            self._check_oco_prices(req, last_price)
        qty = float(req.quantity)
        reference = max(float(_leg_reference_price(leg)) for leg in (req.above, req.below))
        reservation = self._reserve(market, req.side, qty, reference)
        list_id = self._next_list_id
        self._next_list_id += 1
        legs = []
        for leg in (req.below, req.above):
            order_req = OrderRequest(
                market_id=req.market_id,
                side=req.side,
                type=leg.type,
                quantity=req.quantity,
                price=leg.price,
                stop_price=leg.stop_price,
                time_in_force=leg.time_in_force,
                client_order_id=leg.client_order_id,
            )
            order = self._new_order(order_req, market, qty, now_ms, reservation)
            order.order_list_id = list_id
            legs.append(order)
        order_list = OrderList(
            list_id, req.list_client_order_id or f"fakexlist{list_id}", req.market_id, legs, now_ms
        )
        self.order_lists.append(order_list)
        self._lists[list_id] = order_list
        return order_list

    # -- cancelling and finding -----------------------------------------------------------

    def find_order(
        self, market_id: str, order_id: int | None, client_order_id: str | None
    ) -> Order:
        self.market(market_id)
        if order_id is None and client_order_id is None:
            raise ApiError(
                -1102,
                "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!",
            )
        # Newest first: a client id can be reused once its first order is closed.
        for order in reversed(self.orders):
            if order.market_id != market_id:
                continue
            if order_id is not None and order.order_id != order_id:
                continue
            if client_order_id is not None and order.client_order_id != client_order_id:
                continue
            return order
        raise ApiError(-2013, MSG_NO_ORDER)

    def find_order_list(self, order_list_id: int | None, client_list_id: str | None) -> OrderList:
        if order_list_id is None and client_list_id is None:
            raise ApiError(
                -1102,
                "Param 'orderListId' or 'listClientOrderId' must be sent, "
                "but both were empty/null!",
            )
        for order_list in reversed(self.order_lists):
            if order_list_id is not None and order_list.order_list_id != order_list_id:
                continue
            if client_list_id is not None and order_list.list_client_order_id != client_list_id:
                continue
            return order_list
        raise ApiError(-2011, "Order list does not exist.")

    def cancel_order(
        self, market_id: str, order_id: int | None, client_order_id: str | None, now_ms: int
    ) -> Order:
        """Cancel one open order; a leg of an order list cancels the whole list (Binance)."""
        try:
            order = self.find_order(market_id, order_id, client_order_id)
        except ApiError as exc:
            if exc.code == -2013:
                raise ApiError(-2011, MSG_UNKNOWN_ORDER) from None
            raise
        if not order.is_open:
            raise ApiError(-2011, MSG_UNKNOWN_ORDER)
        if order.order_list_id >= 0:
            self._cancel_list(self._lists[order.order_list_id], now_ms)
        else:
            self._close(order, "CANCELED", now_ms)
        return order

    def cancel_order_list(
        self, market_id: str, order_list_id: int | None, client_list_id: str | None, now_ms: int
    ) -> OrderList:
        self.market(market_id)
        order_list = self.find_order_list(order_list_id, client_list_id)
        if order_list.market_id != market_id or not order_list.is_open:
            raise ApiError(-2011, MSG_UNKNOWN_ORDER)
        self._cancel_list(order_list, now_ms)
        return order_list

    def cancel_all(self, market_id: str, now_ms: int) -> list[Order | OrderList]:
        self.market(market_id)
        cancelled: list[Order | OrderList] = []
        for order in self.open_orders(market_id):
            if not order.is_open:
                continue  # the other leg of a list cancelled just before
            if order.order_list_id >= 0:
                order_list = self._lists[order.order_list_id]
                self._cancel_list(order_list, now_ms)
                cancelled.append(order_list)
            else:
                self._close(order, "CANCELED", now_ms)
                cancelled.append(order)
        if not cancelled:
            raise ApiError(-2011, MSG_UNKNOWN_ORDER)
        return cancelled

    def open_orders(self, market_id: str | None = None) -> list[Order]:
        return [o for o in self._open.values() if market_id in (None, o.market_id)]

    def open_order_lists(self) -> list[OrderList]:
        return [lst for lst in self._lists.values() if lst.is_open]

    # -- bars ------------------------------------------------------------------------------

    def close_bar(self, market_id: str, bar: BarPrices, close_time_ms: int) -> list[Order]:
        """Evaluate the market's resting orders against a closed bar; the orders it changed."""
        changed: list[Order] = []
        seen_lists: set[int] = set()
        for order in self.open_orders(market_id):
            if order.order_list_id >= 0:
                if order.order_list_id not in seen_lists:
                    seen_lists.add(order.order_list_id)
                    order_list = self._lists[order.order_list_id]
                    changed += self._evaluate_list(order_list, bar, close_time_ms)
            elif order.is_open:
                changed += self._evaluate_single(order, bar, close_time_ms)
        return changed

    def _outcome(self, order: Order, bar: BarPrices) -> Outcome | None:
        return evaluate(
            order.type,
            order.side,
            order.price,
            order.stop_price,
            order.triggered,
            bar,
            self.limit_queue,
        )

    def _fill_on_bar(self, order: Order, price: float, bar: BarPrices, time_ms: int) -> bool:
        """Fill what `bar` lets `order` fill at `price`; False when its volume allows none."""
        if order.type not in LIMIT_TYPES:
            self._execute(order, price, time_ms, is_maker=_rests_as_limit(order))
            return True
        market = self.markets[order.market_id]
        cap = participation_cap(bar.volume, self.max_participation, market)
        qty = min(order.qty - order.executed_qty, cap)
        if qty <= _BALANCE_EPS:
            return False
        self._execute(order, price, time_ms, is_maker=True, qty=qty)
        return True

    def _evaluate_single(self, order: Order, bar: BarPrices, time_ms: int) -> list[Order]:
        outcome = self._outcome(order, bar)
        if outcome is None:
            return []
        if outcome.kind == "trigger":
            order.triggered = True
            order.update_time_ms = time_ms
        elif not self._fill_on_bar(order, outcome.price, bar, time_ms):
            return []
        return [order]

    def _evaluate_list(self, order_list: OrderList, bar: BarPrices, time_ms: int) -> list[Order]:
        open_legs = [leg for leg in order_list.legs if leg.is_open]
        for leg in oco_legs_in_priority(open_legs):
            outcome = self._outcome(leg, bar)
            if outcome is None:
                continue
            others = [o for o in open_legs if o is not leg]
            if outcome.kind == "trigger":
                leg.triggered = True
                leg.update_time_ms = time_ms
            elif not self._fill_on_bar(leg, outcome.price, bar, time_ms):
                continue
            # Any execution of one leg, even in part, expires the other (Binance's OCO rule).
            for other in others:
                self._close(other, "EXPIRED", time_ms, release=False)
            if not leg.is_open:
                order_list.list_status_type = "ALL_DONE"
                order_list.list_order_status = "ALL_DONE"
            return [leg, *others]
        return []

    # -- internals -------------------------------------------------------------------------

    def _validate_filters(
        self, market: FakeMarket, req: OrderRequest, last_price: float | None
    ) -> tuple[Decimal, Decimal]:
        """Quantity and the price its notional is judged at, after Binance's filters."""
        for price in (req.price, req.stop_price):
            if price is not None:
                check_price_filter(market, price)
        if req.type == "MARKET":
            ref = to_decimal(last_price) if last_price is not None else Decimal(0)
        elif req.price is not None:
            ref = req.price
        else:
            assert req.stop_price is not None
            ref = req.stop_price
        if req.quantity is not None:
            qty = req.quantity
        else:
            assert req.quote_order_qty is not None
            qty = floor_to_step(req.quote_order_qty / ref, market) if ref > 0 else Decimal(0)
        check_lot_size(market, qty)
        if ref > 0:
            check_notional(market, qty, ref)
        return qty, ref

    def _check_unique_client_id(self, client_ids: list[str]) -> None:
        open_ids = {o.client_order_id for o in self._open.values()}
        if any(c in open_ids for c in client_ids):
            raise ApiError(-2010, MSG_DUPLICATE)

    def _check_can_pay_now(self, market: FakeMarket, side: str, qty: float, price: float) -> None:
        asset, amount = (market.quote, qty * price) if side == BUY else (market.base, qty)
        if not self.ledger.has_free(asset, amount):
            raise ApiError(-2010, MSG_INSUFFICIENT)

    def _reserve(self, market: FakeMarket, side: str, qty: float, price: float) -> Reservation:
        # The fee is paid from what the fill receives (or in BNB), so it is not locked.
        if side == BUY:
            return self.ledger.reserve(market.quote, qty * price)
        return self.ledger.reserve(market.base, qty)

    def _check_oco_client_ids(self, req: OcoRequest) -> None:
        named = (
            ("listClientOrderId", req.list_client_order_id),
            ("aboveClientOrderId", req.above.client_order_id),
            ("belowClientOrderId", req.below.client_order_id),
        )
        for name, value in named:
            if value is not None:
                check_client_order_id(name, value)
        legs = [c for c in (req.above.client_order_id, req.below.client_order_id) if c]
        if len(set(legs)) != len(legs):
            raise ApiError(-2010, MSG_DUPLICATE)
        self._check_unique_client_id(legs)
        if req.list_client_order_id is not None and any(
            lst.list_client_order_id == req.list_client_order_id and lst.is_open
            for lst in self._lists.values()
        ):
            raise ApiError(-2010, MSG_DUPLICATE)

    def _check_oco_prices(self, req: OcoRequest, last_price: float) -> None:
        above = float(_leg_reference_price(req.above))
        below = float(_leg_reference_price(req.below))
        if not below < last_price < above:
            raise ApiError(-2010, MSG_OCO_PRICES)

    def _new_order(
        self,
        req: OrderRequest,
        market: FakeMarket,
        qty: float,
        now_ms: int,
        reservation: Reservation | None,
    ) -> Order:
        order_id = self._next_order_id
        self._next_order_id += 1
        tif = req.time_in_force or "GTC"
        order = Order(
            order_id=order_id,
            client_order_id=req.client_order_id or f"fakex{order_id}",
            market_id=market.market_id,
            side=req.side,
            type=req.type,
            qty=qty,
            price=float(req.price) if req.price is not None else 0.0,
            stop_price=float(req.stop_price) if req.stop_price is not None else 0.0,
            time_in_force=tif,
            time_ms=now_ms,
            update_time_ms=now_ms,
            reservation=reservation,
        )
        self.orders.append(order)
        self._open[order_id] = order
        return order

    def _execute_or_expire_now(self, order: Order, last_price: float | None, now_ms: int) -> None:
        """IOC / FOK limit: it takes at the last price if that is within its limit, else
        expires (there is no book depth to fill part of it)."""
        marketable = last_price is not None and (
            (order.side == BUY and last_price <= order.price)
            or (order.side == SELL and last_price >= order.price)
        )
        if marketable:
            assert last_price is not None
            self._execute(order, last_price, now_ms, is_maker=False)
        else:
            self._close(order, "EXPIRED", now_ms)

    def _execute(
        self,
        order: Order,
        price: float,
        time_ms: int,
        *,
        is_maker: bool,
        qty: float | None = None,
    ) -> None:
        """Fill `qty` of the order (default: all that is left) at `price`, settle balances and
        record the trade; a remainder stays on the book with its share of the lock."""
        market = self.markets[order.market_id]
        self.ledger.release(order.reservation)
        remaining = order.qty - order.executed_qty
        qty = remaining if qty is None or qty >= remaining - _BALANCE_EPS else qty
        notional = qty * price
        if order.side == BUY:
            # A buy stop that gapped above its reserve can cost more than was locked.
            if not self.ledger.has_free(market.quote, notional):
                self._close(order, "EXPIRED", time_ms)
                return
        fee, fee_asset = commission(
            order.side, qty, price, is_maker, market, self.fees, self.ledger.free.get("BNB", 0.0)
        )
        received = market.base if order.side == BUY else market.quote
        net_received = qty if order.side == BUY else notional
        if fee_asset == received:
            net_received -= fee
        else:
            self.ledger.add(fee_asset, -fee)
        if order.side == BUY:
            self.ledger.add(market.quote, -notional)
        else:
            self.ledger.add(market.base, -qty)
        self.ledger.add(received, net_received)
        fill = Fill(
            trade_id=self._next_trade_id,
            order_id=order.order_id,
            order_list_id=order.order_list_id,
            market_id=order.market_id,
            side=order.side,
            price=price,
            qty=qty,
            commission=fee,
            commission_asset=fee_asset,
            time_ms=time_ms,
            is_maker=is_maker,
        )
        self._next_trade_id += 1
        self.fills.append(fill)
        order.fills.append(fill)
        order.executed_qty += qty
        order.cum_quote_qty += notional
        left = order.qty - order.executed_qty
        if left > _BALANCE_EPS:
            order.status = "PARTIALLY_FILLED"
            order.update_time_ms = time_ms
            order.reservation = self._reserve(market, order.side, left, order.price or price)
        else:
            order.executed_qty = order.qty  # no float crumbs left on a filled order
            self._close(order, "FILLED", time_ms)

    def _close(self, order: Order, status: str, time_ms: int, *, release: bool = True) -> None:
        order.status = status
        order.update_time_ms = time_ms
        self._open.pop(order.order_id, None)
        if release:
            self.ledger.release(order.reservation)

    def _cancel_list(self, order_list: OrderList, now_ms: int) -> None:
        for leg in order_list.legs:
            if leg.is_open:
                self._close(leg, "CANCELED", now_ms)
        order_list.list_status_type = "ALL_DONE"
        order_list.list_order_status = "ALL_DONE"
        order_list.transaction_time_ms = now_ms


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise mandatory("side")


def _check_required(req: OrderRequest) -> None:
    t = req.type
    if t == "MARKET":
        if req.quantity is None and req.quote_order_qty is None:
            raise ApiError(
                -1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!"
            )
        return
    if req.quantity is None:
        raise mandatory("quantity")
    if t in LIMIT_TYPES | TRIGGERED_LIMIT_TYPES and req.price is None:
        raise mandatory("price")
    if t in STOP_TYPES | TAKE_PROFIT_TYPES and req.stop_price is None:
        raise mandatory("stopPrice")
    if t in ("LIMIT", *TRIGGERED_LIMIT_TYPES) and req.time_in_force is None:
        raise mandatory("timeInForce")
    if req.time_in_force is not None and req.time_in_force not in TIME_IN_FORCE:
        raise ApiError(-1115, "Invalid timeInForce.")


def _check_not_immediate(
    order_type: str, side: str, price: Decimal | None, stop: Decimal | None, last_price: float
) -> None:
    """Binance refuses a maker-only order that would take, and a stop already triggered."""
    if order_type == "LIMIT_MAKER" and price is not None:
        p = float(price)
        if (side == SELL and p <= last_price) or (side == BUY and p >= last_price):
            raise ApiError(-2010, MSG_WOULD_TAKE)
    if stop is None:
        return
    s = float(stop)
    if order_type in STOP_TYPES:
        if (side == SELL and s >= last_price) or (side == BUY and s <= last_price):
            raise ApiError(-2010, MSG_WOULD_TRIGGER)
    elif order_type in TAKE_PROFIT_TYPES:
        if (side == SELL and s <= last_price) or (side == BUY and s >= last_price):
            raise ApiError(-2010, MSG_WOULD_TRIGGER)


_PROFIT_LEG_TYPES = frozenset({"LIMIT_MAKER", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"})


def _check_oco_types(side: str, above_type: str, below_type: str) -> None:
    # A sell OCO takes profit above and stops below; a buy OCO the other way round.
    profit_leg, stop_leg = (above_type, below_type) if side == SELL else (below_type, above_type)
    if profit_leg not in _PROFIT_LEG_TYPES or stop_leg not in STOP_TYPES:
        raise ApiError(-1116, "Invalid orderType.")


def _check_oco_filters(market: FakeMarket, req: OcoRequest) -> None:
    for name, leg in (("above", req.above), ("below", req.below)):
        _check_oco_leg(name, leg)
    check_lot_size(market, req.quantity)
    for leg in (req.above, req.below):
        for price in (leg.price, leg.stop_price):
            if price is not None:
                check_price_filter(market, price)
        check_notional(market, req.quantity, _leg_reference_price(leg))


def _check_oco_leg(name: str, leg: OcoLegRequest) -> None:
    if leg.type in LIMIT_TYPES | TRIGGERED_LIMIT_TYPES and leg.price is None:
        raise mandatory(f"{name}Price")
    if leg.type in STOP_TYPES | TAKE_PROFIT_TYPES and leg.stop_price is None:
        raise mandatory(f"{name}StopPrice")
    if leg.type in TRIGGERED_LIMIT_TYPES and leg.time_in_force is None:
        raise mandatory(f"{name}TimeInForce")
    if leg.time_in_force is not None and leg.time_in_force not in TIME_IN_FORCE:
        raise ApiError(-1115, "Invalid timeInForce.")


def _leg_reference_price(leg: OcoLegRequest) -> Decimal:
    """The price a leg waits for: its stop if it has one, else its limit price."""
    price = leg.stop_price if leg.stop_price is not None else leg.price
    assert price is not None
    return price


def _marketable(order: Order, last_price: float | None) -> bool:
    if last_price is None:
        return False
    return order.price >= last_price if order.side == BUY else order.price <= last_price


def _rests_as_limit(order: Order) -> bool:
    return order.type in LIMIT_TYPES or order.type in TRIGGERED_LIMIT_TYPES
