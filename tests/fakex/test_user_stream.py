"""The account's user-data stream: the fake's executionReports through the real ccxt client, and
the live broker learning its resting orders' fills from them instead of polling.

The broker's reports must be the same with the stream as without it (polling), bar for bar;
with it, a bar that filled a resting order costs no request on the decision path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from scalpd.execution.ccxt_broker import CcxtBroker
from scalpd.fakex import FakeExchange
from scalpd.fakex.testing import ccxt_client, running
from tests.fakex.test_ccxt_broker import (
    LIMIT_BARS,
    QUIET,
    RULES,
    entry,
    fills,
    legs,
    make_fx,
    step,
    submit,
    updates,
)

ORDER_POLLS = (("GET", "/api/v3/order"), ("GET", "/api/v3/myTrades"))


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


def polls(fx: FakeExchange, since: int) -> int:
    return sum(r in ORDER_POLLS for r in fx.requests[since:])


def test_execution_reports_follow_each_order_through_its_life() -> None:
    """A market buy (NEW, then its trade), its OCO's legs (NEW each), a bar through the stop:
    the stop's trade, the take-profit expired. ccxt keeps each order with its trades."""
    rows = [QUIET, QUIET, (40_000, 40_010, 39_000, 39_100, 100.0), QUIET]

    async def run() -> None:
        fx = make_fx(rows, balances={"USDT": 10_000.0})
        async with running(fx), ccxt_client(fx) as ex:
            await ex.authenticate()
            assert fx.user_subscribers == 1
            buy = {"newClientOrderId": "b"}
            await ex.create_order("BTC/USDT", "market", "buy", 0.01, None, buy)
            await ex.private_post_orderlist_oco(
                {
                    "symbol": "BTCUSDT", "side": "SELL", "quantity": "0.00999",
                    "aboveType": "LIMIT_MAKER", "abovePrice": "41000", "aboveClientOrderId": "tp",
                    "belowType": "STOP_LOSS", "belowStopPrice": "39500",
                    "belowClientOrderId": "sl", "listClientOrderId": "l",
                }
            )  # fmt: skip
            await fx.step()
            await fx.step()
            await until(lambda: len(ex.orders.hashmap.get("BTC/USDT", {})) == 3)
            await until(lambda: ex.orders.hashmap["BTC/USDT"]["3"]["status"] != "open")
            seen = {
                o["clientOrderId"]: (
                    o["status"],
                    o["filled"],
                    [(t["amount"], t["price"], t["fee"]["cost"], t["fee"]["currency"])
                     for t in o["trades"] or []],
                )
                for o in ex.orders.hashmap["BTC/USDT"].values()
            }  # fmt: skip
            # Taker 10 bps: 0.00001 BTC of the buy, 0.39451 USDT of the stop's 39 500 x 0.00999.
            assert seen == {
                "b": ("closed", 0.01, [(0.01, 40_000.0, pytest.approx(1e-5), "BTC")]),
                "sl": ("closed", 0.00999, [(0.00999, 39_500.0, pytest.approx(0.394605), "USDT")]),
                "tp": ("expired", 0.0, []),
            }

    asyncio.run(run())


def test_a_subscription_with_a_bad_signature_is_refused_and_the_broker_keeps_polling() -> None:
    """The fake refuses it (-1022); ccxt 4.5.90 then trips on its own cleanup (a KeyError, not
    an AuthenticationError): the broker takes any error as "stream down" and tries again."""

    async def run() -> None:
        fx = make_fx([QUIET, QUIET])
        async with running(fx), ccxt_client(fx, apiKey="fake-key", secret="wrong") as ex:
            broker = CcxtBroker(ex, RULES, user_stream=True, backoff_initial_s=0.01)
            stream = asyncio.create_task(broker.watch_account())
            try:
                await until(lambda: fx.requests.count(("GET", "/stream/ws-api/v3")) >= 2)
                assert not broker.stream_live and fx.user_subscribers == 0
            finally:
                stream.cancel()
                await asyncio.gather(stream, return_exceptions=True)

    asyncio.run(run())


async def limit_entry_session(*, user_stream: bool, drop_at: int | None = None) -> tuple:
    """The limit entry of test_ccxt_broker (fills over three bars, then its take-profit in two
    parts): every bar's reports, and the polls made while syncing the bars."""
    fx = make_fx(LIMIT_BARS, balances={"USDT": 20_000.0})
    async with running(fx), ccxt_client(fx) as ex:
        broker = CcxtBroker(
            ex, RULES, limit_ttl_bars=5, user_stream=user_stream, backoff_initial_s=0.01
        )
        stream = asyncio.create_task(broker.watch_account())
        try:
            if user_stream:
                await until(lambda: broker.stream_live)
            bars = [await submit(fx, broker, entry(0.3, price=39_900.0))]
            sync_polls = 0
            for index in range(1, 7):
                if index == drop_at:
                    await fx.drop_connections()
                    await until(lambda: not broker.stream_live)
                before = len(fx.requests)
                bars.append(await step(fx, broker))
                sync_polls += polls(fx, before)
                if index == drop_at:
                    await until(lambda: broker.stream_live)
            described = [(fills(r), updates(r), legs(r)) for r in bars]
            return described, sync_polls, broker.stream_reconnects
        finally:
            stream.cancel()
            await asyncio.gather(stream, return_exceptions=True)


def test_the_stream_gives_the_same_reports_as_polling_without_a_request() -> None:
    polled, polls_without, _ = asyncio.run(limit_entry_session(user_stream=False))
    streamed, polls_with, _ = asyncio.run(limit_entry_session(user_stream=True))
    assert streamed == polled
    # Without the stream each bar that reached an order asked about it (5 of the 6 bars).
    assert polls_without >= 5
    assert polls_with == 0


def test_a_dropped_stream_falls_back_to_polling_and_subscribes_again() -> None:
    polled, _, _ = asyncio.run(limit_entry_session(user_stream=False))
    streamed, polls_with, reconnects = asyncio.run(limit_entry_session(user_stream=True, drop_at=2))
    assert streamed == polled
    assert reconnects == 1
    assert polls_with >= 1  # the bar synced while the stream was down was polled
