"""Assembling an engine from settings: the one place where replay, paper and live agree."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from scalpd.config.settings import Settings
from scalpd.data.bars import BarColumns
from scalpd.engine.engine import ClientIds, Engine, EquityCurve, Journal
from scalpd.engine.portfolio import Portfolio
from scalpd.engine.ports import Broker, Clock
from scalpd.risk.breakers import RiskEvent, RiskState
from scalpd.risk.manager import RiskManager
from scalpd.strategy import build_strategy


def client_id_prefix(run_id: int) -> str:
    # Binance allows [.A-Z:/a-z0-9_-]{1,36}; run 123, order 45 -> "sd123-45" (+"tp"/"sl" legs).
    return f"sd{run_id}-"


def build_engine(
    settings: Settings,
    *,
    broker: Broker,
    journal: Journal,
    clock: Clock,
    run_id: int,
    cash: float,
    trade_from_ms: int = 0,
    equity_curve: EquityCurve | None = None,
    replay_bars: Sequence[BarColumns] | None = None,
    risk_state: RiskState | None = None,
    on_risk_event: Callable[[RiskEvent], None] | None = None,
    save_risk_state: Callable[[str], None] | None = None,
    portfolio: Portfolio | None = None,
    log: Any = None,
) -> Engine:
    """`replay_bars`: replay only, the whole series it will feed (see run_replay).
    `risk_state`: a restored risk state (the daemon); None: a fresh one (replay). The two
    callbacks: see `Engine`. `portfolio`: a book rebuilt from an earlier run's fills (the
    daemon, scalpd/live/recovery.py); None: an empty one holding `cash`. `log`: see
    `Engine`."""
    return Engine(
        strategy=build_strategy(settings, replay_bars),
        risk=build_risk(settings, risk_state),
        broker=broker,
        journal=journal,
        clock=clock,
        cash=cash,
        ids=ClientIds(client_id_prefix(run_id)),
        equity_interval_ms=settings.store.equity_snapshot_interval_s * 1000,
        trade_from_ms=trade_from_ms,
        equity_curve=equity_curve,
        portfolio=portfolio if portfolio is not None else portfolio_for(settings, cash),
        on_risk_event=on_risk_event,
        save_risk_state=save_risk_state,
        log=log,
    )


def build_risk(settings: Settings, state: RiskState | None = None) -> RiskManager:
    """The risk manager every engine uses (replay, its baselines, paper and live)."""
    return RiskManager(settings.risk, state)


def portfolio_for(settings: Settings, cash: float) -> Portfolio:
    """An empty book that knows the symbols' lot steps (dust) and the BNB price (fees)."""
    symbols = settings.symbols
    return Portfolio(
        cash,
        step_size=lambda symbol: symbols.rules(symbol).step_size,
        bnb_price_usdt=settings.fees.bnb_price_usdt,
    )
