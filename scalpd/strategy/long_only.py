"""The position rules the strategies share: one long position at a time per symbol, sized by a
sizing rule (`sizing.py`), entered at market or with a limit buy, closed by its bracket or by a
time stop. Spot cannot short."""

from __future__ import annotations

from collections.abc import Sequence

from scalpd.config.settings import StrategySettings, SymbolsSettings
from scalpd.events import Bar, Bracket, Gap, OrderIntent, Side
from scalpd.execution.rules import floor_to_step, round_to_tick
from scalpd.strategy.base import StrategyContext
from scalpd.strategy.sizing import FixedFraction, Sizer, build_sizer

NO_INTENTS: tuple[OrderIntent, ...] = ()


class LongOnly:
    def __init__(
        self,
        symbols: SymbolsSettings,
        sizer: Sizer | float,
        bracket: Bracket,
        max_hold_ms: int,
        limit_offset_bps: float | None = None,
    ) -> None:
        """`sizer`: a sizing rule, or a fraction of equity; `limit_offset_bps`: None enters at
        market, a number enters with a limit buy that far below the close."""
        self._symbols = symbols
        self._sizer = FixedFraction(sizer) if isinstance(sizer, float | int) else sizer
        self._bracket = bracket
        self._max_hold_ms = max_hold_ms
        self._limit_offset_bps = limit_offset_bps

    @classmethod
    def from_settings(
        cls,
        settings: StrategySettings,
        symbols: SymbolsSettings,
        bracket: Bracket,
        max_hold_ms: int,
    ) -> LongOnly:
        offset = settings.limit_offset_bps if settings.entry_order == "limit" else None
        return cls(symbols, build_sizer(settings), bracket, max_hold_ms, offset)

    def on_gap(self, gap: Gap) -> None:
        self._sizer.on_gap(gap.symbol)

    def decide(
        self, bar: Bar, ctx: StrategyContext, enter: bool, reason: str
    ) -> Sequence[OrderIntent]:
        """Intents at the close of `bar`, given whether the strategy's entry signal fired."""
        symbol = bar.symbol
        self._sizer.on_bar(bar)
        if ctx.has_working_order(symbol):
            return NO_INTENTS
        rules = self._symbols.rules(symbol)
        pos = ctx.position(symbol)
        if pos is not None:
            # The time stop needs no signal, so it holds across a data gap too.
            if bar.close_time_ms - pos.opened_ms >= self._max_hold_ms:
                qty = floor_to_step(pos.qty, rules.step_size)
                return (
                    OrderIntent(symbol, Side.SELL, qty, "time_stop", bar.close_time_ms, None, True),
                )
            return NO_INTENTS
        if not enter:
            return NO_INTENTS
        notional = self._sizer.notional_usdt(symbol, ctx.equity())
        if notional is None:
            return NO_INTENTS
        if self._limit_offset_bps is None:
            price = None
            ref = bar.close
        else:
            price = round_to_tick(bar.close * (1 - self._limit_offset_bps / 1e4), rules.tick_size)
            ref = price
        qty = floor_to_step(notional / ref, rules.step_size)
        # Too small for the exchange: sending it would only earn a rejection.
        if qty < rules.min_qty or qty * ref < rules.min_notional_usdt:
            return NO_INTENTS
        intent = OrderIntent(symbol, Side.BUY, qty, reason, bar.close_time_ms, self._bracket)
        return (intent,) if price is None else (intent._replace(price=price),)
