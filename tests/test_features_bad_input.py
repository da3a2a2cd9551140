"""Bad bars are refused: counted by reason, logged, and the feature state left as it was."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from structlog.testing import capture_logs

from scalpd.events import Bar
from scalpd.features.incremental import FeatureEngine, SymbolFeatures

T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
Spoil = Callable[[Bar, Bar], Bar]  # (the next good bar, the last accepted one) -> a bad bar


def _bars(n: int) -> list[Bar]:
    rng = np.random.default_rng(3)
    close = 42_000.0 * np.exp(np.cumsum(rng.normal(0.0, 5e-4, n)))
    out = []
    for i, c in enumerate(close.tolist()):
        o = c * (1 + rng.normal(0.0, 2e-4))
        h = max(o, c) * (1 + abs(rng.normal(0.0, 3e-4)))
        lo = min(o, c) * (1 - abs(rng.normal(0.0, 3e-4)))
        v = float(rng.uniform(1.0, 20.0))
        out.append(Bar("BTC/USDT", T0 + i * 60_000, o, h, lo, c, v, v * c, 100 + i, v * 0.4))
    return out


BAD = [
    ("nan_or_infinite", lambda b, last: b._replace(close=math.nan)),
    ("nan_or_infinite", lambda b, last: b._replace(open=math.nan)),
    ("nan_or_infinite", lambda b, last: b._replace(volume=math.nan)),
    ("nan_or_infinite", lambda b, last: b._replace(high=math.inf)),
    ("non_positive_price", lambda b, last: b._replace(low=-1.0)),
    ("non_positive_price", lambda b, last: b._replace(open=0.0, low=0.0)),
    ("high_below_low", lambda b, last: b._replace(high=b.low - 1.0)),
    ("open_or_close_outside_range", lambda b, last: b._replace(close=b.high + 1.0)),
    ("negative_volume", lambda b, last: b._replace(volume=-1.0)),
    ("not_on_minute", lambda b, last: b._replace(open_time_ms=b.open_time_ms + 1)),
    ("duplicate", lambda b, last: last),
    ("duplicate", lambda b, last: last._replace(volume=last.volume * 2.0)),
    ("out_of_order", lambda b, last: last._replace(open_time_ms=last.open_time_ms - 60_000)),
]


@pytest.mark.parametrize(("reason", "spoil"), BAD)
def test_bad_bar_is_refused_counted_logged_and_changes_nothing(reason: str, spoil: Spoil) -> None:
    bars = _bars(400)
    clean = SymbolFeatures("BTC/USDT")
    hit = SymbolFeatures("BTC/USDT")
    for bar in bars[:300]:
        assert clean.update(bar) and hit.update(bar)
    before = hit.values.copy()
    with capture_logs() as logs:
        assert hit.update(spoil(bars[300], bars[299])) is False
    np.testing.assert_array_equal(hit.values, before)
    assert hit.rejected == {reason: 1} and hit.last_refusal == reason
    assert logs == [
        {
            "event": "feature_bar_rejected",
            "log_level": "warning",
            "symbol": "BTC/USDT",
            "reason": reason,
            "open_time_ms": spoil(bars[300], bars[299]).open_time_ms,
            "last_open_time_ms": bars[299].open_time_ms,
        }
    ]
    # The state was not touched either: the next good bars give what a clean run gives.
    for bar in bars[300:]:
        assert clean.update(bar) and hit.update(bar)
        np.testing.assert_array_equal(hit.values, clean.values)
    assert hit.gaps == clean.gaps == 0


def test_engine_counts_refusals_by_reason_and_other_symbols_go_on() -> None:
    btc = _bars(200)
    eth = [b._replace(symbol="ETH/USDT") for b in _bars(200)]
    engine = FeatureEngine(["BTC/USDT", "ETH/USDT"])
    with capture_logs() as logs:
        for i in range(200):
            assert engine.on_bar(btc[i])
            if i == 150:
                assert not engine.on_bar(eth[i]._replace(low=eth[i].high + 1.0))
                assert not engine.on_bar(eth[i]._replace(close=-5.0))
            assert engine.on_bar(eth[i])
            if i == 160:
                assert not engine.on_bar(eth[i])  # the same bar again
        assert not engine.on_bar(btc[0]._replace(symbol="DOGE/USDT"))
    assert engine.rejected == {
        "high_below_low": 1, "non_positive_price": 1, "duplicate": 1, "unknown_symbol": 1,
    }  # fmt: skip
    assert [e["reason"] for e in logs] == [
        "high_below_low", "non_positive_price", "duplicate", "unknown_symbol",
    ]  # fmt: skip
    assert engine.features["BTC/USDT"].rejected == {}
    alone = SymbolFeatures("ETH/USDT")
    for bar in eth:
        alone.update(bar)
    own = np.arange(len(alone.values)) != 13  # all but the cross-asset column
    np.testing.assert_array_equal(engine.vector("ETH/USDT")[own], alone.values[own])
