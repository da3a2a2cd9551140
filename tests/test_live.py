"""`scalpd run --paper` and `scalpd run` with the real ccxt.pro client against the fake exchange.

The fake is stepped by hand, one bar at a time, and the test waits until the daemon has handled
each bar before closing the next, so the outcome does not depend on the machine's speed. The
trades must equal those of a replay of the same bars: one engine, three source/broker pairs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalpd.config.settings import load_settings
from scalpd.data.bars import BarColumns
from scalpd.data.parquet import read_parquet
from scalpd.data.synthetic import generate
from scalpd.fakex import FakeExchange
from scalpd.fakex.testing import exchange_section
from scalpd.live.daemon import Daemon
from scalpd.replay.runner import ReplayInput, run_replay
from scalpd.store.sqlite import Store
from tests.conftest import shared_file

API_KEY, API_SECRET = "test-key-7Hq2", "test-secret-Zp93xK"
# Short periods so that a few hundred bars hold several round trips of every exit kind.
STRATEGY = {"fast_period_bars": 3, "slow_period_bars": 8, "max_hold_bars": 12}


def _settings(tmp_path: Path, fx: FakeExchange, db: str, symbol: str):
    return load_settings(
        None,
        {
            "exchange": exchange_section(fx, API_KEY, API_SECRET),
            "symbols": {"trade": [symbol]},
            "strategy": STRATEGY,
            "store": {"path": str(tmp_path / db)},
            "logging": {"level": "warning"},
        },
    )


async def _run_against_fake(
    tmp_path: Path, bars: BarColumns, *, paper: bool, drop_at: int | None = None
) -> tuple[Daemon, FakeExchange, Store]:
    fx = FakeExchange(
        {bars.symbol: bars.kline_columns()},
        api_key=API_KEY,
        api_secret=API_SECRET,
        balances={"USDT": 10_000.0},
        fee_bps=10.0,
    )
    await fx.start()
    settings = _settings(tmp_path, fx, "paper.db" if paper else "live.db", bars.symbol)
    daemon = Daemon(settings, paper=paper)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(fx.wait_subscribed(1), 20)
        for k in range(len(bars) - 1):  # the last bar only opens: nothing can fill on it
            if k == drop_at:
                # The bar closes while the client is cut off (the step closes it before the
                # client can even see the drop): only the REST backfill can deliver it.
                streams = len(fx.subscriptions)  # klines and trades
                dropping = fx.drop_connections()
                assert await fx.step()
                await dropping
                await asyncio.wait_for(fx.wait_subscribed(streams), 20)
            else:
                assert await fx.step()
            await asyncio.wait_for(daemon.wait_processed(k + 1), 20)
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, 20) == 0
        await fx.stop()
    return daemon, fx, Store(settings.store.path)


# The fake exchange fills a market order at the bar's open: no spread, impact or latency. To
# compare with it, replay models none either (paper trading keeps them, on both sides).
FRICTIONLESS = {"latency_ms": 0.0, "half_spread_bps": 0.0, "impact_coefficient": 0.0}


def _replay(tmp_path: Path, bars: BarColumns, *, frictionless: bool = False):
    settings = load_settings(
        None,
        {
            "symbols": {"trade": [bars.symbol]},
            "strategy": STRATEGY,
            "store": {"path": str(tmp_path / "replay.db")},
            "sim": FRICTIONLESS if frictionless else {},
        },
    )
    # Bars the daemon saw closed: all but the last (which the fake only opened).
    seen = bars.take(slice(0, len(bars) - 1))
    return run_replay(settings, ReplayInput([seen], "same bars"), Store(settings.store.path))


def _trade_rows(trades) -> list[tuple]:
    return [
        (t.entry_time_ms, t.exit_time_ms, t.qty, t.entry_price, t.exit_price, t.exit_reason)
        for t in trades
    ]


def _window(path: Path, start: str, bars: int) -> BarColumns:
    all_bars = read_parquet(path)
    first = int(np.datetime64(start, "ms").astype(np.int64))
    i = int(all_bars.open_time.searchsorted(first))
    return all_bars.take(slice(i, i + bars))


@pytest.mark.parametrize("paper", [True, False], ids=["paper", "live"])
def test_daemon_trades_like_replay_on_real_bars(tmp_path: Path, paper: bool) -> None:
    bars = _window(shared_file("binance-spot/BTCUSDT-1m-2024.parquet"), "2024-03-04T00:00", 240)
    daemon, fx, store = asyncio.run(_run_against_fake(tmp_path, bars, paper=paper))
    replay = _replay(tmp_path, bars, frictionless=not paper)
    engine = daemon.engine
    assert engine is not None and engine.bars_seen == len(bars) - 1
    # Trade prints arrive too (watch_trades; the fake prints one a bar), each once.
    assert daemon.source is not None and 0 < daemon.source.trades_seen <= len(bars) - 1
    assert len(replay.engine.trades) >= 3, "window too quiet to compare anything"
    assert _trade_rows(engine.trades) == _trade_rows(replay.engine.trades)
    for live_t, replay_t in zip(engine.trades, replay.engine.trades, strict=True):
        assert live_t.fees == pytest.approx(replay_t.fees, rel=1e-9)
        assert live_t.pnl == pytest.approx(replay_t.pnl, rel=1e-9, abs=1e-9)
    run = store.run(daemon.run_id)
    assert run["mode"] == ("paper" if paper else "live")
    assert run["status"] == "stopped"
    fills = store.rows("fills", daemon.run_id)
    orders = {o["client_id"]: o for o in store.rows("orders", daemon.run_id)}
    assert fills and all(f["client_id"] in orders for f in fills)
    assert all(cid.startswith(f"sd{daemon.run_id}-") for cid in orders)
    if not paper:
        # The orders really went to the exchange, under our client ids, and its fills match.
        sent = {o["clientOrderId"] for o in fx.orders}
        entries = [cid for cid, o in orders.items() if o["parent_id"] is None]
        assert set(entries) <= sent
        assert len(fx.trades) == len(fills)
        assert fx.balances["USDT"] == pytest.approx(engine.portfolio.cash, rel=1e-9)


@pytest.mark.parametrize("paper", [True, False], ids=["paper", "live"])
def test_daemon_survives_a_dropped_websocket(tmp_path: Path, paper: bool) -> None:
    bars = generate(days=0.1, seed=3, start="2024-01-01T00:00:00Z")  # 144 synthetic bars
    daemon, _, _ = asyncio.run(_run_against_fake(tmp_path, bars, paper=paper, drop_at=50))
    replay = _replay(tmp_path, bars, frictionless=not paper)
    assert daemon.source is not None and daemon.source.backfilled >= 1
    assert daemon.source is not None and daemon.source.reconnects >= 1
    assert daemon.engine is not None and daemon.engine.bars_seen == len(bars) - 1
    assert daemon.engine.gaps_seen == 0
    assert _trade_rows(daemon.engine.trades) == _trade_rows(replay.engine.trades)


@pytest.mark.parametrize("paper", [True, False], ids=["paper", "live"])
def test_scalpd_run_cli_against_fake_exchange_by_hand(tmp_path: Path, paper: bool) -> None:
    """The commands a user types: `scalpd fake-exchange ...` then `scalpd run [--paper]`."""
    bars = generate(days=0.05, seed=5, start="2024-01-01T00:00:00Z")
    data = tmp_path / "SYNBTCUSDT-1m-test.parquet"
    pq.write_table(pa.table(bars.kline_columns()), data)
    fake = subprocess.Popen(
        [sys.executable, "-m", "scalpd", "fake-exchange", "--data", str(data),
         "--symbol", "BTC/USDT", "--bar-interval-s", "0.3", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        banner = fake.stdout.readline()
        rest = next(w for w in banner.split() if w.startswith("http://"))
        ws = next(w for w in banner.split() if w.startswith("ws://"))
        env = {
            **os.environ,
            "SCALPD_EXCHANGE__REST_URL": rest.rstrip(","),
            "SCALPD_EXCHANGE__WS_URL": ws.rstrip(","),
            "SCALPD_STORE__PATH": str(tmp_path / "cli.db"),
            "SCALPD_LOGGING__FORMAT": "json",
            "SCALPD_LOGGING__LEVEL": "debug",  # every log line there is, for the secrets check
            "SCALPD_EXCHANGE__API_KEY": "fake-key",
            "SCALPD_EXCHANGE__API_SECRET": "fake-secret",
        }
        done = subprocess.run(
            [sys.executable, "-m", "scalpd", "run", *(["--paper"] if paper else []),
             "--max-bars", "5"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        fake.send_signal(signal.SIGINT)
        fake.wait(10)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    bar_lines = [line for line in done.stdout.splitlines() if '"event":"bar"' in line]
    assert len(bar_lines) == 5
    store = Store(tmp_path / "cli.db")
    (run,) = list(store.db["runs"].rows)
    assert run["mode"] == ("paper" if paper else "live") and run["status"] == "completed"
    assert store.db["equity"].count >= 1
    store.close()
    # The API key and secret are in no log line and no database row (the files' raw bytes,
    # write-ahead log included).
    stored = b"".join(f.read_bytes() for f in tmp_path.glob("cli.db*"))
    for secret in ("fake-key", "fake-secret"):
        assert secret not in done.stdout + done.stderr
        assert secret.encode() not in stored


def test_recording_ticks_beside_trading_never_stops_trading(tmp_path: Path) -> None:
    """data.record_ticks: trades are recorded while the daemon trades. The fake serves no order
    book, so the book part of the recording fails over and over: trading must not notice."""
    from scalpd.data.recorder import read_ticks

    bars = generate(days=0.03, seed=9, start="2024-01-01T00:00:00Z")  # 43 bars

    async def run() -> Daemon:
        fx = FakeExchange(
            {bars.symbol: bars.kline_columns()}, api_key=API_KEY, api_secret=API_SECRET
        )
        await fx.start()
        settings = _settings(tmp_path, fx, "rec.db", bars.symbol)
        settings = settings.model_copy(
            update={"data": settings.data.model_copy(
                update={"record_ticks": True, "market_root": tmp_path / "market"}
            )}
        )  # fmt: skip
        daemon = Daemon(settings, paper=True)
        task = asyncio.create_task(daemon.run())
        try:
            # Wait for the bar source's klines and trades and the recorder's own trade stream.
            stream = bars.symbol.replace("/", "").lower()
            while not (
                f"{stream}@kline_1m" in fx.subscriptions
                and fx.subscriptions.count(f"{stream}@trade") == 2
            ):
                await asyncio.sleep(0.01)
            for k in range(len(bars) - 1):
                assert await fx.step()
                await asyncio.wait_for(daemon.wait_processed(k + 1), 20)
        finally:
            daemon.stop()
            assert await asyncio.wait_for(task, 20) == 0
            await fx.stop()
        return daemon

    daemon = asyncio.run(run())
    assert daemon.engine is not None and daemon.engine.bars_seen == len(bars) - 1
    trades = read_ticks(tmp_path / "market", bars.symbol, "trades")
    assert 0 < trades.num_rows <= len(bars) - 1
