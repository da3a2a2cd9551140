"""Baselines: buy-and-hold with fees by hand, the p-value's definition, and random entries that
share the strategy's exits, engine and costs."""

from __future__ import annotations

import copy
import math
import statistics

import numpy as np
import pytest

from scalpd.config.settings import Settings
from scalpd.data.bars import BarColumns
from scalpd.data.synthetic import generate
from scalpd.execution.sim import SimBroker
from scalpd.replay import baselines as bl
from scalpd.strategy.ema_cross import EmaCross
from scalpd.strategy.random_entries import RandomEntries, draw_entries, fresh_position_rule

DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def five_bars() -> BarColumns:
    """One bar a day: opens and closes chosen by hand."""
    opens = np.array([100.0, 102.0, 101.0, 105.0, 108.0])
    closes = np.array([102.0, 101.0, 105.0, 108.0, 110.0])
    n = len(opens)
    return BarColumns(
        "BTC/USDT",
        T0 + np.arange(n, dtype=np.int64) * DAY,
        opens,
        np.maximum(opens, closes),
        np.minimum(opens, closes),
        closes,
        np.ones(n),
        closes.copy(),
        np.full(n, 1, dtype=np.int64),
        np.full(n, 0.5),
    )


def test_buy_and_hold_with_fees_by_hand() -> None:
    # 1000 USDT buys 1000 / (100 * 1.001) at the first open; the sale at 110 pays 0.1 %.
    qty = 1000 / 100.1
    _, equity = bl.buy_and_hold_curve(five_bars(), 1000.0, 10.0)
    assert equity.tolist() == pytest.approx(
        [qty * 102, qty * 101, qty * 105, qty * 108, 109.89 * qty]
    )
    result = bl.buy_and_hold(five_bars(), 1000.0, 10.0)
    assert result["total_return"] == pytest.approx(109.89 / 100.1 - 1)  # +9.78 %
    # Peak at 102, trough at 101; the start (1000) is below the first close's 1018.98.
    assert result["max_drawdown"] == pytest.approx(1 - 101 / 102)
    # One sample a day, so the daily returns are these five.
    daily = [qty * 102 / 1000 - 1, 101 / 102 - 1, 105 / 101 - 1, 108 / 105 - 1, 109.89 / 108 - 1]
    expected = statistics.mean(daily) / statistics.stdev(daily) * math.sqrt(365)
    assert result["sharpe_daily"] == pytest.approx(expected)


def test_p_value_is_the_share_of_random_runs_at_least_as_good() -> None:
    random = [0.01, 0.05, 0.10, None, -0.2]
    # Defined: 4 runs; at least 0.05: 0.05 and 0.10.
    assert bl.p_value(0.05, random) == 0.5
    assert bl.p_value(0.2, random) == 0.0
    assert bl.p_value(-1.0, random) == 1.0
    assert bl.p_value(None, random) is None
    assert bl.p_value(0.05, [None, float("nan")]) is None


def test_draws_are_seeded_distinct_and_sorted() -> None:
    candidates = np.arange(100, dtype=np.int64) * 60_000
    a = draw_entries(np.random.default_rng(1), candidates, 10)
    b = draw_entries(np.random.default_rng(1), candidates, 10)
    assert a.tolist() == b.tolist()
    assert len(set(a.tolist())) == 10 and a.tolist() == sorted(a.tolist())
    assert set(a.tolist()) <= set(candidates.tolist())
    assert len(draw_entries(np.random.default_rng(1), candidates[:3], 10)) == 3


def _setup(days: float = 2.0) -> tuple[Settings, list[BarColumns], SimBroker]:
    bars = generate(days, 7, "2024-01-01T00:00:00Z")
    settings = Settings()
    symbols = settings.symbols.model_copy(update={"trade": [bars.symbol]})
    settings = settings.model_copy(update={"symbols": symbols})
    broker = SimBroker(
        cash=settings.sim.starting_cash_usdt,
        fees=settings.fees,
        rules={bars.symbol: settings.symbols.rules(bars.symbol)},
    )
    return settings, [bars], broker


def test_random_entries_at_the_strategys_entry_times_reproduce_its_trades() -> None:
    """Same position rule, same engine, same broker: only the entry times differ, so entering
    when the strategy entered gives the strategy's trades exactly (exits and costs included)."""
    settings, series, broker = _setup()
    cash = settings.sim.starting_cash_usdt
    ema = EmaCross(settings.strategy, settings.symbols)
    rule = fresh_position_rule(ema._position, [series[0].symbol])
    strategy_run = bl.run_engine(settings, ema, series, copy.deepcopy(broker), cash=cash)
    trades = strategy_run.trades
    assert len(trades) > 10
    entries = {series[0].symbol: [t.entry_time_ms for t in trades]}
    replayed = bl.run_engine(
        settings, RandomEntries(rule, entries), series, copy.deepcopy(broker), cash=cash
    )
    assert replayed.trades == trades


def test_random_entry_distribution_is_seeded_and_keeps_the_trade_count() -> None:
    settings, series, broker = _setup()
    cash = settings.sim.starting_cash_usdt
    ema = EmaCross(settings.strategy, settings.symbols)
    rule = fresh_position_rule(ema._position, [series[0].symbol])
    run = bl.run_engine(settings, ema, series, copy.deepcopy(broker), cash=cash)
    metrics = bl.engine_metrics(run)

    def distribution() -> dict:
        return bl.random_entries(
            settings, series, broker, rule, run.trades, metrics, cash=cash, trials=4, seed=11
        )

    first = distribution()
    assert first == distribution()
    assert len(first["runs"]["total_return"]) == 4
    assert first["entries_per_symbol"] == {series[0].symbol: len(run.trades)}
    # A drawn time inside a position waits for the next flat bar, so few are lost.
    assert len(run.trades) * 0.9 <= first["mean_trades"] <= len(run.trades)
    p = first["p_value"]["total_return"]
    assert p == bl.p_value(metrics["total_return"], first["runs"]["total_return"])
    # The broker handed in stays pristine: every trial copies it.
    assert broker.cash == cash and not broker.base


def test_rule_baseline_equals_the_strategy_replayed_the_same_way() -> None:
    settings, series, broker = _setup()
    cash = settings.sim.starting_cash_usdt
    ema = EmaCross(settings.strategy, settings.symbols)
    direct = bl.engine_metrics(
        bl.run_engine(settings, ema, series, copy.deepcopy(broker), cash=cash)
    )
    assert bl.rule_baseline(settings, series, broker, cash=cash)["metrics"] == direct
