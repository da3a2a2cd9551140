"""Kill -9 the live daemon at its most dangerous moments, restart it, and let the exchange judge.

Each case runs `scalpd run` as a child process against the fake exchange with the real ccxt
client (scalpd/fakex/crashes.py), kills it with SIGKILL at a crash point (scalpd/faults.py),
lets the market go on for a bar while it is down, restarts it and trades on. Afterwards: no
order twice, no fill lost or booked twice, the book's base asset and cash equal the exchange's,
and the orders the database calls open are the ones open there. `scalpd bench crash_soak` runs
many more, with random points and counts.

The in-process cases check what a start finds besides our own orders: strays and trades that
are not ours.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from scalpd.config.settings import RiskSettings, load_settings
from scalpd.data.synthetic import generate
from scalpd.fakex import FakeExchange
from scalpd.fakex.crashes import crash_and_recover
from scalpd.fakex.testing import ccxt_client, exchange_section, until_unsubscribed
from scalpd.live.daemon import STOPPING, Daemon, lift_stop_pause
from scalpd.risk.manager import RiskManager
from scalpd.store.sqlite import Store
from tests.conftest import Endpoint

BARS = generate(days=0.1, seed=3, start="2024-01-01T00:00:00Z")  # 144 synthetic bars


@pytest.mark.parametrize(
    ("point", "count"),
    [
        ("order_recorded", 2),  # recorded, never sent: closed as rejected at restart
        ("order_sent", 2),  # accepted by the exchange, answer never read: its fill is found
        ("bracket_sent", 2),  # OCO resting on the exchange, unrecorded: adopted, not doubled
        ("fill_unrecorded", 1),  # a fill learnt and not written: booked at restart, once
    ],
)
def test_kill_9_then_restart_loses_nothing(tmp_path: Path, point: str, count: int) -> None:
    outcome = asyncio.run(crash_and_recover(tmp_path / "run", BARS, point, count))
    assert outcome.crashed, f"crash point {point}:{count} never reached"
    assert outcome.problems == []
    assert outcome.runs == 2 and outcome.fills >= 6


API_KEY, API_SECRET = "rec-key-3Vb", "rec-secret-8Qw"


def _settings(tmp_path: Path, fx: FakeExchange, alert_urls: list[str] = (), **live: object):
    return load_settings(
        None,
        {
            "exchange": exchange_section(fx, API_KEY, API_SECRET),
            "symbols": {"trade": [BARS.symbol], "stream_trades": False},
            "strategy": {"fast_period_bars": 3, "slow_period_bars": 8, "max_hold_bars": 12},
            "store": {"path": str(tmp_path / "live.db")},
            "control": {"enabled": False},
            "live": live,
            "alerts": {"urls": list(alert_urls)},
            "logging": {"level": "warning"},
        },
    )


async def _trade(fx: FakeExchange, settings, bars: int) -> Daemon:
    """Run the live daemon in this process for `bars` more bars, then stop it cleanly."""
    daemon = Daemon(settings, paper=False)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(fx.wait_subscribed(1), 20)
        for k in range(bars):
            assert await fx.step()
            await asyncio.wait_for(daemon.wait_processed(k + 1), 20)
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, 20) == 0
    await until_unsubscribed(fx)  # the next start must subscribe anew
    return daemon


def _fake() -> FakeExchange:
    return FakeExchange(
        {BARS.symbol: BARS.kline_columns()},
        api_key=API_KEY,
        api_secret=API_SECRET,
        balances={"USDT": 10_000.0},
        fee_bps=10.0,
    )


@pytest.mark.parametrize("policy", ["cancel", "keep"])
def test_stray_orders_are_cancelled_or_kept_and_reported(
    tmp_path: Path, policy: str, endpoint: Endpoint
) -> None:
    async def scenario() -> tuple[Daemon, list[dict]]:
        fx = _fake()
        await fx.start()
        try:
            async with ccxt_client(fx, apiKey=API_KEY, secret=API_SECRET) as client:
                # Placed by hand, far below the market: it rests.
                await client.create_order(
                    BARS.symbol, "limit", "buy", 0.01, 30_000.0, {"newClientOrderId": "manual-1"}
                )
            settings = _settings(tmp_path, fx, [endpoint.url()], stray_orders=policy)
            daemon = await _trade(fx, settings, 3)
            return daemon, fx.orders
        finally:
            await fx.stop()

    daemon, orders = asyncio.run(scenario())
    assert daemon.recovery is not None
    (manual,) = [o for o in orders if o["clientOrderId"] == "manual-1"]
    if policy == "cancel":
        assert daemon.recovery.strays_cancelled == 1 and manual["status"] == "CANCELED"
    else:
        assert daemon.recovery.strays_kept == 1 and manual["status"] == "NEW"
    assert len(daemon.recovery.surprises) == 1 and "manual-1" in daemon.recovery.surprises[0]
    # Alerted through apprise to a local endpoint, at warning level.
    (alert,) = [m for m in endpoint.received if "reconciliation" in m["title"]]
    assert "manual-1" in alert["message"] and alert["type"] == "warning"


def test_a_trade_we_never_sent_is_counted_and_never_booked(tmp_path: Path) -> None:
    async def scenario() -> tuple[Daemon, Daemon, float]:
        fx = _fake()
        await fx.start()
        try:
            settings = _settings(tmp_path, fx)
            first = await _trade(fx, settings, 30)
            async with ccxt_client(fx, apiKey=API_KEY, secret=API_SECRET) as client:
                await client.create_order(
                    BARS.symbol, "market", "buy", 0.01, None, {"newClientOrderId": "manual-2"}
                )
            second = await _trade(fx, settings, 2)
            return first, second, fx.balances["USDT"]
        finally:
            await fx.stop()

    first, second, usdt = asyncio.run(scenario())
    assert first.engine is not None and first.engine.trades, "no trade before the restart"
    assert second.recovery is not None and second.recovery.foreign_trades == 1
    assert second.engine is not None and second.engine.anomalies >= 1
    assert any("never sent" in text for text in second.recovery.surprises)
    store = Store(second.settings.store.path)
    assert all(f["client_id"] != "manual-2" for f in store.db["fills"].rows)
    # Cash is the exchange's (the manual buy spent some of it); the book has no position from it.
    assert second.engine.portfolio.cash == pytest.approx(usdt, rel=1e-9)
    store.close()


def test_a_stop_pause_saved_by_a_daemon_killed_while_stopping_is_lifted_at_start() -> None:
    for reason, stays in ((STOPPING, False), ("operator", True)):
        risk = RiskManager(RiskSettings())
        risk.pause(1_000, reason)
        state = risk.state
        lift_stop_pause(state)
        assert bool(state.tripped()) is stays
