"""The order state machine (scalpd/engine/orders.py) and the engine keeping it for every broker."""

from __future__ import annotations

from structlog.testing import capture_logs

from scalpd.engine.orders import can_move
from scalpd.events import Order, OrderStatus, OrderType, OrderUpdate, Side
from tests.test_engine_risk import BTC, Rig, flat, settings

S = OrderStatus


def test_orders_only_move_forward_and_never_leave_an_end() -> None:
    assert can_move(S.NEW, S.OPEN) and can_move(S.NEW, S.FILLED) and can_move(S.NEW, S.REJECTED)
    assert can_move(S.OPEN, S.PARTIALLY_FILLED) and can_move(S.PARTIALLY_FILLED, S.FILLED)
    assert can_move(S.PARTIALLY_FILLED, S.CANCELLED) and can_move(S.OPEN, S.EXPIRED)
    assert can_move(S.OPEN, S.OPEN)  # an exchange may say it twice
    assert not can_move(S.PARTIALLY_FILLED, S.OPEN)
    assert not can_move(S.OPEN, S.REJECTED)  # accepted, then refused: not a thing
    for end in (S.FILLED, S.CANCELLED, S.REJECTED, S.EXPIRED):
        assert not any(can_move(end, status) for status in S)


def test_the_engine_ignores_and_counts_a_report_that_moves_an_order_back(tmp_path) -> None:
    """Through the engine, on the simulated broker: a filled entry then a late "open" for it,
    and an "open" after a partial fill: counted, logged, the journal and book unchanged."""
    rig = Rig(tmp_path, settings(), {(BTC, 1): "buy"})
    rig.feed(flat([BTC], range(0, 4)))
    engine = rig.engine
    (entry,) = rig.store.rows("orders", rig.run_id)
    assert entry["status"] == "filled" and engine.anomalies == 0
    cash = engine.portfolio.cash
    with capture_logs() as logs:
        engine.apply_reports([OrderUpdate(entry["client_id"], S.OPEN, 0)])
    assert engine.anomalies == 1
    assert any(e["event"] == "update_for_unknown_order" for e in logs)
    assert engine.portfolio.cash == cash
    assert rig.store.rows("orders", rig.run_id)[0]["status"] == "filled"
    # An order half filled (say, taken over at a restart), then reported "open": refused.
    resting = Order("sdx-1", BTC, Side.BUY, OrderType.LIMIT, 10.0, 0, "entry", price=99.0)
    engine.restore_orders([(resting, 4.0, S.PARTIALLY_FILLED)])
    with capture_logs() as logs:
        engine.apply_reports([OrderUpdate("sdx-1", S.OPEN, 0, 4.0)])
    assert engine.anomalies == 2 and engine.order_status["sdx-1"] is S.PARTIALLY_FILLED
    assert any(e["event"] == "illegal_order_transition" for e in logs)
    engine.apply_reports([OrderUpdate("sdx-1", S.CANCELLED, 0, 4.0)])
    assert "sdx-1" not in engine.open_orders and engine.anomalies == 2
