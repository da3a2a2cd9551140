"""Pre-trade limits of the risk manager, each with a hand-computed boundary: a value exactly at a
limit passes, the smallest step beyond it fails. Exits (reduce-only) pass every limit."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from scalpd.config.settings import RiskSettings
from scalpd.engine.portfolio import Portfolio
from scalpd.events import Bar, Fill, Order, OrderIntent, OrderType, Side
from scalpd.risk import Decision, RiskGate, RiskManager, holdings_usdt

T = 1_709_251_200_000  # 2024-03-01 00:00 UTC
M = 60_000
A, B, C = "AAA/USDT", "BBB/USDT", "CCC/USDT"


def manager(**kw: object) -> RiskManager:
    return RiskManager(RiskSettings(**kw))


def entry(qty: float, symbol: str = A, minute: int = 0) -> OrderIntent:
    return OrderIntent(symbol, Side.BUY, qty, "test_entry", T + minute * M)


def exit_(qty: float, symbol: str = A, minute: int = 0) -> OrderIntent:
    return OrderIntent(symbol, Side.SELL, qty, "test_exit", T + minute * M, reduce_only=True)


def bar(symbol: str, minute: int, close: float) -> Bar:
    return Bar(symbol, T + minute * M, close, close, close, close, 1.0, close, 1, 0.5)


def test_max_order_notional_boundary() -> None:
    risk = manager(max_order_notional_usdt=1000.0)
    assert risk.check(entry(5.0), 200.0, 0.0) == Decision(True, "ok")  # 5 x 200 = 1000.00
    d = risk.check(entry(5.0), 200.0001, 0.0)  # 1000.0005
    assert not d.allowed
    assert d.reason == "order notional 1000.00 > max_order_notional_usdt 1000"


def test_max_position_notional_counts_holdings_and_entries_in_flight() -> None:
    risk = manager(max_position_notional_usdt=1000.0)
    # Held 2 x 200 = 400; buying 3 x 200 = 600 makes exactly 1000.
    assert risk.check(entry(3.0), 200.0, 2.0).allowed
    d = risk.check(entry(3.01), 200.0, 2.0)  # 400 + 602 = 1002
    assert d.reason == f"{A} notional 1002.00 > max_position_notional_usdt 1000"
    # The book (held + in flight) wins over the position alone: 500 already committed.
    assert risk.check(entry(2.5), 200.0, 0.0, book={A: 500.0}).allowed
    assert not risk.check(entry(2.51), 200.0, 0.0, book={A: 500.0}).allowed


def test_max_total_notional_boundary() -> None:
    risk = manager(max_total_notional_usdt=1500.0)
    book = {A: 700.0, B: 300.0}
    assert risk.check(entry(5.0, C), 100.0, 0.0, book=book).allowed  # 700 + 300 + 500
    d = risk.check(entry(5.01, C), 100.0, 0.0, book=book)
    assert d.reason == "total notional 1501.00 > max_total_notional_usdt 1500"


def test_max_open_positions() -> None:
    risk = manager(max_open_positions=2)
    book = {A: 100.0, B: 100.0}
    d = risk.check(entry(1.0, C), 100.0, 0.0, book=book)
    assert d.reason == "2 positions open or entering = max_open_positions 2"
    # Adding to a symbol already held opens no new position.
    assert risk.check(entry(1.0, A), 100.0, 1.0, book=book).allowed
    # A symbol with nothing held or in flight does not count.
    assert risk.check(entry(1.0, C), 100.0, 0.0, book={A: 100.0, B: 0.0}).allowed


def test_min_confidence_boundary() -> None:
    risk = manager(min_confidence=0.55)
    assert risk.check(entry(1.0), 100.0, 0.0, confidence=0.55).allowed
    d = risk.check(entry(1.0), 100.0, 0.0, confidence=0.5499)
    assert d.reason == "model confidence 0.5499 < min_confidence 0.55"
    assert not risk.check(entry(1.0), 100.0, 0.0, confidence=math.nan).allowed
    assert risk.check(entry(1.0), 100.0, 0.0, confidence=None).allowed  # no model: unchecked


def test_exits_pass_every_limit_but_must_reduce() -> None:
    risk = manager(
        max_order_notional_usdt=1.0, max_position_notional_usdt=1.0, max_total_notional_usdt=1.0
    )
    assert risk.check(exit_(3.0), 1e6, 3.0, book={A: 3e6, B: 9e9}, confidence=0.0).allowed
    assert risk.check(exit_(3.1), 1e6, 3.0).reason == (
        "reduce-only intent would not reduce the position"
    )
    buy_exit = OrderIntent(A, Side.BUY, 1.0, "x", T, reduce_only=True)
    assert not risk.check(buy_exit, 100.0, 3.0).allowed


@pytest.mark.parametrize(("qty", "price"), [(0.0, 100.0), (math.nan, 100.0), (1.0, 0.0)])
def test_insane_intents_are_rejected(qty: float, price: float) -> None:
    assert not manager().check(entry(qty), price, 0.0).allowed


def test_the_minimal_gate_still_works() -> None:
    gate = RiskGate(RiskSettings(max_order_notional_usdt=1000.0, max_position_notional_usdt=1500.0))
    assert gate.check(entry(5.0), 200.0, 0.0).allowed
    assert not gate.check(entry(5.01), 200.0, 0.0).allowed
    assert not gate.check(entry(5.0), 200.0, 2.6).allowed  # (2.6 + 5) x 200 = 1520


def test_holdings_count_positions_at_the_last_price_and_entries_in_flight() -> None:
    pf = Portfolio(10_000.0)
    pf.apply_fill(Fill("c1", A, Side.BUY, 2.0, 100.0, 0.0, "USDT", T, "taker", "t1", "entry"))
    pf.last_price[A] = 110.0
    pf.last_price[B] = 50.0
    orders = [
        Order("c2", B, Side.BUY, OrderType.MARKET, 3.0, T, "entry"),  # 3 x 50 (last price)
        Order("c3", B, Side.BUY, OrderType.LIMIT, 1.0, T, "entry", price=40.0),  # 1 x 40
        Order("c4", A, Side.SELL, OrderType.MARKET, 2.0, T, "exit", reduce_only=True),
        Order("c5", A, Side.SELL, OrderType.STOP, 2.0, T, "sl", price=90.0, parent_id="c1"),
    ]
    assert holdings_usdt(pf, orders) == {A: 220.0, B: 190.0}


# -- correlation-aware exposure -----------------------------------------------------------------


def _feed(risk: RiskManager, returns: dict[str, list[float]]) -> None:
    """Bars whose 1m log returns are exactly `returns` (symbols interleaved per minute, in
    varying order within a minute, as a live feed delivers them)."""
    closes = {s: 100.0 for s in returns}
    n = len(next(iter(returns.values())))
    for s in returns:
        risk.on_bar(bar(s, 0, 100.0))
    for i in range(n):
        order = list(returns) if i % 2 else list(reversed(returns))
        for s in order:
            closes[s] *= math.exp(returns[s][i])
            risk.on_bar(bar(s, i + 1, closes[s]))


def test_pair_correlation_equals_numpy_on_the_window() -> None:
    rng = random.Random(3)
    a = [rng.gauss(0, 1e-3) for _ in range(300)]
    b = [0.6 * x + 0.8 * rng.gauss(0, 1e-3) for x in a]
    risk = manager(correlation_window_bars=120, correlation_min_bars=60)
    _feed(risk, {A: a, B: b})
    now = T + 301 * M  # the close of the last bar
    rho, n = risk.correlation(A, B, now)
    assert n == 120
    expected = np.corrcoef(a[-120:], b[-120:])[0, 1]
    assert rho == pytest.approx(expected, abs=1e-9)
    # Hours later with no new bars the old samples leave the window.
    rho, n = risk.correlation(A, B, now + 121 * M)
    assert math.isnan(rho) and n == 0


def test_correlated_symbols_share_one_exposure_limit() -> None:
    rng = random.Random(11)
    a = [rng.gauss(0, 1e-3) for _ in range(100)]
    risk = manager(
        correlation_window_bars=240,
        correlation_min_bars=60,
        correlation_threshold=0.7,
        max_correlated_notional_usdt=1000.0,
    )
    # B moves exactly twice as much as A (rho = 1); C exactly opposite (rho = -1): a hedge,
    # not a concentration, so it does not join A's group.
    _feed(risk, {A: a, B: [2 * x for x in a], C: [-x for x in a]})
    now = T + 101 * M
    assert risk.correlated(A, [B, C], now) == {B: pytest.approx(1.0)}
    # B holds 600: A may add up to 400 (600 + 400 = 1000 exactly), not 401.
    book = {B: 600.0, C: 900.0}
    assert risk.check(entry(4.0, minute=101), 100.0, 0.0, book=book).allowed
    d = risk.check(entry(4.01, minute=101), 100.0, 0.0, book=book)
    assert d.reason == (
        f"correlated notional 1001.00 ({A} with {B} (rho 1.00)) > max_correlated_notional_usdt 1000"
    )
    # C (anti-correlated) holding 900 does not limit A's 900.
    assert risk.check(entry(9.0, minute=101), 100.0, 0.0, book={C: 900.0}).allowed


def test_too_few_aligned_returns_do_not_make_a_group() -> None:
    a = [1e-3 * ((i * 7) % 5 - 2) for i in range(59)]
    risk = manager(correlation_min_bars=60, max_correlated_notional_usdt=1000.0)
    _feed(risk, {A: a, B: a})  # identical, but 59 samples < 60
    assert risk.correlated(A, [B], T + 60 * M) == {}
    assert risk.check(entry(9.0, minute=60), 100.0, 0.0, book={B: 900.0}).allowed
