"""`scalpd replay`: load bars, run them through the engine on a simulated clock, store the run.

Risk: a replay runs under the same risk manager as live (limits and circuit breakers from
`settings.risk`), from a fresh state: it never restores a saved one, and does not save its own
(the risk_state table holds accounts'); its breaker trips are logged as they happen and
counted in the summary (`risk_trips`: breaker kind -> trips).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog

from scalpd.config.settings import Settings
from scalpd.data.bars import BarColumns, QuarantinedRow, validate
from scalpd.data.parquet import DataError, read_parquet
from scalpd.data.store import BarStore
from scalpd.data.synthetic import generate, synthetic_label
from scalpd.engine.build import build_engine
from scalpd.engine.engine import Engine, EquityCurve
from scalpd.engine.ports import SimClock
from scalpd.execution.sim import SimBroker
from scalpd.execution.ticktape import TickTape, load_tape
from scalpd.replay.capital import check_capital
from scalpd.replay.report import build_report
from scalpd.replay.source import ReplaySource
from scalpd.replay.summary import summarize
from scalpd.risk.breakers import kind_of
from scalpd.store.sqlite import SqliteJournal, Store

log = structlog.get_logger("scalpd.replay")


@dataclass
class ReplayInput:
    series: list[BarColumns]
    label: str
    quarantined: dict[str, list[QuarantinedRow]] = field(default_factory=dict)
    load_s: float = 0.0


@dataclass
class ReplayResult:
    run_id: int
    summary: dict[str, Any]
    engine: Engine
    report: dict[str, Any] | None = None  # also stored: Store.report_json(run_id)


def load_stored(
    settings: Settings,
    symbols: list[str],
    start_ms: int | None = None,
    end_ms: int | None = None,
    exchange: str = "binance",
) -> ReplayInput:
    """Bars of `symbols` from the bar store (data.market_root), cut to [start_ms, end_ms).

    The label names each dataset's version, so a run says exactly which data it saw.
    """
    t0 = time.perf_counter()
    store = BarStore(settings.data.market_root)
    series, versions = [], []
    for symbol in symbols:
        manifest = store.manifest(exchange, symbol, "1m")
        if manifest is None:
            raise DataError(
                f"no {symbol} 1m bars in {settings.data.market_root}; "
                f"run `scalpd download {symbol} --since DATE` first"
            )
        bars = store.read(exchange, symbol, "1m", start_ms, end_ms)
        if len(bars) == 0:
            raise DataError(f"no stored {symbol} bars in the requested period")
        series.append(bars)
        versions.append(f"{symbol} v{manifest.version[:12]}")
    label = f"real data: {exchange} store ({', '.join(versions)})"
    return ReplayInput(series, label, load_s=time.perf_counter() - t0)


def load_input(
    settings: Settings,
    symbols: list[str] | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> ReplayInput:
    """Bars named by `settings.data.paths`, or the synthetic market when there are none.

    Files of one symbol (e.g. one a year) are joined; each symbol is validated as a whole,
    then cut to bars opening in [start_ms, end_ms).
    """
    t0 = time.perf_counter()
    paths = settings.data.paths
    if not paths:
        days, seed = settings.data.synthetic_days, settings.data.synthetic_seed
        bars = generate(days, seed, settings.data.synthetic_start).between(start_ms, end_ms)
        return ReplayInput([bars], synthetic_label(days, seed), load_s=time.perf_counter() - t0)
    if symbols and len(symbols) != len(paths):
        raise DataError(f"--symbol given {len(symbols)} times for {len(paths)} files")
    by_symbol: dict[str, list[BarColumns]] = {}
    for i, path in enumerate(paths):
        bars = read_parquet(Path(path), symbols[i] if symbols else None)
        by_symbol.setdefault(bars.symbol, []).append(bars)
    series, quarantined = [], {}
    for symbol, parts in by_symbol.items():
        joined = _concat(symbol, parts) if len(parts) > 1 else parts[0]
        clean, bad = validate(joined)
        if bad:
            quarantined[symbol] = bad
        clean = clean.between(start_ms, end_ms)
        if len(clean) == 0:
            raise DataError(f"no valid bars for {symbol} in the requested period")
        series.append(clean)
    label = "real data: " + ", ".join(Path(p).name for p in paths)
    return ReplayInput(series, label, quarantined, time.perf_counter() - t0)


def _concat(symbol: str, parts: list[BarColumns]) -> BarColumns:
    parts = sorted(parts, key=lambda b: int(b.open_time[0]) if len(b) else 0)
    fields = BarColumns.__dataclass_fields__
    return BarColumns(
        symbol, *(np.concatenate([getattr(p, f) for p in parts]) for f in fields if f != "symbol")
    )


def run_replay(
    settings: Settings,
    inp: ReplayInput,
    store: Store,
    *,
    trade_from_ms: int = 0,
    probabilities: Literal["precomputed", "streaming"] | None = None,
    baselines: bool = False,
) -> ReplayResult:
    """Replay `inp`. Bad rows are quarantined in the store; with on_bad_rows=fail, stop.

    trade_from_ms: bars closing before it only warm the strategy up (no trades).
    probabilities: how a model strategy gets its per-bar probabilities. This is the one place
    that decides it. None (the default): "streaming" with online learning on (online.enabled:
    a precomputed series cannot learn; asking for "precomputed" then streams, with a warning),
    else "precomputed". "precomputed": replay knows every bar before it starts, so features
    and the model's outputs are computed in one causal batch pass and read bar by bar (no
    look-ahead: each value depends on bars up to its own only; see strategy/model.py).
    "streaming": bar by bar, as live trading does (the reference the test compares with).
    baselines: also run the random-entry and rule baselines for the report (report.random_trials
    replays more; `scalpd replay` does, unless --no-baselines). The report (metrics, targets,
    buy-and-hold, regimes) is stored with every completed run either way.
    """
    probabilities = _probabilities(settings, probabilities)
    source = ReplaySource(inp.series)
    # The symbols traded are the symbols replayed.
    symbols = settings.symbols.model_copy(update={"trade": source.symbols})
    settings = settings.model_copy(update={"symbols": symbols})
    check_capital(settings, source.symbols, settings.sim.starting_cash_usdt)
    run_id = store.start_run("replay", settings.redacted(), inp.label)
    n_bad = sum(len(rows) for rows in inp.quarantined.values())
    if n_bad:
        counts: dict[str, int] = {}
        for symbol, rows in inp.quarantined.items():
            store.quarantine(run_id, symbol, [tuple(r) for r in rows])
            for r in rows:
                counts[r.reason] = counts.get(r.reason, 0) + 1
        reasons = "; ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        if settings.data.on_bad_rows == "fail":
            message = (
                f"{n_bad} bad row(s) quarantined ({reasons}); fix the data or set "
                'data.on_bad_rows = "skip" to replay without them'
            )
            store.finish_run(run_id, "failed", error=message)
            raise DataError(message)
        log.warning("rows_quarantined", run_id=run_id, count=n_bad, reasons=counts)
    try:
        journal = store.journal(run_id, durable=False)
        # Timed from here: a model strategy's precomputation is part of the replay's cost.
        t0 = time.perf_counter()
        broker = SimBroker(
            cash=settings.sim.starting_cash_usdt,
            fees=settings.fees,
            rules={s: settings.symbols.rules(s) for s in source.symbols},
            sim=settings.sim,
            tapes=recorded_tapes(settings, source) if settings.sim.tick_tape else None,
        )
        engine = build_engine(
            settings,
            broker=broker,
            journal=journal,
            clock=SimClock(source.first_open_time_ms),
            run_id=run_id,
            cash=settings.sim.starting_cash_usdt,
            trade_from_ms=trade_from_ms,
            equity_curve=EquityCurve(),
            replay_bars=source.series if probabilities == "precomputed" else None,
        )
        # The baselines copy this untouched broker, so they pay exactly the run's costs.
        pristine_broker = copy.deepcopy(broker)
        drive(engine, source, journal)
        run_s = time.perf_counter() - t0
        engine.finish(source.last_close_time_ms)
        journal.flush()
        slippage = float(getattr(broker, "slippage_paid_usdt", 0.0))
        summary = summarize(engine, source, inp.label, run_s, inp.load_s, trade_from_ms, slippage)
        summary.setdefault("rejected_orders", _rejected_orders(store, run_id))
        summary.setdefault("risk_trips", risk_trips(engine))
        report = build_report(
            settings,
            run_id=run_id,
            label=inp.label,
            series=source.series,
            engine=engine,
            summary=summary,
            broker=pristine_broker,
            trade_from_ms=trade_from_ms,
            baselines=baselines,
        )
    except KeyboardInterrupt:
        store.conn.rollback()
        store.finish_run(run_id, "interrupted", error="interrupted by the user")
        raise
    except BaseException as exc:
        store.conn.rollback()
        store.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    store.save_report(run_id, report)
    store.finish_run(run_id, "completed", summary)
    return ReplayResult(run_id, summary, engine, report)


def _probabilities(
    settings: Settings, asked: Literal["precomputed", "streaming"] | None
) -> Literal["precomputed", "streaming"]:
    online = settings.strategy.name == "model" and settings.online.enabled
    if not online:
        return asked or "precomputed"
    if asked == "precomputed":
        log.warning(
            "replay_probabilities_streaming",
            message="online learning is on (online.enabled): a precomputed series cannot "
            "learn, so this replay streams bar by bar instead of the precomputed asked for",
        )
    return "streaming"


def recorded_tapes(settings: Settings, source: ReplaySource) -> dict[str, TickTape]:
    """The trades and book tops recorded in the bar store over the replayed period."""
    end_ms = source.last_close_time_ms
    tapes = {}
    for symbol in source.symbols:
        tape = load_tape(settings.data.market_root, symbol, source.first_open_time_ms, end_ms)
        if tape is not None:
            tapes[symbol] = tape
    return tapes


def risk_trips(engine: Engine) -> dict[str, int]:
    """Breaker kind (per-symbol ones summed over symbols) -> times it tripped in the run."""
    out: dict[str, int] = {}
    for name, breaker in engine.risk.state.breakers.items():
        if breaker.trips:
            kind = kind_of(name)
            out[kind] = out.get(kind, 0) + breaker.trips
    return dict(sorted(out.items()))


def _rejected_orders(store: Store, run_id: int) -> int:
    row = store.conn.execute(
        "SELECT COUNT(*) FROM orders WHERE run_id=? AND status='rejected'", (run_id,)
    ).fetchone()
    return int(row[0])


def drive(engine: Engine, source: ReplaySource, journal: SqliteJournal | None = None) -> None:
    """The replay loop: the engine's per-event code, called synchronously over each batch.
    With a journal, the model versions online learning made at a bar (and their events) are
    recorded after it, as the daemon does."""
    on_bar = engine.on_bar
    online = getattr(engine.strategy, "online", None)
    take = getattr(online, "take_records", None) if journal is not None else None
    for gap, bars in source.segments():
        if gap is not None:
            engine.on_gap(gap)
        if take is None:
            for bar in bars:
                on_bar(bar)
            continue
        record = journal.record_model
        for bar in bars:
            on_bar(bar)
            for item in take():
                record(item)
