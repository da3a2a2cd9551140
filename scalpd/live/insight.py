"""What the daemon knows about its own health and its model's quality, for `status` (and the
terminal UI's health and model panels). Nothing here runs inside a bar's decision:

- `LagWindow` / `LoopLagMonitor`: a task sleeps `LAG_INTERVAL_S` at a time and notes how late
  it woke (the event loop was busy that long): p50, p99 and max over the last `LAG_SAMPLES`.
- `LogRing`: the last `LOG_LINES` log lines as small dicts, fed by a structlog processor and a
  standard-library handler (warnings of third-party clients) that `install` adds and
  `uninstall` removes. An append to a bounded deque: never blocks, never raises.
- `ModelQuality`: per symbol, the served model's P(a long hits its take-profit first) after
  each bar, labelled by this module's own pending queue once `horizon_bars` later bars have
  come (the triple-barrier rule of scalpd/models/labels.py, in pure Python: one label per bar,
  from later bars only; a gap drops the bars still pending, as the label function masks a
  window that spans one). On the last `QUALITY_BARS` matured predictions: accuracy (the
  probability on the right side of 0.5: p >= 0.5 says "take-profit first"), the Brier score,
  reliability bins and the expected calibration error. The same for a frozen model and an
  online one: both expose `last_probability` (online, the window spans the versions that
  served; a reload-model starts it afresh).
- permutation feature importance (`permutation_importance`, pure): every
  `IMPORTANCE_EVERY_BARS` bars of a symbol and at most once per `IMPORTANCE_EVERY_S` of wall
  time, on its last `IMPORTANCE_SAMPLES` matured bars, how
  much the served model's log-loss (nats, mean of both sides' three classes, as training's)
  grows when one input column is shuffled in time (seeded). A sequence model reads each bar's
  context, so the rows before the first scored bar are kept too, and the whole span is
  predicted as a series (`Predictor.predict_series`, which leaves the streaming state alone).
  `Insight` runs it in a worker thread of its own, niced (`IMPORTANCE_NICE`) so that the event
  loop wins a contended core, one run at a time, cut short past `IMPORTANCE_BUDGET_S`.

The daemon feeds `ModelQuality.on_bar` from `DaemonServices.on_bar`, which the bar's
accounting task calls after the bar's orders have left (`Daemon._send_and_account`). That task
may run after a later bar of the same symbol was decided (paper mode decides queued bars back
to back); then the strategy's probability and feature row are already the later bar's, and
the bar is kept for labelling only (no prediction scored), never paired with another bar's
numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import structlog

from scalpd.events import BAR_INTERVAL_MS, Bar
from scalpd.models.labels import TAKE_PROFIT, LabelParams, log_loss_rows, matured_label

log = structlog.get_logger("scalpd.live.insight")

LAG_INTERVAL_S = 0.25
LAG_SAMPLES = 240  # a minute of wake-ups
LOG_LINES = 200
STATUS_LOG_LINES = 50
QUALITY_BARS = 500
CALIBRATION_BINS = 10
IMPORTANCE_EVERY_BARS = 60  # per symbol
# Seconds of wall time between two runs for a symbol, the first this long after the start: a
# run costs its thread up to IMPORTANCE_BUDGET_S of CPU beside the loop, a few per thousand
# of the time at this spacing.
IMPORTANCE_EVERY_S = 600.0
IMPORTANCE_SAMPLES = 240
IMPORTANCE_BUDGET_S = 2.0  # a run stops between columns past this (marked incomplete)
IMPORTANCE_SEED = 0
IMPORTANCE_NICE = 10  # the worker thread's nice value (lower priority than the loop)
STATUS_TOP_FEATURES = 10


# -- event-loop lag ----------------------------------------------------------------------------


class LagWindow:
    """The last `size` lateness samples (ms) and their p50, p99 and max."""

    def __init__(self, size: int = LAG_SAMPLES) -> None:
        self._ms: deque[float] = deque(maxlen=size)

    def add(self, lag_ms: float) -> None:
        self._ms.append(max(0.0, lag_ms))

    def summary(self) -> dict[str, Any]:
        if not self._ms:
            return {"samples": 0, "p50": None, "p99": None, "max": None}
        values = np.fromiter(self._ms, float, len(self._ms))
        p50, p99 = np.percentile(values, [50, 99])
        return {
            "samples": len(values),
            "p50": round(float(p50), 3),
            "p99": round(float(p99), 3),
            "max": round(float(values.max()), 3),
        }


class LoopLagMonitor:
    """A task that sleeps `interval_s` and records how late it woke into `window`."""

    def __init__(self, interval_s: float = LAG_INTERVAL_S, samples: int = LAG_SAMPLES) -> None:
        self.interval_s = interval_s
        self.window = LagWindow(samples)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.window.add((loop.time() - due) * 1000)

    def summary(self) -> dict[str, Any]:
        return {**self.window.summary(), "interval_ms": round(self.interval_s * 1000, 3)}


# -- log tail ----------------------------------------------------------------------------------


_PLAIN = (str, int, float, bool, type(None))


class LogRing:
    """The last `size` log lines as dicts (time, level, logger, event and its fields)."""

    def __init__(self, size: int = LOG_LINES) -> None:
        self.lines: deque[dict[str, Any]] = deque(maxlen=size)
        self._handler = _RingHandler(self)
        self._installed = False

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        """The structlog processor: notes the line, passes it on unchanged."""
        try:
            line: dict[str, Any] = {
                "time": event_dict.get("timestamp") or _now_iso(),
                "level": event_dict.get("level") or method,
            }
            for key, value in event_dict.items():
                if key in ("timestamp", "level"):
                    continue
                # Only plain values are kept: a line must not hold on to live objects.
                line[key] = value if isinstance(value, _PLAIN) else str(value)[:200]
            self.lines.append(line)
        except Exception:  # noqa: BLE001 - the log tail must never cost a log line
            pass
        return event_dict

    def tail(self, n: int = STATUS_LOG_LINES) -> list[dict[str, Any]]:
        lines = list(self.lines)
        return lines[-n:] if n > 0 else []

    def install(self) -> None:
        """Into structlog's chain (before its renderer) and onto the root logger (warnings)."""
        if self._installed:
            return
        processors = list(structlog.get_config()["processors"])
        at = max(0, len(processors) - 1)  # the last processor renders: note the dict before
        processors.insert(at, self)
        structlog.configure(processors=processors)
        logging.getLogger().addHandler(self._handler)
        self._installed = True

    def uninstall(self) -> None:
        if not self._installed:
            return
        processors = [p for p in structlog.get_config()["processors"] if p is not self]
        structlog.configure(processors=processors)
        logging.getLogger().removeHandler(self._handler)
        self._installed = False


class _RingHandler(logging.Handler):
    """Standard-library records (ccxt, aiohttp) at warning and above into the ring."""

    def __init__(self, ring: LogRing) -> None:
        super().__init__(level=logging.WARNING)
        self._ring = ring

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._ring.lines.append(
                {
                    "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                    "level": record.levelname.lower(),
                    "logger": record.name,
                    "event": record.getMessage()[:500],
                }
            )
        except Exception:  # noqa: BLE001 - as above
            pass


def _lower_priority() -> None:
    """Nice this thread (Linux schedules threads one by one); elsewhere, leave it be."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), IMPORTANCE_NICE)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


# -- labels and calibration (pure) -------------------------------------------------------------


def barrier_outcome(
    close: float,
    later: Sequence[tuple[float, float]],
    take_profit_bps: float,
    stop_loss_bps: float,
) -> tuple[int, int]:
    """(long, short) class of a trade opened at `close`, from the later bars' (high, low), in
    order (`labels.matured_label`, the training labels' rule for one bar)."""
    highs = np.fromiter((h for h, _ in later), float, len(later))
    lows = np.fromiter((low for _, low in later), float, len(later))
    params = LabelParams(take_profit_bps, stop_loss_bps, len(later))
    long_class, short_class = matured_label(close, highs, lows, params)
    return int(long_class), int(short_class)


def quality(
    p: Sequence[float] | np.ndarray, y: Sequence[int] | np.ndarray, bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """Accuracy, Brier score, reliability bins and expected calibration error of probabilities
    `p` of the event `y` (1 happened, 0 not). A probability of exactly 0.5 predicts the event.
    Bin k holds p in [k/bins, (k+1)/bins) (the last one includes 1); empty bins are left out."""
    pa = np.asarray(p, dtype=float)
    ya = np.asarray(y, dtype=float)
    n = len(pa)
    if n == 0:
        return {"samples": 0, "accuracy": None, "brier": None, "ece": None,
                "base_rate": None, "calibration": []}  # fmt: skip
    accuracy = float(np.mean((pa >= 0.5) == (ya == 1.0)))
    brier = float(np.mean((pa - ya) ** 2))
    which = np.minimum((pa * bins).astype(int), bins - 1)
    table = []
    ece = 0.0
    for k in range(bins):
        inside = which == k
        count = int(inside.sum())
        if not count:
            continue
        mean_p, freq = float(pa[inside].mean()), float(ya[inside].mean())
        ece += count / n * abs(mean_p - freq)
        table.append({"lo": k / bins, "hi": (k + 1) / bins, "n": count,
                      "mean_p": round(mean_p, 4), "freq": round(freq, 4)})  # fmt: skip
    return {
        "samples": n,
        "accuracy": round(accuracy, 4),
        "brier": round(brier, 4),
        "ece": round(ece, 4),
        "base_rate": round(float(ya.mean()), 4),
        "calibration": table,
    }


# -- per-bar bookkeeping of the served model's predictions ----------------------------------------


@dataclass
class _Pending:
    open_ms: int
    high: float
    low: float
    close: float
    p: float | None  # the served probability after this bar (None: none, or not this bar's)
    row: np.ndarray | None  # the model's input row at this bar


@dataclass
class _SymbolQuality:
    pending: deque[_Pending] = field(default_factory=deque)
    scored: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=QUALITY_BARS))
    # Matured bars for importance: (open ms, input row, (long, short) classes).
    matured: deque[tuple[int, np.ndarray, tuple[int, int]]] = field(default_factory=deque)
    bars_since_importance: int = 0
    importance: dict[str, Any] | None = None


class ModelQuality:
    """Per symbol: the pending queue, the matured predictions' quality, the rows importance
    needs (see the module doc). `on_bar` is a few microseconds plus `horizon_bars` compares."""

    def __init__(
        self,
        take_profit_bps: float,
        stop_loss_bps: float,
        horizon_bars: int,
        *,
        context_bars: int = 0,
        quality_bars: int = QUALITY_BARS,
        importance_samples: int = IMPORTANCE_SAMPLES,
        importance_every_bars: int = IMPORTANCE_EVERY_BARS,
    ) -> None:
        self.take_profit_bps, self.stop_loss_bps = take_profit_bps, stop_loss_bps
        self.horizon_bars = horizon_bars
        self.quality_bars = quality_bars
        self.importance_samples = importance_samples
        self.importance_every_bars = importance_every_bars
        self._keep_rows = importance_samples + max(0, context_bars)
        self._symbols: dict[str, _SymbolQuality] = {}

    def _of(self, symbol: str) -> _SymbolQuality:
        q = self._symbols.get(symbol)
        if q is None:
            q = self._symbols[symbol] = _SymbolQuality(
                scored=deque(maxlen=self.quality_bars), matured=deque(maxlen=self._keep_rows)
            )
        return q

    def on_bar(
        self, bar: Bar, p: float | None, row: np.ndarray | None = None
    ) -> list[tuple[float, int]]:
        """The bar closed with the served probability `p` (None or NaN: no prediction) and
        the model's input `row`; returns the (p, take-profit-first) pairs that matured now."""
        q = self._of(bar.symbol)
        pending = q.pending
        if pending and bar.open_time_ms != pending[-1].open_ms + BAR_INTERVAL_MS:
            pending.clear()  # a window across a gap (or out of order) has no label
        if p is not None and not math.isfinite(p):
            p = None
        pending.append(_Pending(bar.open_time_ms, bar.high, bar.low, bar.close, p, row))
        q.bars_since_importance += 1
        out = []
        if len(pending) > self.horizon_bars:
            first = pending.popleft()
            later = [(b.high, b.low) for b in pending]
            classes = barrier_outcome(first.close, later, self.take_profit_bps,
                                      self.stop_loss_bps)  # fmt: skip
            if first.p is not None:
                pair = (first.p, int(classes[0] == TAKE_PROFIT))
                q.scored.append(pair)
                out.append(pair)
            if first.row is not None:
                q.matured.append((first.open_ms, first.row, classes))
        return out

    def symbols(self) -> list[str]:
        return sorted(self._symbols)

    def reset(self) -> None:
        """Forget every prediction (another model serves from now on)."""
        self._symbols.clear()

    def summary(self, symbol: str) -> dict[str, Any]:
        q = self._symbols.get(symbol)
        if q is None or not q.scored:
            return quality([], [])
        p, y = zip(*q.scored, strict=True)
        return quality(p, y)

    # -- importance --------------------------------------------------------------------------

    def importance_due(self, symbol: str) -> bool:
        q = self._symbols.get(symbol)
        return (
            q is not None
            and q.bars_since_importance >= self.importance_every_bars
            and len(q.matured) >= min(self._keep_rows, self.horizon_bars + 2)
        )

    def importance_inputs(
        self, symbol: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rows [T, F] float32, open times [T], classes [T, 2], scored mask [T]): the kept
        matured bars, the last `importance_samples` of them scored. Resets the bar count."""
        q = self._of(symbol)
        q.bars_since_importance = 0
        rows = list(q.matured)
        x = np.stack([r for _, r, _ in rows]).astype(np.float32)
        times = np.array([t for t, _, _ in rows], dtype=np.int64)
        y = np.array([c for _, _, c in rows], dtype=np.int64)
        scored = np.zeros(len(rows), dtype=bool)
        scored[-self.importance_samples :] = True
        return x, times, y, scored

    def set_importance(self, symbol: str, result: dict[str, Any]) -> None:
        self._of(symbol).importance = result

    def importance(self, symbol: str) -> dict[str, Any] | None:
        q = self._symbols.get(symbol)
        return None if q is None else q.importance


def permutation_importance(
    predict: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    x: np.ndarray,
    times: np.ndarray,
    y: np.ndarray,
    scored: np.ndarray,
    names: Sequence[str],
    *,
    seed: int = IMPORTANCE_SEED,
    budget_s: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """For each input column: the mean log-loss on the scored rows with that column shuffled
    in time (one seeded permutation of the rows) less the loss with it intact. `predict(x,
    times)` -> (probs [T, 2, 3], valid [T]); a row counts where valid in both passes. Columns
    are visited in a seeded order so a run cut short by `budget_s` is not always the first
    ones; what it reached is reported with `complete` False."""
    start = clock()
    rng = np.random.default_rng(seed)
    probs, valid = predict(x, times)
    base_rows = valid & scored
    result: dict[str, Any] = {"samples": int(base_rows.sum()), "base_loss": None,
                              "importance": {}, "complete": True}  # fmt: skip
    if not base_rows.any():
        return result
    base = log_loss_rows(probs, y)
    result["base_loss"] = round(float(base[base_rows].mean()), 5)
    order = rng.permutation(x.shape[1])
    perm = rng.permutation(len(x))
    gains: dict[str, float] = {}
    for j in order:
        if budget_s is not None and clock() - start > budget_s:
            result["complete"] = False
            break
        shuffled = x.copy()
        shuffled[:, j] = x[perm, j]
        probs_j, valid_j = predict(shuffled, times)
        rows = base_rows & valid_j
        if not rows.any():
            continue
        loss_j = log_loss_rows(probs_j, y)
        gains[names[j]] = round(float(loss_j[rows].mean() - base[rows].mean()), 6)
    result["importance"] = dict(sorted(gains.items(), key=lambda kv: -kv[1]))
    return result


def top(importance: dict[str, float], n: int = STATUS_TOP_FEATURES) -> dict[str, float]:
    return dict(sorted(importance.items(), key=lambda kv: -kv[1])[:n])


# -- reading the model strategy ----------------------------------------------------------------


def served_predictor(strategy: Any, symbol: str) -> Any:
    """The predictor serving `symbol` (the online champion, or the frozen model's), or None.
    The strategy has no public accessor for it: read from its parts, defensively. Only its
    `predict_series` is used, which leaves the streaming state alone."""
    online = getattr(strategy, "online", None)
    if online is not None:
        model = getattr(online, "_models", {}).get(symbol)
        champion = getattr(model, "champion", None)
        return getattr(champion, "predictor", None)
    predictors = getattr(getattr(strategy, "probabilities", None), "_predictors", None)
    return predictors.get(symbol) if isinstance(predictors, dict) else None


def feature_engine(strategy: Any) -> Any:
    """The strategy's incremental feature engine (the rows the model was just fed), or None."""
    source = getattr(strategy, "online", None) or getattr(strategy, "probabilities", None)
    return getattr(source, "_features", None)


def label_of(strategy: Any) -> tuple[float, float, int] | None:
    """The barriers (take-profit bps, stop-loss bps, horizon bars) the model was trained on."""
    label = getattr(strategy, "_label", None)
    if isinstance(label, tuple) and len(label) == 3:
        return float(label[0]), float(label[1]), int(label[2])
    return None


# -- the daemon's side ---------------------------------------------------------------------------


class Observed(NamedTuple):
    """A bar as the model served it (see `Insight.observe`)."""

    bar: Bar
    p: float | None  # the served probability; None: no prediction
    row: np.ndarray | None  # the model's input row
    model: Any  # who served it (a reload starts a new window)


class Insight:
    """One daemon run's monitors: `start` and `close` with the services, `observe` from the
    bar's accounting (after its orders left) and `score` later, the status parts on request."""

    def __init__(self, engine: Any, *, importance_budget_s: float = IMPORTANCE_BUDGET_S) -> None:
        self.engine = engine
        self.strategy = strategy = engine.strategy
        self.lag = LoopLagMonitor()
        self.logs = LogRing()
        self.importance_budget_s = importance_budget_s
        self.quality: ModelQuality | None = None
        self._names: list[str] = []
        self._index: np.ndarray | None = None
        self._features: Any = None
        self._importance: asyncio.Task[None] | None = None
        self._model = getattr(strategy, "model", None)
        self._runs: dict[str, int] = {}  # importance runs per symbol
        self._started_s = time.monotonic()
        self._importance_at: dict[str, float] = {}  # monotonic s of each symbol's last run
        self._observed_ms: dict[str, int] = {}  # each symbol's last bar observed (open time)
        # One thread of its own, at a lower scheduling priority: where it competes with the
        # event loop for a core, the loop (the decisions) wins.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="importance", initializer=_lower_priority
        )
        label = label_of(strategy) if hasattr(strategy, "last_probability") else None
        if label is not None:
            from scalpd.strategy.model import MODEL_INPUT_INDEX, MODEL_INPUTS

            self._names, self._index = list(MODEL_INPUTS), MODEL_INPUT_INDEX
            self._features = feature_engine(strategy)
            self.quality = ModelQuality(*label, context_bars=self._context_bars())

    def _context_bars(self) -> int:
        """Rows kept before the first scored one: the longest context or warm-up served."""
        predictors = []
        online = getattr(self.strategy, "online", None)
        if online is not None:
            predictors = [served_predictor(self.strategy, s) for s in online.counts()]
        else:
            found = getattr(getattr(self.strategy, "probabilities", None), "_predictors", None)
            predictors = list(found.values()) if isinstance(found, dict) else []
        return max(
            (max(getattr(p, "context_bars", 0), getattr(p, "warmup_bars", 0)) for p in predictors),
            default=0,
        )

    def start(self) -> None:
        self.logs.install()
        self.lag.start()

    async def close(self) -> None:
        await self.lag.close()
        if self._importance is not None:
            # A thread cannot be interrupted: it ends within its budget.
            await asyncio.gather(self._importance, return_exceptions=True)
            self._importance = None
        self._executor.shutdown(wait=False)
        self.logs.uninstall()

    def observe(self, bar: Bar) -> Observed | None:
        """What scoring `bar` needs, read now, right after its decision: the strategy's state
        moves on with the symbol's next bar. The daemon scores it later (`score`), in a quiet
        moment, off the path of the minute's other decisions."""
        if self.quality is None:
            return None
        symbol = bar.symbol
        p: float | None = None
        row: np.ndarray | None = None
        # Only when the strategy's latest bar of the symbol is this one (see the module doc),
        # and the strategy took it (a refused bar leaves no probability, and the feature row
        # of the bar before).
        if (
            self.engine.last_bar_ms.get(symbol) == bar.open_time_ms
            and symbol in self.strategy.last_probability
        ):
            p = self.strategy.last_probability[symbol]
            features = self._features
            if features is not None and self._index is not None:
                try:
                    row = np.asarray(features.vector(symbol))[self._index].astype(np.float32)
                except Exception:  # noqa: BLE001 - no row: importance skips the bar
                    row = None
        self._observed_ms[symbol] = bar.open_time_ms
        return Observed(bar, p, row, getattr(self.strategy, "model", None))

    def score(self, seen: Observed | None) -> None:
        """Score an observed bar (in the order observed); start feature importance when due,
        on the freshest window only (not from a bar whose symbol has newer ones waiting)."""
        quality = self.quality
        if quality is None or seen is None:
            return
        if seen.model != self._model:  # reload-model: the window describes one model
            self._model = seen.model
            quality.reset()
        bar, symbol = seen.bar, seen.bar.symbol
        quality.on_bar(bar, seen.p, seen.row)
        now_s = time.monotonic()
        if (
            self._observed_ms.get(symbol) == bar.open_time_ms
            and (self._importance is None or self._importance.done())
            and now_s - self._importance_at.get(symbol, self._started_s) >= IMPORTANCE_EVERY_S
            and quality.importance_due(symbol)
        ):
            self._importance_at[symbol] = now_s
            predictor = served_predictor(self.strategy, symbol)
            if predictor is not None:
                # The inputs are copied now; the worker thread reads nothing the loop changes.
                inputs = quality.importance_inputs(symbol)
                self._importance = asyncio.create_task(
                    self._run_importance(symbol, predictor, *inputs), name="feature-importance"
                )

    async def _run_importance(
        self,
        symbol: str,
        predictor: Any,
        x: np.ndarray,
        times: np.ndarray,
        y: np.ndarray,
        scored: np.ndarray,
    ) -> None:
        quality = self.quality
        assert quality is not None
        names, budget = self._names, self.importance_budget_s
        # Each run visits the columns in another (seeded) order: runs cut short by the budget
        # do not keep missing the same ones.
        runs = self._runs[symbol] = self._runs.get(symbol, -1) + 1
        seed = IMPORTANCE_SEED + runs

        def predict(rows: np.ndarray, open_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            out = predictor.predict_series(rows, open_ms)
            return out.probs, out.valid

        def job() -> dict[str, Any]:
            return permutation_importance(
                predict, x, times, y, scored, names, seed=seed, budget_s=budget
            )

        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, job)
        except Exception as exc:  # noqa: BLE001 - a failed estimate is a log line, not a stop
            log.warning("feature_importance_failed", symbol=symbol, error=f"{exc}")
            return
        result["took_ms"] = round((time.perf_counter() - started) * 1000, 1)
        result["bar"] = datetime.fromtimestamp(int(times[-1]) / 1000, UTC).isoformat()
        quality.set_importance(symbol, result)

    # -- status parts ------------------------------------------------------------------------

    def loop_lag_ms(self) -> dict[str, Any]:
        return self.lag.summary()

    def log_tail(self, n: int = STATUS_LOG_LINES) -> list[dict[str, Any]]:
        return self.logs.tail(n)

    def model_quality(self, online: Any = None) -> dict[str, Any] | None:
        """Per symbol: confidence (the last probability), the matured predictions' quality,
        the feature importance (top features), and who serves it when the model learns."""
        quality = self.quality
        if quality is None:
            return None
        last = getattr(self.strategy, "last_probability", {})
        serving = getattr(online, "serving", None)
        symbols = sorted(set(quality.symbols()) | set(last))
        out: dict[str, Any] = {}
        for symbol in symbols:
            p = last.get(symbol)
            entry: dict[str, Any] = {
                "confidence": round(p, 4) if p is not None and math.isfinite(p) else None,
                **quality.summary(symbol),
            }
            importance = quality.importance(symbol)
            if importance is not None:
                importance = {**importance, "importance": top(importance["importance"])}
            entry["feature_importance"] = importance
            if serving is not None:
                try:
                    entry["serving"] = serving(symbol)
                except KeyError:
                    entry["serving"] = None
            out[symbol] = entry
        return {
            "label": {
                "take_profit_bps": quality.take_profit_bps,
                "stop_loss_bps": quality.stop_loss_bps,
                "horizon_bars": quality.horizon_bars,
            },
            "window_bars": quality.quality_bars,
            "symbols": out,
        }
