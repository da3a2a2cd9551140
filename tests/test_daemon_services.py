"""The daemon's operator services against the fake exchange with the real ccxt client: the
control socket (`scalpd ctl`'s requests), the metrics endpoint, a graceful stop that cancels
(or keeps) our resting orders, and the disconnect alert.

As in tests/test_live.py the fake is stepped by hand and each test waits until the daemon has
handled a bar before closing the next; waits on conditions are bounded only against a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scalpd.config.settings import load_settings
from scalpd.data.synthetic import generate
from scalpd.fakex import FakeExchange
from scalpd.fakex.testing import exchange_section
from scalpd.live.daemon import Daemon
from scalpd.ops.control import ControlError, request
from scalpd.risk.breakers import RiskState
from scalpd.store.sqlite import Store
from tests.conftest import closed_port
from tests.tiny_models import tiny_daemon_model

API_KEY, API_SECRET = "svc-key-4Tx8", "svc-secret-Ld71qW"
# Short periods: a few dozen synthetic bars hold entries and exits.
STRATEGY = {"fast_period_bars": 3, "slow_period_bars": 8, "max_hold_bars": 12}
BARS = generate(days=0.1, seed=3, start="2024-01-01T00:00:00Z")  # 144 synthetic bars
SYMBOL = BARS.symbol
BASE = SYMBOL.split("/")[0]
WAIT_S = 20  # a bound on a hang only


def _settings(tmp_path: Path, fx: FakeExchange, **sections: dict[str, Any]):
    overrides: dict[str, Any] = {
        "exchange": exchange_section(fx, API_KEY, API_SECRET, reconnect_max_backoff_s=0.2),
        "symbols": {"trade": [SYMBOL]},
        "strategy": STRATEGY,
        "store": {"path": str(tmp_path / "svc.db")},
        "logging": {"level": "warning"},
    }
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_settings(None, overrides)


class Harness:
    def __init__(self, daemon: Daemon, fx: FakeExchange) -> None:
        self.daemon, self.fx = daemon, fx
        self.stepped = 0

    @property
    def socket(self) -> Path:
        return self.daemon.settings.control.socket_path

    async def step(self, n: int = 1) -> None:
        for _ in range(n):
            assert await self.fx.step()
            self.stepped += 1
            await asyncio.wait_for(self.daemon.wait_processed(self.stepped), WAIT_S)

    async def step_until(self, done: Callable[[], bool], most: int = 100) -> None:
        for _ in range(most):
            if done():
                return
            await self.step()
        raise AssertionError(f"condition not met within {most} bars")

    def has_position(self) -> bool:
        engine = self.daemon.engine
        return engine is not None and bool(engine.portfolio.positions)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, *, paper: bool, **sections: dict[str, Any]
) -> AsyncIterator[Harness]:
    async with on_fake(lambda fx: _settings(tmp_path, fx, **sections), paper=paper) as h:
        yield h


@contextlib.asynccontextmanager
async def on_fake(
    settings_for: Callable[[FakeExchange], Any],
    *,
    paper: bool,
    bars: Any = BARS,
    keys: tuple[str, str] = (API_KEY, API_SECRET),
) -> AsyncIterator[Harness]:
    """A daemon with `settings_for(fx)` trading `bars` on a fake exchange `fx` holding 10,000
    USDT (these API keys, 10 bps fees), from its start to a clean stop."""
    fx = FakeExchange(
        {bars.symbol: bars.kline_columns()},
        api_key=keys[0],
        api_secret=keys[1],
        balances={"USDT": 10_000.0},
        fee_bps=10.0,
    )
    await fx.start()
    daemon = Daemon(settings_for(fx), paper=paper)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(fx.wait_subscribed(1), WAIT_S)
        yield Harness(daemon, fx)
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, WAIT_S) == 0
        await fx.stop()


def _rows(daemon: Daemon, table: str) -> list[dict[str, Any]]:
    store = Store(daemon.settings.store.path)
    try:
        assert daemon.run_id is not None
        return store.rows(table, daemon.run_id)
    finally:
        store.close()


def _saved_tripped(daemon: Daemon) -> list[str]:
    """The breakers tripped in the risk state on disk, read by another connection (only
    what was committed)."""
    store = Store(daemon.settings.store.path)
    try:
        saved = store.load_risk_state(daemon.risk_account)
    finally:
        store.close()
    return [] if saved is None else RiskState.from_json(saved).tripped()


def test_ctl_status_pause_resume_and_errors(tmp_path: Path) -> None:
    async def scenario() -> Daemon:
        async with running(tmp_path, paper=True) as h:
            await h.step(3)
            status = await request(h.socket, "status")
            assert status["mode"] == "paper" and status["run_id"] == h.daemon.run_id
            assert status["bars_processed"] == 3 and status["paused"] is False
            assert status["equity_usdt"] == pytest.approx(10_000.0)
            assert status["risk"]["tripped"] == {}
            assert status["connection"]["state"] == "connected"
            assert status["decision_latency_ms"]["bars"] == 3
            assert status["decision_latency_ms"]["p99"] >= status["decision_latency_ms"]["p50"]
            assert SYMBOL in status["last_bar"]
            # Wrong requests: an error answer each, and the daemon goes on.
            with pytest.raises(ControlError, match="unknown command 'explode'"):
                await request(h.socket, "explode")
            with pytest.raises(ControlError, match="needs the model strategy"):
                await request(h.socket, "reload-model", path="/nowhere")
            with pytest.raises(ControlError, match="is not tripped"):
                await request(h.socket, "resume", breaker="daily_loss")

            # Into a position, then paused: its exit still happens, no entry is sent.
            await h.step_until(h.has_position)
            answer = await request(h.socket, "pause", reason="news at 14:30")
            assert answer == {"paused": True, "reason": "news at 14:30"}
            assert _saved_tripped(h.daemon) == ["manual"]  # committed: it outlives a crash
            status = await request(h.socket, "status")
            assert status["paused"] is True
            assert status["risk"]["tripped"]["manual"]["reason"] == "paused by news at 14:30"
            (position,) = status["positions"].values()
            assert position["qty"] > 0 and "unrealized_pnl_usdt" in position
            paused_at = len(_rows(h.daemon, "intents"))
            await h.step_until(lambda: not h.has_position())  # closed by its bracket or time
            await h.step(40)
            later = _rows(h.daemon, "intents")[paused_at:]
            entries = [i for i in later if i["side"] == "buy"]
            assert all(i["allowed"] for i in later if i["side"] == "sell")
            assert entries and not any(i["allowed"] for i in entries)
            assert not h.has_position()
            assert all(i["decision"].startswith("paused by manual") for i in entries)

            assert (await request(h.socket, "resume"))["reset"] == ["manual"]
            assert _saved_tripped(h.daemon) == []
            await h.step_until(h.has_position)  # entries again
            return h.daemon

    daemon = asyncio.run(scenario())
    assert not daemon.settings.control.socket_path.exists()  # removed at the stop


def test_ctl_flatten_closes_the_position_on_the_exchange(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, paper=False) as h:
            await h.step_until(h.has_position)
            await h.step()  # the bracket is armed by now
            assert any(o["status"] == "NEW" for o in h.fx.orders)
            assert h.fx.balances.get(BASE, 0.0) > 0
            answer = await request(h.socket, "flatten")
            (client_id,) = answer["orders"]
            # Sent at once (not at the next bar): the exchange holds no BTC and no order.
            assert h.fx.balances.get(BASE, 0.0) < 1e-5  # below one lot step
            assert not [o for o in h.fx.orders if o["status"] in ("NEW", "PARTIALLY_FILLED")]
            orders = {o["client_id"]: o for o in _rows(h.daemon, "orders")}
            assert orders[client_id]["reason"] == "flatten"
            assert orders[client_id]["reduce_only"] == 1
            await h.step()  # the fill is booked with the next bar, as every exit's is
            assert not h.has_position()
            assert h.daemon.engine is not None
            assert h.daemon.engine.trades[-1].exit_reason == "flatten"
            assert (await request(h.socket, "flatten")) == {"orders": []}

    asyncio.run(scenario())


def test_metrics_endpoint_serves_the_daemon(tmp_path: Path) -> None:
    port = closed_port()

    async def scenario() -> str:
        async with running(tmp_path, paper=True, metrics={"enabled": True, "port": port}) as h:
            await h.step(5)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/metrics") as response,
            ):
                assert response.status == 200
                return await response.text()

    text = asyncio.run(scenario())

    def sample(name: str) -> float:
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert match, f"{name} not in the scrape"
        return float(match.group(1))

    assert sample("scalpd_equity_usdt") == pytest.approx(10_000.0)
    assert sample(f'scalpd_bars_total{{symbol="{SYMBOL}"}}') == 5
    assert sample("scalpd_decision_latency_seconds_count") == 5
    assert sample("scalpd_decision_latency_seconds_sum") > 0
    assert sample('scalpd_breaker_tripped{breaker="manual"}') == 0


@pytest.mark.parametrize("cancel", [True, False], ids=["cancel_on_stop", "keep_on_stop"])
def test_stop_cancels_resting_orders_only_when_asked(tmp_path: Path, cancel: bool) -> None:
    async def scenario() -> tuple[Daemon, FakeExchange]:
        async with running(tmp_path, paper=False, live={"cancel_on_stop": cancel}) as h:
            await h.step_until(h.has_position)
            await h.step()
            engine = h.daemon.engine
            assert engine is not None
            legs = [o for o in engine.open_orders.values() if o.parent_id is not None]
            assert len(legs) == 2
            h.daemon.stop()  # what SIGTERM calls
            # No entry after the signal: entries are paused until the loop has ended.
            assert engine.risk.entries_paused()
            return h.daemon, h.fx

    daemon, fx = asyncio.run(scenario())
    resting = [o for o in fx.orders if o["status"] in ("NEW", "PARTIALLY_FILLED")]
    legs = [o for o in _rows(daemon, "orders") if o["parent_id"] is not None]
    open_legs = [o for o in legs if o["status"] == "open"]
    if cancel:
        assert resting == []
        assert len(open_legs) == 0
        assert sum(o["status"] == "cancelled" for o in legs) == 2
    else:
        assert len(resting) == 2  # the OCO's take-profit and stop-loss
        assert {o["clientOrderId"] for o in resting} == {o["client_id"] for o in open_legs}
    assert daemon.engine is not None
    # The stop's pause is not saved: a restart trades at once.
    assert not daemon.engine.risk.entries_paused()
    store = Store(daemon.settings.store.path)
    saved = store.load_risk_state(daemon.risk_account)
    store.close()
    assert saved is not None and RiskState.from_json(saved).tripped() == []


def test_long_disconnect_is_alerted_once_and_its_end(tmp_path: Path, endpoint) -> None:
    async def wait_for_alert(title: str) -> None:
        while not any(title in a["title"] for a in endpoint.received):
            await asyncio.sleep(0.02)

    async def scenario() -> Daemon:
        async with running(
            tmp_path,
            paper=True,
            alerts={"urls": [endpoint.url()], "disconnect_after_s": 0.3},
        ) as h:
            await h.step(2)
            h.fx.refuse_websockets(True)
            await h.fx.drop_connections()
            await asyncio.wait_for(wait_for_alert("market data disconnected"), WAIT_S)
            status = await request(h.socket, "status")
            assert status["connection"]["state"] == "disconnected"
            h.fx.refuse_websockets(False)
            await asyncio.wait_for(wait_for_alert("market data back"), WAIT_S)
            await asyncio.wait_for(h.fx.wait_subscribed(1), WAIT_S)
            await h.step()  # and trading goes on
            return h.daemon

    daemon = asyncio.run(scenario())
    assert daemon.alerter is not None
    titles = [a["title"] for a in endpoint.received]
    assert sum("market data disconnected" in t for t in titles) == 1
    assert sum("market data back" in t for t in titles) == 1


def test_a_second_daemon_on_the_same_socket_stops_with_one_line(tmp_path: Path, capsys) -> None:
    async def scenario() -> int:
        async with running(tmp_path, paper=True) as h:
            settings = h.daemon.settings.model_copy(
                update={"store": h.daemon.settings.store.model_copy(
                    update={"path": tmp_path / "second.db"}
                )}
            )  # fmt: skip
            code = await asyncio.wait_for(Daemon(settings, paper=True).run(), WAIT_S)
            await h.step()  # the first one goes on
            assert (await request(h.socket, "status"))["bars_processed"] == 1
            return code

    assert asyncio.run(scenario()) == 1
    assert "another daemon is listening at" in capsys.readouterr().err


def test_ctl_reload_model_swaps_between_bars_and_alerts(tmp_path: Path, endpoint) -> None:
    import json
    import shutil

    model = tiny_daemon_model(tmp_path / "models", horizon_bars=30)
    # The same weights relabelled with other barriers: open positions' exits would not match.
    other = tmp_path / "other"
    shutil.copytree(model, other)
    meta = json.loads((other / "model.json").read_text())
    meta["label"]["take_profit_bps"] = 35.0
    (other / "model.json").write_text(json.dumps(meta))

    async def scenario() -> None:
        async with running(
            tmp_path,
            paper=True,
            strategy={"name": "model", "model_path": str(model), "model_backend": "eager"},
            alerts={"urls": [endpoint.url()]},
        ) as h:
            await h.step(3)
            before = (await request(h.socket, "status"))["model"]
            answer = await request(h.socket, "reload-model")  # the configured path again
            assert answer["previous"] == before and answer["model"] == before
            assert answer["warmup_bars"] > 0
            with pytest.raises(ControlError, match="barriers"):
                await request(h.socket, "reload-model", path=str(other))
            with pytest.raises(ControlError, match="not a model artifact"):
                await request(h.socket, "reload-model", path=str(tmp_path))
            await h.step(2)  # the swapped-in model runs on
            assert (await request(h.socket, "status"))["bars_processed"] == 5

    asyncio.run(scenario())
    changes = [a for a in endpoint.received if a["title"].startswith("model changed")]
    assert len(changes) == 1
