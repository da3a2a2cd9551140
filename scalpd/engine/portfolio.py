"""Positions, cash and equity, changed only by fills. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from scalpd.events import BAR_INTERVAL_MS, Fill, Side

# Quantities below this are dust left by float arithmetic, not a position.
_QTY_EPSILON = 1e-12


@dataclass(slots=True)
class Position:
    qty: float = 0.0
    avg_price: float = 0.0
    opened_ms: int = 0
    entry_fees: float = 0.0
    entry_reason: str = ""


class ClosedTrade(NamedTuple):
    """A round trip: the position opened by one or more buys and closed by sells."""

    symbol: str
    entry_time_ms: int
    exit_time_ms: int
    qty: float
    entry_price: float
    exit_price: float
    fees: float
    pnl: float  # net of fees, quote units
    exit_reason: str

    @property
    def bars_held(self) -> int:
        return (self.exit_time_ms - self.entry_time_ms) // BAR_INTERVAL_MS


class Portfolio:
    """Long-only spot book: cash in the quote asset (USDT), fees paid in it."""

    __slots__ = ("cash", "positions", "last_price", "fees_paid", "realized_pnl", "_exit_accum")

    def __init__(self, cash: float) -> None:
        self.cash = cash
        self.positions: dict[str, Position] = {}
        self.last_price: dict[str, float] = {}
        self.fees_paid = 0.0
        self.realized_pnl = 0.0
        # Per symbol: (qty sold, quote received, fees) of a position being closed in parts.
        self._exit_accum: dict[str, tuple[float, float, float]] = {}

    def position_qty(self, symbol: str) -> float:
        pos = self.positions.get(symbol)
        return pos.qty if pos is not None else 0.0

    def equity(self) -> float:
        value = self.cash
        for symbol, pos in self.positions.items():
            value += pos.qty * self.last_price.get(symbol, pos.avg_price)
        return value

    def apply_fill(self, fill: Fill) -> ClosedTrade | None:
        """Book a fill; returns the round trip it completes, if any."""
        notional = fill.qty * fill.price
        self.fees_paid += fill.fee
        if fill.side is Side.BUY:
            self.cash -= notional + fill.fee
            pos = self.positions.get(fill.symbol)
            if pos is None:
                self.positions[fill.symbol] = Position(
                    fill.qty, fill.price, fill.time_ms, fill.fee, fill.reason
                )
            else:
                total = pos.qty + fill.qty
                pos.avg_price = (pos.avg_price * pos.qty + notional) / total
                pos.qty = total
                pos.entry_fees += fill.fee
            return None
        pos = self.positions.get(fill.symbol)
        if pos is None or fill.qty > pos.qty + _QTY_EPSILON:
            raise ValueError(
                f"sell of {fill.qty} {fill.symbol} exceeds position "
                f"{pos.qty if pos else 0.0} (client_id={fill.client_id})"
            )
        self.cash += notional - fill.fee
        sold, received, fees = self._exit_accum.get(fill.symbol, (0.0, 0.0, 0.0))
        sold, received, fees = sold + fill.qty, received + notional, fees + fill.fee
        pos.qty -= fill.qty
        if pos.qty > _QTY_EPSILON:
            self._exit_accum[fill.symbol] = (sold, received, fees)
            return None
        del self.positions[fill.symbol]
        self._exit_accum.pop(fill.symbol, None)
        total_fees = pos.entry_fees + fees
        pnl = received - sold * pos.avg_price - total_fees
        self.realized_pnl += pnl
        return ClosedTrade(
            fill.symbol,
            pos.opened_ms,
            fill.time_ms,
            sold,
            pos.avg_price,
            received / sold,
            total_fees,
            pnl,
            fill.reason,
        )
