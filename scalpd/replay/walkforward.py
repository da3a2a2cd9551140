"""Walk-forward evaluation: retrain on a sliding window, trade only the days after it.

Step k (settings `walkforward`):

1. Its test window starts at T_k = T_1 + (k-1) * step_days and lasts test_days; T_1 is the first
   UTC midnight with train_days of data before it (or `start_ms`).
2. A fresh model (`walkforward.model`, seeded) is trained on the bars opening in
   [T_k - train_days, T_k). Purge: a triple-barrier label reads the `horizon_bars` bars after
   its own, so only labels whose last bar closes by T_k are used (the last horizon of the
   training period is dropped); no label reaches into the test window. Training's own
   validation split (with its purge and embargo) lies inside the training period.
3. The window is replayed through the normal engine (`run_replay`: the model strategy, the
   simulated broker with every cost model, the risk gate) with that model, starting
   warmup_days before T_k with `trade_from_ms = T_k`: the features and the model's context are
   warm at T_k, and nothing trades before it. Each step is a run in the SQLite store, labelled
   "walk-forward step k/n".

Aggregation, out of sample only: test windows overlap when step_days < test_days, so from each
step only the trades entered in its first step_days count. Every day is traded by the freshest
model and counted once. The aggregate equity is the starting cash plus those trades' P&L,
booked at their exit (each step's account starts at `sim.starting_cash_usdt`, so the aggregate
is the P&L of that account size, without compounding across steps).

Features (causal: a value at bar t uses bars up to t) and labels are computed once over the
whole series of each symbol and cut per step; the replay computes its own from its first bar.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from scalpd.config.settings import Settings, WalkForwardSettings
from scalpd.data.bars import BarColumns
from scalpd.data.parquet import DataError
from scalpd.engine.portfolio import ClosedTrade
from scalpd.events import BAR_INTERVAL_MS
from scalpd.replay.metrics import compute_metrics
from scalpd.replay.runner import ReplayInput, run_replay
from scalpd.replay.summary import iso
from scalpd.store.sqlite import Store

DAY_MS = 86_400_000


def _days_ms(days: float) -> int:
    return round(days * DAY_MS)


@dataclass(frozen=True)
class Step:
    """One walk-forward step's periods (ms since the epoch, UTC; ends exclusive)."""

    index: int  # 1-based
    train_start_ms: int
    test_start_ms: int  # also the training period's end
    test_end_ms: int
    oos_end_ms: int  # the part of the test window that is aggregated: [test_start, oos_end)


def plan_steps(
    data_start_ms: int,
    data_end_ms: int,
    wf: WalkForwardSettings,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    max_steps: int | None = None,
) -> list[Step]:
    """The steps over data opening in [data_start_ms, data_end_ms): test windows from start_ms
    (default: the first UTC midnight with train_days of data before it) until the aggregated
    part of a window would pass end_ms (default: the data's end)."""
    train, test, step = _days_ms(wf.train_days), _days_ms(wf.test_days), _days_ms(wf.step_days)
    earliest = data_start_ms + train
    if start_ms is None:
        start_ms = -(-earliest // DAY_MS) * DAY_MS
    elif start_ms < earliest:
        raise DataError(
            f"the first test window at {iso(start_ms)} needs {wf.train_days:g} days of bars "
            f"before it; the data start at {iso(data_start_ms)}"
        )
    stop = data_end_ms if end_ms is None else min(end_ms, data_end_ms)
    steps: list[Step] = []
    t = start_ms
    while t + step <= stop and (max_steps is None or len(steps) < max_steps):
        steps.append(Step(len(steps) + 1, t - train, t, min(t + test, stop), t + step))
        t += step
    if not steps:
        raise DataError(
            f"no walk-forward step fits: {wf.train_days:g} training days and {wf.step_days:g} "
            f"test day(s) need more data than {iso(data_start_ms)} -> {iso(stop)}"
        )
    return steps


@dataclass
class StepResult:
    step: Step
    run_id: int
    model_path: Path
    train_rows: int  # bars given to training (features as context)
    label_rows: int  # of which with a label trained on
    last_label_read_ms: int  # close of the last bar any training label read (<= test start)
    trades: list[ClosedTrade]  # every trade of the test window
    oos_trades: list[ClosedTrade]  # those entered in [test_start, oos_end): aggregated
    metrics: dict[str, Any]  # compute_metrics over the test window
    train_s: float
    replay_s: float


@dataclass
class WalkForwardResult:
    steps: list[StepResult]
    trades: list[ClosedTrade]  # the aggregated out-of-sample trades, in entry order
    aggregate: dict[str, Any]  # compute_metrics over the out-of-sample days
    models_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "models_dir": str(self.models_dir),
            "walkforward": self.settings,
            "aggregate": self.aggregate,
            "steps": [
                {
                    "step": r.step.index,
                    "run_id": r.run_id,
                    "train_from": iso(r.step.train_start_ms),
                    "test_from": iso(r.step.test_start_ms),
                    "test_to": iso(r.step.test_end_ms),
                    "oos_to": iso(r.step.oos_end_ms),
                    "model": str(r.model_path),
                    "label_rows": r.label_rows,
                    "oos_trades": len(r.oos_trades),
                    "train_s": round(r.train_s, 3),
                    "replay_s": round(r.replay_s, 3),
                    "metrics": r.metrics,
                }
                for r in self.steps
            ],
        }


@dataclass
class _SymbolData:
    bars: BarColumns
    x: np.ndarray
    y: np.ndarray
    label_ok: np.ndarray


def _prepare(series: Sequence[BarColumns], wf: WalkForwardSettings) -> list[_SymbolData]:
    from scalpd.models.labels import LabelParams, label_bars
    from scalpd.strategy.model import feature_matrix

    params = LabelParams(wf.take_profit_bps, wf.stop_loss_bps, wf.horizon_bars)
    out = []
    for bars in series:
        x, _, _ = feature_matrix(bars)
        labels = label_bars(bars, params)
        out.append(_SymbolData(bars, x, labels.y, labels.valid))
    return out


def _rows(bars: BarColumns, lo_ms: int, hi_ms: int) -> slice:
    t = bars.open_time
    return slice(int(t.searchsorted(lo_ms, "left")), int(t.searchsorted(hi_ms, "left")))


def _train_step(
    data: list[_SymbolData],
    step: Step,
    wf: WalkForwardSettings,
    out_dir: Path,
    overrides: dict[str, Any],
) -> tuple[Path, int, int, int]:
    """Train step's model; returns (artifact path, rows, labelled rows, last label read ms)."""
    from scalpd.models.labels import LabelParams
    from scalpd.models.train import TrainParams, train
    from scalpd.strategy.model import MODEL_INPUTS, MODEL_INPUTS_ID

    horizon_ms = wf.horizon_bars * BAR_INTERVAL_MS
    xs, ys, masks, times = [], [], [], []
    for d in data:
        rows = _rows(d.bars, step.train_start_ms, step.test_start_ms)
        t = d.bars.open_time[rows]
        # Purge: a label at t reads bars up to t + horizon; that bar must close by the test start.
        mask = d.label_ok[rows] & (t + horizon_ms + BAR_INTERVAL_MS <= step.test_start_ms)
        # Symbols stacked: the jump back in time between them restarts the state, as a gap does.
        xs.append(d.x[rows])
        ys.append(d.y[rows])
        masks.append(mask)
        times.append(t)
    x, y, mask, t = (np.concatenate(a) for a in (xs, ys, masks, times))
    if not mask.any():
        raise DataError(f"walk-forward step {step.index}: no labelled bar to train on")
    last_read = int(t[mask].max()) + horizon_ms + BAR_INTERVAL_MS
    raw: dict[str, Any] = {
        "epochs": wf.epochs,
        "seed": wf.seed,
        "threads": wf.threads,
        "device": "cpu",
        "label": LabelParams(wf.take_profit_bps, wf.stop_loss_bps, wf.horizon_bars),
        "name": f"step{step.index:04d}",
        "version": f"test-{datetime.fromtimestamp(step.test_start_ms / 1000, UTC):%Y%m%dT%H%M}",
        **overrides,
    }
    params = TrainParams.from_dict(raw)
    artifact = train(
        wf.model, x, y, mask, list(MODEL_INPUTS), MODEL_INPUTS_ID, params, out_dir,
        open_time_ms=t,
    )  # fmt: skip
    return artifact.path, len(x), int(mask.sum()), last_read


def _window_metrics(
    equity_curve: Any, trades: list[ClosedTrade], test_start_ms: int, cash: float
) -> dict[str, Any]:
    times = np.frombuffer(equity_curve.time_ms, dtype=np.int64)
    equity = np.frombuffer(equity_curve.equity, dtype=np.float64)
    first = int(times.searchsorted(test_start_ms + BAR_INTERVAL_MS, "left"))
    # Nothing trades during the warm-up, so the window starts from the starting cash.
    start = float(equity[first - 1]) if first else cash
    return compute_metrics(equity[first:], times[first:], trades, start)


def aggregate_metrics(
    trades: Sequence[ClosedTrade], close_times_ms: np.ndarray, cash: float
) -> dict[str, Any]:
    """Metrics of the out-of-sample trades over the minutes `close_times_ms` (bar close times,
    increasing): equity = cash + the P&L of the trades exited by each minute."""
    pnl = np.zeros(len(close_times_ms))
    if len(close_times_ms):
        for trade in trades:
            i = min(int(close_times_ms.searchsorted(trade.exit_time_ms, "left")), len(pnl) - 1)
            pnl[i] += trade.pnl
    return compute_metrics(cash + np.cumsum(pnl), close_times_ms, list(trades), cash)


def run_walkforward(
    settings: Settings,
    bars: BarColumns | Sequence[BarColumns],
    store: Store,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    max_steps: int | None = None,
    models_dir: Path | None = None,
    train_overrides: dict[str, Any] | None = None,
    label: str = "",
    on_step: Callable[[StepResult, int], None] | None = None,
) -> WalkForwardResult:
    """Walk forward over `bars` (one series per symbol, validated, the history before the first
    test window included); see the module doc. `train_overrides`: extra TrainParams fields
    (e.g. a smaller net for tests). Models go under models_dir (default
    walkforward.models_dir/<UTC time>). `on_step(result, n_steps)` is called after each step."""
    wf = settings.walkforward
    series = [bars] if isinstance(bars, BarColumns) else list(bars)
    if not series or any(len(s) == 0 for s in series):
        raise DataError("walk-forward needs bars for every symbol")
    _check_warmup(wf)
    data_start = min(int(s.open_time[0]) for s in series)
    data_end = max(int(s.open_time[-1]) for s in series) + BAR_INTERVAL_MS
    steps = plan_steps(
        data_start, data_end, wf, start_ms=start_ms, end_ms=end_ms, max_steps=max_steps
    )
    if models_dir is None:
        models_dir = wf.models_dir / f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    data = _prepare(series, wf)
    cash = settings.sim.starting_cash_usdt
    warmup_ms = _days_ms(wf.warmup_days)
    results: list[StepResult] = []
    for step in steps:
        t0 = time.perf_counter()
        path, n_rows, n_labels, last_read = _train_step(
            data, step, wf, models_dir, train_overrides or {}
        )
        t1 = time.perf_counter()
        strategy = settings.strategy.model_copy(
            update={"name": "model", "model_path": path, "model_backend": wf.model_backend}
        )
        step_settings = settings.model_copy(update={"strategy": strategy})
        window = [
            s.take(_rows(s, step.test_start_ms - warmup_ms, step.test_end_ms)) for s in series
        ]
        window = [s for s in window if len(s)]
        if not window:
            raise DataError(f"walk-forward step {step.index}: no bars in its test window")
        text = (
            f"walk-forward step {step.index}/{len(steps)}: train {iso(step.train_start_ms)} -> "
            f"{iso(step.test_start_ms)}, test -> {iso(step.test_end_ms)} "
            f"(aggregated -> {iso(step.oos_end_ms)}), model {path.parent.name}/{path.name}"
        )
        inp = ReplayInput(window, f"{text}; {label}" if label else text)
        replay = run_replay(step_settings, inp, store, trade_from_ms=step.test_start_ms)
        trades = [t for t in replay.engine.trades if t.entry_time_ms >= step.test_start_ms]
        oos = [t for t in trades if t.entry_time_ms < step.oos_end_ms]
        assert replay.engine.equity_curve is not None
        metrics = _window_metrics(replay.engine.equity_curve, trades, step.test_start_ms, cash)
        result = StepResult(
            step, replay.run_id, path, n_rows, n_labels, last_read, trades, oos, metrics,
            t1 - t0, time.perf_counter() - t1,
        )  # fmt: skip
        results.append(result)
        if on_step is not None:
            on_step(result, len(steps))
    oos_trades = sorted((t for r in results for t in r.oos_trades), key=lambda t: t.entry_time_ms)
    lo, hi = steps[0].test_start_ms, steps[-1].oos_end_ms
    closes = np.unique(
        np.concatenate([s.open_time[_rows(s, lo, hi)] for s in series]) + BAR_INTERVAL_MS
    )
    return WalkForwardResult(
        results,
        oos_trades,
        aggregate_metrics(oos_trades, closes, cash),
        models_dir,
        wf.model_dump(mode="json"),
    )


def _check_warmup(wf: WalkForwardSettings) -> None:
    from scalpd.features.spec import feature_specs
    from scalpd.strategy.model import MODEL_INPUTS

    need = max(s.warmup_1m_bars for s in feature_specs() if s.name in MODEL_INPUTS)
    have = _days_ms(wf.warmup_days) // BAR_INTERVAL_MS
    if have < need:
        raise DataError(
            f"walkforward.warmup_days = {wf.warmup_days:g} gives {have} bars; the model's "
            f"features need {need} to be valid at the test window's start"
        )


# -- printing --------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * 100:+.2f}%"


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "n/a" if v is None else format(v, fmt)


def format_walkforward(result: WalkForwardResult) -> str:
    """A compact table: one row per step (its whole test window), then the aggregate."""
    lines = [
        f"walk-forward: {len(result.steps)} steps, models in {result.models_dir}",
        f"{'step':>4} {'run':>5} {'test from':16} {'days':>5} {'trades':>6} {'oos':>4} "
        f"{'return':>8} {'win':>6} {'sharpe':>7} {'max dd':>7}",
    ]
    for r in result.steps:
        m = r.metrics
        win = "n/a" if m["win_rate"] is None else f"{m['win_rate'] * 100:.1f}%"
        lines.append(
            f"{r.step.index:>4} {r.run_id:>5} {iso(r.step.test_start_ms):16} "
            f"{m['days']:>5.1f} {m['trades']:>6} {len(r.oos_trades):>4} "
            f"{_pct(m['total_return']):>8} {win:>6} {_num(m['sharpe_daily']):>7} "
            f"{m['max_drawdown'] * 100:>6.2f}%"
        )
    a = result.aggregate
    win = "n/a" if a["win_rate"] is None else f"{a['win_rate'] * 100:.1f}%"
    lines += [
        "out of sample (each step's first "
        f"{result.settings.get('step_days', 1):g} day(s), traded by the freshest model):",
        f"  {a['days']:.1f} days, {a['trades']} trades ({_num(a['trades_per_day'])}/day), "
        f"win rate {win}, return {_pct(a['total_return'])}, "
        f"Sharpe (daily) {_num(a['sharpe_daily'])}, max drawdown {a['max_drawdown'] * 100:.2f}%, "
        f"mean daily return {_pct(a['mean_daily_return'])}, fees {a['fees']:.2f} USDT",
    ]
    return "\n".join(lines)
