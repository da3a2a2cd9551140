"""The live broker when the exchange says no, says it slowly, or says nothing.

Real ccxt client, fake exchange (its fault switches: `fail_next_requests`,
`reject_next_orders`, `delay_next_order_response`); the broker is driven as the daemon drives it.
"""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from scalpd.events import Fill, OrderStatus, OrderUpdate
from scalpd.execution.ccxt_broker import CcxtBroker
from scalpd.fakex.testing import ccxt_client, running
from tests.fakex.test_ccxt_broker import QUIET, RULES, entry, make_fx, submit

KEYS = {"apiKey": "k", "secret": "s"}


def _broker(client, **kw) -> CcxtBroker:
    return CcxtBroker(client, RULES, backoff_initial_s=0.01, **kw)


def _ends(reports) -> list[tuple[str, OrderStatus]]:
    return [(r.client_id, r.status) for r in reports if type(r) is OrderUpdate]


def test_rate_limited_placement_backs_off_then_goes_through_once() -> None:
    async def scenario():
        fx = make_fx([QUIET] * 4, api_key="k", api_secret="s", balances={"USDT": 10_000.0})
        async with running(fx), ccxt_client(fx, **KEYS) as client:
            broker = _broker(client)
            fx.fail_next_requests(2, status=429, retry_after_s=0)
            reports = await submit(fx, broker, entry(0.01))
            return reports, fx.orders

    with capture_logs() as logs:
        reports, orders = asyncio.run(scenario())
    assert [e["event"] for e in logs].count("rate_limited") == 2
    assert [o["clientOrderId"] for o in orders if o["side"] == "BUY"] == ["e1"]
    assert sum(r.qty for r in reports if type(r) is Fill and r.client_id == "e1") == 0.01


def test_still_rate_limited_after_every_retry_is_a_rejection_not_a_crash() -> None:
    async def scenario():
        fx = make_fx([QUIET] * 4, api_key="k", api_secret="s", balances={"USDT": 10_000.0})
        async with running(fx), ccxt_client(fx, **KEYS) as client:
            broker = _broker(client, max_rate_limit_retries=2)
            fx.fail_next_requests(5, status=429, retry_after_s=0)
            reports = await submit(fx, broker, entry(0.01))
            return reports, fx.orders

    reports, orders = asyncio.run(scenario())
    assert orders == [] and _ends(reports) == [("e1", OrderStatus.REJECTED)]


@pytest.mark.parametrize(
    ("code", "msg"),
    [
        (-2010, "Account has insufficient balance for requested action."),
        (-1013, "Filter failure: LOT_SIZE"),
    ],
)
def test_insufficient_balance_and_filter_failures_reject_the_order(code: int, msg: str) -> None:
    async def scenario():
        fx = make_fx([QUIET] * 4, api_key="k", api_secret="s", balances={"USDT": 10_000.0})
        async with running(fx), ccxt_client(fx, **KEYS) as client:
            broker = _broker(client)
            fx.reject_next_orders(1, code=code, msg=msg)
            reports = await submit(fx, broker, entry(0.01))
            return reports, fx.balances

    reports, balances = asyncio.run(scenario())
    ((client_id, status, reason),) = [
        (r.client_id, r.status, r.reason) for r in reports if type(r) is OrderUpdate
    ]
    assert (client_id, status) == ("e1", OrderStatus.REJECTED) and msg.split(":")[0] in reason
    assert balances["USDT"] == 10_000.0  # nothing happened on the exchange


def test_a_placement_that_times_out_is_looked_up_by_client_id_and_never_sent_twice() -> None:
    """The exchange took the order and its answer came too late: ccxt raises RequestTimeout.
    The broker finds the order by our client id and books its fill, once."""

    async def scenario():
        fx = make_fx([QUIET] * 4, api_key="k", api_secret="s", balances={"USDT": 10_000.0})
        async with running(fx), ccxt_client(fx, timeout=300, **KEYS) as client:
            broker = _broker(client)
            fx.delay_next_order_response(1.0)
            reports = await submit(fx, broker, entry(0.01))
            return reports, fx.orders, fx.trades

    with capture_logs() as logs:
        reports, orders, trades = asyncio.run(scenario())
    assert any(e["event"] == "order_outcome_unknown" for e in logs)
    assert [o["clientOrderId"] for o in orders if o["side"] == "BUY"] == ["e1"]
    booked = [r for r in reports if type(r) is Fill and r.client_id == "e1"]
    assert len(booked) == len([t for t in trades if t["isBuyer"]]) == 1
    assert booked[0].qty == 0.01
