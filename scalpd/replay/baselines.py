"""What a strategy's result is compared with, on exactly the bars it traded.

* **Buy and hold**, per symbol: all the starting cash buys at the open of the first traded bar
  and sells at the close of the last, paying the taker fee on each side (quantities are not
  floored to the lot step). Equity between is the position marked at each close; the last
  sample is after the sell's fee.
* **Random entries** (`scalpd/strategy/random_entries.py`): the strategy's own position rule
  (sizing, bracket, time stop) entered at random bar closes, as many per symbol as the
  strategy made trades, through the same engine and a copy of the same simulated broker (same
  fees, fill model and slippage) and under the same risk limits and breakers (`build_risk`,
  from a fresh state: an entry a breaker refuses uses up its drawn time, as a refused entry of
  the strategy is lost). Run `report.random_trials` times (trial i seeded with
  `report.seed + i`); each costs about one replay of a rule strategy, and the engine does not
  journal these runs. The strategy's p-value for a metric is the share of random runs doing at
  least as well (one-sided; runs where the metric is undefined are left out).
* **The rule baseline**: `ema_cross` on the same bars with the same costs, when the strategy
  under test is something else.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from scalpd.config.settings import Settings
from scalpd.data.bars import BarColumns
from scalpd.engine.build import build_risk, portfolio_for
from scalpd.engine.engine import ClientIds, Engine, EquityCurve
from scalpd.engine.portfolio import ClosedTrade
from scalpd.engine.ports import Broker, SimClock
from scalpd.events import BAR_INTERVAL_MS
from scalpd.replay.metrics import compute_metrics
from scalpd.replay.source import ReplaySource
from scalpd.replay.summary import equity_arrays
from scalpd.strategy.base import Strategy
from scalpd.strategy.long_only import LongOnly
from scalpd.strategy.random_entries import RandomEntries, draw_entries, fresh_position_rule

# The numbers kept of each random run (the distribution the strategy is placed in).
TRIAL_KEYS = ("total_return", "sharpe_daily", "sharpe_minute")


class NullJournal:
    """Baseline runs are not runs of their own: nothing of them is recorded."""

    def record_intent(self, *args: Any) -> None:
        return None

    def record_order(self, *args: Any) -> None:
        return None

    def record_order_update(self, *args: Any) -> None:
        return None

    def record_fill(self, *args: Any) -> None:
        return None

    def record_trade(self, *args: Any) -> None:
        return None

    def record_equity(self, *args: Any) -> None:
        return None


# --- buy and hold --------------------------------------------------------------------------------


def buy_and_hold_curve(
    bars: BarColumns, start_equity: float, fee_bps: float
) -> tuple[np.ndarray, np.ndarray]:
    """(close times, equity) of buying with all of `start_equity` at the first bar's open and
    selling at the last bar's close, `fee_bps` paid on each side."""
    fee = fee_bps / 1e4
    if len(bars) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    qty = start_equity / (float(bars.open[0]) * (1 + fee))
    equity = qty * np.asarray(bars.close, dtype=np.float64)
    equity[-1] *= 1 - fee
    return np.asarray(bars.open_time, dtype=np.int64) + BAR_INTERVAL_MS, equity


def buy_and_hold(bars: BarColumns, start_equity: float, fee_bps: float) -> dict[str, Any]:
    """Return, max drawdown and Sharpe (daily and per minute) of holding one symbol."""
    time_ms, equity = buy_and_hold_curve(bars, start_equity, fee_bps)
    m = compute_metrics(equity, time_ms, [], start_equity)
    keys = ("total_return", "annualised_return", "max_drawdown", "sharpe_daily", "sharpe_minute")
    return {k: m[k] for k in keys}


# --- engine runs ---------------------------------------------------------------------------------


def run_engine(
    settings: Settings,
    strategy: Strategy,
    series: Sequence[BarColumns],
    broker: Broker,
    *,
    cash: float,
    trade_from_ms: int = 0,
) -> Engine:
    """`strategy` over `series` through the engine replay uses, with `broker`, unjournaled."""
    from scalpd.replay.runner import drive  # the runner imports this module

    source = ReplaySource(series)
    engine = Engine(
        strategy=strategy,
        # The run's limits and breakers, from a fresh state as the run itself started.
        risk=build_risk(settings),
        broker=broker,
        journal=NullJournal(),
        clock=SimClock(source.first_open_time_ms),
        cash=cash,
        ids=ClientIds("base-"),
        equity_interval_ms=settings.store.equity_snapshot_interval_s * 1000,
        trade_from_ms=trade_from_ms,
        equity_curve=EquityCurve(),
        portfolio=portfolio_for(settings, cash),
    )
    drive(engine, source)
    return engine


def engine_metrics(engine: Engine, trade_from_ms: int = 0) -> dict[str, Any]:
    time_ms, equity = equity_arrays(engine, trade_from_ms)
    return compute_metrics(equity, time_ms, engine.trades, engine.start_equity)


def entry_candidates(bars: BarColumns, trade_from_ms: int) -> np.ndarray:
    """Bar closes a random entry may be decided at: traded bars, but not the last one (an
    order decided there could never fill)."""
    close_ms = np.asarray(bars.open_time, dtype=np.int64)[:-1] + BAR_INTERVAL_MS
    return close_ms[close_ms >= trade_from_ms]


def trades_per_symbol(trades: Sequence[ClosedTrade], symbols: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(symbols, 0)
    for t in trades:
        if t.symbol in counts:
            counts[t.symbol] += 1
    return counts


def p_value(strategy_value: float | None, random_values: Sequence[float | None]) -> float | None:
    """Share of random runs with a value at least the strategy's (None values left out);
    None when the strategy's value or every random value is undefined."""
    if strategy_value is None or (isinstance(strategy_value, float) and math.isnan(strategy_value)):
        return None
    defined = [v for v in random_values if v is not None and not math.isnan(v)]
    if not defined:
        return None
    return sum(1 for v in defined if v >= strategy_value) / len(defined)


def random_entries(
    settings: Settings,
    series: Sequence[BarColumns],
    broker: Broker,
    position_rule: LongOnly,
    strategy_trades: Sequence[ClosedTrade],
    strategy_metrics: dict[str, Any],
    *,
    cash: float,
    trials: int,
    seed: int,
    trade_from_ms: int = 0,
) -> dict[str, Any]:
    """The random-entry distribution and where the strategy stands in it.

    `broker`: a pristine broker (never fed a bar), copied for every trial; `position_rule`:
    the strategy's, copied fresh for every trial."""
    symbols = [s.symbol for s in series]
    counts = trades_per_symbol(strategy_trades, symbols)
    candidates = {s.symbol: entry_candidates(s, trade_from_ms) for s in series}
    runs: dict[str, list[float | None]] = {k: [] for k in TRIAL_KEYS}
    run_trades: list[int] = []
    for i in range(trials):
        rng = np.random.default_rng(seed + i)
        entries = {s: draw_entries(rng, candidates[s], counts[s]) for s in symbols}
        strategy = RandomEntries(fresh_position_rule(position_rule, symbols), entries)
        engine = run_engine(
            settings,
            strategy,
            series,
            copy.deepcopy(broker),
            cash=cash,
            trade_from_ms=trade_from_ms,
        )
        m = engine_metrics(engine, trade_from_ms)
        for k in TRIAL_KEYS:
            runs[k].append(m[k])
        run_trades.append(len(engine.trades))
    out: dict[str, Any] = {
        "trials": trials,
        "seed": seed,
        "entries_per_symbol": counts,
        "mean_trades": float(np.mean(run_trades)) if run_trades else None,
        "runs": runs,
        "strategy": {k: strategy_metrics.get(k) for k in TRIAL_KEYS},
        "p_value": {k: p_value(strategy_metrics.get(k), runs[k]) for k in TRIAL_KEYS},
    }
    return out


def rule_baseline(
    settings: Settings,
    series: Sequence[BarColumns],
    broker: Broker,
    *,
    cash: float,
    trade_from_ms: int = 0,
) -> dict[str, Any]:
    """`ema_cross` with the run's settings (sizing, bracket, time stop) on the same bars."""
    from scalpd.strategy.ema_cross import EmaCross

    symbols = settings.symbols.model_copy(update={"trade": [s.symbol for s in series]})
    strategy = EmaCross(settings.strategy, symbols)
    engine = run_engine(
        settings, strategy, series, copy.deepcopy(broker), cash=cash, trade_from_ms=trade_from_ms
    )
    return {"strategy": "ema_cross", "metrics": engine_metrics(engine, trade_from_ms)}
