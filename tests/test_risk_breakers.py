"""Circuit breakers: each one trips in a test built to trip it, pauses what it should (entries
rejected with a reason naming it, exits still pass), emits its event, and resets as specified."""

from __future__ import annotations

import math
import statistics

import pytest

from scalpd.config.settings import RiskSettings
from scalpd.engine.portfolio import ClosedTrade
from scalpd.events import Bar, BookTop, OrderIntent, Side
from scalpd.risk import RiskEvent, RiskManager

T = 1_709_251_200_000  # 2024-03-01 00:00 UTC
M = 60_000
DAY = 86_400_000
BTC, ETH = "BTC/USDT", "ETH/USDT"


def manager(**kw: object) -> RiskManager:
    return RiskManager(RiskSettings(**kw))


def entry(time_ms: int, symbol: str = BTC) -> OrderIntent:
    return OrderIntent(symbol, Side.BUY, 0.01, "test_entry", time_ms)


def exit_(time_ms: int, symbol: str = BTC) -> OrderIntent:
    return OrderIntent(symbol, Side.SELL, 0.01, "test_exit", time_ms, reduce_only=True)


def can_enter(risk: RiskManager, time_ms: int, symbol: str = BTC) -> bool:
    return risk.check(entry(time_ms, symbol), 100.0, 0.0).allowed


def rejection(risk: RiskManager, time_ms: int, symbol: str = BTC) -> str:
    d = risk.check(entry(time_ms, symbol), 100.0, 0.0)
    assert not d.allowed
    return d.reason


def exits_pass(risk: RiskManager, time_ms: int, symbol: str = BTC) -> bool:
    return risk.check(exit_(time_ms, symbol), 100.0, 0.01).allowed


def trade(pnl: float, exit_ms: int) -> ClosedTrade:
    return ClosedTrade(BTC, exit_ms - 5 * M, exit_ms, 0.01, 100.0, 100.0, 0.1, pnl, "stop_loss")


def bar(symbol: str, minute: int, close: float, high: float, low: float) -> Bar:
    return Bar(symbol, T + minute * M, close, high, low, close, 1.0, close, 1, 0.5)


# -- consecutive losses -------------------------------------------------------------------------


def test_consecutive_losses_pause_entries_for_the_cooldown() -> None:
    risk = manager(max_consecutive_losses=3, loss_cooldown_min=30.0)
    risk.on_trade_closed(trade(-1.0, T + 1 * M))
    risk.on_trade_closed(trade(-1.0, T + 2 * M))
    risk.on_trade_closed(trade(0.5, T + 3 * M))  # a win ends the streak
    assert risk.state.consecutive_losses == 0
    for minute in (4, 5):
        risk.on_trade_closed(trade(-1.0, T + minute * M))
    assert can_enter(risk, T + 5 * M)
    assert risk.drain_events() == []
    tripped_ms = T + 6 * M
    risk.on_trade_closed(trade(-2.5, tripped_ms))
    reason = "3 losing round trips in a row (last: BTC/USDT -2.50 USDT)"
    assert risk.drain_events() == [RiskEvent("consecutive_losses", "trip", reason, tripped_ms)]
    assert rejection(risk, tripped_ms, ETH) == (
        f"paused by consecutive_losses since 2024-03-01T00:06:00Z: {reason}; "
        "until 2024-03-01T00:36:00Z"
    )
    assert exits_pass(risk, tripped_ms)
    assert not can_enter(risk, tripped_ms + 30 * M - 1)
    assert can_enter(risk, tripped_ms + 30 * M)
    assert risk.drain_events() == [
        RiskEvent("consecutive_losses", "reset", "cool-down over", tripped_ms + 30 * M)
    ]
    assert risk.state.consecutive_losses == 0


# -- daily loss ---------------------------------------------------------------------------------


def test_daily_loss_halts_until_the_next_utc_day() -> None:
    risk = manager(max_daily_loss_fraction=0.05)
    risk.on_equity(T, 10_000.0)  # the bar closing at 00:00 anchors the day: limit 500.00
    risk.on_equity(T + 60 * M, 9_500.01)  # lost 499.99: not yet
    assert can_enter(risk, T + 60 * M)
    assert risk.daily_pnl() == pytest.approx(-499.99)
    risk.on_equity(T + 61 * M, 9_500.0)  # lost exactly 500.00: halt
    reason = "UTC day's loss 500.00 USDT reached the limit 500.00 USDT (day start equity 10000.00)"
    assert risk.drain_events() == [RiskEvent("daily_loss", "trip", reason, T + 61 * M)]
    risk.on_equity(T + 62 * M, 10_200.0)  # recovering does not lift a halt
    assert rejection(risk, T + 62 * M) == (
        f"paused by daily_loss since 2024-03-01T01:01:00Z: {reason}; "
        "until the next UTC day (2024-03-02T00:00:00Z) or a manual resume"
    )
    assert exits_pass(risk, T + 62 * M)
    assert not can_enter(risk, T + DAY - 1)
    risk.on_equity(T + DAY, 10_100.0)  # the first equity of 2024-03-02 anchors it
    assert risk.drain_events() == [RiskEvent("daily_loss", "reset", "new UTC day", T + DAY)]
    assert can_enter(risk, T + DAY)
    assert risk.state.day_start_equity == 10_100.0
    assert risk.state.day_index == (T + DAY) // DAY


def test_daily_loss_amount_and_manual_resume_reanchors() -> None:
    risk = manager(max_daily_loss_fraction=0.05, max_daily_loss_usdt=200.0)
    risk.on_equity(T, 10_000.0)
    risk.on_equity(T + M, 9_800.01)
    assert can_enter(risk, T + M)
    risk.on_equity(T + 2 * M, 9_800.0)  # the tighter limit: 200 USDT < 5% (500)
    assert not can_enter(risk, T + 2 * M)
    risk.drain_events()
    assert risk.resume(T + 3 * M, "daily_loss") == ["daily_loss"]
    assert risk.drain_events() == [RiskEvent("daily_loss", "reset", "manual resume", T + 3 * M)]
    assert can_enter(risk, T + 3 * M)
    # Measured from 9,800 now: min(5% = 490, 200) = 200 again.
    assert risk.state.day_start_equity == 9_800.0
    risk.on_equity(T + 4 * M, 9_600.01)
    assert can_enter(risk, T + 4 * M)
    risk.on_equity(T + 5 * M, 9_600.0)
    assert "daily_loss" in rejection(risk, T + 5 * M)


def test_daily_loss_off() -> None:
    risk = manager(max_daily_loss_fraction=0.0)
    risk.on_equity(T, 10_000.0)
    risk.on_equity(T + M, 1.0)
    assert can_enter(risk, T + M)


# -- abnormal market ----------------------------------------------------------------------------


def _quiet_bars(risk: RiskManager, symbol: str, n: int, r: float = 1e-3) -> float:
    """n bars whose log returns alternate +r, -r: the EWMA sigma is exactly r."""
    close = 100.0
    for i in range(n):
        close = close * math.exp(r if i % 2 else -r) if i else close
        risk.on_bar(bar(symbol, i, close, close, close))
    return close


def test_price_jump_pauses_the_symbol_for_the_cooldown() -> None:
    risk = manager(
        jump_sigmas=10.0,
        vol_z_max=0.0,
        market_min_bars=60,
        market_cooldown_min=15.0,
        stale_after_s=0,
    )
    btc = _quiet_bars(risk, BTC, 102)
    eth = _quiet_bars(risk, ETH, 102)
    # Sigma is 10 bps in both: ETH moves 99 bps (below 10 sigma), BTC 101 bps (above).
    eth *= math.exp(0.0099)
    risk.on_bar(bar(ETH, 102, eth, eth, eth))
    assert risk.drain_events() == []
    btc *= math.exp(0.0101)
    risk.on_bar(bar(BTC, 102, btc, btc, btc))
    now = T + 103 * M  # that bar's close
    (event,) = risk.drain_events()
    assert event.breaker == "price_jump:BTC/USDT" and event.action == "trip"
    assert event.time_ms == now
    assert event.reason.startswith("1m return +101.0 bps beyond 10 sigma (")
    assert rejection(risk, now).startswith("paused by price_jump:BTC/USDT since ")
    assert rejection(risk, now).endswith("; until 2024-03-01T01:58:00Z")  # 15 min later
    assert exits_pass(risk, now)
    assert can_enter(risk, now, ETH)  # only the symbol that jumped
    risk.tick(now + 15 * M - 1)
    assert not can_enter(risk, now + 15 * M - 1)
    risk.tick(now + 15 * M)
    assert risk.drain_events() == [
        RiskEvent("price_jump:BTC/USDT", "reset", "cool-down over", now + 15 * M)
    ]
    assert can_enter(risk, now + 15 * M)


def test_no_jump_judged_before_the_warm_up() -> None:
    risk = manager(jump_sigmas=10.0, vol_z_max=0.0, market_min_bars=60)
    close = _quiet_bars(risk, BTC, 60)  # 59 returns so far
    risk.on_bar(bar(BTC, 60, close * 1.5, close * 1.5, close * 1.5))
    assert risk.drain_events() == []


def test_volatility_z_score_pauses_the_symbol() -> None:
    risk = manager(
        jump_sigmas=0.0, vol_z_max=4.0, vol_window_bars=100, market_min_bars=60, stale_after_s=0
    )
    # Ranges of 10 and 20 bps in turn: log(log(high/low)) alternates between two values.
    ranges = [0.001 if i % 2 else 0.002 for i in range(100)]
    for i, rg in enumerate(ranges):
        risk.on_bar(bar(BTC, i, 100.0, 100.0 * math.exp(rg), 100.0))
    logs = [math.log(rg) for rg in ranges]
    mean, std = statistics.fmean(logs), statistics.stdev(logs)
    # z = 4 at a log range of mean + 4 std; a hair below and a hair above.
    below = math.exp(mean + 3.99 * std)
    risk.on_bar(bar(BTC, 100, 100.0, 100.0 * math.exp(below), 100.0))
    assert risk.drain_events() == []
    # The window has moved by one bar (the 'below' bar is in it): recompute from the window.
    logs = logs[1:] + [math.log(below)]
    mean, std = statistics.fmean(logs), statistics.stdev(logs)
    above = math.exp(mean + 4.01 * std)
    risk.on_bar(bar(BTC, 101, 100.0, 100.0 * math.exp(above), 100.0))
    (event,) = risk.drain_events()
    assert (event.breaker, event.action, event.reason) == (
        "volatility:BTC/USDT",
        "trip",
        "1m range z-score 4.0 > vol_z_max 4",
    )
    assert "volatility:BTC/USDT" in rejection(risk, T + 102 * M)
    assert exits_pass(risk, T + 102 * M)
    assert can_enter(risk, T + 102 * M + 15 * M)


def test_spread_blowout_pauses_the_symbol() -> None:
    risk = manager(spread_multiple=5.0, spread_window=100, market_cooldown_min=10.0)

    def top(i: int, spread_bps: float) -> BookTop:
        half = 100.0 * spread_bps / 2e4
        return BookTop(BTC, T + i * 1000, 100.0 - half, 1.0, 100.0 + half, 1.0)

    for i in range(29):
        risk.on_book(top(i, 1.0))
    risk.on_book(top(29, 50.0))  # 29 tops: too few to judge
    assert risk.drain_events() == []
    risk.on_book(top(30, 4.99))  # median 1 bp: below 5x
    assert risk.drain_events() == []
    risk.on_book(top(31, 5.01))
    (event,) = risk.drain_events()
    assert event == RiskEvent("spread:BTC/USDT", "trip", event.reason, T + 31_000)
    assert event.reason == "spread 5.01 bps > 5 x median 1.00 bps"
    assert "spread:BTC/USDT" in rejection(risk, T + 32_000)
    assert exits_pass(risk, T + 32_000)
    risk.on_book(top(60, 6.0))  # blown out again: the cool-down restarts from here
    assert not can_enter(risk, T + 31_000 + 10 * M)
    assert can_enter(risk, T + 60_000 + 10 * M)
    assert risk.drain_events() == [
        RiskEvent("spread:BTC/USDT", "reset", "cool-down over", T + 60_000 + 10 * M)
    ]


def test_stale_data_pauses_the_symbol_until_a_fresh_bar() -> None:
    risk = manager(stale_after_s=180.0)
    risk.on_bar(bar(BTC, 0, 100.0, 100.0, 100.0))  # closes at T + 1 min
    risk.on_bar(bar(ETH, 3, 10.0, 10.0, 10.0))  # closes at T + 4 min
    last_close = T + M
    risk.tick(last_close + 180_000)  # exactly the limit: not stale
    assert risk.drain_events() == []
    risk.tick(last_close + 180_001)
    assert risk.drain_events() == [
        RiskEvent(
            "stale_data:BTC/USDT", "trip", "no bar for 180 s (stale_after_s 180)", T + 4 * M + 1
        )
    ]
    assert rejection(risk, T + 5 * M).endswith("; until a fresh bar arrives")
    assert exits_pass(risk, T + 5 * M)
    assert can_enter(risk, T + 5 * M, ETH)
    risk.on_bar(bar(BTC, 5, 100.0, 100.0, 100.0), now_ms=T + 6 * M + 300)
    assert risk.drain_events() == [
        RiskEvent("stale_data:BTC/USDT", "reset", "fresh bar", T + 6 * M + 300)
    ]
    assert can_enter(risk, T + 6 * M + 300)


# -- model confidence ---------------------------------------------------------------------------


def test_confidence_collapse_pauses_until_it_recovers() -> None:
    risk = manager(confidence_window=5, confidence_floor=0.2)
    for i in range(4):
        risk.on_confidence(T + i * M, 0.1)
    risk.on_confidence(T + 4 * M, math.nan)  # warm-up output: skipped
    assert risk.drain_events() == []  # 4 outputs: the window is not full
    risk.on_confidence(T + 5 * M, 0.1)
    reason = "mean model confidence 0.100 over the last 5 outputs < confidence_floor 0.2"
    assert risk.drain_events() == [RiskEvent("confidence_collapse", "trip", reason, T + 5 * M)]
    assert rejection(risk, T + 5 * M, ETH).endswith("until the rolling mean confidence recovers")
    assert exits_pass(risk, T + 5 * M)
    risk.on_confidence(T + 6 * M, 0.3)
    risk.on_confidence(T + 7 * M, 0.3)  # mean (3 x 0.1 + 2 x 0.3) / 5 = 0.18
    assert not can_enter(risk, T + 7 * M)
    risk.on_confidence(T + 8 * M, 0.3)  # (2 x 0.1 + 3 x 0.3) / 5 = 0.22
    assert risk.drain_events() == [
        RiskEvent(
            "confidence_collapse", "reset", "mean model confidence 0.220 recovered", T + 8 * M
        )
    ]
    assert can_enter(risk, T + 8 * M)


# -- a person -----------------------------------------------------------------------------------


def test_manual_pause_and_resume() -> None:
    risk = manager()
    risk.pause(T, "ctl")
    assert risk.drain_events() == [RiskEvent("manual", "trip", "paused by ctl", T)]
    assert rejection(risk, T + M) == (
        "paused by manual since 2024-03-01T00:00:00Z: paused by ctl; until resumed"
    )
    assert exits_pass(risk, T + M)
    assert risk.entries_paused()
    assert risk.status()["tripped"] == {
        "manual": {
            "reason": "paused by ctl",
            "since": "2024-03-01T00:00:00Z",
            "reset": "until resumed",
        }
    }
    assert not can_enter(risk, T + 365 * DAY)  # no time-based reset
    assert risk.resume(T + 2 * M) == ["manual"]
    assert risk.drain_events() == [RiskEvent("manual", "reset", "manual resume", T + 2 * M)]
    assert can_enter(risk, T + 2 * M)
    assert risk.resume(T + 3 * M) == []


def test_the_most_serious_breaker_is_named_first() -> None:
    risk = manager(max_consecutive_losses=1)
    risk.on_trade_closed(trade(-1.0, T))
    risk.pause(T, "ctl")
    assert rejection(risk, T).startswith("paused by manual")
    assert risk.resume(T + M) == ["manual", "consecutive_losses"]
    assert risk.state.consecutive_losses == 0
    assert can_enter(risk, T + M)
