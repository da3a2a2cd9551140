"""Random entries: the null hypothesis a strategy's entries are tested against.

Entries at bar closes drawn at random in advance (seeded), as many per symbol as the strategy
under test made trades; everything else is the strategy's own position rule (`LongOnly`: the
same sizing, bracket and time stop), run through the same engine and simulated broker with the
same costs. If the strategy's results are no better than most of these runs, its entry signal
adds nothing its exits and costs do not already explain.

A drawn time that falls while the symbol still holds a position (or has an order working)
waits for the first later bar at which it is flat, so the random runs make as many trades as
the strategy did whenever the data leaves room for them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np

from scalpd.events import BAR_INTERVAL_MS, Bar, Fill, Gap, OrderIntent, Side, Trade
from scalpd.strategy.base import StrategyContext
from scalpd.strategy.long_only import LongOnly

REASON = "random_entry"


def draw_entries(rng: np.random.Generator, candidates_ms: np.ndarray, count: int) -> np.ndarray:
    """`count` distinct bar close times drawn uniformly from `candidates_ms`, sorted.

    Fewer when there are fewer candidates than `count`."""
    count = min(int(count), len(candidates_ms))
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    picked = rng.choice(len(candidates_ms), size=count, replace=False)
    return np.sort(np.asarray(candidates_ms, dtype=np.int64)[picked])


def fresh_position_rule(rule: LongOnly, symbols: Sequence[str]) -> LongOnly:
    """A copy of a strategy's position rule with no memory of the bars it has seen: its sizer's
    per-symbol state is cleared the way a data gap clears it."""
    fresh = copy.deepcopy(rule)
    for symbol in symbols:
        fresh.on_gap(Gap(symbol, 0, 0))
    return fresh


class _Draws:
    __slots__ = ("times", "next", "next_ms", "due")

    def __init__(self, times: Sequence[int]) -> None:
        self.times = [int(t) for t in times]
        self.next = 0  # index of the next drawn time not yet reached
        self.next_ms = self.times[0] if self.times else _NEVER
        self.due = 0  # drawn times reached and not yet used


_NEVER = 2**63 - 1


class RandomEntries:
    name = "random_entries"

    def __init__(self, position: LongOnly, entries_ms: Mapping[str, Sequence[int]]) -> None:
        """`position`: the strategy under test's position rule (see `fresh_position_rule`);
        `entries_ms`: per symbol, the bar close times to enter at, sorted."""
        self._position = position
        self._draws = {s: _Draws(times) for s, times in entries_ms.items()}

    def on_bar(self, bar: Bar, ctx: StrategyContext) -> Sequence[OrderIntent]:
        st = self._draws.get(bar.symbol)
        if st is None:
            return self._position.decide(bar, ctx, False, REASON)
        close_ms = bar.open_time_ms + BAR_INTERVAL_MS
        if close_ms >= st.next_ms:
            times, i = st.times, st.next
            while i < len(times) and times[i] <= close_ms:
                i += 1
                st.due += 1
            st.next = i
            st.next_ms = times[i] if i < len(times) else _NEVER
        if not st.due:
            return self._position.decide(bar, ctx, False, REASON)
        intents = self._position.decide(bar, ctx, True, REASON)
        # Only an entry uses a drawn time (in a position, the rule may send its time stop).
        if intents and intents[0].side is Side.BUY:
            st.due -= 1
        return intents

    def on_gap(self, gap: Gap) -> None:
        self._position.on_gap(gap)

    def on_fill(self, fill: Fill) -> None:
        return None

    def on_trade(self, trade: Trade) -> None:
        return None
