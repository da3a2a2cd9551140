"""The risk manager inside the engine: each breaker trips on constructed bars through the
simulated broker, pauses what it should (entries refused with its name, exits still sent),
is logged and handed to the callback, resets as specified, and a saved state restores a halt
in a new engine (a restart). Real SQLite journal and store; no costs but the taker fee.

Bars are one minute apart from T; intents are scripted per (symbol, minute). A market order
decided at a bar's close fills at the next bar's open (no latency), so a round trip bought at
minute a and sold at minute b closes at the open of bar b + 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from scalpd.config.settings import FeesSettings, FeeTier, MarketRules, RiskSettings, Settings
from scalpd.config.settings import SimSettings as SimS
from scalpd.data.bars import BarColumns
from scalpd.engine.build import build_risk, portfolio_for
from scalpd.engine.engine import ClientIds, Engine
from scalpd.engine.portfolio import ClosedTrade
from scalpd.engine.ports import SimClock
from scalpd.events import Bar, Bracket, Fill, Gap, OrderIntent, Side, Trade
from scalpd.execution.rules import floor_to_step
from scalpd.execution.sim import SimBroker
from scalpd.live.daemon import restore_risk_state
from scalpd.replay import baselines as bl
from scalpd.risk import RiskEvent, RiskState
from scalpd.store.sqlite import Store
from scalpd.strategy.base import StrategyContext
from scalpd.strategy.long_only import LongOnly

T = 1_709_251_200_000  # 2024-03-01 00:00 UTC
M = 60_000
BTC, ETH = "BTC/USDT", "ETH/USDT"
RULES = MarketRules(tick_size=0.01, step_size=0.0001, min_qty=0.0001, min_notional_usdt=5.0)
FEES = FeesSettings(tiers={"T": FeeTier(maker_bps=10.0, taker_bps=10.0)}, tier="T")
ZERO = SimS(half_spread_bps=1e-9, impact_coefficient=0.0, latency_ms=0.0, max_participation=1.0)
# Every breaker off; each test turns on the one it is about.
QUIET = dict(
    max_consecutive_losses=0,
    max_daily_loss_fraction=0.0,
    jump_sigmas=0.0,
    vol_z_max=0.0,
    stale_after_s=0.0,
    confidence_floor=0.0,
)
ACCOUNT = "paper:test"


def settings(**risk: object) -> Settings:
    markets = {BTC: RULES, ETH: RULES}
    return Settings(
        risk=RiskSettings(**{**QUIET, **risk}),
        symbols={"trade": [BTC, ETH], "markets": markets},
        fees=FEES,
        sim=ZERO,
    )


class Script:
    """Buys `qty` at ("buy") or sells the whole position at ("sell") scripted bar closes."""

    name = "script"

    def __init__(self, plan: dict[tuple[str, int], str], qty: float = 10.0) -> None:
        self.plan = plan
        self.qty = qty

    def on_bar(self, bar: Bar, ctx: StrategyContext) -> Sequence[OrderIntent]:
        action = self.plan.get((bar.symbol, (bar.open_time_ms - T) // M))
        close_ms = bar.open_time_ms + M
        if action == "buy":
            return (OrderIntent(bar.symbol, Side.BUY, self.qty, "test_entry", close_ms),)
        pos = ctx.position(bar.symbol)
        if action == "sell" and pos is not None:
            qty = floor_to_step(pos.qty, RULES.step_size)
            return (OrderIntent(bar.symbol, Side.SELL, qty, "test_exit", close_ms, None, True),)
        return ()

    def on_gap(self, gap: Gap) -> None:
        return None

    def on_fill(self, fill: Fill) -> None:
        return None

    def on_trade(self, trade: Trade) -> None:
        return None


class Rig:
    """An engine on a SimBroker with a real SQLite journal and risk-state store."""

    def __init__(
        self,
        tmp_path: Path,
        s: Settings,
        plan: dict[tuple[str, int], str],
        state: RiskState | None = None,
        qty: float = 10.0,
    ) -> None:
        self.store = Store(tmp_path / "scalpd.db")
        self.run_id = self.store.start_run("paper", {}, "constructed bars")
        self.journal = self.store.journal(self.run_id, durable=False)
        self.events: list[RiskEvent] = []
        cash = 10_000.0
        self.engine = Engine(
            strategy=Script(plan, qty),
            risk=build_risk(s, state),
            broker=SimBroker(cash=cash, fees=s.fees, rules={BTC: RULES, ETH: RULES}, sim=s.sim),
            journal=self.journal,
            clock=SimClock(T),
            cash=cash,
            ids=ClientIds(f"sd{self.run_id}-"),
            equity_interval_ms=60_000,
            portfolio=portfolio_for(s, cash),
            on_risk_event=self.events.append,
            save_risk_state=lambda text: self.store.save_risk_state(ACCOUNT, text),
        )

    def feed(self, bars: Sequence[Bar]) -> None:
        for b in bars:
            self.engine.on_bar(b)
        self.journal.flush()

    def intents(self) -> list[tuple[str, int, str, bool, str]]:
        """(symbol, minute of the deciding bar, side, allowed, decision) of every intent."""
        rows = self.store.rows("intents", self.run_id)
        return [
            (r["symbol"], (r["time_ms"] - T) // M - 1, r["side"], bool(r["allowed"]), r["decision"])
            for r in rows
        ]

    def exits(self) -> list[int]:
        """Minutes at which round trips closed."""
        return [(t.exit_time_ms - T) // M for t in self.engine.trades]


def flat(symbols: Sequence[str], minutes: range, price: float = 100.0) -> list[Bar]:
    return [
        Bar(s, T + m * M, price, price, price, price, 1e6, price * 1e6, 1, 5e5)
        for m in minutes
        for s in symbols
    ]


def kinds(events: Sequence[RiskEvent]) -> list[tuple[str, str]]:
    return [(e.breaker, e.action) for e in events]


# -- consecutive losses -------------------------------------------------------------------------


def test_consecutive_losses_pause_entries_for_the_cooldown_and_exits_go_on(tmp_path) -> None:
    # Flat prices at 100: 10 BTC bought at 100.005 (half a tick) = 1,000.05 USDT, 0.01 BTC of
    # fee, 9.99 sold at 99.995 = 998.95 less 1.00 of fee: -2.10 a round trip. Two BTC losses
    # (closing at the opens of bars 3 and 7) trip the breaker at 7 min; ETH, bought at 5,
    # still exits at 9.
    plan = {
        (BTC, 0): "buy", (BTC, 2): "sell", (BTC, 4): "buy", (BTC, 6): "sell",
        (ETH, 5): "buy", (ETH, 9): "sell",
        (BTC, 8): "buy",  # paused
        (BTC, 16): "buy",  # 7 + 10 min = 17: the bar closing at 17 min may enter
    }  # fmt: skip
    rig = Rig(tmp_path, settings(max_consecutive_losses=2, loss_cooldown_min=10.0), plan)
    with capture_logs() as logs:
        rig.feed(flat([BTC, ETH], range(20)))
    assert rig.exits() == [3, 7, 10]
    assert all(t.pnl < 0 for t in rig.engine.trades)
    reason = "2 losing round trips in a row (last: BTC/USDT -2.10 USDT)"
    assert rig.events == [
        RiskEvent("consecutive_losses", "trip", reason, T + 7 * M),
        RiskEvent("consecutive_losses", "reset", "cool-down over", T + 17 * M),
    ]
    decided = rig.intents()
    assert [(s, m, side, ok) for s, m, side, ok, _ in decided] == [
        (BTC, 0, "buy", True),
        (BTC, 2, "sell", True),
        (BTC, 4, "buy", True),
        (ETH, 5, "buy", True),
        (BTC, 6, "sell", True),
        (BTC, 8, "buy", False),
        (ETH, 9, "sell", True),  # the exit while paused
        (BTC, 16, "buy", True),
    ]
    assert decided[5][4] == (
        f"paused by consecutive_losses since 2024-03-01T00:07:00Z: {reason}; "
        "until 2024-03-01T00:17:00Z"
    )
    # Each transition logged once, with the callback's content.
    logged = [e for e in logs if e["event"] == "risk_breaker"]
    assert [(e["breaker"], e["action"], e["reason"]) for e in logged] == [
        (e.breaker, e.action, e.reason) for e in rig.events
    ]
    refused = [e for e in logs if e["event"] == "intent_rejected"]
    assert len(refused) == 1 and refused[0]["log_level"] == "info"


# -- daily loss ---------------------------------------------------------------------------------


def test_daily_loss_halts_entries_until_the_next_utc_day(tmp_path) -> None:
    # From 23:00: 60 BTC bought at 100.005 = 6,000.30 USDT (0.06 BTC of fee), so 59.94 held.
    # From minute 10 the price is 90: equity 3,999.70 + 59.94 * 90 = 9,394.30, a loss of
    # 605.70 from the day's 10,000 start, beyond 5 % (500.00). The halt lasts until 00:00.
    start = T - 60 * M
    plan = {(BTC, -60): "buy", (BTC, -48): "sell", (BTC, -10): "buy", (BTC, 2): "buy"}
    rig = Rig(tmp_path, settings(max_daily_loss_fraction=0.05), plan, qty=60.0)
    prices = [100.0] * 10 + [90.0] * 70
    rig.feed([Bar(BTC, start + i * M, p, p, p, p, 1e6, p * 1e6, 1, 5e5) for i, p in
              enumerate(prices)])  # fmt: skip
    reason = "UTC day's loss 605.70 USDT reached the limit 500.00 USDT (day start equity 10000.00)"
    assert rig.events == [
        RiskEvent("daily_loss", "trip", reason, T - 49 * M),
        RiskEvent("daily_loss", "reset", "new UTC day", T),
    ]
    assert [(m, side, ok) for _, m, side, ok, _ in rig.intents()] == [
        (-60, "buy", True),
        (-48, "sell", True),  # the exit, halted
        (-10, "buy", False),
        (2, "buy", True),
    ]
    # The new day starts from the equity at 00:00: flat, the sale at 89.995 less its fee.
    expected = 10_000.0 - 6_000.30 + 59.94 * 89.995 * 0.999
    assert rig.engine.risk.state.day_start_equity == pytest.approx(expected)


# -- abnormal market ----------------------------------------------------------------------------


def test_price_jump_pauses_entries_of_that_symbol(tmp_path) -> None:
    # Both symbols move +-10 bps a minute (sigma 10 bps); at minute 70 BTC jumps 200 bps.
    plan = {(BTC, 70): "buy", (ETH, 70): "buy", (BTC, 84): "buy"}
    rig = Rig(tmp_path, settings(jump_sigmas=10.0, market_cooldown_min=15.0), plan)
    bars = []
    for m in range(90):
        for symbol in (BTC, ETH):
            step = sum(1e-3 if i % 2 else -1e-3 for i in range(1, m + 1))
            jump = 0.02 if symbol == BTC and m >= 70 else 0.0
            p = 100.0 * math.exp(step + jump)
            bars.append(Bar(symbol, T + m * M, p, p, p, p, 1e6, p * 1e6, 1, 5e5))
    rig.feed(bars)
    assert kinds(rig.events) == [("price_jump:BTC/USDT", "trip"), ("price_jump:BTC/USDT", "reset")]
    assert [e.time_ms for e in rig.events] == [T + 71 * M, T + 86 * M]
    assert [(s, m, ok) for s, m, _, ok, _ in rig.intents()] == [
        (BTC, 70, False),
        (ETH, 70, True),  # only the symbol that jumped is paused
        (BTC, 84, False),  # 15 min after the trip is the close of bar 85
    ]


def test_stale_data_pause_through_tick(tmp_path) -> None:
    rig = Rig(tmp_path, settings(stale_after_s=180.0), {(BTC, 14): "buy", (ETH, 14): "buy"})
    rig.feed(flat([BTC, ETH], range(10)))  # the last bars close at T + 10 min
    rig.engine.tick(T + 10 * M + 180_000)  # exactly at the limit: not stale yet
    assert rig.events == []
    rig.engine.tick(T + 10 * M + 180_001)
    assert kinds(rig.events) == [("stale_data:BTC/USDT", "trip"), ("stale_data:ETH/USDT", "trip")]
    rig.feed(flat([BTC], range(14, 15)))  # BTC comes back: only its pause ends
    assert kinds(rig.events[2:]) == [("stale_data:BTC/USDT", "reset")]
    assert [(s, ok) for s, _, _, ok, _ in rig.intents()] == [(BTC, True)]
    rig.feed(flat([ETH], range(14, 15)))
    assert kinds(rig.events[3:]) == [("stale_data:ETH/USDT", "reset")]
    assert [(s, ok) for s, _, _, ok, _ in rig.intents()] == [(BTC, True), (ETH, True)]


def test_manual_pause_and_resume(tmp_path) -> None:
    plan = {(BTC, 0): "buy", (BTC, 3): "sell", (ETH, 4): "buy", (ETH, 6): "buy"}
    rig = Rig(tmp_path, settings(), plan)
    rig.feed(flat([BTC, ETH], range(2)))
    rig.engine.pause(T + 2 * M, "test")
    rig.feed(flat([BTC, ETH], range(2, 5)))
    assert rig.engine.resume(T + 5 * M) == ["manual"]
    rig.feed(flat([BTC, ETH], range(5, 8)))
    assert rig.events == [
        RiskEvent("manual", "trip", "paused by test", T + 2 * M),
        RiskEvent("manual", "reset", "manual resume", T + 5 * M),
    ]
    assert [(s, m, ok) for s, m, _, ok, _ in rig.intents()] == [
        (BTC, 0, True),
        (BTC, 3, True),  # the exit while paused
        (ETH, 4, False),
        (ETH, 6, True),
    ]
    assert rig.exits() == [4]


# -- persistence --------------------------------------------------------------------------------


def test_a_halt_survives_a_restart(tmp_path) -> None:
    s = settings(max_daily_loss_fraction=0.05)
    plan = {(BTC, 0): "buy", (BTC, 12): "sell"}
    rig = Rig(tmp_path, s, plan, qty=60.0)  # as above: 605.70 lost at 00:11
    prices = [100.0] * 10 + [90.0] * 5
    rig.feed([Bar(BTC, T + i * M, p, p, p, p, 1e6, p * 1e6, 1, 5e5) for i, p in
              enumerate(prices)])  # fmt: skip
    assert kinds(rig.events) == [("daily_loss", "trip")]
    saved = rig.engine.risk.state.to_json()
    rig.store.close()

    # A new process: the store reopened, the state read back, a new engine and broker.
    store = Store(tmp_path / "scalpd.db")
    state = restore_risk_state(store, ACCOUNT)
    assert state is not None and state.to_json() == saved
    assert restore_risk_state(store, "paper:other") is None
    store.close()
    again = Rig(tmp_path, s, {(BTC, 20): "buy", (BTC, 23 * 60 + 59): "buy"}, state)
    again.feed(flat([BTC], range(20, 21), 90.0))
    ((_, _, _, allowed, decision),) = again.intents()
    assert not allowed and decision.startswith("paused by daily_loss since 2024-03-01T00:11:00Z")
    again.feed(flat([BTC], range(23 * 60 + 59, 23 * 60 + 60), 90.0))  # closes at 00:00
    assert kinds(again.events) == [("daily_loss", "reset")]
    assert again.intents()[-1][3]


def test_an_unreadable_state_stops_the_start(tmp_path) -> None:
    store = Store(tmp_path / "scalpd.db")
    store.save_risk_state(ACCOUNT, '{"version": 99}')
    with pytest.raises(RuntimeError, match="risk state of account 'paper:test'"):
        restore_risk_state(store, ACCOUNT)
    store.close()


# -- the random-entry baseline --------------------------------------------------------------------


def _flat_columns(n: int) -> BarColumns:
    price = np.full(n, 100.0)
    return BarColumns(
        BTC,
        T + np.arange(n, dtype=np.int64) * M,
        price,
        price,
        price,
        price,
        np.full(n, 1e6),
        price * 1e6,
        np.ones(n, dtype=np.int64),
        np.full(n, 5e5),
    )


@pytest.mark.parametrize(("max_losses", "trades"), [(0, 5.0), (1, 1.0)])
def test_random_entries_run_under_the_same_breakers(max_losses: int, trades: float) -> None:
    # Five random entries on flat bars: each round trip loses its fees. With the consecutive
    # losses breaker at 1 and a week's cool-down, every trial stops after its first trade.
    s = settings(max_consecutive_losses=max_losses, loss_cooldown_min=10_080.0)
    series = [_flat_columns(300)]
    rule = LongOnly(s.symbols, 0.5, Bracket(40.0, 25.0), 5 * M)
    strategy_trades = [ClosedTrade(BTC, T, T + M, 1.0, 100.0, 100.0, 0.2, -0.2, "x")] * 5
    broker = SimBroker(cash=10_000.0, fees=s.fees, rules={BTC: RULES}, sim=s.sim)
    out = bl.random_entries(
        s, series, broker, rule, strategy_trades, {}, cash=10_000.0, trials=3, seed=1
    )
    assert out["mean_trades"] == trades


def test_baseline_engines_share_the_run_limits() -> None:
    s = settings(max_order_notional_usdt=1_000.0)
    series = [_flat_columns(60)]
    rule = LongOnly(s.symbols, 0.5, Bracket(40.0, 25.0), 5 * M)  # 5,000 USDT entries
    broker = SimBroker(cash=10_000.0, fees=s.fees, rules={BTC: RULES}, sim=s.sim)
    strategy_trades = [ClosedTrade(BTC, T, T + M, 1.0, 100.0, 100.0, 0.2, -0.2, "x")] * 3
    out = bl.random_entries(
        s, series, broker, rule, strategy_trades, {}, cash=10_000.0, trials=2, seed=1
    )
    assert out["mean_trades"] == 0.0
