"""Rule baseline: go long when the fast EMA of closes crosses above the slow one.

Exits: the bracket (take-profit and stop-loss, armed at the fill price) or, failing both, a
market exit once the position has been held `max_hold_bars`. Long only: spot cannot short.
"""

from __future__ import annotations

from collections.abc import Sequence

from scalpd.config.settings import StrategySettings, SymbolsSettings
from scalpd.events import BAR_INTERVAL_MS, Bar, Bracket, Fill, Gap, OrderIntent, Trade
from scalpd.strategy.base import StrategyContext
from scalpd.strategy.long_only import LongOnly


class _EmaState:
    __slots__ = ("fast", "slow", "count", "above")

    def __init__(self, close: float) -> None:
        self.fast = close
        self.slow = close
        self.count = 1
        self.above = False


class EmaCross:
    name = "ema_cross"

    def __init__(self, settings: StrategySettings, symbols: SymbolsSettings) -> None:
        self._alpha_fast = 2.0 / (settings.fast_period_bars + 1)
        self._alpha_slow = 2.0 / (settings.slow_period_bars + 1)
        self._warmup_bars = settings.slow_period_bars
        self._position = LongOnly.from_settings(
            settings,
            symbols,
            Bracket(settings.take_profit_bps, settings.stop_loss_bps),
            settings.max_hold_bars * BAR_INTERVAL_MS,
        )
        self._state: dict[str, _EmaState] = {}

    def on_bar(self, bar: Bar, ctx: StrategyContext) -> Sequence[OrderIntent]:
        crossed_up = self._update_emas(bar.symbol, bar.close)
        return self._position.decide(bar, ctx, crossed_up, "ema_cross_up")

    def _update_emas(self, symbol: str, close: float) -> bool:
        """Advance the EMAs; True when the fast one has just crossed above, after warm-up."""
        st = self._state.get(symbol)
        if st is None:
            self._state[symbol] = _EmaState(close)
            return False
        st.fast += self._alpha_fast * (close - st.fast)
        st.slow += self._alpha_slow * (close - st.slow)
        st.count += 1
        was_above = st.above
        st.above = st.fast > st.slow
        return st.above and not was_above and st.count > self._warmup_bars

    def on_gap(self, gap: Gap) -> None:
        # An EMA across missing bars would treat distant bars as neighbours: start again.
        self._state.pop(gap.symbol, None)
        self._position.on_gap(gap)

    def on_fill(self, fill: Fill) -> None:
        return None

    def on_trade(self, trade: Trade) -> None:
        return None
