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


def fill_in(side: Side, qty: float, price: float, fee: float, asset: str, minute: int) -> Fill:
    reason = "entry" if side is Side.BUY else "time_stop"
    return Fill("c", SYM, side, qty, price, fee, asset, T + minute * M, "taker", "t", reason)


def steps(symbol: str) -> float:
    return 0.00001


def test_base_asset_fee_on_a_buy_reduces_the_position_and_leaves_dust() -> None:
    # Buy 0.12345 BTC at 40,000 (4,938.00 USDT), fee 10 bps in BTC: 0.00012345 BTC (4.938 USDT).
    pf = Portfolio(10_000.0, step_size=steps)
    pf.apply_fill(fill_in(Side.BUY, 0.12345, 40_000.0, 0.00012345, "BTC", 0))
    assert pf.cash == pytest.approx(10_000.0 - 4_938.0)  # the fee is not paid from cash
    assert pf.position_qty(SYM) == pytest.approx(0.12332655)
    assert pf.fees_paid == pytest.approx(4.938)
    # Sellable: 0.12332 (floored to the step); 0.00000655 BTC stays as dust.
    assert pf.sellable(SYM) == 0.12332 and pf.sellable("ETH/USDT") == 0.0
    # Sell at 41,000: 5,056.12 USDT, fee 10 bps in USDT: 5.05612.
    trade = pf.apply_fill(fill_in(Side.SELL, 0.12332, 41_000.0, 5.05612, "USDT", 5))
    assert trade is not None and pf.positions == {}
    assert pf.dust[SYM] == pytest.approx(0.00000655)
    assert pf.cash == pytest.approx(10_000.0 - 4_938.0 + 5_056.12 - 5.05612)
    # P&L: 5,056.12 - 0.12332 * 40,000 (4,932.80) - fees 4.938 - 5.05612 = 113.32588.
    assert trade.fees == pytest.approx(9.99412)
    assert trade.pnl == pytest.approx(113.32588)
    # The dust counts in equity at the last price.
    pf.last_price[SYM] = 42_000.0
    assert pf.equity() == pytest.approx(pf.cash + 0.00000655 * 42_000.0)


def test_dust_joins_the_next_position() -> None:
    pf = Portfolio(10_000.0, step_size=steps)
    pf.apply_fill(fill_in(Side.BUY, 0.12345, 40_000.0, 0.00012345, "BTC", 0))
    pf.apply_fill(fill_in(Side.SELL, 0.12332, 41_000.0, 5.05612, "USDT", 5))
    # Buy 0.1 at 40,000, fee 0.0001 BTC: held 0.0999 + dust 0.00000655 = 0.09990655.
    pf.apply_fill(fill_in(Side.BUY, 0.1, 40_000.0, 0.0001, "BTC", 6))
    assert pf.dust == {}
    assert pf.position_qty(SYM) == pytest.approx(0.09990655)
    # Its cost: 4,000 + the dust's 0.262 over 0.10000655 bought: 40,000 a unit.
    assert pf.positions[SYM].avg_price == pytest.approx(40_000.0)


def test_quote_fee_on_a_sell_comes_from_cash() -> None:
    pf = Portfolio(1_000.0, step_size=steps)
    pf.apply_fill(fill_in(Side.BUY, 2.0, 100.0, 0.002, "BTC", 0))  # 1.998 held
    trade = pf.apply_fill(fill_in(Side.SELL, 1.998, 101.0, 0.201798, "USDT", 3))
    # 1.998 * 101 = 201.798 in, less 0.201798; P&L 201.798 - 199.8 - 0.2 - 0.201798 = 1.596202.
    assert trade is not None
    assert pf.cash == pytest.approx(1_000.0 - 200.0 + 201.798 - 0.201798)
    assert trade.pnl == pytest.approx(1.596202)


def test_bnb_fee_is_paid_from_cash_at_its_usdt_value() -> None:
    pf = Portfolio(10_000.0, step_size=steps, bnb_price_usdt=500.0)
    # 0.0075 BNB at 500 = 3.75 USDT.
    pf.apply_fill(fill_in(Side.BUY, 0.1, 50_000.0, 0.0075, "BNB", 0))
    assert pf.position_qty(SYM) == 0.1
    assert pf.cash == pytest.approx(10_000.0 - 5_000.0 - 3.75)
    trade = pf.apply_fill(fill_in(Side.SELL, 0.1, 50_000.0, 0.0075, "BNB", 1))
    assert trade is not None and trade.fees == pytest.approx(7.5)
    assert pf.fees_paid == pytest.approx(7.5)
    assert pf.cash == pytest.approx(10_000.0 - 7.5)
