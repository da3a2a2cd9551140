"""The numbers a replay prints and stores. Costs are in them: P&L is net of every fee."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from scalpd.engine.engine import Engine
from scalpd.replay.source import ReplaySource


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def summarize(
    engine: Engine, source: ReplaySource, label: str, run_s: float, load_s: float
) -> dict[str, Any]:
    trades = engine.trades
    wins = sum(1 for t in trades if t.pnl > 0)
    final = engine.portfolio.equity()
    days = (source.last_close_time_ms - source.first_open_time_ms) / 86_400_000
    buy_and_hold = {
        s.symbol: round((float(s.close[-1]) / float(s.open[0]) - 1) * 100, 3) for s in source.series
    }
    return {
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
        "final_equity_usdt": round(final, 2),
        "open_positions": len(engine.portfolio.positions),
        "anomalies": engine.anomalies,
        "bars_per_s": round(engine.bars_seen / run_s) if run_s > 0 else None,
        "run_s": round(run_s, 3),
        "load_s": round(load_s, 3),
    }


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
        f"  speed         {summary['bars_per_s']:,} bars/s "
        f"(run {summary['run_s']} s, load {summary['load_s']} s)",
        f"  stored in     {db_path} (runs.id = {run_id})",
    ]
    return "\n".join(lines)
