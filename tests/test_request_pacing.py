"""What the live path asks the exchange, and how fast: the REST pacer and the broker's rule for
which resting orders a bar could have filled (so a bar that reached none costs no request)."""

from __future__ import annotations

import pytest

from scalpd.events import Bar, Order, OrderType, Side
from scalpd.execution.ccxt_broker import LiveBracket, bracket_reached, entry_reached
from scalpd.live.exchange import RequestPacer


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_the_pacer_lets_a_burst_through_then_spaces_by_weight_and_refills_with_time() -> None:
    clock = Clock()
    pacer = RequestPacer(weight_per_s=20.0, burst_weight=60.0, clock=clock)
    assert [pacer.wait_s(20.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # the whole burst
    assert pacer.wait_s(4.0) == pytest.approx(0.2)  # 4 weight short at 20 a second
    clock.now_s = 0.2  # the request waited its 0.2 s: the bucket is level again
    clock.now_s += 60.0  # a minute with nothing sent: full, never above the burst
    assert pacer.wait_s(60.0) == 0.0
    assert pacer.wait_s(1.0) == pytest.approx(0.05)


def _order(client_id: str, kind: OrderType, price: float, side: Side = Side.SELL) -> Order:
    return Order(client_id, "BTC/USDT", side, kind, 1.0, 0, "x", price=price)


def _bar(high: float, low: float) -> Bar:
    return Bar("BTC/USDT", 0, 100.0, high, low, 100.0, 1.0, 100.0, 1, 0.5)


def test_a_bracket_is_asked_about_only_when_the_bar_reached_one_of_its_prices() -> None:
    bracket = LiveBracket(
        "e1oco", _order("e1tp", OrderType.LIMIT, 101.0), _order("e1sl", OrderType.STOP, 99.0)
    )
    assert not bracket_reached(bracket, _bar(high=100.99, low=99.01))
    assert bracket_reached(bracket, _bar(high=101.0, low=99.5))  # touched the take-profit
    assert bracket_reached(bracket, _bar(high=100.5, low=99.0))  # touched the stop


def test_a_limit_buy_is_asked_about_only_when_the_bar_traded_at_or_below_it() -> None:
    entry = _order("e2", OrderType.LIMIT, 99.5, Side.BUY)
    assert not entry_reached(entry, _bar(high=101.0, low=99.51))
    assert entry_reached(entry, _bar(high=101.0, low=99.5))
