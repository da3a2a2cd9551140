"""The strategy interface: bars in, order intents out. No I/O, no knowledge of the mode."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from scalpd.engine.portfolio import Position
from scalpd.events import Bar, Fill, Gap, OrderIntent, Trade


class StrategyContext(Protocol):
    """What a strategy may read of the account; the engine provides it."""

    def position(self, symbol: str) -> Position | None: ...

    def has_working_order(self, symbol: str) -> bool:
        """An entry or exit sent but not yet filled, rejected or cancelled (brackets excluded)."""

    def equity(self) -> float: ...


class Strategy(Protocol):
    """A strategy driven by a model may also expose `last_probability: dict[str, float]`,
    symbol -> the model's output at the symbol's latest bar (absent when it gave none there):
    the engine reads it after each bar as the confidence the risk manager judges (minimum
    confidence for an entry, confidence collapse). Rule strategies have none."""

    name: str

    def on_bar(self, bar: Bar, ctx: StrategyContext) -> Sequence[OrderIntent]:
        """Called at each closed bar, after the fills it brought are booked."""

    def on_gap(self, gap: Gap) -> None:
        """Bars are missing: state that assumes consecutive bars must restart."""

    def on_fill(self, fill: Fill) -> None: ...

    def on_trade(self, trade: Trade) -> None:
        """A trade print, where the feed has them (live); strategies on bars ignore it."""


class Warmable(Protocol):
    """A strategy whose first step after a pause is costly (a model's, caches gone cold) may
    let the daemon warm it before a candle is due (scalpd/live/pacing.py)."""

    def warm(self, symbol: str) -> None:
        """A throwaway step of `symbol`'s costly part: nothing it decides with changes."""
