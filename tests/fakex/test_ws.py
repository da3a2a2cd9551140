"""The fake exchange's WebSocket streams, with ccxt.pro and with a raw client."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import ccxt
import numpy as np
import orjson
import pytest

from scalpd.fakex import FakeExchange
from scalpd.fakex.testing import ccxt_client, random_walk_bars, running

MINUTE_MS = 60_000
TIMEOUT_S = 5


def candle(source: dict[str, np.ndarray], i: int) -> list[float]:
    return [int(source["open_time"][i])] + [
        float(source[c][i]) for c in ("open", "high", "low", "close", "volume")
    ]


async def watch_across_step(ex: Any, fx: FakeExchange, *args: Any) -> list[Any]:
    """What a watch started before a step returns once the step pushes."""
    watch = asyncio.create_task(ex.watch_ohlcv(*args) if args else ex.watch_trades("BTC/USDT"))
    await asyncio.sleep(0)  # the watch registers its future before anything is pushed
    await fx.step()
    return await asyncio.wait_for(watch, TIMEOUT_S)


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.receive_str(), TIMEOUT_S))


def test_watch_ohlcv_receives_each_closed_kline_in_order() -> None:
    source = random_walk_bars(30, seed=3)

    async def run() -> None:
        fx = FakeExchange({"BTC/USDT": source}, start_index=20)
        async with running(fx), ccxt_client(fx) as ex:
            # A new subscriber gets the forming bar at once: flat at its open, no volume.
            forming = (await ex.watch_ohlcv("BTC/USDT", "1m"))[-1]
            assert forming == [int(source["open_time"][20])] + [float(source["open"][20])] * 4 + [0]
            seen: dict[int, list[float]] = {}
            closed_order = []
            for i in range(20, 29):
                for c in await watch_across_step(ex, fx, "BTC/USDT", "1m"):
                    seen[c[0]] = c
                closed_order.append(max(t for t in seen if seen[t][5] > 0))
                assert seen[int(source["open_time"][i])] == candle(source, i)
            assert closed_order == source["open_time"][20:29].tolist()

    asyncio.run(run())


def test_drop_connections_fails_the_watch_and_a_new_watch_resubscribes() -> None:
    source = random_walk_bars(30, seed=4)

    async def run() -> None:
        fx = FakeExchange({"BTC/USDT": source}, start_index=10)
        async with running(fx), ccxt_client(fx) as ex:
            await ex.watch_ohlcv("BTC/USDT", "1m")
            assert fx.subscriptions == ["btcusdt@kline_1m"]
            pending = asyncio.create_task(ex.watch_ohlcv("BTC/USDT", "1m"))
            await asyncio.sleep(0)
            await fx.drop_connections()
            with pytest.raises(ccxt.NetworkError):
                await asyncio.wait_for(pending, TIMEOUT_S)
            assert fx.subscriptions == []
            await fx.step()  # bar 10 closes while nobody listens: only REST has it now
            rest = await ex.fetch_ohlcv("BTC/USDT", "1m", limit=1)
            assert rest == [candle(source, 10)]
            again = await asyncio.wait_for(ex.watch_ohlcv("BTC/USDT", "1m"), TIMEOUT_S)
            assert again[-1][0] == source["open_time"][11]
            await fx.wait_subscribed(1)
            got = await watch_across_step(ex, fx, "BTC/USDT", "1m")
            assert candle(source, 11) in got
            stream_opens = [p for m, p in fx.requests if p.startswith("/stream")]
            assert len(stream_opens) == 2

    asyncio.run(run())


def test_watch_trades_gets_one_trade_per_closed_bar() -> None:
    source = random_walk_bars(10, seed=5)

    async def run() -> None:
        fx = FakeExchange({"BTC/USDT": source}, start_index=5)
        async with running(fx), ccxt_client(fx) as ex:
            first = asyncio.create_task(ex.watch_trades("BTC/USDT"))
            await fx.wait_subscribed(1)
            await fx.step()
            trades = await asyncio.wait_for(first, TIMEOUT_S)
            trades += await watch_across_step(ex, fx)
            assert [t["price"] for t in trades] == source["close"][5:7].tolist()
            assert [t["amount"] for t in trades] == source["volume"][5:7].tolist()
            assert trades[0]["timestamp"] == source["open_time"][5] + MINUTE_MS - 1
            sides = ["buy" if tb >= v / 2 else "sell" for tb, v in zip(
                source["taker_buy_base"][5:7], source["volume"][5:7], strict=True)]  # fmt: skip
            assert [t["side"] for t in trades] == sides

    asyncio.run(run())


def test_raw_protocol_subscribe_list_unsubscribe_and_kline_fields() -> None:
    source = random_walk_bars(10, seed=6)
    t = source["open_time"]

    async def run() -> None:
        fx = FakeExchange({"BTC/USDT": source}, start_index=3)
        async with running(fx), aiohttp.ClientSession() as session:
            async with session.ws_connect(fx.ws_url + "/ws/0", autoping=False) as ws:
                await ws.send_str('{"method":"SUBSCRIBE","params":["btcusdt@kline_1m",'
                                  '"btcusdt@trade"],"id":1}')  # fmt: skip
                assert await receive_json(ws) == {"result": None, "id": 1}
                forming = await receive_json(ws)
                assert forming["k"]["t"] == t[3] and forming["k"]["x"] is False
                await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 2})
                listed = await receive_json(ws)
                assert listed == {"result": ["btcusdt@kline_1m", "btcusdt@trade"], "id": 2}
                await fx.step()
                trade = await receive_json(ws)
                closed = await receive_json(ws)
                opening = await receive_json(ws)
                assert trade["e"] == "trade" and float(trade["p"]) == source["close"][3]
                k = closed["k"]
                assert closed["e"] == "kline" and closed["s"] == "BTCUSDT" and k["x"] is True
                assert (k["t"], k["T"], k["i"]) == (t[3], t[3] + MINUTE_MS - 1, "1m")
                assert float(k["c"]) == source["close"][3] and float(k["v"]) == source["volume"][3]
                assert float(k["q"]) == source["quote_volume"][3]
                assert k["n"] == source["trades"][3]
                assert float(k["V"]) == source["taker_buy_base"][3]
                assert float(k["Q"]) == source["taker_buy_quote"][3]
                assert opening["k"]["t"] == t[4] and opening["k"]["x"] is False
                assert opening["k"]["o"] == opening["k"]["h"] == opening["k"]["c"]
                await ws.send_json({"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": 3})
                assert await receive_json(ws) == {"result": None, "id": 3}
                assert fx.subscriptions == ["btcusdt@kline_1m"]
                await ws.send_str("not json")
                assert (await receive_json(ws))["code"] == 3
                await ws.send_json({"method": "FLY", "id": 4})
                assert (await receive_json(ws))["code"] == 2
                await ws.ping(b"hi")
                pong = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
                assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"hi")
            # The combined endpoint names its streams in the URL and wraps events.
            url = fx.ws_url + "?streams=btcusdt@kline_1m"
            async with session.ws_connect(url) as ws:
                wrapped = await receive_json(ws)
                assert wrapped["stream"] == "btcusdt@kline_1m"
                assert wrapped["data"]["k"]["t"] == t[4]

    asyncio.run(run())


def test_multi_symbol_step_closes_every_symbol_and_skips_a_gap() -> None:
    btc = random_walk_bars(5, seed=1)
    eth_all = random_walk_bars(5, seed=2, price=3_000.0)
    keep = np.array([0, 1, 3, 4])  # ETH has no bar at the third minute
    eth = {name: values[keep] for name, values in eth_all.items()}

    async def run() -> None:
        fx = FakeExchange({"BTC/USDT": btc, "ETH/USDT": eth})
        async with running(fx), aiohttp.ClientSession() as session:
            async with session.ws_connect(fx.ws_url + "/0") as ws:
                await ws.send_json(
                    {"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m", "ethusdt@kline_1m"],
                     "id": 1}
                )  # fmt: skip
                await receive_json(ws)
                await receive_json(ws)
                await receive_json(ws)  # the two forming klines
                closed: list[tuple[str, int]] = []
                while await fx.step():
                    pass
                await fx.drop_connections()
                async for message in ws:
                    k = orjson.loads(message.data)["k"]
                    if k["x"]:
                        closed.append((k["s"], k["t"]))
            t = btc["open_time"]
            assert closed == [
                ("BTCUSDT", t[0]), ("ETHUSDT", t[0]),
                ("BTCUSDT", t[1]), ("ETHUSDT", t[1]),
                ("BTCUSDT", t[2]),
                ("BTCUSDT", t[3]), ("ETHUSDT", t[3]),
                ("BTCUSDT", t[4]), ("ETHUSDT", t[4]),
            ]  # fmt: skip

    asyncio.run(run())


def test_automatic_stepping_pushes_bars_until_the_data_ends() -> None:
    source = random_walk_bars(12, seed=8)

    async def run() -> None:
        fx = FakeExchange({"BTC/USDT": source}, start_index=2, bar_interval_s=0.01)
        async with running(fx), aiohttp.ClientSession() as session:
            async with session.ws_connect(fx.ws_url + "/0") as ws:
                await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 1})
                closed: list[int] = []
                while not closed or closed[-1] != source["open_time"][-1]:
                    event = await receive_json(ws)
                    if "k" in event and event["k"]["x"]:
                        closed.append(event["k"]["t"])
            assert closed == sorted(closed) and len(set(closed)) == len(closed)
            for _ in range(100):  # the loop ends by itself once the data is exhausted
                if fx.exhausted:
                    break
                await asyncio.sleep(0.01)
            assert fx.exhausted and fx.current_index == 12

    asyncio.run(run())
