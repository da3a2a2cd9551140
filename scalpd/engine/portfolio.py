"""Positions, cash and equity, changed only by fills. Pure: no I/O.

Fees are booked where the exchange takes them (scalpd/execution/fees.py):
- in the base asset (a buy without BNB): the position is the quantity bought less the fee;
- in USDT (a sell): from cash;
- in BNB: its USDT value at `bnb_price_usdt`, from cash. A simplification: the BNB the account
  holds for fees is modelled as cash, so BNB's own price moves are not.
`fees_paid` and every trade's fees and P&L are in USDT value.

After an exit, a remainder below one lot step cannot be sold: the position is closed (so a new
entry is possible) and the remainder stays as dust, a base balance counted in equity at the
symbol's last price. As on the exchange, the next entry's quantity adds to that balance, so the
dust joins the next position (at its cost) and its exit sells it: dust stays below one step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from scalpd.events import BAR_INTERVAL_MS, Fill, Side
from scalpd.execution.fees import BNB, QUOTE_ASSET, base_asset
from scalpd.execution.rules import floor_to_step

# Quantities below this are float noise, not a position.
_QTY_EPSILON = 1e-12


@dataclass(slots=True)
class Position:
    qty: float = 0.0  # held: bought less any base-asset fee, less what was sold
    avg_price: float = 0.0  # USDT paid per unit bought
    opened_ms: int = 0
    entry_fees: float = 0.0  # USDT value
    entry_reason: str = ""
    bought_qty: float = 0.0  # what the average price is over


class ClosedTrade(NamedTuple):
    """A round trip: the position opened by one or more buys and closed by sells."""

    symbol: str
    entry_time_ms: int
    exit_time_ms: int
    qty: float
    entry_price: float
    exit_price: float
    fees: float  # USDT value
    pnl: float  # net of fees, quote units
    exit_reason: str

    @property
    def bars_held(self) -> int:
        return (self.exit_time_ms - self.entry_time_ms) // BAR_INTERVAL_MS


class Portfolio:
    """Long-only spot book in the quote asset (USDT).

    `step_size(symbol)`: the symbol's lot step (what is below it after an exit is dust); None:
    no lot step, every remainder above float noise stays a position.
    """

    __slots__ = (
        "cash",
        "positions",
        "last_price",
        "fees_paid",
        "realized_pnl",
        "dust",
        "_dust_cost",
        "_exit_accum",
        "_step_size",
        "_bnb_price_usdt",
    )

    def __init__(
        self,
        cash: float,
        *,
        step_size: Callable[[str], float] | None = None,
        bnb_price_usdt: float = 500.0,
    ) -> None:
        self.cash = cash
        self.positions: dict[str, Position] = {}
        self.last_price: dict[str, float] = {}
        self.fees_paid = 0.0
        self.realized_pnl = 0.0
        self.dust: dict[str, float] = {}  # base units left below a lot step by exits
        self._dust_cost: dict[str, float] = {}  # USDT paid for them (not realised yet)
        # Per symbol: (qty sold, quote received, fees) of a position being closed in parts.
        self._exit_accum: dict[str, tuple[float, float, float]] = {}
        self._step_size = step_size
        self._bnb_price_usdt = bnb_price_usdt

    def position_qty(self, symbol: str) -> float:
        pos = self.positions.get(symbol)
        return pos.qty if pos is not None else 0.0

    def sellable(self, symbol: str) -> float:
        """The position's quantity an exit may sell: whole lot steps of it (all of it when the
        step is not known)."""
        pos = self.positions.get(symbol)
        if pos is None:
            return 0.0
        step = self._step_size(symbol) if self._step_size is not None else None
        return pos.qty if step is None else floor_to_step(max(pos.qty, 0.0), step)

    def equity(self) -> float:
        value = self.cash
        for symbol, pos in self.positions.items():
            value += pos.qty * self.last_price.get(symbol, pos.avg_price)
        for symbol, qty in self.dust.items():
            value += qty * self.last_price.get(symbol, 0.0)
        return value

    def _fee_from_cash(self, fill: Fill) -> float:
        """USDT value of a fee not taken from the quantity bought; paid from cash."""
        if fill.fee_asset == QUOTE_ASSET:
            return fill.fee
        if fill.fee_asset == base_asset(fill.symbol):
            return fill.fee * fill.price
        if fill.fee_asset == BNB:
            return fill.fee * self._bnb_price_usdt
        raise ValueError(f"fee in {fill.fee_asset} on {fill.symbol}: no price to value it")

    def apply_fill(self, fill: Fill) -> ClosedTrade | None:
        """Book a fill; returns the round trip it completes, if any."""
        notional = fill.qty * fill.price
        symbol = fill.symbol
        if fill.side is Side.BUY:
            self.cash -= notional
            if fill.fee_asset == base_asset(symbol):
                held = fill.qty - fill.fee
                fee_usdt = fill.fee * fill.price
            else:
                held = fill.qty
                fee_usdt = self._fee_from_cash(fill)
                self.cash -= fee_usdt
            self.fees_paid += fee_usdt
            pos = self.positions.get(symbol)
            if pos is None:
                dust = self.dust.pop(symbol, 0.0)
                cost = notional + self._dust_cost.pop(symbol, 0.0)
                self.positions[symbol] = Position(
                    held + dust,
                    cost / (fill.qty + dust),
                    fill.time_ms,
                    fee_usdt,
                    fill.reason,
                    fill.qty + dust,
                )
            else:
                bought = pos.bought_qty + fill.qty
                pos.avg_price = (pos.avg_price * pos.bought_qty + notional) / bought
                pos.bought_qty = bought
                pos.qty += held
                pos.entry_fees += fee_usdt
            return None
        pos = self.positions.get(symbol)
        if pos is None or fill.qty > pos.qty + _QTY_EPSILON:
            raise ValueError(
                f"sell of {fill.qty} {symbol} exceeds position "
                f"{pos.qty if pos else 0.0} (client_id={fill.client_id})"
            )
        fee_usdt = self._fee_from_cash(fill)
        self.cash += notional - fee_usdt
        self.fees_paid += fee_usdt
        sold, received, fees = self._exit_accum.get(symbol, (0.0, 0.0, 0.0))
        sold, received, fees = sold + fill.qty, received + notional, fees + fee_usdt
        pos.qty -= fill.qty
        step = self._step_size(symbol) if self._step_size is not None else None
        left = pos.qty if step is None else floor_to_step(max(pos.qty, 0.0), step)
        if left > _QTY_EPSILON:
            self._exit_accum[symbol] = (sold, received, fees)
            return None
        del self.positions[symbol]
        self._exit_accum.pop(symbol, None)
        if pos.qty > _QTY_EPSILON:
            self.dust[symbol] = pos.qty
            self._dust_cost[symbol] = pos.qty * pos.avg_price
        total_fees = pos.entry_fees + fees
        # The dust keeps its cost: only what was sold (and the fees) is realised.
        pnl = received - sold * pos.avg_price - total_fees
        self.realized_pnl += pnl
        return ClosedTrade(
            symbol,
            pos.opened_ms,
            fill.time_ms,
            sold,
            pos.avg_price,
            received / sold,
            total_fees,
            pnl,
            fill.reason,
        )
