"""The terminal UI's data side: what it knows of the daemon, and how it learns it.

A `Snapshot` is everything one refresh of the UI shows: the daemon's `status` answer (None when
it could not be had, with the reason in `error`) and what the SQLite store holds of the run
(equity curve, latest trades, recent decisions) and of earlier runs. Sources make snapshots:

- `LiveSource` asks the control socket for `status` (one small request a refresh) and reads the
  store read-only (`mode=ro`: the UI never writes, never takes the daemon's write lock, and a
  read that meets a write in progress just waits for the next refresh). The SQLite reads run in
  a thread so the UI's event loop never waits on the disk.
- `StaticSource` serves a fixed snapshot (the snapshot tests, a demo), and records the commands
  sent to it.

Everything that goes wrong is a message in the snapshot, never an exception: no daemon, a
stopped one, a socket of another kind, a store that is missing or locked.

Pure helpers (`drawdown`, `pnl_total`, `state_word`) compute what the panels show from a
snapshot; they do no I/O.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from scalpd.ops.control import ControlError, request

# Bounds on what one refresh reads, so a long run costs the same to show as a short one.
EQUITY_POINTS = 600
TRADE_ROWS = 20
DECISION_ROWS = 20
RUN_ROWS = 50
# A status answer takes well under this; a socket that accepts and never answers (not a
# daemon) must not stall the refresh for the control client's default 10 s.
STATUS_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 10.0
# The version list changes at most at a fine-tune; asking for it every refresh would read the
# daemon's store each second for nothing.
MODELS_EVERY_REFRESHES = 5


@dataclass
class Snapshot:
    """What one refresh knows. `status` is the daemon's status answer (None: not attached,
    `error` says why); the rest is read from the store (`db_error`: why not)."""

    status: dict[str, Any] | None = None
    error: str | None = None
    equity: list[float] = field(default_factory=list)
    trades: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    run_id: int | None = None
    db_error: str | None = None
    # The daemon's `models` answer (versions, who serves): fetched only while the model
    # screen is shown; None when not asked or not available.
    models: dict[str, Any] | None = None

    @property
    def attached(self) -> bool:
        return self.status is not None


class Source(Protocol):
    async def fetch(self) -> Snapshot: ...

    async def command(self, cmd: str, **args: Any) -> Any:
        """Send a control command; raises ControlError with a one-line reason."""
        ...


class LiveSource:
    """The running daemon's control socket plus its SQLite store, read-only."""

    def __init__(self, socket_path: str | os.PathLike[str], db_path: str | os.PathLike[str]):
        self.socket_path = Path(socket_path)
        self.db_path = Path(db_path)
        self._want_models = False
        self._models: dict[str, Any] | None = None
        self._models_due = 0  # refreshes until the next `models` request

    @property
    def want_models(self) -> bool:
        return self._want_models

    @want_models.setter
    def want_models(self, value: bool) -> None:
        """Whether the model screen is shown: `models` is asked for (at once, then every
        MODELS_EVERY_REFRESHES refreshes) only while it is."""
        if value and not self._want_models:
            self._models_due = 0
        self._want_models = value

    async def fetch(self) -> Snapshot:
        snap = Snapshot()
        try:
            status = await request(self.socket_path, "status", timeout_s=STATUS_TIMEOUT_S)
            if not isinstance(status, dict):
                raise ControlError(f"{self.socket_path} answered something that is not a status")
            snap.status = status
        except ControlError as exc:
            snap.error = _one_line(exc)
        except Exception as exc:  # a socket of another kind can fail in many ways; never crash
            snap.error = f"{self.socket_path}: {type(exc).__name__}: {_one_line(exc)}"
        if snap.status is None:
            self._models = None
        elif self._want_models:
            if self._models_due <= 0:
                self._models_due = MODELS_EVERY_REFRESHES
                try:
                    models = await request(self.socket_path, "models", timeout_s=STATUS_TIMEOUT_S)
                    self._models = models if isinstance(models, dict) else None
                except Exception:  # an older daemon without `models`: the panel says n/a
                    self._models = None
            self._models_due -= 1
            snap.models = self._models
        run_id = snap.status.get("run_id") if snap.status else None
        try:
            stored = await asyncio.to_thread(read_store, self.db_path, run_id)
        except (sqlite3.Error, OSError, ValueError) as exc:
            snap.db_error = f"store {self.db_path}: {_one_line(exc)}"
        else:
            snap.equity, snap.trades, snap.decisions, snap.runs, snap.run_id = stored
        return snap

    async def command(self, cmd: str, **args: Any) -> Any:
        try:
            return await request(self.socket_path, cmd, timeout_s=COMMAND_TIMEOUT_S, **args)
        except ControlError:
            raise
        except Exception as exc:
            raise ControlError(f"{type(exc).__name__}: {_one_line(exc)}") from None


class StaticSource:
    """A fixed snapshot; commands are recorded in `sent` and answered with `answers[cmd]`."""

    def __init__(self, snapshot: Snapshot, answers: dict[str, Any] | None = None) -> None:
        self.snapshot = snapshot
        self.answers = answers or {}
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def fetch(self) -> Snapshot:
        return self.snapshot

    async def command(self, cmd: str, **args: Any) -> Any:
        self.sent.append((cmd, args))
        answer = self.answers.get(cmd, {})
        if isinstance(answer, Exception):
            raise answer
        return answer


def read_store(
    db_path: Path, run_id: int | None
) -> tuple[list[float], list[dict], list[dict], list[dict], int | None]:
    """(equity curve, latest trades, latest decisions, runs, the run shown) from the store at
    `db_path`, opened read-only. Without `run_id` (no daemon attached) the latest run's."""
    if not db_path.exists():
        raise FileNotFoundError(f"no such file (is store.path {db_path} right?)")
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=0.5)
    conn.row_factory = sqlite3.Row
    try:
        runs = [_run_row(r) for r in conn.execute(_RUNS_SQL, (RUN_ROWS,))]
        if run_id is None and runs:
            run_id = runs[0]["id"]
        if run_id is None:
            return [], [], [], runs, None
        equity = [
            float(r[0])
            for r in conn.execute(
                "SELECT equity FROM (SELECT time_ms, equity FROM equity WHERE run_id=? "
                "ORDER BY time_ms DESC LIMIT ?) ORDER BY time_ms",
                (run_id, EQUITY_POINTS),
            )
        ]
        trades = [
            dict(r)
            for r in conn.execute(
                "SELECT symbol, entry_time_ms, exit_time_ms, qty, entry_price, exit_price, fees, "
                "pnl, exit_reason FROM trades WHERE run_id=? ORDER BY id DESC LIMIT ?",
                (run_id, TRADE_ROWS),
            )
        ]
        # The entry's reason is the one its buy order carried.
        entry_reasons = {
            (r["symbol"], r["created_ms"]): r["reason"]
            for r in conn.execute(
                "SELECT symbol, created_ms, reason FROM orders WHERE run_id=? AND side='buy' "
                "AND reduce_only=0 ORDER BY created_ms DESC LIMIT ?",
                (run_id, TRADE_ROWS * 4),
            )
        }
        for trade in trades:
            trade["entry_reason"] = _entry_reason(entry_reasons, trade)
        decisions = [
            dict(r)
            for r in conn.execute(
                "SELECT time_ms, symbol, side, qty, reason, allowed, decision FROM intents "
                "WHERE run_id=? ORDER BY id DESC LIMIT ?",
                (run_id, DECISION_ROWS),
            )
        ]
        return equity, trades, decisions, runs, run_id
    finally:
        conn.close()


_RUNS_SQL = (
    "SELECT r.id, r.mode, r.status, r.started_at_ms, r.finished_at_ms, r.data_label, "
    "r.summary_json, r.error, (SELECT count(*) FROM reports p WHERE p.run_id = r.id) AS reports "
    "FROM runs r ORDER BY r.id DESC LIMIT ?"
)


def _run_row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    raw = out.pop("summary_json")
    try:
        out["summary"] = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        out["summary"] = {}
    out["has_report"] = bool(out.pop("reports"))
    return out


def _entry_reason(reasons: dict[tuple[str, int], str], trade: dict[str, Any]) -> str:
    """The reason of the latest entry order of the trade's symbol created at or before its
    entry fill (an order fills after it is created, within the same or the next bar)."""
    best: tuple[int, str] | None = None
    for (symbol, created_ms), reason in reasons.items():
        if symbol == trade["symbol"] and created_ms <= trade["entry_time_ms"]:
            if best is None or created_ms > best[0]:
                best = (created_ms, reason)
    return best[1] if best else "-"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# -- pure helpers for the panels ----------------------------------------------------------------


def drawdown(equity: list[float]) -> tuple[float, float]:
    """(current, maximum) drawdown of an equity curve, as fractions of the running peak."""
    peak = 0.0
    worst = 0.0
    current = 0.0
    for value in equity:
        peak = max(peak, value)
        current = 1.0 - value / peak if peak > 0 else 0.0
        worst = max(worst, current)
    return current, worst


def unrealized_usdt(status: dict[str, Any]) -> float:
    return float(
        sum(p.get("unrealized_pnl_usdt") or 0.0 for p in (status.get("positions") or {}).values())
    )


def pnl_total(status: dict[str, Any], equity: list[float]) -> float:
    """The run's P&L so far: equity now less the run's first recorded equity when the store
    has it, else realized plus unrealized (both net of fees)."""
    now = status.get("equity_usdt")
    if equity and now is not None:
        return float(now) - equity[0]
    return float(status.get("realized_pnl_usdt") or 0.0) + unrealized_usdt(status)


def state_word(snap: Snapshot) -> str:
    """The one word the header shows for the daemon's state (colour is only a second cue)."""
    status = snap.status
    if status is None:
        return "DISCONNECTED"
    if status.get("stopping"):
        return "STOPPING"
    if (status.get("connection") or {}).get("state") == "disconnected":
        return "NO DATA"
    if status.get("risk", {}).get("tripped"):
        names = set(status["risk"]["tripped"])
        return "PAUSED" if names == {"manual"} else "HALTED"
    if status.get("paused"):
        return "PAUSED"
    return "OK"
