"""The order state machine: one for every broker (simulated, paper, live), kept by the engine.

    new ──> open ──> partially_filled ──> filled
     │        │              │
     └────────┴──────────────┴──> cancelled | rejected | expired

An order is `new` once journaled (before it is sent); the broker's reports move it forward
only. A fill moves it to partially_filled or filled. A report that would move an order back
(open after partially_filled), out of an end state, or a fill for an ended order, is a broker
or exchange fault: the engine logs and counts it and keeps the order's state.
"""

from __future__ import annotations

from scalpd.events import TERMINAL_STATUSES, OrderStatus

_RANK = {
    OrderStatus.NEW: 0,
    OrderStatus.OPEN: 1,
    OrderStatus.PARTIALLY_FILLED: 2,
    OrderStatus.FILLED: 3,
    OrderStatus.CANCELLED: 3,
    OrderStatus.REJECTED: 3,
    OrderStatus.EXPIRED: 3,
}


def can_move(current: OrderStatus, new: OrderStatus) -> bool:
    """Whether a report may move an order from `current` to `new` (a repeat is allowed: an
    exchange may report the same state twice)."""
    if current in TERMINAL_STATUSES:
        return False
    if new is OrderStatus.REJECTED and current is not OrderStatus.NEW:
        # Refused after the exchange accepted it: only cancel or expire can end it now.
        return False
    return _RANK[new] >= _RANK[current]
