"""Circuit breakers through the running daemon: the real ccxt client against the fake exchange,
the alerts delivered by apprise to a local HTTP endpoint. Each breaker trips on bars built to
trip it, pauses what it should (entries refused, naming it; exits still sent), alerts, and resets
as specified. The engine-level rules are in tests/test_engine_risk.py; here the question is
whether the whole daemon does the same.

The strategy is the EMA-cross baseline with fast = 1 and slow = 2 bars: the fast EMA is the
close, so an entry signal is exactly a close above the previous slow EMA after a close that was
not. Prices below only ever rise steadily (above stays above: no new cross) or fall (never above),
so each "signal" bar is the only place an entry can be decided. A market entry decided at the
close of bar k fills at the open of bar k + 1 (latency off in paper; the fake fills at the open);
the time stop of `max_hold_bars` sells at the close of bar k + max_hold_bars, filled at the next
open. Brackets are set far away so that only the time stop exits.

Minutes below are counted from the first bar's open: bar k closes at minute k + 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from scalpd.fakex import FakeExchange
from scalpd.fakex.testing import DEFAULT_START_MS, bars_from_prices
from scalpd.live.daemon import Daemon
from scalpd.store.sqlite import Store
from tests.conftest import Endpoint, closed_port
from tests.test_exchange_bad_input import API_KEY, API_SECRET, daemon_settings, drive

M = 60_000
BTC, ETH = "BTC/USDT", "ETH/USDT"
# Every breaker off; each test turns on the one it is about.
QUIET = {
    "max_consecutive_losses": 0,
    "max_daily_loss_fraction": 0.0,
    "jump_sigmas": 0.0,
    "vol_z_max": 0.0,
    "stale_after_s": 0.0,
    "confidence_floor": 0.0,
}
STRATEGY = {
    "fast_period_bars": 1,
    "slow_period_bars": 2,
    "take_profit_bps": 5_000.0,
    "stop_loss_bps": 5_000.0,
    "position_fraction": 0.45,
}
NO_FRICTION = {"latency_ms": 0.0, "half_spread_bps": 0.0, "impact_coefficient": 0.0}


def ohlc(closes: Sequence[float]) -> list[tuple[float, float, float, float]]:
    """Bars opening at the previous close (the first at its own close)."""
    rows, prev = [], closes[0]
    for c in closes:
        rows.append((prev, max(prev, c), min(prev, c), c))
        prev = c
    return rows


async def run_daemon(
    tmp_path: Path,
    closes: dict[str, Sequence[float]],
    *,
    risk: dict[str, Any],
    max_hold_bars: int,
    alert_urls: Sequence[str] = (),
    paper: bool = True,
    start_ms: int = DEFAULT_START_MS,
    db: str = "breakers.db",
) -> Daemon:
    bars = {s: bars_from_prices(ohlc(c), start_ms=start_ms) for s, c in closes.items()}
    n = len(next(iter(closes.values())))
    fx = FakeExchange(bars, api_key=API_KEY, api_secret=API_SECRET, fee_bps=10.0)
    await fx.start()
    settings = daemon_settings(
        tmp_path,
        fx,
        db,
        symbols={"trade": list(closes)},
        strategy={**STRATEGY, "max_hold_bars": max_hold_bars},
        risk={**QUIET, **risk},
        sim=NO_FRICTION,
        alerts={"urls": list(alert_urls), "timeout_s": 5.0},
    )
    # The last bar only opens: nothing can happen on it.
    return await drive(fx, settings, paper=paper, steps=n - 1, before_step=None)


def minute(time_ms: int, start_ms: int = DEFAULT_START_MS) -> float:
    return (time_ms - start_ms) / M


def intents(daemon: Daemon, start_ms: int = DEFAULT_START_MS) -> list[tuple]:
    """(symbol, minute decided, side, allowed, decision) of every intent the run stored."""
    store = Store(daemon.settings.store.path)
    try:
        rows = store.rows("intents", daemon.run_id)
    finally:
        store.close()
    return [
        (r["symbol"], minute(r["time_ms"], start_ms), r["side"], bool(r["allowed"]), r["decision"])
        for r in rows
    ]


def alerts_of(endpoint: Endpoint) -> list[tuple[str, str]]:
    """(title, type) of every alert delivered, in arrival order."""
    return [(m["title"], m["type"]) for m in endpoint.received]


def breaker_alerts(endpoint: Endpoint) -> list[tuple[str, str]]:
    """The automatic breakers' alerts (not a person's pause, nor the one at shutdown)."""
    return [
        a
        for a in alerts_of(endpoint)
        if a[0].startswith("risk breaker") and not a[0].startswith("risk breaker manual")
    ]


# -- consecutive losses -------------------------------------------------------------------------


def losing_cycles(signals: int, *, warmup: int = 3, tail: int = 6) -> list[float]:
    """Flat at 100 for `warmup` bars, then cycles of 5 bars: a signal bar 0.2 above the level,
    then four bars falling from 0.3 below it by 0.01 a bar (the new level). An entry at the
    signal's close buys at its price and the time stop (2 bars) sells 0.3 lower: a loss."""
    closes = [100.0] * warmup
    level = 100.0
    for _ in range(signals):
        closes.append(round(level + 0.2, 2))
        level = round(level - 0.3, 2)
        closes += [round(level - 0.01 * i, 2) for i in range(4)]
        level = closes[-1]
    return closes + [round(level - 0.01 * (i + 1), 2) for i in range(tail)]


def _check_consecutive_losses(daemon: Daemon, endpoint: Endpoint | None, mode: str) -> None:
    # Signals at bars 3, 8, 13, 18 and 23. Entries at 3 and 8 lose (exits decided at the
    # closes of bars 5 and 10, filled at minutes 6 and 11): the second loss trips the breaker
    # at minute 11, for 10 minutes. The signals at 13 and 18 are refused; at the close of bar
    # 20 (minute 21) the cool-down is over, and the signal at 23 enters (and loses).
    engine = daemon.engine
    assert engine is not None
    assert [minute(t.exit_time_ms) for t in engine.trades] == [6, 11, 26]
    assert all(t.pnl < 0 for t in engine.trades)
    decided = [(s, m, side, ok) for s, m, side, ok, _ in intents(daemon)]
    assert decided == [
        (BTC, 4, "buy", True),
        (BTC, 6, "sell", True),
        (BTC, 9, "buy", True),
        (BTC, 11, "sell", True),
        (BTC, 14, "buy", False),
        (BTC, 19, "buy", False),
        (BTC, 24, "buy", True),
        (BTC, 26, "sell", True),
    ]
    refused = [d for *_, ok, d in intents(daemon) if not ok]
    since = "paused by consecutive_losses since 2024-01-01T00:11:00Z"
    assert all(d.startswith(since) for d in refused)
    assert all(d.endswith("until 2024-01-01T00:21:00Z") for d in refused)
    if endpoint is not None:
        assert breaker_alerts(endpoint) == [
            (f"risk breaker consecutive_losses tripped ({mode}): entries paused", "warning"),
            (f"risk breaker consecutive_losses reset ({mode})", "info"),
        ]
        trip = next(m for m in endpoint.received if "tripped" in m["title"])
        assert "2 losing round trips in a row (last: BTC/USDT -" in trip["message"]
        titles = [t for t, _ in alerts_of(endpoint)]
        assert titles[0] == f"scalpd started ({mode})" and titles[-1] == f"scalpd stopped ({mode})"


@pytest.mark.parametrize("paper", [True, False], ids=["paper", "live"])
def test_consecutive_losses_pause_for_the_cooldown_then_reset(
    tmp_path: Path, endpoint: Endpoint, paper: bool
) -> None:
    daemon = asyncio.run(
        run_daemon(
            tmp_path,
            {BTC: losing_cycles(5)},
            risk={"max_consecutive_losses": 2, "loss_cooldown_min": 10.0},
            max_hold_bars=2,
            alert_urls=[endpoint.url()],
            paper=paper,
        )
    )
    _check_consecutive_losses(daemon, endpoint, "paper" if paper else "live")
    assert daemon.alerter is not None and daemon.alerter.stats.failed == 0
    # The risk state was saved: the streak restarted at the reset, then one more loss.
    assert daemon.engine is not None and daemon.engine.risk.state.consecutive_losses == 1


def test_an_unreachable_alert_target_does_not_stop_trading(tmp_path: Path) -> None:
    """The same losing run with every alert sent to a closed port: the same intents and trades,
    each delivery failing, counted, and nothing else."""
    daemon = asyncio.run(
        run_daemon(
            tmp_path,
            {BTC: losing_cycles(5)},
            risk={"max_consecutive_losses": 2, "loss_cooldown_min": 10.0},
            max_hold_bars=2,
            alert_urls=[f"json://127.0.0.1:{closed_port()}/alerts"],
        )
    )
    _check_consecutive_losses(daemon, None, "paper")
    stats = daemon.alerter.stats  # type: ignore[union-attr]
    # start, trip, reset, stop: each accepted, none delivered.
    assert stats.sent == 4 and stats.delivered == 0 and stats.failed == 4


# -- abnormal market: a price jump --------------------------------------------------------------


def rising(n: int, start: float, step: float, moves: dict[int, float]) -> list[float]:
    """`n` closes rising by `step` a bar, except bar k moving by `moves[k]` steps instead."""
    closes = [start]
    for k in range(1, n):
        closes.append(round(closes[-1] + step * moves.get(k, 1.0), 2))
    return closes


def test_a_price_jump_pauses_that_symbols_entries_while_its_exits_go_on(
    tmp_path: Path, endpoint: Endpoint
) -> None:
    # Both symbols rise 10 bps a bar (sigma 10 bps). BTC: signal at 16 (a dip at 15), entry
    # filled at the open of 17; at 18 it jumps 20 steps (~197 bps, beyond 10 sigma): paused
    # from minute 19 to 24. Its time stop (3 bars) sells at the close of 19, paused or not;
    # its signal at 22 (after a dip deep enough to fall below the slow EMA the jump lifted) is
    # refused; the one at 25, after the reset, enters. ETH's signal at 20 enters meanwhile.
    btc = rising(28, 1000.0, 1.0, {15: -1.0, 18: 20.0, 21: -3.0, 24: -1.0})
    eth = rising(28, 2000.0, 2.0, {19: -1.0})
    daemon = asyncio.run(
        run_daemon(
            tmp_path,
            {BTC: btc, ETH: eth},
            risk={"jump_sigmas": 10.0, "market_min_bars": 10, "market_cooldown_min": 5.0},
            max_hold_bars=3,
            alert_urls=[endpoint.url()],
        )
    )
    decided = [(s, m, side, ok) for s, m, side, ok, _ in intents(daemon)]
    assert decided == [
        (BTC, 17, "buy", True),
        (BTC, 20, "sell", True),  # the exit while paused
        (ETH, 21, "buy", True),  # the other symbol enters during BTC's pause
        (BTC, 23, "buy", False),
        (ETH, 24, "sell", True),
        (BTC, 26, "buy", True),
    ]
    refused = next(d for s, m, side, ok, d in intents(daemon) if not ok)
    assert refused.startswith("paused by price_jump:BTC/USDT since 2024-01-01T00:19:00Z: 1m return")
    assert refused.endswith("until 2024-01-01T00:24:00Z")
    engine = daemon.engine
    assert engine is not None
    assert [(t.symbol, minute(t.exit_time_ms)) for t in engine.trades] == [(BTC, 20), (ETH, 24)]
    assert breaker_alerts(endpoint) == [
        ("risk breaker price_jump:BTC/USDT tripped (paper): entries paused", "warning"),
        ("risk breaker price_jump:BTC/USDT reset (paper)", "info"),
    ]
    assert not engine.risk.state.tripped()


# -- daily loss ---------------------------------------------------------------------------------


def test_daily_loss_halts_until_the_next_utc_day(tmp_path: Path, endpoint: Endpoint) -> None:
    # From 23:40 UTC. Flat at 100, a signal at bar 3: 45 % of equity bought at 100.2; bar 4
    # closes at 97 (-3.2 %): a loss of ~1.5 % of the day's starting equity, beyond 1 %: halted
    # at 23:45 until 00:00. The time stop (1 bar) still sells, at that same close. The signal
    # at bar 10 is refused; bar 19 closes at 00:00: a new day, reset; the signal at bar 22
    # enters.
    start_ms = DEFAULT_START_MS + (23 * 60 + 40) * M
    closes = [100.0, 100.0, 100.0, 100.2, 97.0]
    level = closes[-1]
    for k in range(5, 26):
        if k in (10, 22):
            closes.append(round(level + 0.5, 2))
        else:
            level = round(level - 0.01, 2)
            closes.append(level)
    daemon = asyncio.run(
        run_daemon(
            tmp_path,
            {BTC: closes},
            risk={"max_daily_loss_fraction": 0.01},
            max_hold_bars=1,
            alert_urls=[endpoint.url()],
            start_ms=start_ms,
        )
    )
    decided = [(s, m, side, ok) for s, m, side, ok, _ in intents(daemon, start_ms)]
    assert decided == [
        (BTC, 4, "buy", True),
        (BTC, 5, "sell", True),  # the exit while halted
        (BTC, 11, "buy", False),
        (BTC, 23, "buy", True),
        (BTC, 24, "sell", True),
    ]
    refused = next(d for *_, ok, d in intents(daemon, start_ms) if not ok)
    assert refused.startswith("paused by daily_loss since 2024-01-01T23:45:00Z: UTC day's loss")
    assert refused.endswith("until the next UTC day (2024-01-02T00:00:00Z) or a manual resume")
    assert breaker_alerts(endpoint) == [
        ("risk breaker daily_loss tripped (paper): entries paused", "warning"),
        ("risk breaker daily_loss reset (paper)", "info"),
    ]
    reset = next(m for m in endpoint.received if m["title"].endswith("reset (paper)"))
    assert reset["message"].endswith("new UTC day")
    engine = daemon.engine
    assert engine is not None and not engine.risk.state.tripped()
    assert engine.risk.state.day_index == (start_ms + 20 * M) // 86_400_000
