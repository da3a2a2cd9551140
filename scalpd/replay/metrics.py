"""Performance metrics of a replay: returns, risk, trade statistics and the seed targets.

Pure functions, no I/O. Inputs:

* ``equity``: float64 array, the account equity (quote units, net of fees) sampled at the close
  of every one-minute bar;
* ``time_ms``: int64 array of the same length, those bars' close times (open time + 60,000 ms),
  strictly increasing, possibly with gaps;
* ``trades``: the round trips (``ClosedTrade``) closed during the run;
* ``start_equity``: the equity before the first bar, i.e. at ``time_ms[0] - 60_000``.

Conventions (documented once here, used everywhere):

* All returns, drawdowns and shares are fractions (0.01 = 1 %), never percent.
* Elapsed time ``T`` runs from the open of the first bar to the close of the last:
  ``T = time_ms[-1] - time_ms[0] + 60_000`` ms; ``days = T / 86_400_000``.
* A sample belongs to the UTC day ``(time_ms - 1) // 86_400_000``, so the bar closing at exactly
  00:00:00.000 (the 23:59 bar) counts for the day that is ending.
* Undefined values are NaN (e.g. a Sharpe ratio of a flat curve, a win rate with no trades);
  ``compute_metrics`` turns NaN and +/-inf into ``None`` so its output is JSON-serialisable.
* Risk-free rate is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from scalpd.engine.portfolio import ClosedTrade

BAR_MS = 60_000
DAY_MS = 86_400_000
MINUTES_PER_YEAR = 525_600  # 365 * 24 * 60
DAYS_PER_YEAR = 365
PERCENTILES = (5, 25, 50, 75, 95)

# The seed targets, one row per metric: (metric key, label, rule, {tier: threshold}).
# Rules: ">" strictly above, "<" strictly below, ">=" at least, "range" lo <= value <= hi.
# Daily return tiers are lower bounds ("at least 0.5 % a day" passes the minimum tier);
# making more than the upper end of a tier's band is not a failure.
TARGETS: tuple[tuple[str, str, str, dict[str, float | tuple[float, float]]], ...] = (
    ("win_rate", "win rate", ">", {"minimum": 0.55, "target": 0.60, "stretch": 0.65}),
    ("sharpe_daily", "Sharpe (daily)", ">", {"minimum": 1.5, "target": 2.5, "stretch": 3.5}),
    ("max_drawdown", "max drawdown", "<", {"minimum": 0.05, "target": 0.03, "stretch": 0.02}),
    (
        "mean_daily_return",
        "mean daily return",
        ">=",
        {"minimum": 0.005, "target": 0.01, "stretch": 0.02},
    ),
    (
        "trades_per_day",
        "trades per day",
        "range",
        {"minimum": (50.0, 200.0), "target": (50.0, 200.0), "stretch": (50.0, 200.0)},
    ),
)
TIERS = ("minimum", "target", "stretch")

_NAN = float("nan")


# --- returns and drawdown ------------------------------------------------------------------------


def elapsed_days(time_ms: np.ndarray) -> float:
    """Calendar days covered: ``(time_ms[-1] - time_ms[0] + 60_000) / 86_400_000``; 0 if empty."""
    if len(time_ms) == 0:
        return 0.0
    return float(int(time_ms[-1]) - int(time_ms[0]) + BAR_MS) / DAY_MS


def total_return(equity: np.ndarray, start_equity: float) -> float:
    """``equity[-1] / start_equity - 1``; 0 for an empty curve."""
    if len(equity) == 0:
        return 0.0
    return float(equity[-1]) / start_equity - 1.0


def annualised_return(total: float, days: float) -> float:
    """Compounded over a 365-day year: ``(1 + total) ** (365 / days) - 1``.

    NaN when ``days <= 0``; -1 when the account is wiped out (``1 + total <= 0``). Over short
    runs this extrapolates wildly: read it with ``days`` beside it.
    """
    if days <= 0:
        return _NAN
    if 1.0 + total <= 0:
        return -1.0
    try:
        return (1.0 + total) ** (DAYS_PER_YEAR / days) - 1.0
    except OverflowError:
        return math.inf


def max_drawdown(
    equity: np.ndarray, time_ms: np.ndarray, start_equity: float
) -> tuple[float, float]:
    """Maximum drawdown and the longest time under water.

    The curve is ``[start_equity, *equity]`` at times ``[time_ms[0] - 60_000, *time_ms]``.
    Drawdown at i: ``1 - e_i / max(e_0..e_i)``; the first value is the maximum of it (a
    fraction, 0 for a curve that never falls). Duration (minutes): the longest span from a
    running peak's time to the first later time equity is back at or above that peak, or to the
    last sample if it never recovers; gaps count as calendar time.
    """
    if len(equity) == 0:
        return 0.0, 0.0
    eq = np.concatenate(([float(start_equity)], np.asarray(equity, dtype=np.float64)))
    t = np.concatenate(([int(time_ms[0]) - BAR_MS], np.asarray(time_ms, dtype=np.int64)))
    peak = np.maximum.accumulate(eq)
    dd = 1.0 - eq / peak
    mdd = float(dd.max())
    # Index of the running peak each sample is measured against (last time the peak was set).
    at_peak = eq >= peak
    peak_idx = np.maximum.accumulate(np.where(at_peak, np.arange(len(eq)), 0))
    under = (~at_peak).astype(np.int8)
    longest = 0
    if under.any():
        # Under-water stretches [first, last]; each ends at the next at-peak sample (recovery)
        # or, if it never recovers, at the last sample.
        first = np.flatnonzero(np.diff(np.concatenate(([0], under))) == 1)
        last = np.flatnonzero(np.diff(np.concatenate((under, [0]))) == -1)
        end_idx = np.minimum(last + 1, len(eq) - 1)
        spans = t[end_idx] - t[peak_idx[first]]
        longest = int(spans.max())
    return max(mdd, 0.0), longest / BAR_MS


# --- risk-adjusted ratios ------------------------------------------------------------------------


def sample_returns(equity: np.ndarray, start_equity: float) -> np.ndarray:
    """Sample-to-sample simple returns of ``[start_equity, *equity]``.

    One return per sample; a step across a gap in ``time_ms`` is one return, not spread.
    """
    if len(equity) == 0:
        return np.empty(0, dtype=np.float64)
    eq = np.concatenate(([float(start_equity)], np.asarray(equity, dtype=np.float64)))
    return eq[1:] / eq[:-1] - 1.0


def sharpe(returns: np.ndarray, periods_per_year: float) -> float:
    """``mean(r) / std(r, ddof=1) * sqrt(periods_per_year)``; NaN with < 2 returns or std 0."""
    if len(returns) < 2:
        return _NAN
    sd = float(np.std(returns, ddof=1))
    if not sd > 1e-15:
        return _NAN
    return float(np.mean(returns)) / sd * math.sqrt(periods_per_year)


def sortino(returns: np.ndarray, periods_per_year: float) -> float:
    """``mean(r) / DD * sqrt(periods_per_year)``, ``DD = sqrt(mean(min(r, 0) ** 2))`` (target 0).

    The mean in DD runs over all periods. NaN with < 2 returns; with no losing period
    (DD = 0): +inf if the mean is positive, else NaN.
    """
    if len(returns) < 2:
        return _NAN
    dd = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
    mean = float(np.mean(returns))
    if dd == 0.0:
        return math.inf if mean > 0 else _NAN
    return mean / dd * math.sqrt(periods_per_year)


def calmar(annualised: float, mdd: float) -> float:
    """``annualised / max_drawdown``; with no drawdown +inf if annualised > 0, else NaN."""
    if math.isnan(annualised):
        return _NAN
    if mdd <= 0:
        return math.inf if annualised > 0 else _NAN
    return annualised / mdd


def daily_pnl(
    equity: np.ndarray, time_ms: np.ndarray, start_equity: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per UTC day: (day number since the epoch, P&L in quote, return as a fraction).

    A day's closing equity is the last sample of that day; its starting equity is the previous
    day's closing equity (``start_equity`` for the first day). Days with no sample at all
    (a gap spanning a whole day) are absent; their P&L lands on the next day present.
    """
    if len(equity) == 0:
        empty = np.empty(0, dtype=np.float64)
        return np.empty(0, dtype=np.int64), empty, empty.copy()
    day = (np.asarray(time_ms, dtype=np.int64) - 1) // DAY_MS
    last = np.flatnonzero(np.diff(day) != 0)
    last = np.append(last, len(day) - 1)
    close = np.asarray(equity, dtype=np.float64)[last]
    open_ = np.concatenate(([float(start_equity)], close[:-1]))
    pnl = close - open_
    return day[last], pnl, pnl / open_


# --- trades --------------------------------------------------------------------------------------


def win_rate(trades: Sequence[ClosedTrade]) -> float:
    """Share of trades with ``pnl > 0`` (net of fees); NaN with no trades."""
    if not trades:
        return _NAN
    return sum(1 for t in trades if t.pnl > 0) / len(trades)


def profit_factor(trades: Sequence[ClosedTrade]) -> float:
    """``sum(pnl > 0) / -sum(pnl < 0)``.

    NaN with no trades; with no losing trade +inf if there is a profit, else NaN.
    """
    if not trades:
        return _NAN
    gross_profit = sum(t.pnl for t in trades if t.pnl > 0)
    gross_loss = -sum(t.pnl for t in trades if t.pnl < 0)
    if gross_loss == 0:
        return math.inf if gross_profit > 0 else _NAN
    return gross_profit / gross_loss


def avg_trade_minutes(trades: Sequence[ClosedTrade]) -> float:
    """Mean of ``(exit_time_ms - entry_time_ms) / 60_000``; NaN with no trades."""
    if not trades:
        return _NAN
    return sum(t.exit_time_ms - t.entry_time_ms for t in trades) / len(trades) / BAR_MS


def exposure(trades: Sequence[ClosedTrade], time_ms: np.ndarray) -> float:
    """Share of the elapsed time with at least one position open.

    Length of the union of the trades' ``[entry_time_ms, exit_time_ms)`` intervals (overlapping
    trades in several symbols count once), clipped to ``[time_ms[0] - 60_000, time_ms[-1]]``,
    divided by the elapsed time. 0 with no trades or an empty curve.
    """
    if len(time_ms) == 0 or not trades:
        return 0.0
    lo, hi = int(time_ms[0]) - BAR_MS, int(time_ms[-1])
    spans = sorted(
        (max(t.entry_time_ms, lo), min(t.exit_time_ms, hi))
        for t in trades
        if min(t.exit_time_ms, hi) > max(t.entry_time_ms, lo)
    )
    covered = 0
    cur_s: int | None = None
    cur_e = 0
    for s, e in spans:
        if cur_s is None or s > cur_e:
            if cur_s is not None:
                covered += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_s is not None:
        covered += cur_e - cur_s
    return covered / (hi - lo)


def turnover(trades: Sequence[ClosedTrade], equity: np.ndarray) -> float:
    """Traded notional over average equity: ``sum(qty * (entry + exit price)) / mean(equity)``.

    Both legs count. 0 with no trades; NaN for an empty curve or a non-positive mean equity.
    """
    if len(equity) == 0:
        return _NAN
    avg = float(np.mean(equity))
    if not avg > 0:
        return _NAN
    return sum(t.qty * (t.entry_price + t.exit_price) for t in trades) / avg


def percentiles(values: np.ndarray) -> dict[str, float]:
    """``{"p5", "p25", "p50", "p75", "p95", "mean", "min", "max"}`` (numpy linear percentiles).

    All NaN for an empty array.
    """
    keys = [f"p{p}" for p in PERCENTILES] + ["mean", "min", "max"]
    if len(values) == 0:
        return dict.fromkeys(keys, _NAN)
    qs = np.percentile(values, PERCENTILES)
    out = {f"p{p}": float(q) for p, q in zip(PERCENTILES, qs, strict=True)}
    out["mean"] = float(np.mean(values))
    out["min"] = float(np.min(values))
    out["max"] = float(np.max(values))
    return out


# --- everything together ------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """Python floats/ints/bools, dicts and lists only; NaN and +/-inf become None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


def compute_metrics(
    equity: np.ndarray,
    time_ms: np.ndarray,
    trades: Sequence[ClosedTrade],
    start_equity: float,
) -> dict[str, Any]:
    """All metrics of a run as a JSON-serialisable dict (fractions; NaN/inf as None).

    Keys: days, total_return, annualised_return, max_drawdown, max_drawdown_minutes,
    sharpe_minute (sqrt(525,600)), sharpe_daily (sqrt(365)), sortino_daily, calmar, trades,
    win_rate, profit_factor, avg_trade_minutes, trades_per_day, exposure, turnover, fees,
    gross_profit, gross_loss, mean_daily_return, positive_days, daily_pnl (percentiles of
    per-day P&L in quote), daily_return (percentiles of per-day return).
    """
    equity = np.asarray(equity, dtype=np.float64)
    time_ms = np.asarray(time_ms, dtype=np.int64)
    if equity.shape != time_ms.shape or equity.ndim != 1:
        raise ValueError("equity and time_ms must be 1-D arrays of the same length")
    if len(time_ms) > 1 and not bool(np.all(np.diff(time_ms) > 0)):
        raise ValueError("time_ms must be strictly increasing")
    if not start_equity > 0:
        raise ValueError("start_equity must be positive")

    days = elapsed_days(time_ms)
    total = total_return(equity, start_equity)
    ann = annualised_return(total, days)
    mdd, mdd_minutes = max_drawdown(equity, time_ms, start_equity)
    _, day_pnl, day_ret = daily_pnl(equity, time_ms, start_equity)
    n = len(trades)
    out: dict[str, Any] = {
        "days": days,
        "total_return": total,
        "annualised_return": ann,
        "max_drawdown": mdd,
        "max_drawdown_minutes": mdd_minutes,
        "sharpe_minute": sharpe(sample_returns(equity, start_equity), MINUTES_PER_YEAR),
        "sharpe_daily": sharpe(day_ret, DAYS_PER_YEAR),
        "sortino_daily": sortino(day_ret, DAYS_PER_YEAR),
        "calmar": calmar(ann, mdd),
        "trades": n,
        "win_rate": win_rate(trades),
        "profit_factor": profit_factor(trades),
        "avg_trade_minutes": avg_trade_minutes(trades),
        "trades_per_day": n / days if days > 0 else _NAN,
        "exposure": exposure(trades, time_ms),
        "turnover": turnover(trades, equity),
        "fees": float(sum(t.fees for t in trades)),
        "gross_profit": float(sum(t.pnl for t in trades if t.pnl > 0)),
        "gross_loss": float(-sum(t.pnl for t in trades if t.pnl < 0)),
        "mean_daily_return": float(np.mean(day_ret)) if len(day_ret) else _NAN,
        "positive_days": int(np.sum(day_pnl > 0)),
        "daily_pnl": percentiles(day_pnl),
        "daily_return": percentiles(day_ret),
    }
    return _clean(out)


def _passes(rule: str, threshold: float | tuple[float, float], value: float | None) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if rule == ">":
        return value > threshold  # type: ignore[operator]
    if rule == "<":
        return value < threshold  # type: ignore[operator]
    if rule == ">=":
        return value >= threshold  # type: ignore[operator]
    if rule == "range":
        lo, hi = threshold  # type: ignore[misc]
        return lo <= value <= hi
    raise ValueError(f"unknown rule {rule!r}")


def _rule_text(rule: str, threshold: float | tuple[float, float]) -> str:
    if rule == "range":
        lo, hi = threshold  # type: ignore[misc]
        return f"{lo:g}..{hi:g}"
    return f"{rule} {threshold:g}"


def targets(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The seed targets (``TARGETS``) beside the result, one row per metric.

    Row: ``{"metric", "label", "value", "<tier>": {"rule", "pass"}, ...}`` for each tier in
    ``TIERS``. A missing or undefined value (None/NaN) fails every tier.
    """
    rows: list[dict[str, Any]] = []
    for key, label, rule, tiers in TARGETS:
        value = metrics.get(key)
        row: dict[str, Any] = {"metric": key, "label": label, "value": _clean(value)}
        for tier in TIERS:
            threshold = tiers[tier]
            row[tier] = {
                "rule": _rule_text(rule, threshold),
                "pass": _passes(rule, threshold, value),
            }
        rows.append(row)
    return rows


def clean(value: Any) -> Any:
    """JSON-safe copy of `value`: Python numbers, dicts and lists; NaN and +/-inf become None."""
    return _clean(value)
