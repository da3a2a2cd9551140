"""Exit brackets: the take-profit and stop-loss legs armed after an entry fills."""

from __future__ import annotations

from scalpd.config.settings import MarketRules
from scalpd.events import Order, OrderType, Side
from scalpd.execution.rules import round_to_tick


def bracket_legs(
    entry: Order, fill_price: float, fill_time_ms: int, rules: MarketRules, qty: float
) -> tuple[Order, Order]:
    """The take-profit (limit) and stop-loss (stop) sells of `qty` that protect a filled long
    entry; `qty` is what the account can sell (`sellable_qty`), not what was bought.

    Shared by the simulated and the live broker, so both arm the same prices and sizes.
    """
    assert entry.bracket is not None
    tp = round_to_tick(fill_price * (1 + entry.bracket.take_profit_bps / 1e4), rules.tick_size)
    sl = round_to_tick(fill_price * (1 - entry.bracket.stop_loss_bps / 1e4), rules.tick_size)
    common = dict(symbol=entry.symbol, side=Side.SELL, qty=qty, parent_id=entry.client_id)
    take_profit = Order(
        client_id=entry.client_id + "tp",
        type=OrderType.LIMIT,
        price=tp,
        time_ms=fill_time_ms,
        reason="take_profit",
        reduce_only=True,
        **common,
    )
    stop_loss = Order(
        client_id=entry.client_id + "sl",
        type=OrderType.STOP,
        price=sl,
        time_ms=fill_time_ms,
        reason="stop_loss",
        reduce_only=True,
        **common,
    )
    return take_profit, stop_loss
