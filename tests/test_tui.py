"""`scalpd tui` (scalpd/ui): driven with Textual's pilot against a paper daemon on the fake
exchange (panels fill, pause/resume/flatten reach it and take effect), against no daemon and a
socket of the wrong kind (a message, no exception), and as SVG snapshots of its screens drawn
from a fixed snapshot (no clock, no randomness) at 80x24 and 160x48.

Regenerate the snapshots after a deliberate change of the look:
`.venv/bin/python -m pytest tests/test_tui.py --snapshot-update`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import threading
from pathlib import Path

import pytest

from scalpd.ops.control import request
from scalpd.ui.app import ConfirmScreen, HelpScreen, ScalpdApp
from scalpd.ui.data import (
    LiveSource,
    Snapshot,
    StaticSource,
    drawdown,
    pnl_total,
    state_word,
)
from scalpd.ui.widgets import (
    BreakersPanel,
    HealthPanel,
    LogTailPanel,
    ModelPanel,
    OrdersPanel,
    PnlPanel,
    PositionsPanel,
    RunsPanel,
    StateLine,
    TradesPanel,
)
from tests.test_daemon_services import running

WAIT_S = 20  # a bound on a hang only
T0_MS = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def fixed_snapshot() -> Snapshot:
    """A daemon paused by a breaker, with a position, its bracket and three closed trades."""
    status = {
        "mode": "paper",
        "run_id": 7,
        "stopping": False,
        "bars_processed": 1440,
        "equity_usdt": 10_012.5,
        "cash_usdt": 9_012.5,
        "realized_pnl_usdt": 9.75,
        "fees_usdt": 3.2,
        "trades": 3,
        "positions": {
            "BTC/USDT": {
                "qty": 0.0235,
                "avg_price": 42_150.0,
                "last_price": 42_268.1,
                "unrealized_pnl_usdt": 2.7754,
                "opened": "2024-01-01T23:41:00Z",
            }
        },
        "open_orders": [
            {
                "client_id": "tp-1",
                "symbol": "BTC/USDT",
                "side": "sell",
                "type": "limit",
                "qty": 0.0235,
                "price": 42_403.0,
                "reason": "take_profit",
                "parent_id": "e-1",
            },
            {
                "client_id": "sl-1",
                "symbol": "BTC/USDT",
                "side": "sell",
                "type": "stop_loss",
                "qty": 0.0235,
                "price": 42_023.5,
                "reason": "stop_loss",
                "parent_id": "e-1",
            },
        ],  # fmt: skip
        "paused": True,
        "risk": {
            "tripped": {
                "consecutive_losses": {
                    "reason": "3 losing trades in a row",
                    "since": "2024-01-01T23:50:00Z",
                    "reset": "cool-down until 2024-01-02T00:20:00Z",
                }
            },
            "consecutive_losses": 3,
            "day_start_equity": 10_000.0,
            "daily_pnl": 12.5,
        },
        "last_bar": {"BTC/USDT": {"open_time": "2024-01-01T23:59:00Z", "age_s": 0.8}},
        "connection": {"state": "connected", "disconnected_for_s": None, "reconnects": 2},
        "decision_latency_ms": {"bars": 1000, "p50": 1.234, "p99": 4.5},
        "loop_lag_ms": {"samples": 240, "p50": 0.21, "p99": 3.4, "max": 7.9,
                        "interval_ms": 250.0},
        "recovery": None,
        "strategy": "model",
        "model": "tcn/20240101-0000",
        "model_quality": {
            "label": {"take_profit_bps": 20.0, "stop_loss_bps": 20.0, "horizon_bars": 15},
            "window_bars": 500,
            "symbols": {
                "BTC/USDT": {
                    "confidence": 0.6125, "samples": 500, "accuracy": 0.548, "brier": 0.2431,
                    "ece": 0.031, "base_rate": 0.462,
                    "calibration": [
                        {"lo": 0.3, "hi": 0.4, "n": 120, "mean_p": 0.37, "freq": 0.34},
                        {"lo": 0.4, "hi": 0.5, "n": 210, "mean_p": 0.45, "freq": 0.43},
                        {"lo": 0.5, "hi": 0.6, "n": 150, "mean_p": 0.54, "freq": 0.58},
                        {"lo": 0.6, "hi": 0.7, "n": 20, "mean_p": 0.63, "freq": 0.65},
                    ],
                    "feature_importance": {
                        "samples": 240, "base_loss": 0.8123, "complete": True,
                        "took_ms": 131.0, "bar": "2024-01-01T23:00:00+00:00",
                        "importance": {"ret_12_5m": 0.0305, "macd_hist_5m": 0.0244,
                                       "er_20_15m": 0.0196, "rsi_14_15m": 0.0124,
                                       "ofi_1m": 0.0105, "atr_14_1m": 0.002},
                    },
                    "serving": {"champion": 2, "challenger": 3, "share": 0.1,
                                "previous": None, "anchor": 3},
                },
            },
        },
        "log_tail": [
            {"time": "2024-01-01T23:58:00.120Z", "level": "info", "event": "bar",
             "symbol": "BTC/USDT", "close": 42_251.3},
            {"time": "2024-01-01T23:58:30.004Z", "level": "warning", "event": "breaker_tripped",
             "breaker": "consecutive_losses", "reason": "3 losing trades in a row"},
            {"time": "2024-01-01T23:59:00.118Z", "level": "info", "event": "bar",
             "symbol": "BTC/USDT", "close": 42_268.1},
        ],
    }  # fmt: skip
    models = {
        "run_id": 7,
        "online": True,
        "model": "tcn/20240101-0000",
        "serving": {"BTC/USDT": {"champion": 2, "challenger": 3, "share": 0.1}},
        "versions": [
            {"symbol": "BTC/USDT", "model": "tcn/20240101-0000", "version": v, "parent": p,
             "state": state, "champion": v == 2, "created": f"2024-01-01T{10 + v}:00:00Z",
             "has_weights": True, "metrics": {"logloss": loss, "accuracy": acc},
             "reason": ""}
            for v, p, state, loss, acc in [
                (0, 0, "trained", 0.69, 0.51),
                (1, 0, "rejected", 0.71, 0.5),
                (2, 0, "promoted", 0.672, 0.534),
                (3, 2, "challenger", 0.668, 0.541),
            ]
        ],
    }  # fmt: skip
    trades = [
        {"symbol": "BTC/USDT", "entry_time_ms": T0_MS + m * 60_000,
         "exit_time_ms": T0_MS + (m + 9) * 60_000, "qty": 0.02, "entry_price": 42_000.0 + m,
         "exit_price": 42_000.0 + m + d, "fees": 1.68, "pnl": pnl, "exit_reason": why,
         "entry_reason": "ema_cross_up"}
        for m, d, pnl, why in [
            (1380, 180.0, 1.92, "take_profit"),
            (1350, -90.0, -3.48, "stop_loss"),
            (1300, 30.0, -1.08, "time_exit"),
        ]
    ]  # fmt: skip
    decisions = [
        {"time_ms": T0_MS + (1439 - i) * 60_000, "symbol": "BTC/USDT", "side": "buy",
         "qty": 0.02, "reason": "ema_cross_up", "allowed": 0,
         "decision": "paused by consecutive_losses"}
        for i in range(3)
    ]  # fmt: skip
    runs = [
        {"id": 7, "mode": "paper", "status": "running", "started_at_ms": T0_MS,
         "finished_at_ms": None, "data_label": None, "error": None, "summary": {},
         "has_report": False},
        {"id": 6, "mode": "replay", "status": "completed", "started_at_ms": T0_MS - 86_400_000,
         "finished_at_ms": T0_MS - 86_000_000, "data_label": "BTCUSDT-1m-2024.parquet",
         "error": None, "has_report": True,
         "summary": {"trades": 412, "total_return_pct": -1.234, "max_drawdown_pct": 2.5}},
        {"id": 5, "mode": "replay", "status": "failed", "started_at_ms": T0_MS - 90_000_000,
         "finished_at_ms": T0_MS - 89_990_000, "data_label": "SYNTHETIC", "error": "boom",
         "summary": {}, "has_report": False},
    ]  # fmt: skip
    equity = [10_000.0 + 15 * ((i % 40) / 40) - (i // 60) * 0.5 + i * 0.05 for i in range(240)]
    equity[-1] = 10_000.0  # so the total (equity now less the first point) is +12.50
    return Snapshot(
        status=status,
        equity=equity,
        trades=trades,
        decisions=decisions,
        runs=runs,
        run_id=7,
        models=models,
    )


# -- pure helpers ---------------------------------------------------------------------------------


def test_drawdown_and_pnl_by_hand() -> None:
    # Peak 110, then 99: 10 % down; 104.5 later: 5 % down now, 10 % the worst.
    current, worst = drawdown([100.0, 110.0, 99.0, 104.5])
    assert current == pytest.approx(0.05) and worst == pytest.approx(0.10)
    assert drawdown([]) == (0.0, 0.0)
    status = {"equity_usdt": 1_010.0, "realized_pnl_usdt": 4.0,
              "positions": {"X": {"unrealized_pnl_usdt": 2.5}}}  # fmt: skip
    assert pnl_total(status, [1_000.0, 1_003.0]) == pytest.approx(10.0)
    assert pnl_total(status, []) == pytest.approx(6.5)  # no curve: realized + unrealized


def test_state_is_a_word() -> None:
    snap = fixed_snapshot()
    assert state_word(snap) == "HALTED"  # a breaker, not the operator
    snap.status["risk"]["tripped"] = {"manual": {}}
    assert state_word(snap) == "PAUSED"
    snap.status["risk"]["tripped"] = {}
    snap.status["paused"] = False
    assert state_word(snap) == "OK"
    snap.status["connection"]["state"] = "disconnected"
    assert state_word(snap) == "NO DATA"
    assert state_word(Snapshot(error="no daemon")) == "DISCONNECTED"


# -- snapshots (SVG) ------------------------------------------------------------------------------


def _static_app() -> ScalpdApp:
    return ScalpdApp(StaticSource(fixed_snapshot()), interval_s=3600)


async def _loaded(pilot) -> None:
    await pilot.app.refresh_data()
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
@pytest.mark.parametrize("key", ["1", "2", "3", "4", "5"])
def test_screens_snapshot(snap_compare, size: tuple[int, int], key: str) -> None:
    assert snap_compare(_static_app(), press=[key], terminal_size=size, run_before=_loaded)


def test_every_screen_survives_resizing() -> None:
    """Large, then 80x24, then large again, on each screen: the app keeps drawing (the
    snapshots show each size's layout)."""

    async def scenario() -> None:
        app = _static_app()
        async with app.run_test(size=(160, 48)) as pilot:
            await _loaded(pilot)
            for key in ("1", "2", "3", "4", "5"):
                await pilot.press(key)
                for size in ((80, 24), (100, 30), (160, 48)):
                    await pilot.resize_terminal(*size)
                    await pilot.pause()
                    line = _state_text(app)  # the fixed data's state, and the screen shown
                    assert app.size == size and "HALTED" in line and f"[{key} " in line

    asyncio.run(scenario())


def test_help_snapshot(snap_compare) -> None:
    assert snap_compare(_static_app(), press=["question_mark"], run_before=_loaded)


def test_disconnected_snapshot(snap_compare) -> None:
    app = ScalpdApp(
        StaticSource(Snapshot(error="no daemon listening at /run/scalpd/control.sock")),
        interval_s=3600,
    )
    assert snap_compare(app, terminal_size=(80, 24), run_before=_loaded)


# -- against nothing, or the wrong thing ----------------------------------------------------------


@contextlib.contextmanager
def garbage_socket(path: Path):
    """A plain Unix socket that answers every connection with bytes that are not JSON."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                with contextlib.suppress(OSError):
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join(5)
        server.close()


def _state_text(app: ScalpdApp) -> str:
    from scalpd.ui.widgets import StateLine

    return str(app.query_one(StateLine).render())


def _banner_text(app: ScalpdApp) -> str:
    from scalpd.ui.widgets import Banner

    return app.query_one(Banner).plain()


def test_no_daemon_and_no_store_say_so(tmp_path: Path) -> None:
    async def scenario() -> None:
        source = LiveSource(tmp_path / "absent.sock", tmp_path / "absent.db")
        app = ScalpdApp(source, interval_s=3600)
        async with app.run_test(size=(80, 24)) as pilot:
            snap = await app.refresh_data()
            await pilot.pause()
            assert snap.status is None and "no daemon listening" in (snap.error or "")
            assert "store" in (snap.db_error or "") and "no such file" in snap.db_error
            text = _banner_text(app)
            assert "DISCONNECTED" in text and "retrying" in text
            await pilot.press("p")  # a command with no daemon: a message, no crash
            assert app.command_worker is not None
            await app.command_worker.wait()
            assert app.last_result is not None and app.last_result.startswith("pause failed")
            for key in "12345":
                await pilot.press(key)
            await pilot.resize_terminal(160, 48)  # wide: the overview in two columns
            await pilot.press("1", "shift+tab", "tab")
            await pilot.pause()
            assert app.active == 0 and app.screen.has_class("-wide")
        assert app.return_code in (0, None)

    asyncio.run(scenario())


def test_a_socket_of_the_wrong_kind_is_a_message(tmp_path: Path) -> None:
    path = tmp_path / "other.sock"
    plain_file = tmp_path / "not-a-socket"
    plain_file.write_text("x")

    async def scenario() -> None:
        with garbage_socket(path):
            app = ScalpdApp(LiveSource(path, tmp_path / "absent.db"), interval_s=3600)
            async with app.run_test(size=(80, 24)) as pilot:
                snap = await app.refresh_data()
                await pilot.pause()
                assert snap.status is None and "malformed answer" in (snap.error or "")
                assert "DISCONNECTED" in _banner_text(app)
        # A path that is a plain file, not a socket at all.
        app = ScalpdApp(LiveSource(plain_file, tmp_path / "absent.db"), interval_s=3600)
        async with app.run_test(size=(80, 24)):
            snap = await app.refresh_data()
            assert snap.status is None and snap.error

    asyncio.run(scenario())


# -- against a paper daemon on the fake exchange --------------------------------------------------


def test_tui_watches_and_steers_a_paper_daemon(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, paper=True) as h:
            source = LiveSource(h.socket, h.daemon.settings.store.path)
            app = ScalpdApp(source, interval_s=3600)  # refreshed by hand: no timing
            async with app.run_test(size=(120, 40)) as pilot:
                await h.step_until(h.has_position)
                # The bars' log lines are written in the daemon's quiet moments.
                await h.daemon.pacer.quiet_moment()
                snap = await app.refresh_data()
                await pilot.pause()
                assert snap.status is not None and snap.status["mode"] == "paper"
                assert snap.run_id == h.daemon.run_id and snap.equity
                assert [r["id"] for r in snap.runs] == [h.daemon.run_id]
                (symbol,) = snap.status["positions"]
                assert symbol in app.query_one(PositionsPanel).plain()
                assert "take_profit" in app.query_one(OrdersPanel).plain()
                assert "equity" in app.query_one(PnlPanel).plain()
                assert "CONNECTED" in app.query_one(HealthPanel).plain()
                assert "event-loop lag" in app.query_one(HealthPanel).plain()
                assert "bar symbol=" in app.query_one(LogTailPanel).plain()
                assert "running" in app.query_one(RunsPanel).plain()

                # p: paused in the daemon.
                await pilot.press("p")
                await asyncio.wait_for(app.command_worker.wait(), WAIT_S)
                status = await request(h.socket, "status")
                assert status["paused"] is True
                assert status["risk"]["tripped"]["manual"]["reason"] == "paused by tui"
                assert "PAUSED" in app.query_one(StateLine).text.plain
                assert "manual" in app.query_one(BreakersPanel).plain()

                # r: resumed.
                await pilot.press("r")
                await asyncio.wait_for(app.command_worker.wait(), WAIT_S)
                assert (await request(h.socket, "status"))["paused"] is False
                assert "OK" in app.query_one(StateLine).text.plain

                # m: this daemon runs no model; the daemon's refusal is shown.
                await pilot.press("m")
                await asyncio.wait_for(app.command_worker.wait(), WAIT_S)
                assert "needs the model strategy" in (app.last_result or "")

                await pilot.press("question_mark")
                await pilot.pause()
                assert isinstance(app.screen, HelpScreen)
                await app.refresh_data()  # a refresh behind the help screen
                await pilot.press("escape")

                # The model screen asks for `models` too: this daemon does not learn online.
                await pilot.press("5")
                snap = await app.refresh_data()
                assert snap.models is not None and snap.models["online"] is False
                model_text = app.query_one(ModelPanel).plain()
                assert "ema_cross" in model_text and "online learning" in model_text
                await pilot.press("tab")  # to the overview: no more `models` requests
                assert app.active == 0 and not source.want_models

                # The daemon stops: DISCONNECTED, the store's runs still shown.
                h.daemon.stop()
                await asyncio.wait_for(_until(lambda: not h.socket.exists()), WAIT_S)
                snap = await app.refresh_data()
                assert snap.status is None and "DISCONNECTED" in _banner_text(app)
                assert snap.runs and snap.runs[0]["id"] == h.daemon.run_id

    asyncio.run(scenario())


@pytest.mark.parametrize("paper", [True, False], ids=["paper", "live"])
def test_tui_flatten_asks_then_closes_the_position(tmp_path: Path, paper: bool) -> None:
    async def scenario() -> None:
        async with running(tmp_path, paper=paper) as h:
            app = ScalpdApp(LiveSource(h.socket, h.daemon.settings.store.path), interval_s=3600)
            async with app.run_test(size=(80, 24)) as pilot:
                await h.step_until(h.has_position)
                await h.step()  # the bracket is armed by now
                await app.refresh_data()
                # f asks first; n leaves the position alone, y flattens it.
                await pilot.press("f")
                await pilot.pause()
                assert isinstance(app.screen, ConfirmScreen)
                await pilot.press("n")
                await pilot.pause()
                assert not isinstance(app.screen, ConfirmScreen)
                assert app.command_worker is None and h.has_position()
                await pilot.press("f")
                await pilot.pause()
                await pilot.press("y")
                await pilot.pause()
                assert app.command_worker is not None
                await asyncio.wait_for(app.command_worker.wait(), WAIT_S)
                assert app.last_result is not None and app.last_result.startswith("flatten: ")
                # The exit's fill is booked with the bars that follow, as every exit's is.
                await h.step_until(lambda: not h.has_position(), most=3)
                snap = await app.refresh_data()
                assert snap.status is not None and snap.status["positions"] == {}
                assert snap.trades[0]["exit_reason"] == "flatten"
                assert "flatten" in app.query_one(TradesPanel).plain()

    asyncio.run(scenario())


def test_tui_reattaches_when_the_daemon_comes_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, paper=True) as h:
            socket_path, db = h.socket, h.daemon.settings.store.path
            await h.step(2)
        first_run = h.daemon.run_id
        app = ScalpdApp(LiveSource(socket_path, db), interval_s=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            snap = await app.refresh_data()
            assert snap.status is None and snap.runs[0]["status"] != "running"
            async with running(tmp_path, paper=True) as h2:
                await h2.step(1)
                # The poll worker (every 0.05 s here) attaches on its own.
                await asyncio.wait_for(_until(lambda: app.snapshot.status is not None), WAIT_S)
                assert app.snapshot.status["run_id"] == h2.daemon.run_id != first_run
                await pilot.pause()
                assert "DISCONNECTED" not in app.query_one(StateLine).text.plain

    asyncio.run(scenario())


async def _until(done) -> None:
    while not done():
        await asyncio.sleep(0.02)


def test_the_store_is_opened_read_only(tmp_path: Path) -> None:
    from scalpd.ui.data import read_store

    db = tmp_path / "s.db"
    sqlite3.connect(db).close()
    with pytest.raises(sqlite3.OperationalError):
        read_store(db, None)  # no tables: the read fails, and nothing was created
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    conn.close()


def test_cli_tui_refuses_a_bad_interval(capsys) -> None:
    from scalpd.cli import main

    assert main(["tui", "--interval-s", "0"]) == 2
    assert "--interval-s 0.0: allowed > 0" in capsys.readouterr().err


def test_a_status_of_an_unexpected_shape_is_shown_not_raised() -> None:
    """A socket that speaks the protocol but is not this daemon (or a daemon of another
    version): every panel draws what it can, the app goes on."""
    odd = Snapshot(
        status={"positions": [1, 2], "risk": "x", "connection": 5, "open_orders": {"a": 1},
                "decision_latency_ms": "fast", "last_bar": [], "equity_usdt": "lots"},
        equity=[1.0, 2.0],
    )  # fmt: skip

    async def scenario() -> None:
        app = ScalpdApp(StaticSource(odd), interval_s=3600)
        async with app.run_test(size=(80, 24)) as pilot:
            await app.refresh_data()
            for key in "12345":
                await pilot.press(key)
            await pilot.pause()
            assert "cannot show this answer" in app.query_one(PositionsPanel).plain()
            assert app.query_one(StateLine).text.plain.strip()

    asyncio.run(scenario())
