"""Events: `to_json` / `from_json` give back an equal event of the same type, enums included."""

from __future__ import annotations

import math

import orjson
import pytest

from scalpd.events import (
    EVENT_TYPES,
    Bar,
    BookTop,
    Bracket,
    Fill,
    Gap,
    Order,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    Trade,
    from_json,
    to_json,
)

T = 1_709_251_200_000  # 2024-03-01 00:00 UTC

EXAMPLES = [
    Bar("BTC/USDT", T, 61_000.01, 61_050.5, 60_990.0, 61_020.99, 12.345, 753_000.25, 1_234, 6.5),
    Gap("BTC/USDT", T, T + 130 * 60_000),
    Trade("BTC/USDT", T + 17, 61_000.01, 0.00123, Side.SELL, "3355113"),
    BookTop("ETH/USDT", T + 5, 3_400.1, 1.5, 3_400.11, 0.25),
    Bracket(40.0, 25.0),
    OrderIntent("BTC/USDT", Side.BUY, 0.15, "ema_cross_up", T + 60_000, Bracket(40.0, 25.0)),
    OrderIntent("BTC/USDT", Side.SELL, 0.15, "time_stop", T + 60_000, None, True),
    Order(
        "sd7-1",
        "BTC/USDT",
        Side.BUY,
        OrderType.MARKET,
        0.15,
        T + 60_000,
        "ema_cross_up",
        bracket=Bracket(40.0, 25.0),
    ),
    Order(
        "sd7-1tp",
        "BTC/USDT",
        Side.SELL,
        OrderType.LIMIT,
        0.15,
        T + 120_000,
        "take_profit",
        price=61_265.01,
        parent_id="sd7-1",
        reduce_only=True,
    ),
    Order(
        "sd7-1sl",
        "BTC/USDT",
        Side.SELL,
        OrderType.STOP,
        0.15,
        T + 120_000,
        "stop_loss",
        price=60_867.5,
        parent_id="sd7-1",
        reduce_only=True,
    ),
    OrderUpdate("sd7-1", OrderStatus.FILLED, T + 120_000, 0.15, "x-99"),
    OrderUpdate("sd7-2", OrderStatus.REJECTED, T + 180_000, reason="insufficient balance"),
    Fill(
        "sd7-1",
        "BTC/USDT",
        Side.BUY,
        0.15,
        61_020.99,
        0.1 + 0.2,  # a float with no short decimal form still comes back exactly
        "USDT",
        T + 120_000,
        "taker",
        "sim-1",
        "entry",
    ),
]


def test_examples_cover_every_event_type() -> None:
    assert {type(e) for e in EXAMPLES} == set(EVENT_TYPES.values())


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(event) -> None:
    data = to_json(event)
    back = from_json(data)
    assert type(back) is type(event)
    assert back == event
    # Enums come back as enums, nested brackets as Brackets.
    for name, value in event._asdict().items():
        assert type(getattr(back, name)) is type(value), name
    # Also from a str, and the JSON is tagged with the kind.
    assert from_json(data.decode()) == event
    assert orjson.loads(data)["event"] == type(event).__name__.lower()


def test_json_form_is_plain() -> None:
    raw = orjson.loads(to_json(EXAMPLES[7]))  # the entry order with a bracket
    assert raw["side"] == "buy" and raw["type"] == "market"
    assert raw["bracket"] == {"take_profit_bps": 40.0, "stop_loss_bps": 25.0}
    assert raw["price"] is None and raw["parent_id"] is None


def test_event_kinds_do_not_collide() -> None:
    assert len(EVENT_TYPES) == 9
    for kind, cls in EVENT_TYPES.items():
        assert kind == cls.__name__.lower()
        assert "event" not in cls._fields


def test_round_trip_bar_without_optional_fields() -> None:
    bar = Bar("ETH/USDT", T, 3_400.1, 3_401.0, 3_399.5, 3_400.5, 10.0, math.nan, -1, math.nan)
    back = from_json(to_json(bar))
    assert type(back.taker_buy_volume) is float and math.isnan(back.taker_buy_volume)
    assert type(back.quote_volume) is float and math.isnan(back.quote_volume)
