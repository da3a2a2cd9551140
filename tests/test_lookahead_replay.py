"""No look-ahead in the whole replay: change the future of the data, and nothing the engine
decided or was filled before the change moves, with every cost model on.

The features and models have their own look-ahead tests; this one covers the rest of the path
(strategy, sizing, risk, simulated fills and costs, the random latency draws).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from scalpd.config.settings import Settings
from scalpd.data.bars import BarColumns
from scalpd.replay.runner import ReplayInput, load_input, run_replay
from scalpd.store.sqlite import Store
from tests.conftest import shared_file

# Every order field that is decided, and every fill field that is measured.
ORDERS = (
    "SELECT client_id, symbol, side, type, qty, price, reason, parent_id, created_ms FROM orders"
)
FILLS = "SELECT client_id, side, qty, price, fee, fee_asset, liquidity, reason, time_ms FROM fills"


def _changed_future(bars: BarColumns, start: int) -> BarColumns:
    """Bars from `start` on replaced by a different but valid market (a 7 % drop, more volume)."""
    scale = np.ones(len(bars))
    scale[start:] = 0.93
    volume = bars.volume.copy()
    volume[start:] *= 3.0
    return replace(
        bars,
        open=bars.open * scale,
        high=bars.high * scale,
        low=bars.low * scale,
        close=bars.close * scale,
        volume=volume,
        quote_volume=bars.quote_volume * scale * np.where(scale < 1, 3.0, 1.0),
    )


def _decisions(settings: Settings, inp: ReplayInput, db: Path) -> tuple[list, list]:
    store = Store(db)
    try:
        result = run_replay(settings, inp, store)
        where = f" WHERE run_id = {result.run_id} ORDER BY rowid"
        orders = store.conn.execute(ORDERS + where).fetchall()
        fills = store.conn.execute(FILLS + where).fetchall()
    finally:
        store.close()
    return orders, fills


def _check_past_unchanged(settings: Settings, bars: BarColumns, tmp_path: Path) -> int:
    shift = len(bars) * 2 // 3
    shift_ms = int(bars.open_time[shift])  # the first changed bar opens (and the last kept closes)
    base = _decisions(settings, ReplayInput([bars], "base"), tmp_path / "a.db")
    other = _decisions(
        settings, ReplayInput([_changed_future(bars, shift)], "changed"), tmp_path / "b.db"
    )
    # Orders decided at or before the close of the last unchanged bar, and fills before the
    # first changed bar opens, must be identical.
    before = [
        [o for o in orders if o[-1] <= shift_ms and (o[7] is None or o[-1] < shift_ms)]
        for orders, _ in (base, other)
    ]
    fills_before = [[f for f in fills if f[-1] < shift_ms] for _, fills in (base, other)]
    assert before[0] == before[1]
    assert fills_before[0] == fills_before[1]
    # The change did change what came after, or the test proves nothing.
    assert base != other
    return len(before[0])


@pytest.mark.parametrize("entry_order", ["market", "limit"])
def test_changing_the_future_leaves_past_decisions_and_fills_alone(
    tmp_path: Path, entry_order: str
) -> None:
    settings = Settings(
        data={"synthetic_days": 3},
        strategy={"entry_order": entry_order, "limit_offset_bps": 2.0},
        store={"path": tmp_path / "unused.db"},
    )
    bars = load_input(settings).series[0]
    assert _check_past_unchanged(settings, bars, tmp_path) > 10


def test_no_look_ahead_on_real_btc_with_volatility_sizing(tmp_path: Path) -> None:
    path = shared_file("binance-spot/BTCUSDT-1m-2024.parquet")
    settings = Settings(
        data={"paths": [path]},
        strategy={"sizing": "volatility_scaled"},
        store={"path": tmp_path / "unused.db"},
    )
    day = 86_400_000
    start = 1_717_200_000_000 - 1_717_200_000_000 % day  # 2024-06-01
    bars = load_input(settings, None, start, start + 3 * day).series[0]
    assert _check_past_unchanged(settings, bars, tmp_path) > 10
