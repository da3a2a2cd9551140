"""Replay metrics on tiny curves and trade lists, every expected number worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from scalpd.engine.portfolio import ClosedTrade
from scalpd.replay import metrics as mx

M = 60_000
DAY = 86_400_000
D = 19_700 * DAY  # 2023-12-09 00:00 UTC, a day boundary


def curve(minutes: list[int], values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Equity samples at bar close times D + minute * 60 s."""
    return np.array(values, dtype=np.float64), np.array([D + m * M for m in minutes], np.int64)


def trade(
    entry_min: int, exit_min: int, qty: float, p_in: float, p_out: float, fees: float
) -> ClosedTrade:
    pnl = qty * (p_out - p_in) - fees
    return ClosedTrade(
        "BTC/USDT", D + entry_min * M, D + exit_min * M, qty, p_in, p_out, fees, pnl, "x"
    )


# --- returns and drawdown ----------------------------------------------------------------------


def test_total_return_and_drawdown_with_recovery() -> None:
    eq, t = curve([1, 2, 3, 4], [110.0, 99.0, 105.0, 121.0])
    assert mx.total_return(eq, 100.0) == pytest.approx(0.21)
    # Peak 110 at minute 1, trough 99: 1 - 99/110 = 0.1; back above 110 at minute 4: 3 minutes.
    mdd, minutes = mx.max_drawdown(eq, t, 100.0)
    assert mdd == pytest.approx(0.1)
    assert minutes == 3.0


def test_drawdown_never_recovered_runs_to_last_sample() -> None:
    # Curve [100@0, 100@1, 90@2, 95@3]: peak last set at minute 1, under water to minute 3.
    eq, t = curve([1, 2, 3], [100.0, 90.0, 95.0])
    mdd, minutes = mx.max_drawdown(eq, t, 100.0)
    assert mdd == pytest.approx(0.1)
    assert minutes == 2.0


def test_drawdown_from_start_equity_and_longest_stretch() -> None:
    # Start 100 at minute 0; 95 (under), 100 (recovers at 2), 120, 119, 118, 118, 121 (at 7).
    # Stretches: 0 -> 2 (2 min, dd 5 %) and 3 -> 7 (4 min, dd 2/120).
    eq, t = curve([1, 2, 3, 4, 5, 6, 7], [95.0, 100.0, 120.0, 119.0, 118.0, 118.0, 121.0])
    mdd, minutes = mx.max_drawdown(eq, t, 100.0)
    assert mdd == pytest.approx(0.05)
    assert minutes == 4.0


def test_drawdown_duration_counts_gaps_as_calendar_time() -> None:
    # Peak 100 at minute 1, 99 at minute 2, then a 100-minute gap, recovery at minute 102.
    eq, t = curve([1, 2, 102], [100.0, 99.0, 101.0])
    assert mx.max_drawdown(eq, t, 100.0) == (pytest.approx(0.01), 101.0)


def test_annualised_return_over_one_and_two_years() -> None:
    assert mx.annualised_return(0.21, 730.0) == pytest.approx(0.1)  # 1.21 ** 0.5 - 1
    assert mx.annualised_return(0.1, 365.0) == pytest.approx(0.1)
    assert math.isnan(mx.annualised_return(0.1, 0.0))
    assert mx.annualised_return(-1.5, 10.0) == -1.0
    # From calendar time: first bar opens at D, last closes at D + 365 days -> 365 days.
    eq = np.array([100.0, 110.0])
    t = np.array([D + M, D + 365 * DAY], np.int64)
    m = mx.compute_metrics(eq, t, [], 100.0)
    assert m["days"] == pytest.approx(365.0)
    assert m["annualised_return"] == pytest.approx(0.1)
    # Max drawdown 0 with a positive return: Calmar is +inf -> None.
    assert m["max_drawdown"] == 0.0
    assert m["calmar"] is None


def test_calmar_is_annualised_over_drawdown() -> None:
    # 365 days; start 100, 80 (dd 20 %), end 110: annualised 0.1, Calmar 0.1 / 0.2 = 0.5.
    eq = np.array([80.0, 110.0])
    t = np.array([D + M, D + 365 * DAY], np.int64)
    m = mx.compute_metrics(eq, t, [], 100.0)
    assert m["max_drawdown"] == pytest.approx(0.2)
    assert m["calmar"] == pytest.approx(0.5)


# --- ratios ------------------------------------------------------------------------------------


def test_minute_sharpe_by_hand() -> None:
    eq, t = curve([1, 2, 3], [101.0, 100.0, 102.0])
    r = [101 / 100 - 1, 100 / 101 - 1, 102 / 100 - 1]
    mean = sum(r) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in r) / 2)
    m = mx.compute_metrics(eq, t, [], 100.0)
    assert m["sharpe_minute"] == pytest.approx(mean / sd * math.sqrt(525_600))


def three_days() -> tuple[np.ndarray, np.ndarray]:
    """Day closes 102, 99.96, 101.9592 from a start of 100: daily returns +2 %, -2 %, +2 %.

    The sample closing at exactly 00:00 of day 1 (the 23:59 bar) belongs to day 0.
    """
    minutes = [1, 1440, 1441, 2 * 1440 - 1, 2 * 1440 + 60]
    return curve(minutes, [101.0, 102.0, 90.0, 99.96, 101.9592])


def test_daily_returns_sharpe_sortino_and_distribution() -> None:
    eq, t = three_days()
    days, pnl, ret = mx.daily_pnl(eq, t, 100.0)
    assert list(days) == [19_700, 19_701, 19_702]
    assert pnl == pytest.approx([2.0, -2.04, 1.9992])
    assert ret == pytest.approx([0.02, -0.02, 0.02])

    m = mx.compute_metrics(eq, t, [], 100.0)
    mean = 0.02 / 3
    sd = math.sqrt(((0.04 / 3) ** 2 * 2 + (0.08 / 3) ** 2) / 2)
    assert m["sharpe_daily"] == pytest.approx(mean / sd * math.sqrt(365))
    downside = math.sqrt(0.02**2 / 3)  # mean of min(r, 0)^2 over all three days
    assert m["sortino_daily"] == pytest.approx(mean / downside * math.sqrt(365))
    assert m["mean_daily_return"] == pytest.approx(mean)
    assert m["positive_days"] == 2
    # Elapsed: from the first bar's open (D) to D + 2 days + 60 min.
    assert m["days"] == pytest.approx(2 + 1 / 24)
    # Sorted returns [-0.02, 0.02, 0.02], linear percentiles: p5 at rank 0.1, p25 at rank 0.5.
    dr = m["daily_return"]
    assert dr["p5"] == pytest.approx(-0.016)
    assert dr["p25"] == pytest.approx(0.0)
    assert dr["p50"] == pytest.approx(0.02)
    assert dr["p95"] == pytest.approx(0.02)
    assert dr["min"] == pytest.approx(-0.02)
    dp = m["daily_pnl"]  # sorted [-2.04, 1.9992, 2.0]
    assert dp["p50"] == pytest.approx(1.9992)
    assert dp["p25"] == pytest.approx((-2.04 + 1.9992) / 2)
    assert dp["mean"] == pytest.approx((2.0 - 2.04 + 1.9992) / 3)


def test_sortino_with_no_losing_day_is_infinite() -> None:
    assert mx.sortino(np.array([0.01, 0.02]), 365) == math.inf
    assert math.isnan(mx.sortino(np.array([0.0, 0.0]), 365))


def test_whole_day_gap_lands_on_next_day_present() -> None:
    # Day 0 closes at 101, no sample on day 1, day 2 closes at 103.02 (+2 % on 101).
    eq, t = curve([10, 2 * 1440 + 10], [101.0, 103.02])
    days, pnl, ret = mx.daily_pnl(eq, t, 100.0)
    assert list(days) == [19_700, 19_702]
    assert ret == pytest.approx([0.01, 0.02])


# --- trades ------------------------------------------------------------------------------------


def four_trades() -> list[ClosedTrade]:
    return [
        trade(0, 10, 1.0, 100.0, 102.0, 0.2),  # pnl 1.8
        trade(5, 20, 2.0, 50.0, 49.0, 0.2),  # pnl -2.2, overlaps the first
        trade(40, 45, 1.0, 10.0, 11.0, 0.02),  # pnl 0.98
        trade(50, 52, 1.0, 10.0, 10.0, 0.0),  # pnl 0: not a win, not a loss
    ]


def test_trade_statistics_by_hand() -> None:
    eq, t = curve(list(range(1, 61)), [1000.0] * 60)  # one hour, flat at 1000
    m = mx.compute_metrics(eq, t, four_trades(), 1000.0)
    assert m["trades"] == 4
    assert m["win_rate"] == pytest.approx(2 / 4)
    assert m["profit_factor"] == pytest.approx((1.8 + 0.98) / 2.2)
    assert m["gross_profit"] == pytest.approx(2.78)
    assert m["gross_loss"] == pytest.approx(2.2)
    assert m["avg_trade_minutes"] == pytest.approx((10 + 15 + 5 + 2) / 4)
    assert m["trades_per_day"] == pytest.approx(4 / (60 / 1440))  # 96
    # Union [0, 20) + [40, 45) + [50, 52) = 27 of 60 minutes.
    assert m["exposure"] == pytest.approx(27 / 60)
    # Notional 1*(100+102) + 2*(50+49) + 1*(10+11) + 1*(10+10) = 441 over mean equity 1000.
    assert m["turnover"] == pytest.approx(0.441)
    assert m["fees"] == pytest.approx(0.42)


def test_profit_factor_edges() -> None:
    assert math.isnan(mx.profit_factor([]))
    assert mx.profit_factor([trade(0, 1, 1.0, 10.0, 11.0, 0.0)]) == math.inf
    assert math.isnan(mx.profit_factor([trade(0, 1, 1.0, 10.0, 10.0, 0.0)]))


def test_exposure_is_clipped_to_the_curve() -> None:
    _, t = curve([1, 2, 3, 4], [1.0] * 4)  # window [D, D + 4 min]
    # Opened 10 minutes before the window, closed at minute 2; another runs past the end.
    trades = [trade(-10, 2, 1.0, 1.0, 1.0, 0.0), trade(3, 9, 1.0, 1.0, 1.0, 0.0)]
    assert mx.exposure(trades, t) == pytest.approx(3 / 4)


# --- edge cases ---------------------------------------------------------------------------------


def test_no_trades_and_flat_equity() -> None:
    eq, t = curve(list(range(1, 11)), [500.0] * 10)
    m = mx.compute_metrics(eq, t, [], 500.0)
    assert m["total_return"] == 0.0
    assert m["annualised_return"] == 0.0
    assert m["max_drawdown"] == 0.0
    assert m["max_drawdown_minutes"] == 0.0
    for key in ("sharpe_minute", "sharpe_daily", "sortino_daily", "calmar"):
        assert m[key] is None, key
    for key in ("win_rate", "profit_factor", "avg_trade_minutes"):
        assert m[key] is None, key
    assert m["trades"] == 0
    assert m["trades_per_day"] == 0.0
    assert m["exposure"] == 0.0
    assert m["turnover"] == 0.0
    assert m["fees"] == 0.0
    assert m["daily_pnl"]["p50"] == 0.0


def test_single_day_has_no_daily_sharpe() -> None:
    eq, t = curve([1, 2, 3], [101.0, 102.0, 103.0])
    m = mx.compute_metrics(eq, t, [], 100.0)
    assert m["sharpe_daily"] is None
    assert m["sortino_daily"] is None
    assert m["mean_daily_return"] == pytest.approx(0.03)
    assert all(v == pytest.approx(3.0) for v in m["daily_pnl"].values())
    assert m["sharpe_minute"] is not None


def test_gap_step_is_one_minute_return() -> None:
    eq, t = curve([1, 2, 500], [101.0, 100.0, 102.0])  # same values as the no-gap case
    r = [0.01, 100 / 101 - 1, 0.02]
    mean = sum(r) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in r) / 2)
    m = mx.compute_metrics(eq, t, [], 100.0)
    assert m["sharpe_minute"] == pytest.approx(mean / sd * math.sqrt(525_600))
    assert m["days"] == pytest.approx(500 / 1440)


def test_empty_curve_does_not_crash() -> None:
    e = np.empty(0)
    m = mx.compute_metrics(e, np.empty(0, np.int64), [], 100.0)
    assert m["days"] == 0.0
    assert m["total_return"] == 0.0
    assert m["trades_per_day"] is None
    orjson.dumps(m)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        mx.compute_metrics(np.array([1.0, 2.0]), np.array([D], np.int64), [], 1.0)
    with pytest.raises(ValueError):
        mx.compute_metrics(np.array([1.0, 2.0]), np.array([D + M, D + M], np.int64), [], 1.0)
    with pytest.raises(ValueError):
        mx.compute_metrics(np.array([1.0]), np.array([D], np.int64), [], 0.0)


def test_output_is_json_serialisable_plain_python() -> None:
    eq, t = three_days()
    trades = [*four_trades(), trade(1, 2, 1.0, 1.0, 1.0, 0.0)]
    m = mx.compute_metrics(eq, t, trades, 100.0)
    back = orjson.loads(orjson.dumps(m))
    assert back == m

    def plain(x: object) -> bool:
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        return x is None or type(x) in (int, float, bool)

    assert plain(m)
    # inf (no losing trade) becomes None, not Infinity.
    m2 = mx.compute_metrics(eq, t, [trade(0, 1, 1.0, 10.0, 11.0, 0.0)], 100.0)
    assert m2["profit_factor"] is None
    orjson.dumps(m2)
    orjson.dumps(mx.targets(m2))


# --- targets ------------------------------------------------------------------------------------


def test_targets_tiers_side_by_side() -> None:
    m = {
        "win_rate": 0.62,  # minimum, target
        "sharpe_daily": 4.0,  # all
        "max_drawdown": 0.04,  # minimum only
        "mean_daily_return": 0.005,  # exactly 0.5 %: minimum passes (at least)
        "trades_per_day": 250.0,  # above 200: fails
    }
    rows = {r["metric"]: r for r in mx.targets(m)}
    assert [r[0] for r in mx.TARGETS] == list(rows)

    def passes(key: str) -> list[bool]:
        return [rows[key][tier]["pass"] for tier in mx.TIERS]

    assert passes("win_rate") == [True, True, False]
    assert passes("sharpe_daily") == [True, True, True]
    assert passes("max_drawdown") == [True, False, False]
    assert passes("mean_daily_return") == [True, False, False]
    assert passes("trades_per_day") == [False, False, False]
    assert rows["win_rate"]["value"] == 0.62
    assert rows["win_rate"]["minimum"]["rule"] == "> 0.55"
    assert rows["trades_per_day"]["target"]["rule"] == "50..200"


def test_targets_fail_on_missing_values() -> None:
    rows = mx.targets({"win_rate": None, "sharpe_daily": float("nan")})
    assert all(not r[tier]["pass"] for r in rows for tier in mx.TIERS)
    assert rows[0]["value"] is None


def test_clean_makes_json_safe_values() -> None:
    value = {"a": np.float64("nan"), "b": [np.int64(3), math.inf], "c": np.bool_(True), 1: 0.5}
    assert mx.clean(value) == {"a": None, "b": [3, None], "c": True, "1": 0.5}
    orjson.dumps(mx.clean(value))
