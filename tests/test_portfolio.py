"""The portfolio: cash, positions and round trips from fills, with hand-computed numbers."""

from __future__ import annotations

import pytest

from scalpd.engine.portfolio import ClosedTrade, Portfolio
from scalpd.events import Fill, Side

SYM = "BTC/USDT"
M = 60_000
T = 1_709_251_200_000


def fill(side: Side, qty: float, price: float, fee: float, minute: int, reason: str) -> Fill:
    return Fill("c", SYM, side, qty, price, fee, "USDT", T + minute * M, "taker", "t", reason)


def test_round_trip() -> None:
    pf = Portfolio(10_000.0)
    assert pf.apply_fill(fill(Side.BUY, 0.1, 50_000.0, 5.0, 1, "ema_cross_up")) is None
    assert pf.cash == pytest.approx(4_995.0)
    assert pf.position_qty(SYM) == pytest.approx(0.1)
    pos = pf.positions[SYM]
    assert (pos.avg_price, pos.opened_ms, pos.entry_fees, pos.entry_reason) == (
        50_000.0,
        T + M,
        5.0,
        "ema_cross_up",
    )
    trade = pf.apply_fill(fill(Side.SELL, 0.1, 51_000.0, 1.02, 7, "take_profit"))
    # Received 5,100.00; paid 5,000.00; fees 5.00 + 1.02.
    assert trade == ClosedTrade(
        SYM,
        T + M,
        T + 7 * M,
        0.1,
        50_000.0,
        51_000.0,
        pytest.approx(6.02),
        pytest.approx(93.98),
        "take_profit",
    )
    assert trade.bars_held == 6
    assert pf.cash == pytest.approx(10_093.98)
    assert pf.positions == {}
    assert pf.fees_paid == pytest.approx(6.02)
    assert pf.realized_pnl == pytest.approx(93.98)
    assert pf.equity() == pytest.approx(10_093.98)


def test_losing_round_trip() -> None:
    pf = Portfolio(1_000.0)
    pf.apply_fill(fill(Side.BUY, 2.0, 100.0, 0.2, 0, "entry"))
    trade = pf.apply_fill(fill(Side.SELL, 2.0, 99.0, 0.198, 3, "stop_loss"))
    assert trade is not None
    assert trade.pnl == pytest.approx(-2.0 - 0.398)
    assert pf.cash == pytest.approx(1_000.0 - 2.398)


def test_partial_exits_make_one_trade() -> None:
    pf = Portfolio(1_000.0)
    pf.apply_fill(fill(Side.BUY, 1.0, 100.0, 0.1, 0, "entry"))
    assert pf.apply_fill(fill(Side.SELL, 0.4, 110.0, 0.044, 2, "take_profit")) is None
    assert pf.position_qty(SYM) == pytest.approx(0.6)
    assert pf.cash == pytest.approx(1_000.0 - 100.1 + 44.0 - 0.044)
    trade = pf.apply_fill(fill(Side.SELL, 0.6, 90.0, 0.054, 5, "stop_loss"))
    assert trade is not None
    assert trade.qty == pytest.approx(1.0)
    assert trade.entry_price == 100.0
    assert trade.exit_price == pytest.approx(98.0)  # (44 + 54) / 1.0
    assert trade.fees == pytest.approx(0.198)
    assert trade.pnl == pytest.approx(98.0 - 100.0 - 0.198)
    assert (trade.entry_time_ms, trade.exit_time_ms, trade.exit_reason) == (
        T,
        T + 5 * M,
        "stop_loss",
    )
    assert pf.positions == {}
    assert pf.cash == pytest.approx(1_000.0 + trade.pnl)
    # A new position after it starts from scratch.
    pf.apply_fill(fill(Side.BUY, 1.0, 95.0, 0.0, 6, "entry"))
    trade2 = pf.apply_fill(fill(Side.SELL, 1.0, 96.0, 0.0, 8, "time_stop"))
    assert trade2 is not None and (trade2.qty, trade2.exit_price, trade2.pnl) == (1.0, 96.0, 1.0)


def test_buys_average_the_entry_price() -> None:
    pf = Portfolio(1_000.0)
    pf.apply_fill(fill(Side.BUY, 1.0, 100.0, 0.1, 0, "entry"))
    pf.apply_fill(fill(Side.BUY, 3.0, 120.0, 0.36, 1, "entry"))
    pos = pf.positions[SYM]
    assert pos.qty == pytest.approx(4.0)
    assert pos.avg_price == pytest.approx(115.0)
    assert pos.entry_fees == pytest.approx(0.46)
    assert pos.opened_ms == T  # the first buy opened it
    trade = pf.apply_fill(fill(Side.SELL, 4.0, 115.0, 0.46, 3, "time_stop"))
    assert trade is not None and trade.pnl == pytest.approx(-0.92)


def test_equity_marks_to_last_price_or_entry() -> None:
    pf = Portfolio(1_000.0)
    pf.apply_fill(fill(Side.BUY, 2.0, 100.0, 0.0, 0, "entry"))
    assert pf.equity() == pytest.approx(1_000.0)  # no price yet: at the entry price
    pf.last_price[SYM] = 90.0
    assert pf.equity() == pytest.approx(980.0)


def test_dust_closes_the_position() -> None:
    pf = Portfolio(1_000.0)
    pf.apply_fill(fill(Side.BUY, 0.3, 100.0, 0.0, 0, "entry"))
    pf.apply_fill(fill(Side.SELL, 0.1, 100.0, 0.0, 1, "x"))
    trade = pf.apply_fill(fill(Side.SELL, 0.2, 100.0, 0.0, 2, "x"))  # 0.3 - 0.1 - 0.2 != 0
    assert trade is not None
    assert pf.positions == {}


@pytest.mark.parametrize("held", [None, 0.1])
def test_selling_more_than_held_raises(held: float | None) -> None:
    pf = Portfolio(1_000.0)
    if held:
        pf.apply_fill(fill(Side.BUY, held, 100.0, 0.0, 0, "entry"))
    with pytest.raises(ValueError, match="exceeds position"):
        pf.apply_fill(fill(Side.SELL, 0.2, 100.0, 0.0, 1, "x"))
    assert pf.position_qty(SYM) == (held or 0.0)
