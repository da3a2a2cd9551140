"""The three ports where replay, paper and live differ: Source, Broker, Clock.

Everything else (engine, strategy, risk, portfolio) is the same code in every mode and never
asks which mode it is in.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from scalpd.events import Bar, Fill, Gap, Order, OrderUpdate

BrokerReport = Fill | OrderUpdate


class Clock(Protocol):
    def now_ms(self) -> int: ...

    def observe(self, event_time_ms: int) -> None:
        """Told the time of each market event; a simulated clock follows it."""


class SimClock:
    """Replay's clock: time is the time of the last market event."""

    __slots__ = ("_now_ms",)

    def __init__(self, start_ms: int = 0) -> None:
        self._now_ms = start_ms

    def now_ms(self) -> int:
        return self._now_ms

    def observe(self, event_time_ms: int) -> None:
        self._now_ms = event_time_ms


class WallClock:
    """Live clock: the machine's UTC time."""

    __slots__ = ()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def observe(self, event_time_ms: int) -> None:
        return None


class Broker(Protocol):
    """Takes orders; reports their updates and fills.

    `submit` and `cancel` never block: a live broker records and queues them and its runner
    flushes the queue over the network. Reports are handed to the engine on each bar through
    `on_bar`, in the order they happened, so the engine applies them at the same point of the
    event stream in every mode.
    """

    def submit(self, order: Order) -> None: ...

    def cancel_bracket(self, symbol: str, time_ms: int) -> None:
        """Cancel the armed exits of `symbol` (before a reduce-only exit)."""

    def on_bar(self, bar: Bar) -> Sequence[BrokerReport]:
        """Reports due by the close of `bar` (a simulator fills against the bar here)."""


class BarSource(Protocol):
    """Live market data: closed bars and gaps, in time order per symbol."""

    def start(self) -> None: ...

    async def next(self) -> Bar | Gap: ...

    async def close(self) -> None: ...


class ReplaySegments(Protocol):
    """Replay market data in batches: (gap before the batch or None, bars in time order)."""

    def segments(self) -> Iterable[tuple[Gap | None, Sequence[Bar]]]: ...
