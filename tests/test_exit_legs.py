"""Exit legs the broker arms (a bracket's take-profit and stop-loss): recorded new before they
are sent, then opened, or rejected when the exchange would refuse them, without an illegal
order transition and without a leg left open that is not on the exchange."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scalpd.events import Bar, Bracket, OrderIntent, Side
from scalpd.strategy.base import StrategyContext
from tests.test_engine_risk import BTC, M, Rig, Script, T, flat, settings


class BracketedEntry(Script):
    """Buys `qty` with a bracket at minute 1."""

    def on_bar(self, bar: Bar, ctx: StrategyContext) -> Sequence[OrderIntent]:
        if bar.symbol == BTC and bar.open_time_ms == T + M:
            close_ms = bar.open_time_ms + M
            return (OrderIntent(BTC, Side.BUY, self.qty, "entry", close_ms, Bracket(40.0, 25.0)),)
        return ()


def _run(tmp_path: Path, qty: float) -> tuple[Rig, dict[str, str]]:
    rig = Rig(tmp_path, settings(), {}, qty=qty)
    rig.engine._strategy = BracketedEntry({}, qty)
    rig.feed(flat([BTC], range(6)))
    orders = rig.store.rows("orders", rig.run_id)
    return rig, {r["client_id"][-2:]: r["status"] for r in orders if r["parent_id"]}


def test_armed_legs_are_opened(tmp_path: Path) -> None:
    rig, legs = _run(tmp_path, qty=1.0)
    assert legs == {"tp": "open", "sl": "open"}
    assert rig.engine.anomalies == 0 and len(rig.engine.open_orders) == 2


def test_legs_the_exchange_would_refuse_are_rejected_cleanly(tmp_path: Path) -> None:
    # 0.0501 BTC at 100 is 5.01 USDT (the minimum is 5): the entry passes, but after its fee
    # in BTC the legs sell 0.05, and the stop at 99.75 is under the minimum notional.
    rig, legs = _run(tmp_path, qty=0.0501)
    assert legs == {"tp": "rejected", "sl": "rejected"}
    assert rig.engine.anomalies == 0 and rig.engine.open_orders == {}
