"""Kill the live daemon at a crash point while it trades on the fake exchange, restart it, and
check that nothing was lost: the recovery tests run a few of these, `scalpd bench crash_soak`
many.

The daemon runs as `python -m scalpd run` in a child process (a real SIGKILL, a real restart)
against a FakeExchange served from this process, which steps the bars one at a time and waits
for the daemon's "bar" log line before the next, so the outcome does not depend on the
machine's speed. The crash is armed through `SCALPD_CRASH_AT` (scalpd/faults.py). After the
run the exchange is the judge:

- no order twice: every order the exchange holds is one the database recorded, once;
- no fill lost or booked twice: every trade of ours on the exchange is one fill row;
- the book matches the exchange: the base asset held equals the position plus dust rebuilt
  from the fills, the cash recorded at the stop equals the exchange's quote balance, and the
  orders the database calls open are the ones open on the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from scalpd.data.bars import BarColumns
from scalpd.engine.portfolio import Portfolio
from scalpd.execution.fees import QUOTE_ASSET, base_asset
from scalpd.fakex.server import FakeExchange
from scalpd.fakex.testing import until_unsubscribed
from scalpd.live.recovery import fill_from_row, held_base, rebuild_book
from scalpd.store.sqlite import Store

API_KEY, API_SECRET = "crash-key-5Tq", "crash-secret-9Lm"
START_USDT = 10_000.0
# Short periods so that a hundred bars hold several round trips of every exit kind; breakers
# off so that nothing but the crash decides what trades.
CONFIG = """
[symbols]
trade = ["{symbol}"]
stream_trades = false
[strategy]
fast_period_bars = 3
slow_period_bars = 8
max_hold_bars = 12
[risk]
max_daily_loss_fraction = 0.0
max_consecutive_losses = 0
jump_sigmas = 0.0
vol_z_max = 0.0
spread_multiple = 0.0
stale_after_s = 0.0
[logging]
level = "info"
format = "json"
[control]
enabled = false
"""
BAR_WAIT_S = 60.0
ANYWHERE = "anywhere"  # a kill from outside at a moment chosen by time, not by a crash point


@dataclass
class Outcome:
    point: str
    count: int
    crashed: bool = False
    crashed_at_bar: int | None = None
    recovery_s: float = math.nan  # restart to the first bar handled
    problems: list[str] = field(default_factory=list)
    exchange_orders: int = 0
    fills: int = 0
    runs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


class _Daemon:
    """One `scalpd run` child: its JSON log lines on stdout, stderr to a file."""

    def __init__(self, proc: asyncio.subprocess.Process, started_s: float) -> None:
        self.proc = proc
        self.started_s = started_s
        self.first_bar_s: float | None = None

    @classmethod
    async def start(cls, workdir: Path, env: dict[str, str], n: int) -> _Daemon:
        started = time.monotonic()
        with open(workdir / f"daemon-{n}.err", "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "scalpd", "run",
                env=env, cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=err,
            )  # fmt: skip
        return cls(proc, started)

    async def handled(self, open_time_ms: int) -> bool:
        """Until the daemon logs the bar opened at `open_time_ms`; False: it died first."""
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), BAR_WAIT_S)
            if not line:
                await self.proc.wait()
                return False
            if b'"event":"bar"' not in line:
                continue
            if orjson.loads(line).get("open_time_ms") == open_time_ms:
                if self.first_bar_s is None:
                    self.first_bar_s = time.monotonic()
                return True

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stdout is not None
        with contextlib.suppress(asyncio.TimeoutError):
            while await asyncio.wait_for(self.proc.stdout.readline(), BAR_WAIT_S):
                pass
        return await asyncio.wait_for(self.proc.wait(), BAR_WAIT_S)


async def crash_and_recover(
    workdir: Path, bars: BarColumns, point: str, count: int, kill_after_s: float = 0.0
) -> Outcome:
    """Trade `bars` with the daemon killed at the `count`-th pass of crash point `point`, then
    restarted; the exchange's state judges the result (module doc). `point` ANYWHERE: killed
    from outside, `kill_after_s` after bar `count` closed, wherever it is then (the soak
    benchmark's random kills; where they land depends on the machine's speed)."""
    outcome = Outcome(point, count)
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        raise ValueError(f"{workdir} is not empty: each scenario needs a fresh database")
    (workdir / "config.toml").write_text(CONFIG.format(symbol=bars.symbol))
    fx = FakeExchange(
        {bars.symbol: bars.kline_columns()},
        api_key=API_KEY,
        api_secret=API_SECRET,
        balances={QUOTE_ASSET: START_USDT},
        fee_bps=10.0,
    )
    await fx.start()
    db = workdir / "live.db"
    env = {
        **os.environ,
        "SCALPD_CONFIG": str(workdir / "config.toml"),
        "SCALPD_EXCHANGE__REST_URL": fx.base_url,
        "SCALPD_EXCHANGE__WS_URL": fx.ws_url,
        "SCALPD_EXCHANGE__API_KEY": API_KEY,
        "SCALPD_EXCHANGE__API_SECRET": API_SECRET,
        "SCALPD_EXCHANGE__RECONNECT_INITIAL_BACKOFF_S": "0.05",
        "SCALPD_STORE__PATH": str(db),
    }
    crash_env = env if point == ANYWHERE else {**env, "SCALPD_CRASH_AT": f"{point}:{count}"}
    daemon = await _Daemon.start(workdir, crash_env, 0)
    try:
        await asyncio.wait_for(fx.wait_subscribed(1), BAR_WAIT_S)
        k = 0
        while k < len(bars) - 1:  # the last bar only opens
            assert await fx.step()
            if point == ANYWHERE and k == count and not outcome.crashed:
                await asyncio.sleep(kill_after_s)
                daemon.proc.kill()
                await daemon.proc.wait()
            elif await daemon.handled(int(bars.open_time[k])):
                k += 1
                continue
            if outcome.crashed or daemon.proc.returncode != -signal.SIGKILL:
                raise RuntimeError(
                    f"daemon exited with {daemon.proc.returncode} at bar {k}; see {workdir}"
                )
            outcome.crashed, outcome.crashed_at_bar = True, k
            # While it is down the market goes on for a bar: exits may fill meanwhile.
            k += 1
            if k < len(bars) - 1:
                assert await fx.step()
                k += 1
            await until_unsubscribed(fx, BAR_WAIT_S)
            daemon = await _Daemon.start(workdir, env, 1)
            await asyncio.wait_for(fx.wait_subscribed(1), BAR_WAIT_S)
            restarted = daemon.started_s
            if k < len(bars) - 1:
                assert await fx.step()
                if not await daemon.handled(int(bars.open_time[k])):
                    raise RuntimeError(f"restarted daemon died at bar {k}; see {workdir}")
                assert daemon.first_bar_s is not None
                outcome.recovery_s = daemon.first_bar_s - restarted
                k += 1
    finally:
        code = await daemon.stop()
        await fx.stop()
    if code != 0:
        outcome.problems.append(f"the last daemon exited with {code}")
    _judge(outcome, fx, db, bars.symbol)
    return outcome


def _judge(outcome: Outcome, fx: FakeExchange, db: Path, symbol: str) -> None:
    store = Store(db)
    try:
        problems = outcome.problems
        orders = {row["client_id"]: row for row in store.db["orders"].rows}
        fills = list(store.db["fills"].rows)
        runs = list(store.db["runs"].rows)
        outcome.runs, outcome.fills = len(runs), len(fills)
        sent = Counter(o["clientOrderId"] for o in fx.orders)
        outcome.exchange_orders = len(sent)
        for client_id, times in sent.items():
            if times > 1:
                problems.append(f"order {client_id} placed {times} times")
            if client_id not in orders:
                problems.append(f"order {client_id} on the exchange, not in the database")
        client_of = {o["orderId"]: o["clientOrderId"] for o in fx.orders}
        booked = Counter((f["client_id"], str(f["trade_id"])) for f in fills)
        for key, times in booked.items():
            if times > 1:
                problems.append(f"fill {key} booked {times} times")
        for trade in fx.trades:
            key = (client_of[trade["orderId"]], str(trade["id"]))
            if key not in booked:
                problems.append(f"exchange trade {key} was never booked")
        if len(booked) != len(fx.trades):
            problems.append(f"{len(booked)} fills booked, {len(fx.trades)} trades on the exchange")
        account = runs[-1]["account"]
        book = rebuild_book(
            [fill_from_row(r) for r in store.account_fills(account)], Portfolio(0.0)
        )
        held = held_base(book, symbol)
        on_exchange = fx.balances.get(base_asset(symbol), 0.0)
        if not math.isclose(held, on_exchange, rel_tol=1e-9, abs_tol=1e-12):
            problems.append(f"book holds {held} {base_asset(symbol)}, the exchange {on_exchange}")
        last_cash = store.conn.execute(
            "SELECT cash FROM equity WHERE run_id = ? ORDER BY rowid DESC LIMIT 1",
            (runs[-1]["id"],),
        ).fetchone()
        usdt = fx.balances.get(QUOTE_ASSET, 0.0)
        if last_cash is None or not math.isclose(last_cash[0], usdt, rel_tol=1e-9):
            problems.append(f"cash recorded {last_cash}, the exchange holds {usdt} USDT")
        open_db = {r["client_id"] for r in store.account_open_orders(account)}
        open_fx = {
            o["clientOrderId"] for o in fx.orders if o["status"] in ("NEW", "PARTIALLY_FILLED")
        }
        if open_db != open_fx:
            problems.append(f"open orders: database {sorted(open_db)}, exchange {sorted(open_fx)}")
    finally:
        store.close()
