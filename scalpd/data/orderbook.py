"""A local order book kept from Binance diff-depth events and REST snapshots.

Binance's procedure (spot API docs, "How to manage a local order book correctly"): buffer the
diffs, take a snapshot, drop buffered diffs with `u <= lastUpdateId`; the first diff applied
must bridge the snapshot (`U <= lastUpdateId + 1 <= u`) and each later one must continue the
previous (`U == previous u + 1`). Anything else is a lost diff: the book cannot be repaired
in place, so it empties itself, sets `needs_resync` and buffers the diffs again until the
owner fetches a new snapshot. No I/O here: the owner does the fetching.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from enum import StrEnum
from typing import NamedTuple

from scalpd.data.binance_ws import DepthSnapshot, DepthUpdate, Level
from scalpd.events import BookTop

# Diffs buffered while waiting for a snapshot: 100 ms diffs for ~8 minutes. A snapshot slower
# than that cannot be bridged anyway, so older diffs are worthless.
MAX_BUFFERED_UPDATES = 5000


class Outcome(StrEnum):
    BUFFERED = "buffered"  # no snapshot yet: kept for the next `apply_snapshot`
    APPLIED = "applied"
    STALE = "stale"  # already covered by the book (u <= its update id): ignored
    GAP = "gap"  # diffs were lost: book emptied, `needs_resync` set, this diff buffered


class BookLevels(NamedTuple):
    """The best `n` levels of each side, best first."""

    symbol: str
    time_ms: int  # event time of the last diff applied, -1 if none since the snapshot
    update_id: int
    bids: list[Level]
    asks: list[Level]


class _Side:
    """Price -> quantity, plus the prices sorted best first.

    Keys are stored negated for bids so that both sides sort ascending with the best at
    index 0: reading the top n levels is a slice, and a list insert/delete is one memmove,
    cheaper than a tree in Python for books of a few thousand levels.
    """

    __slots__ = ("qty", "keys", "sign")

    def __init__(self, is_bid: bool) -> None:
        self.qty: dict[float, float] = {}
        self.keys: list[float] = []
        self.sign = -1.0 if is_bid else 1.0

    def clear(self) -> None:
        self.qty.clear()
        self.keys.clear()

    def set(self, price: float, qty: float) -> None:
        key = self.sign * price
        if qty == 0.0:
            # Removing a level the book never had is normal (levels beyond the snapshot).
            if self.qty.pop(key, None) is not None:
                del self.keys[bisect_left(self.keys, key)]
        else:
            if key not in self.qty:
                self.keys.insert(bisect_left(self.keys, key), key)
            self.qty[key] = qty

    def top(self, n: int) -> list[Level]:
        return [(self.sign * key, self.qty[key]) for key in self.keys[:n]]

    def best(self) -> Level | None:
        if not self.keys:
            return None
        key = self.keys[0]
        return self.sign * key, self.qty[key]


class OrderBook:
    """One symbol's book. Feed every diff to `on_depth`, and a snapshot to `apply_snapshot`
    whenever `needs_resync` is true (at start and after a gap)."""

    def __init__(self, symbol: str, max_buffered: int = MAX_BUFFERED_UPDATES) -> None:
        self.symbol = symbol
        self._bids = _Side(is_bid=True)
        self._asks = _Side(is_bid=False)
        self._buffer: deque[DepthUpdate] = deque(maxlen=max_buffered)
        self.update_id = -1  # the book is as of this update (Binance's lastUpdateId / u)
        self.time_ms = -1
        self.needs_resync = True
        self._bridged = False  # has a diff been applied since the snapshot?
        self.gaps = 0
        self.stale = 0

    def reset(self) -> None:
        """Forget the book and the buffered diffs: for a new connection, whose diffs do not
        continue the old ones. Counters are kept."""
        self._bids.clear()
        self._asks.clear()
        self._buffer.clear()
        self.update_id = -1
        self.time_ms = -1
        self.needs_resync = True
        self._bridged = False

    def on_depth(self, update: DepthUpdate) -> Outcome:
        if self.needs_resync:
            self._buffer.append(update)
            return Outcome.BUFFERED
        return self._apply(update)

    def apply_snapshot(self, snapshot: DepthSnapshot) -> bool:
        """Start the book from `snapshot` and the buffered diffs after it. False (book still
        `needs_resync`) when the buffered diffs do not continue the snapshot: it is older than
        the first of them, or they have a gap of their own. Fetch another snapshot then."""
        last_id = snapshot.last_update_id
        buffered = [u for u in self._buffer if u.final_update_id > last_id]
        if buffered and buffered[0].first_update_id > last_id + 1:
            return False
        self._bids.clear()
        self._asks.clear()
        for price, qty in snapshot.bids:
            self._bids.set(price, qty)
        for price, qty in snapshot.asks:
            self._asks.set(price, qty)
        self._buffer.clear()
        self.update_id = last_id
        self.time_ms = -1
        self.needs_resync = False
        self._bridged = False
        for i, update in enumerate(buffered):
            if self._apply(update) is Outcome.GAP:
                # A gap inside the buffer: keep what follows it for the next snapshot.
                self._buffer.extend(buffered[i + 1 :])
                break
        return not self.needs_resync

    def _apply(self, update: DepthUpdate) -> Outcome:
        if update.final_update_id <= self.update_id:
            self.stale += 1
            return Outcome.STALE
        expected = self.update_id + 1
        # The first diff after a snapshot may start before it (it was built across the
        # snapshot); every later one must start exactly where the previous ended.
        if update.first_update_id > expected or (
            self._bridged and update.first_update_id != expected
        ):
            self._lose_sync(update)
            return Outcome.GAP
        for price, qty in update.bids:
            self._bids.set(price, qty)
        for price, qty in update.asks:
            self._asks.set(price, qty)
        self.update_id = update.final_update_id
        self.time_ms = update.time_ms
        self._bridged = True
        return Outcome.APPLIED

    def _lose_sync(self, update: DepthUpdate) -> None:
        self.gaps += 1
        self.reset()
        # The diff that showed the gap may be the one that bridges the next snapshot.
        self._buffer.append(update)

    def best_bid(self) -> Level | None:
        return self._bids.best()

    def best_ask(self) -> Level | None:
        return self._asks.best()

    def top(self) -> BookTop | None:
        """The best bid and ask as a BookTop, or None while either side is empty."""
        bid, ask = self._bids.best(), self._asks.best()
        if bid is None or ask is None:
            return None
        return BookTop(self.symbol, self.time_ms, bid[0], bid[1], ask[0], ask[1])

    def levels(self, n: int = 5) -> BookLevels:
        return BookLevels(
            self.symbol, self.time_ms, self.update_id, self._bids.top(n), self._asks.top(n)
        )

    def depth_imbalance(self, n: int = 5) -> float:
        """(bid qty - ask qty) / (bid qty + ask qty) over the best n levels of each side, in
        [-1, 1]; positive when buyers queue more. NaN for an empty book."""
        bid_qty = sum(qty for _, qty in self._bids.top(n))
        ask_qty = sum(qty for _, qty in self._asks.top(n))
        total = bid_qty + ask_qty
        return (bid_qty - ask_qty) / total if total > 0.0 else math.nan

    def snapshot(self) -> DepthSnapshot:
        """The whole book as a REST-style snapshot (for recorders, and to resync a copy)."""
        return DepthSnapshot(
            self.update_id,
            self._bids.top(len(self._bids.keys)),
            self._asks.top(len(self._asks.keys)),
        )

    def __len__(self) -> int:
        return len(self._bids.keys) + len(self._asks.keys)
