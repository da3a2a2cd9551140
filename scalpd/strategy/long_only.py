"""The position rules the strategies share: one long position at a time per symbol, sized as a
share of equity, closed by its bracket or by a time stop. Spot cannot short."""

from __future__ import annotations

from collections.abc import Sequence

from scalpd.config.settings import SymbolsSettings
from scalpd.events import Bar, Bracket, OrderIntent, Side
from scalpd.execution.rules import floor_to_step
from scalpd.strategy.base import StrategyContext

NO_INTENTS: tuple[OrderIntent, ...] = ()


class LongOnly:
    def __init__(
        self, symbols: SymbolsSettings, fraction: float, bracket: Bracket, max_hold_ms: int
    ) -> None:
        self._symbols = symbols
        self._fraction = fraction
        self._bracket = bracket
        self._max_hold_ms = max_hold_ms

    def decide(
        self, bar: Bar, ctx: StrategyContext, enter: bool, reason: str
    ) -> Sequence[OrderIntent]:
        """Intents at the close of `bar`, given whether the strategy's entry signal fired."""
        symbol = bar.symbol
        if ctx.has_working_order(symbol):
            return NO_INTENTS
        pos = ctx.position(symbol)
        if pos is not None:
            # The time stop needs no signal, so it holds across a data gap too.
            if bar.close_time_ms - pos.opened_ms >= self._max_hold_ms:
                return (
                    OrderIntent(
                        symbol, Side.SELL, pos.qty, "time_stop", bar.close_time_ms, None, True
                    ),
                )
            return NO_INTENTS
        if not enter:
            return NO_INTENTS
        rules = self._symbols.rules(symbol)
        qty = floor_to_step(ctx.equity() * self._fraction / bar.close, rules.step_size)
        # Too small for the exchange: sending it would only earn a rejection.
        if qty < rules.min_qty or qty * bar.close < rules.min_notional_usdt:
            return NO_INTENTS
        return (OrderIntent(symbol, Side.BUY, qty, reason, bar.close_time_ms, self._bracket),)
