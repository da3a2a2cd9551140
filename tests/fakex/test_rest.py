"""The fake exchange's REST API, driven by the real ccxt client."""

from __future__ import annotations

import asyncio

import aiohttp
import ccxt
import numpy as np
import pyarrow.parquet as pq
import pytest

from scalpd.fakex import FakeExchange, FakeMarket
from scalpd.fakex.testing import bars_from_prices, ccxt_client, random_walk_bars, running
from tests.conftest import shared_file

MINUTE_MS = 60_000

# Two bars of history, then the bars the tests trade on (start_index=2).
PRICES = [
    (100, 101, 99, 100),
    (100, 101, 99, 100),
    (100, 102, 98, 101),  # 2: current bar at the start
    (101, 106, 100, 105),  # 3
    (105, 105, 96, 97),  # 4
    (93, 94, 90, 91),  # 5: opens below 95 (a gap through a stop there)
    *[(91, 92, 90, 91)] * 4,
]


def make_fx(prices: list[tuple[float, float, float, float]] = PRICES, **kw: object) -> FakeExchange:
    kw.setdefault("start_index", 2)
    # Whole fills: these bars trade 2 BTC, and partial fills have tests of their own.
    kw.setdefault("max_participation", None)
    return FakeExchange({"BTC/USDT": bars_from_prices(prices)}, **kw)  # type: ignore[arg-type]


def open_time(index: int) -> int:
    return int(bars_from_prices(PRICES)["open_time"][index])


# -- markets, time, klines ---------------------------------------------------------------------


def test_load_markets_gives_precision_and_limits_from_the_filters() -> None:
    async def run() -> None:
        eth = FakeMarket("ETH/USDT", tick_size=0.01, step_size=0.0001, min_qty=0.0001)
        fx = FakeExchange(
            {"BTC/USDT": random_walk_bars(5), "ETH/USDT": random_walk_bars(5, price=3000)},
            markets={"ETH/USDT": eth},
        )
        async with running(fx), ccxt_client(fx) as ex:
            assert set(ex.markets) == {"BTC/USDT", "ETH/USDT"}
            btc = ex.market("BTC/USDT")
            assert btc["spot"] and btc["active"] and btc["id"] == "BTCUSDT"
            assert btc["precision"]["price"] == 0.01
            assert btc["precision"]["amount"] == 0.00001
            assert btc["limits"]["amount"]["min"] == 0.00001
            assert btc["limits"]["cost"]["min"] == 5.0
            assert ex.market("ETH/USDT")["precision"]["amount"] == 0.0001
            assert "OCO" not in str(btc["info"]["orderTypes"])
            assert btc["info"]["ocoAllowed"] is True
            assert fx.requests == [("GET", "/api/v3/exchangeInfo")]

    asyncio.run(run())


def test_fetch_time_is_the_open_of_the_current_bar() -> None:
    async def run() -> None:
        fx = make_fx()
        async with running(fx), ccxt_client(fx) as ex:
            assert await ex.fetch_time() == open_time(2)
            assert await fx.step()
            assert await ex.fetch_time() == open_time(3)

    asyncio.run(run())


def test_fetch_ohlcv_pages_over_more_than_1000_closed_bars_exactly() -> None:
    async def run() -> None:
        source = random_walk_bars(2_600, seed=7)
        fx = FakeExchange({"BTC/USDT": source}, start_index=2_500)
        async with running(fx), ccxt_client(fx) as ex:
            candles: list[list[float]] = []
            since = int(source["open_time"][0])
            while True:
                page = await ex.fetch_ohlcv("BTC/USDT", "1m", since=since, limit=1000)
                candles += page
                if len(page) < 1000:
                    break
                since = page[-1][0] + MINUTE_MS
            assert len(candles) == 2_500  # only closed bars: not the current one
            got = np.array(candles)
            assert np.array_equal(got[:, 0].astype(np.int64), source["open_time"][:2_500])
            for col, name in enumerate(("open", "high", "low", "close", "volume"), start=1):
                assert np.array_equal(got[:, col], source[name][:2_500]), name
            latest = await ex.fetch_ohlcv("BTC/USDT", "1m")  # no since: the latest 500
            assert len(latest) == 500 and latest[-1][0] == source["open_time"][2_499]
            row = (await ex.public_get_klines({"symbol": "BTCUSDT", "interval": "1m", "limit": 1}))[
                0
            ]
            assert len(row) == 12 and row[6] == row[0] + MINUTE_MS - 1
            assert float(row[7]) == source["quote_volume"][2_499]
            assert row[8] == source["trades"][2_499]
            assert float(row[9]) == source["taker_buy_base"][2_499]
            await fx.step()
            assert (await ex.fetch_ohlcv("BTC/USDT", "1m", limit=1))[0][0] == source["open_time"][
                2_500
            ]
            with pytest.raises(ccxt.BadRequest, match="-1120"):
                await ex.fetch_ohlcv("BTC/USDT", "5m")

    asyncio.run(run())


def test_klines_of_real_bars_round_trip_exactly() -> None:
    path = shared_file("binance-spot/BTCUSDT-1m-2024.parquet")
    table = pq.read_table(path).slice(100_000, 1_200)
    source = {name: table.column(name).to_numpy() for name in table.column_names}

    async def run() -> None:
        fx = FakeExchange({"BTC/USDT": source}, start_index=1_100)
        async with running(fx), ccxt_client(fx) as ex:
            first = int(source["open_time"][0])
            rows = await ex.public_get_klines(
                {"symbol": "BTCUSDT", "interval": "1m", "startTime": first, "limit": 1000}
            )
            rows += await ex.public_get_klines(
                {"symbol": "BTCUSDT", "interval": "1m", "startTime": rows[-1][0] + 1, "limit": 1000}
            )
            assert [r[0] for r in rows] == source["open_time"][:1_100].tolist()
            for i, name in ((1, "open"), (4, "close"), (5, "volume"), (9, "taker_buy_base")):
                assert [float(r[i]) for r in rows] == source[name][:1_100].tolist(), name

    asyncio.run(run())


# -- orders and fills --------------------------------------------------------------------------


def test_market_buy_with_own_client_id_fills_at_the_current_open_with_a_base_fee() -> None:
    async def run() -> None:
        fx = make_fx()
        async with running(fx), ccxt_client(fx) as ex:
            order = await ex.create_order(
                "BTC/USDT", "market", "buy", 1.0, None, {"newClientOrderId": "entry-1"}
            )
            assert order["status"] == "closed" and order["clientOrderId"] == "entry-1"
            assert order["average"] == 100.0 and order["filled"] == 1.0
            assert order["fee"] == {"currency": "BTC", "cost": 0.001}  # 10 bps of 1 BTC
            assert order["timestamp"] == open_time(2)
            found = await ex.fetch_order(None, "BTC/USDT", {"origClientOrderId": "entry-1"})
            assert found["id"] == order["id"] and found["status"] == "closed"
            assert found["cost"] == 100.0
            trades = await ex.fetch_my_trades("BTC/USDT")
            assert [(t["order"], t["price"], t["amount"]) for t in trades] == [
                (order["id"], 100.0, 1.0)
            ]
            assert trades[0]["fee"] == {"currency": "BTC", "cost": 0.001}
            balance = await ex.fetch_balance()
            assert balance["USDT"]["total"] == pytest.approx(10_000 - 100)
            assert balance["BTC"]["total"] == pytest.approx(0.999)
            assert fx.balances == pytest.approx({"USDT": 9_900.0, "BTC": 0.999})
            assert [o["clientOrderId"] for o in fx.orders] == ["entry-1"]
            assert fx.trades[0]["commissionAsset"] == "BTC"

    asyncio.run(run())


def test_limit_sell_fills_on_a_later_step_at_its_price_a_marketable_one_at_the_open() -> None:
    async def run() -> None:
        fx = make_fx()
        async with running(fx), ccxt_client(fx) as ex:
            await ex.create_order("BTC/USDT", "market", "buy", 1.0)
            limit = await ex.create_order("BTC/USDT", "limit", "sell", 0.5, 103.0)
            assert limit["status"] == "open"
            assert (await ex.fetch_balance())["BTC"]["used"] == 0.5
            await fx.step()  # bar 2: high 102
            assert (await ex.fetch_order(limit["id"], "BTC/USDT"))["status"] == "open"
            await fx.step()  # bar 3: high 106, open 101
            done = await ex.fetch_order(limit["id"], "BTC/USDT")
            assert done["status"] == "closed" and done["average"] == 103.0
            assert done["lastTradeTimestamp"] == open_time(3) + MINUTE_MS
            # Placed while bar 4 (open 105) is current: marketable, it takes the open at once.
            # 0.499: the buy's fee took 0.001 of the 1 BTC.
            gapped = await ex.create_order("BTC/USDT", "limit", "sell", 0.499, 102.5)
            assert gapped["status"] == "closed" and gapped["average"] == 105.0
            trades = await ex.fetch_my_trades("BTC/USDT")
            assert [t["price"] for t in trades] == [100.0, 103.0, 105.0]
            assert [t["takerOrMaker"] for t in trades] == ["taker", "maker", "taker"]
            assert await ex.fetch_open_orders("BTC/USDT") == []

    asyncio.run(run())


def test_stop_loss_fills_at_the_stop_or_at_the_open_it_gapped_to() -> None:
    async def run() -> None:
        fx = make_fx()
        async with running(fx), ccxt_client(fx) as ex:
            await ex.create_order("BTC/USDT", "market", "buy", 1.0)
            near = await ex.create_order("BTC/USDT", "market", "sell", 0.5, None, {"stopPrice": 97})
            far = await ex.create_order(
                "BTC/USDT", "market", "sell", 0.499, None, {"stopPrice": 95}
            )
            assert near["info"]["type"] == "STOP_LOSS" and near["status"] == "open"
            await fx.step(2)  # bars 2 and 3 stay above both stops
            assert len(await ex.fetch_open_orders("BTC/USDT")) == 2
            await fx.step()  # bar 4: low 96
            assert (await ex.fetch_order(near["id"], "BTC/USDT"))["average"] == 97.0
            assert (await ex.fetch_order(far["id"], "BTC/USDT"))["status"] == "open"
            await fx.step()  # bar 5 opens at 93, below the 95 stop
            assert (await ex.fetch_order(far["id"], "BTC/USDT"))["average"] == 93.0
            assert fx.balances["BTC"] == pytest.approx(0.0)

    asyncio.run(run())


def _oco(take_profit: str, stop: str, qty: str = "0.999") -> dict[str, str]:
    return {
        "symbol": "BTCUSDT",
        "side": "SELL",
        "quantity": qty,
        "aboveType": "LIMIT_MAKER",
        "abovePrice": take_profit,
        "aboveClientOrderId": "tp-1",
        "belowType": "STOP_LOSS",
        "belowStopPrice": stop,
        "belowClientOrderId": "sl-1",
        "listClientOrderId": "oco-1",
    }


def test_oco_take_profit_fills_the_stop_expires_and_the_quantity_is_locked_once() -> None:
    async def run() -> None:
        fx = make_fx()
        async with running(fx), ccxt_client(fx) as ex:
            await ex.create_order("BTC/USDT", "market", "buy", 1.0)
            placed = await ex.private_post_orderlist_oco(_oco("104", "95"))
            assert placed["listOrderStatus"] == "EXECUTING"
            assert [r["type"] for r in placed["orderReports"]] == ["STOP_LOSS", "LIMIT_MAKER"]
            btc = (await ex.fetch_balance())["BTC"]
            assert (btc["free"], btc["used"]) == (0.0, 0.999)
            await fx.step()  # bar 2: between the legs
            await fx.step()  # bar 3: high 106
            tp = await ex.fetch_order(None, "BTC/USDT", {"origClientOrderId": "tp-1"})
            sl = await ex.fetch_order(None, "BTC/USDT", {"origClientOrderId": "sl-1"})
            assert (tp["status"], tp["average"]) == ("closed", 104.0)
            assert sl["status"] == "expired" and sl["filled"] == 0.0
            status = await ex.private_get_orderlist({"origClientOrderId": "oco-1"})
            assert status["listOrderStatus"] == "ALL_DONE"
            assert fx.balances["BTC"] == pytest.approx(0.0)
            # Sold 0.999 at 104 = 103.896 USDT, less the maker fee of 10 bps in USDT.
            assert fx.balances["USDT"] == pytest.approx(10_000 - 100 + 103.896 - 0.103896)

    asyncio.run(run())


def test_oco_stop_wins_when_one_bar_touches_both_legs() -> None:
    async def run() -> None:
        wide = [*PRICES[:3], (100, 110, 90, 100), *PRICES[4:]]
        fx = make_fx(wide)
        async with running(fx), ccxt_client(fx) as ex:
            await ex.create_order("BTC/USDT", "market", "buy", 1.0)
            await fx.step()  # bar 2: nothing
            await ex.private_post_orderlist_oco(_oco("105", "95"))
            await fx.step()  # bar 3 touches 105 and 95
            sl = await ex.fetch_order(None, "BTC/USDT", {"origClientOrderId": "sl-1"})
            tp = await ex.fetch_order(None, "BTC/USDT", {"origClientOrderId": "tp-1"})
            assert (sl["status"], sl["average"]) == ("closed", 95.0)
            assert tp["status"] == "expired"
            assert [t["price"] for t in fx.trades] == ["100.00000000", "95.00000000"]

    asyncio.run(run())


def test_cancel_oco_by_list_client_id_cancels_both_legs_and_unlocks() -> None:
    async def run() -> None:
        fx = make_fx()
        async with running(fx), ccxt_client(fx) as ex:
            await ex.create_order("BTC/USDT", "market", "buy", 1.0)
            await ex.private_post_orderlist_oco(_oco("104", "95"))
            gone = await ex.private_delete_orderlist(
                {"symbol": "BTCUSDT", "listClientOrderId": "oco-1"}
            )
            assert gone["listOrderStatus"] == "ALL_DONE"
            assert {r["status"] for r in gone["orderReports"]} == {"CANCELED"}
            assert (await ex.fetch_balance())["BTC"]["free"] == 0.999
            with pytest.raises(ccxt.OrderNotFound):
                await ex.private_delete_orderlist(
                    {"symbol": "BTCUSDT", "listClientOrderId": "oco-1"}
                )

    asyncio.run(run())


def test_cancel_order_and_open_orders() -> None:
    async def run() -> None:
        fx = make_fx()
        async with running(fx), ccxt_client(fx) as ex:
            order = await ex.create_order(
                "BTC/USDT", "limit", "buy", 0.5, 90.0, {"clientOrderId": "b1"}
            )
            assert [o["id"] for o in await ex.fetch_open_orders("BTC/USDT")] == [order["id"]]
            assert (await ex.fetch_balance())["USDT"]["used"] == pytest.approx(45.0)
            cancelled = await ex.cancel_order(order["id"], "BTC/USDT")
            assert cancelled["status"] == "canceled"
            assert cancelled["info"]["origClientOrderId"] == "b1"
            assert await ex.fetch_open_orders("BTC/USDT") == []
            with pytest.raises(ccxt.OrderNotFound):
                await ex.cancel_order(order["id"], "BTC/USDT")
            with pytest.raises(ccxt.OrderNotFound):
                await ex.fetch_order("12345", "BTC/USDT")

    asyncio.run(run())


# -- rejections and faults ---------------------------------------------------------------------


def test_filter_failures() -> None:
    async def run() -> None:
        fx = make_fx(markets={"BTC/USDT": FakeMarket("BTC/USDT", min_qty=0.001)})
        async with running(fx), ccxt_client(fx) as ex:
            with pytest.raises(ccxt.InvalidOrder, match="LOT_SIZE"):
                await ex.create_order("BTC/USDT", "market", "buy", 0.0005)
            with pytest.raises(ccxt.InvalidOrder, match="PRICE_FILTER"):  # past ccxt's rounding
                await ex.private_post_order(
                    {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                     "quantity": "1", "price": "99.001"}
                )  # fmt: skip
            # Binance's NOTIONAL failure is -1013 too, which ccxt maps to BadRequest.
            with pytest.raises(ccxt.BadRequest, match="NOTIONAL"):
                await ex.create_order("BTC/USDT", "market", "buy", 0.01)
            assert fx.orders == []

    asyncio.run(run())


def test_insufficient_balance_and_injected_rejections() -> None:
    async def run() -> None:
        fx = make_fx(balances={"USDT": 50.0})
        async with running(fx), ccxt_client(fx) as ex:
            with pytest.raises(ccxt.InsufficientFunds):
                await ex.create_order("BTC/USDT", "market", "buy", 0.51)
            with pytest.raises(ccxt.InsufficientFunds):
                await ex.create_order("BTC/USDT", "market", "sell", 0.1)
            fx.reject_next_orders(1, code=-1013, msg="Market is closed.")
            with pytest.raises(ccxt.MarketClosed):
                await ex.create_order("BTC/USDT", "market", "buy", 0.1)
            assert (await ex.create_order("BTC/USDT", "market", "buy", 0.1))["status"] == "closed"

    asyncio.run(run())


def test_duplicate_open_client_id_and_immediate_maker_are_rejected() -> None:
    async def run() -> None:
        fx = make_fx()
        async with running(fx), ccxt_client(fx) as ex:
            await ex.create_order("BTC/USDT", "limit", "buy", 0.1, 90.0, {"clientOrderId": "same"})
            with pytest.raises(ccxt.InvalidOrder, match="Duplicate"):
                await ex.create_order(
                    "BTC/USDT", "limit", "buy", 0.1, 91.0, {"clientOrderId": "same"}
                )
            with pytest.raises(ccxt.OrderImmediatelyFillable):
                await ex.create_order("BTC/USDT", "limit", "buy", 0.1, 100.0, {"postOnly": True})

    asyncio.run(run())


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, ccxt.DDoSProtection),
        (418, ccxt.DDoSProtection),
        (500, ccxt.OperationFailed),
        (503, ccxt.RequestTimeout),
    ],
)
def test_injected_http_failures(status: int, error: type[Exception]) -> None:
    async def run() -> None:
        fx = make_fx()
        async with running(fx), ccxt_client(fx) as ex:
            fx.fail_next_requests(2, status=status, retry_after_s=3)
            with pytest.raises(error):
                await ex.fetch_time()
            async with aiohttp.ClientSession() as session:
                async with session.get(fx.base_url + "/api/v3/ping") as resp:
                    assert resp.status == status
                    assert resp.headers["Retry-After"] == "3"
                    assert (await resp.json())["code"] < 0
            assert await ex.fetch_time() == open_time(2)  # answered normally again
            assert fx.orders == []

    asyncio.run(run())


def test_bad_key_or_signature_is_an_authentication_error() -> None:
    async def run() -> None:
        fx = make_fx(api_key="k1", api_secret="s1")
        async with running(fx), ccxt_client(fx, apiKey="k1", secret="wrong") as ex:
            with pytest.raises(ccxt.AuthenticationError, match="-1022"):
                await ex.fetch_balance()
            ex.apiKey, ex.secret = "k2", "s1"
            with pytest.raises(ccxt.AuthenticationError, match="-2014"):
                await ex.fetch_balance()
            ex.apiKey = "k1"
            assert (await ex.fetch_balance())["USDT"]["free"] == 10_000.0

    asyncio.run(run())


def test_unknown_path_answers_404_and_is_recorded() -> None:
    async def run() -> None:
        fx = make_fx()
        async with running(fx), ccxt_client(fx) as ex:
            with pytest.raises(ccxt.ExchangeError, match="fakex does not serve"):
                await ex.fetch_ticker("BTC/USDT")  # /api/v3/ticker/24hr
            with pytest.raises(ccxt.ExchangeError):
                await ex.sapi_get_system_status()
            assert fx.unknown_requests == ["/api/v3/ticker/24hr", "/sapi/v1/system/status"]
            # Every URL ccxt has points here, not at Binance.
            assert all(fx.base_url in v for v in ex.urls["api"].values() if isinstance(v, str))

    asyncio.run(run())


def test_delayed_order_answer_times_out_but_the_order_exists() -> None:
    async def run() -> None:
        fx = make_fx()
        async with running(fx), ccxt_client(fx, timeout=100) as ex:
            fx.delay_next_order_response(0.5)
            with pytest.raises(ccxt.RequestTimeout):
                await ex.create_order(
                    "BTC/USDT", "market", "buy", 0.1, None, {"clientOrderId": "slow"}
                )
            found = await ex.fetch_order(None, "BTC/USDT", {"origClientOrderId": "slow"})
            assert found["status"] == "closed" and found["filled"] == 0.1

    asyncio.run(run())


def test_market_order_after_the_data_is_exhausted_is_refused() -> None:
    async def run() -> None:
        fx = make_fx(PRICES[:4])
        async with running(fx), ccxt_client(fx) as ex:
            assert await fx.step() is True
            assert await fx.step() is False  # closed the last bar: nothing is open now
            assert await fx.step() is False
            assert fx.current_index == 4
            assert await ex.fetch_time() == open_time(3) + MINUTE_MS
            assert len(await ex.fetch_ohlcv("BTC/USDT", "1m")) == 4
            with pytest.raises(ccxt.MarketClosed):
                await ex.create_order("BTC/USDT", "market", "buy", 0.1)

    asyncio.run(run())


def test_less_used_endpoints_answer_like_binance() -> None:
    async def run() -> None:
        fx = make_fx()
        async with running(fx), ccxt_client(fx) as ex:
            ticker = await ex.public_get_ticker_price({"symbol": "BTCUSDT"})
            assert ticker == {"symbol": "BTCUSDT", "price": "100.00000000"}
            assert await ex.public_get_ping() == {}
            await ex.create_order("BTC/USDT", "limit", "buy", 0.1, 90.0, {"test": True})
            assert fx.orders == [] and ("POST", "/api/v3/order/test") in fx.requests
            await ex.create_order("BTC/USDT", "market", "buy", 1.0)
            await ex.create_order("BTC/USDT", "limit", "buy", 0.1, 90.0)
            await ex.private_post_orderlist_oco(_oco("104", "95", qty="0.5"))
            assert len(await ex.private_get_openorderlist()) == 1
            assert [o["status"] for o in await ex.fetch_orders("BTC/USDT")] == [
                "closed", "open", "open", "open"
            ]  # fmt: skip
            cancelled = await ex.cancel_all_orders("BTC/USDT")
            assert len(cancelled) == 2  # the limit, and the OCO as one list
            assert await ex.fetch_open_orders("BTC/USDT") == []
            assert await ex.private_get_openorderlist() == []
            assert fx.locked_balances == {"USDT": 0.0, "BTC": 0.0}
            ws_urls = ex.urls["api"]["ws"]
            # Every WebSocket URL moves to this server (scalpd.live.exchange.point_at), keeping
            # its path: spot streams to <ws_url>/ws; the ws-api is answered 404.
            assert ws_urls["spot"] == fx.ws_url + "/ws"
            assert all(url.startswith(fx.ws_url) for url in ws_urls["ws-api"].values())

    asyncio.run(run())
