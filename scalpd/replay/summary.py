"""The numbers a replay prints and stores. Costs are in them: P&L is net of every fee.

`summarize` keeps the short keys (percent, rounded) that the capital-level table and older
runs use, and adds `metrics` (every number of `scalpd.replay.metrics.compute_metrics`, as
fractions) and `targets` (the seed targets, pass or fail per tier), measured from the first bar
closing at or after `trade_from_ms` (a warm-up before it is not part of the result).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from scalpd.engine.engine import Engine
from scalpd.replay import metrics as mx
from scalpd.replay.source import ReplaySource


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def equity_arrays(engine: Engine, trade_from_ms: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The engine's per-minute curve as (close time ms, equity), from trade_from_ms on."""
    curve = engine.equity_curve
    if curve is None:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    time_ms = np.frombuffer(curve.time_ms, dtype=np.int64).copy()
    equity = np.frombuffer(curve.equity, dtype=np.float64).copy()
    first = int(np.searchsorted(time_ms, trade_from_ms, "left"))
    return time_ms[first:], equity[first:]


def summarize(
    engine: Engine,
    source: ReplaySource,
    label: str,
    run_s: float,
    load_s: float,
    trade_from_ms: int = 0,
    slippage_usdt: float = 0.0,
) -> dict[str, Any]:
    trades = engine.trades
    wins = sum(1 for t in trades if t.pnl > 0)
    final = engine.portfolio.equity()
    days = (source.last_close_time_ms - source.first_open_time_ms) / 86_400_000
    buy_and_hold = {
        s.symbol: round((float(s.close[-1]) / float(s.open[0]) - 1) * 100, 3) for s in source.series
    }
    summary: dict[str, Any] = {
        "data": label,
        "symbols": source.symbols,
        "from": iso(source.first_open_time_ms),
        "to": iso(source.last_close_time_ms),
        "days": round(days, 2),
        "bars": engine.bars_seen,
        "gaps": engine.gaps_seen,
        "trades": len(trades),
        "trades_per_day": round(len(trades) / days, 2) if days > 0 else 0.0,
        "win_rate_pct": round(100 * wins / len(trades), 2) if trades else 0.0,
        "total_return_pct": round((final / engine.start_equity - 1) * 100, 3),
        "buy_and_hold_return_pct": buy_and_hold,
        "max_drawdown_pct": round(engine.max_drawdown * 100, 3),
        "fees_usdt": round(engine.portfolio.fees_paid, 2),
        "slippage_usdt": round(slippage_usdt, 2),
        "final_equity_usdt": round(final, 2),
        "open_positions": len(engine.portfolio.positions),
        "anomalies": engine.anomalies,
        "bars_per_s": round(engine.bars_seen / run_s) if run_s > 0 else None,
        "run_s": round(run_s, 3),
        "load_s": round(load_s, 3),
    }
    time_ms, equity = equity_arrays(engine, trade_from_ms)
    if len(time_ms):
        metrics = mx.compute_metrics(equity, time_ms, trades, engine.start_equity)
        metrics["slippage"] = slippage_usdt
        summary["metrics"] = metrics
        summary["targets"] = mx.targets(metrics)
    return summary


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * 100:+.{digits}f}%"


def _share(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def format_metrics(m: dict[str, Any]) -> list[str]:
    dd_days = m["max_drawdown_minutes"] / 1440
    daily = m["daily_pnl"]
    return [
        f"  returns       {_pct(m['total_return'], 3)} total, "
        f"{_pct(m['annualised_return'])} annualised (over {m['days']:.2f} days), "
        f"{_pct(m['mean_daily_return'], 3)} mean daily",
        f"  risk          max drawdown {_share(m['max_drawdown'])} lasting {dd_days:.2f} days; "
        f"Sharpe {_num(m['sharpe_minute'])} (1m), {_num(m['sharpe_daily'])} (daily), "
        f"Sortino {_num(m['sortino_daily'])}, Calmar {_num(m['calmar'])}",
        f"  trade stats   win rate {_share(m['win_rate'])}, profit factor "
        f"{_num(m['profit_factor'])}, {_num(m['avg_trade_minutes'], '.1f')} min average, "
        f"{_num(m['trades_per_day'])}/day, exposure {_share(m['exposure'], 1)}, "
        f"turnover {_num(m['turnover'], '.1f')}x",
        f"  costs         fees {m['fees']:,.2f} USDT, slippage "
        f"{m.get('slippage') or 0.0:,.2f} USDT (closed trades)",
        f"  daily P&L     p5 {_num(daily['p5'], ',.2f')} / median {_num(daily['p50'], ',.2f')} "
        f"/ p95 {_num(daily['p95'], ',.2f')} USDT; {m['positive_days']} positive days",
    ]


# Targets whose values are plain numbers; the others are fractions, shown in percent.
PLAIN_TARGETS = ("trades_per_day", "sharpe_daily")


def target_value_text(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if metric in PLAIN_TARGETS else f"{value * 100:.2f}%"


def target_rule_text(metric: str) -> dict[str, str]:
    """Each tier's rule with the thresholds in the value's own unit (e.g. "> 55%")."""
    rule, tiers = next((r, t) for key, _, r, t in mx.TARGETS if key == metric)
    scale, unit = (1.0, "") if metric in PLAIN_TARGETS else (100.0, "%")
    out = {}
    for tier, threshold in tiers.items():
        if isinstance(threshold, tuple):
            lo, hi = threshold
            out[tier] = f"{lo * scale:g}{unit}..{hi * scale:g}{unit}"
        else:
            out[tier] = f"{rule} {threshold * scale:g}{unit}"
    return out


def format_targets(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["  seed targets  " + "".join(f"{t:>16}" for t in mx.TIERS)]
    for row in rows:
        rules = target_rule_text(row["metric"])
        cells = "".join(
            f"{('pass' if row[t]['pass'] else 'FAIL') + ' ' + rules[t]:>16}" for t in mx.TIERS
        )
        shown = target_value_text(row["metric"], row["value"])
        lines.append(f"    {row['label'] + ' ' + shown:<26}{cells}")
    return lines


def format_summary(summary: dict[str, Any], run_id: int, db_path: str) -> str:
    bh = ", ".join(f"{k} {v:+.2f}%" for k, v in summary["buy_and_hold_return_pct"].items())
    lines = [
        f"replay run {run_id}: {summary['data']}",
        f"  period        {summary['from']} -> {summary['to']} UTC ({summary['days']} days, "
        f"{summary['bars']:,} bars, {summary['gaps']} gaps)",
        f"  trades        {summary['trades']} ({summary['trades_per_day']}/day), "
        f"win rate {summary['win_rate_pct']}%",
        f"  return        {summary['total_return_pct']:+.3f}% net of fees (buy and hold: {bh})",
        f"  max drawdown  {summary['max_drawdown_pct']:.3f}%",
        f"  fees paid     {summary['fees_usdt']:,.2f} USDT",
        f"  final equity  {summary['final_equity_usdt']:,.2f} USDT",
    ]
    if "metrics" in summary:
        lines += format_metrics(summary["metrics"])
        lines += format_targets(summary["targets"])
    lines += [
        f"  speed         {summary['bars_per_s']:,} bars/s "
        f"(run {summary['run_s']} s, load {summary['load_s']} s)",
        f"  stored in     {db_path} (runs.id = {run_id})",
    ]
    return "\n".join(lines)
