"""Binance spot JSON shapes of the fake exchange's objects, and request parameter parsing."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from scalpd.fakex.matching import (
    MAX_NOTIONAL,
    MAX_PRICE,
    MAX_QTY,
    ORDER_TYPES,
    STOP_TYPES,
    TAKE_PROFIT_TYPES,
    ApiError,
    FakeMarket,
    FeeSchedule,
    Fill,
    Ledger,
    OcoLegRequest,
    OcoRequest,
    Order,
    OrderList,
    OrderRequest,
    mandatory,
    parse_decimal,
    to_decimal,
)
from scalpd.fakex.timeline import Kline

Json = dict[str, Any]


def fmt(value: float) -> str:
    """A number as Binance writes it: fixed, eight decimals."""
    if abs(value) < 5e-9:
        value = 0.0  # never "-0.00000000"
    return f"{value:.8f}"


def fmt_filter(value: float | Decimal) -> str:
    """A filter bound, printed from its exact decimal value (0.01 stays 0.01)."""
    exact = value if isinstance(value, Decimal) else to_decimal(value)
    return f"{exact:.8f}"


# -- market data -------------------------------------------------------------------------------


def exchange_info(markets: list[FakeMarket], server_time_ms: int) -> Json:
    return {
        "timezone": "UTC",
        "serverTime": server_time_ms,
        "rateLimits": [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": 6000,
            },
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {
                "rateLimitType": "RAW_REQUESTS",
                "interval": "MINUTE",
                "intervalNum": 5,
                "limit": 61000,
            },
        ],  # fmt: skip
        "exchangeFilters": [],
        "symbols": [symbol_info(m) for m in markets],
    }


def symbol_info(market: FakeMarket) -> Json:
    tick = fmt_filter(market.tick_size)
    return {
        "symbol": market.market_id,
        "status": "TRADING",
        "baseAsset": market.base,
        "baseAssetPrecision": 8,
        "quoteAsset": market.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": list(ORDER_TYPES),
        "icebergAllowed": False,
        "ocoAllowed": True,
        "otoAllowed": False,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": False,
        "cancelReplaceAllowed": False,
        "amendAllowed": False,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": tick,
                "maxPrice": fmt_filter(MAX_PRICE),
                "tickSize": tick,
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": fmt_filter(market.min_qty),
                "maxQty": fmt_filter(market.max_qty),
                "stepSize": fmt_filter(market.step_size),
            },
            {
                "filterType": "MARKET_LOT_SIZE",
                "minQty": fmt_filter(market.min_qty),
                "maxQty": fmt_filter(MAX_QTY),
                "stepSize": fmt_filter(market.step_size),
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": fmt_filter(market.min_notional),
                "applyMinToMarket": True,
                "maxNotional": fmt_filter(MAX_NOTIONAL),
                "applyMaxToMarket": False,
                "avgPriceMins": 0,
            },
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        ],  # fmt: skip
        "permissions": ["SPOT"],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "NONE",
        "allowedSelfTradePreventionModes": ["NONE"],
    }


def kline_row(k: Kline) -> list[Any]:
    """One row of GET /api/v3/klines."""
    return [
        k.open_time_ms,
        fmt(k.open),
        fmt(k.high),
        fmt(k.low),
        fmt(k.close),
        fmt(k.volume),
        k.close_time_ms,
        fmt(k.quote_volume),
        k.trades,
        fmt(k.taker_buy_base),
        fmt(k.taker_buy_quote),
        "0",
    ]


def kline_event(market_id: str, k: Kline, *, closed: bool, event_time_ms: int) -> Json:
    """A `<symbol>@kline_1m` event; an opening kline (closed=False) is flat at the open."""
    if closed:
        o, h, lo, c = k.open, k.high, k.low, k.close
        v, q, n, vb, qb = k.volume, k.quote_volume, k.trades, k.taker_buy_base, k.taker_buy_quote
        first_trade = last_trade = k.row + 1
    else:
        o = h = lo = c = k.open
        v = q = vb = qb = 0.0
        n, first_trade, last_trade = 0, -1, -1
    return {
        "e": "kline",
        "E": event_time_ms,
        "s": market_id,
        "k": {
            "t": k.open_time_ms,
            "T": k.close_time_ms,
            "s": market_id,
            "i": "1m",
            "f": first_trade,
            "L": last_trade,
            "o": fmt(o),
            "c": fmt(c),
            "h": fmt(h),
            "l": fmt(lo),
            "v": fmt(v),
            "n": n,
            "x": closed,
            "q": fmt(q),
            "V": fmt(vb),
            "Q": fmt(qb),
            "B": "0",
        },
    }


def trade_event(market_id: str, k: Kline, *, aggregate: bool) -> Json:
    """One synthetic trade per bar, at its close and for its whole volume."""
    trade_id = k.row + 1
    event: Json = {
        "e": "aggTrade" if aggregate else "trade",
        "E": k.close_time_ms,
        "s": market_id,
    }
    event |= {"a": trade_id, "f": trade_id, "l": trade_id} if aggregate else {"t": trade_id}
    event |= {
        "p": fmt(k.close),
        "q": fmt(k.volume),
        "T": k.close_time_ms,
        # The buyer was the maker when takers mostly sold.
        "m": k.taker_buy_base < k.volume / 2,
        "M": True,
    }
    return event


# -- account and orders ------------------------------------------------------------------------


def account(ledger: Ledger, fees: FeeSchedule, update_time_ms: int) -> Json:
    return {
        "makerCommission": round(fees.maker_bps),
        "takerCommission": round(fees.taker_bps),
        "buyerCommission": 0,
        "sellerCommission": 0,
        "commissionRates": {
            "maker": fmt(fees.maker_bps / 1e4),
            "taker": fmt(fees.taker_bps / 1e4),
            "buyer": fmt(0),
            "seller": fmt(0),
        },
        "canTrade": True,
        "canWithdraw": False,
        "canDeposit": False,
        "brokered": False,
        "requireSelfTradePrevention": False,
        "preventSor": False,
        "updateTime": update_time_ms,
        "accountType": "SPOT",
        "balances": [
            {"asset": asset, "free": fmt(ledger.free[asset]), "locked": fmt(ledger.locked[asset])}
            for asset in sorted(ledger.free)
        ],
        "permissions": ["SPOT"],
        "uid": 1,
    }


def _stop_price(order: Order) -> Json:
    has_stop = order.type in STOP_TYPES or order.type in TAKE_PROFIT_TYPES
    return {"stopPrice": fmt(order.stop_price)} if has_stop else {}


def order_status(order: Order) -> Json:
    """GET /api/v3/order, openOrders, allOrders."""
    return {
        "symbol": order.market_id,
        "orderId": order.order_id,
        "orderListId": order.order_list_id,
        "clientOrderId": order.client_order_id,
        "price": fmt(order.price),
        "origQty": fmt(order.qty),
        "executedQty": fmt(order.executed_qty),
        "cummulativeQuoteQty": fmt(order.cum_quote_qty),
        "status": order.status,
        "timeInForce": order.time_in_force,
        "type": order.type,
        "side": order.side,
        "stopPrice": fmt(order.stop_price),
        "icebergQty": fmt(0),
        "time": order.time_ms,
        "updateTime": order.update_time_ms,
        "isWorking": order.is_working,
        "workingTime": order.time_ms if order.is_working or order.fills else -1,
        "origQuoteOrderQty": fmt(order.orig_quote_order_qty),
        "selfTradePreventionMode": "NONE",
    }


def order_result(order: Order, resp_type: str) -> Json:
    """POST /api/v3/order in the ACK, RESULT or FULL shape."""
    out: Json = {
        "symbol": order.market_id,
        "orderId": order.order_id,
        "orderListId": order.order_list_id,
        "clientOrderId": order.client_order_id,
        "transactTime": order.time_ms,
    }
    if resp_type == "ACK":
        return out
    out |= {
        "price": fmt(order.price),
        "origQty": fmt(order.qty),
        "executedQty": fmt(order.executed_qty),
        "origQuoteOrderQty": fmt(order.orig_quote_order_qty),
        "cummulativeQuoteQty": fmt(order.cum_quote_qty),
        "status": order.status,
        "timeInForce": order.time_in_force,
        "type": order.type,
        "side": order.side,
        **_stop_price(order),
        "workingTime": order.time_ms,
        "selfTradePreventionMode": "NONE",
    }
    if resp_type == "FULL":
        out["fills"] = [fill_entry(f) for f in order.fills]
    return out


def cancel_result(order: Order, cancel_client_id: str, now_ms: int) -> Json:
    """DELETE /api/v3/order: `clientOrderId` is the cancel request's own id, as on Binance."""
    return {
        "symbol": order.market_id,
        "origClientOrderId": order.client_order_id,
        "orderId": order.order_id,
        "orderListId": order.order_list_id,
        "clientOrderId": cancel_client_id,
        "transactTime": now_ms,
        "price": fmt(order.price),
        "origQty": fmt(order.qty),
        "executedQty": fmt(order.executed_qty),
        "origQuoteOrderQty": fmt(order.orig_quote_order_qty),
        "cummulativeQuoteQty": fmt(order.cum_quote_qty),
        "status": order.status,
        "timeInForce": order.time_in_force,
        "type": order.type,
        "side": order.side,
        **_stop_price(order),
        "selfTradePreventionMode": "NONE",
    }


def order_list(lst: OrderList, *, with_reports: bool) -> Json:
    out: Json = {
        "orderListId": lst.order_list_id,
        "contingencyType": "OCO",
        "listStatusType": lst.list_status_type,
        "listOrderStatus": lst.list_order_status,
        "listClientOrderId": lst.list_client_order_id,
        "transactionTime": lst.transaction_time_ms,
        "symbol": lst.market_id,
        "orders": [
            {"symbol": o.market_id, "orderId": o.order_id, "clientOrderId": o.client_order_id}
            for o in lst.legs
        ],
    }
    if with_reports:
        reports = []
        for leg in lst.legs:
            report = order_result(leg, "RESULT")
            report.pop("workingTime")
            reports.append(report)
        out["orderReports"] = reports
    return out


def fill_entry(fill: Fill) -> Json:
    """One of `fills` in a FULL order response."""
    return {
        "price": fmt(fill.price),
        "qty": fmt(fill.qty),
        "commission": fmt(fill.commission),
        "commissionAsset": fill.commission_asset,
        "tradeId": fill.trade_id,
    }


def my_trade(fill: Fill) -> Json:
    """One row of GET /api/v3/myTrades."""
    return {
        "symbol": fill.market_id,
        "id": fill.trade_id,
        "orderId": fill.order_id,
        "orderListId": fill.order_list_id,
        "price": fmt(fill.price),
        "qty": fmt(fill.qty),
        "quoteQty": fmt(fill.quote_qty),
        "commission": fmt(fill.commission),
        "commissionAsset": fill.commission_asset,
        "time": fill.time_ms,
        "isBuyer": fill.side == "BUY",
        "isMaker": fill.is_maker,
        "isBestMatch": True,
    }


# -- request parameters ------------------------------------------------------------------------


def required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise mandatory(name)
    return value


def optional_int(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(-1100, f"Illegal characters found in parameter '{name}'.") from None


def order_request(params: Mapping[str, str]) -> OrderRequest:
    return OrderRequest(
        market_id=required(params, "symbol"),
        side=required(params, "side"),
        type=required(params, "type"),
        quantity=parse_decimal("quantity", params.get("quantity")),
        quote_order_qty=parse_decimal("quoteOrderQty", params.get("quoteOrderQty")),
        price=parse_decimal("price", params.get("price")),
        stop_price=parse_decimal("stopPrice", params.get("stopPrice")),
        time_in_force=params.get("timeInForce") or None,
        client_order_id=params.get("newClientOrderId") or None,
    )


def oco_request(params: Mapping[str, str]) -> OcoRequest:
    quantity = parse_decimal("quantity", required(params, "quantity"))
    assert quantity is not None

    def leg(prefix: str) -> OcoLegRequest:
        return OcoLegRequest(
            type=required(params, f"{prefix}Type"),
            price=parse_decimal(f"{prefix}Price", params.get(f"{prefix}Price")),
            stop_price=parse_decimal(f"{prefix}StopPrice", params.get(f"{prefix}StopPrice")),
            time_in_force=params.get(f"{prefix}TimeInForce") or None,
            client_order_id=params.get(f"{prefix}ClientOrderId") or None,
        )

    return OcoRequest(
        market_id=required(params, "symbol"),
        side=required(params, "side"),
        quantity=quantity,
        above=leg("above"),
        below=leg("below"),
        list_client_order_id=params.get("listClientOrderId") or None,
    )


def response_type(params: Mapping[str, str], order_type: str) -> str:
    """Binance answers MARKET and LIMIT orders in FULL unless told, others in ACK."""
    default = "FULL" if order_type in ("MARKET", "LIMIT") else "ACK"
    value = params.get("newOrderRespType") or default
    if value not in ("ACK", "RESULT", "FULL"):
        raise ApiError(-1100, "Illegal characters found in parameter 'newOrderRespType'.")
    return value
