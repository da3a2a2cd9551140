"""Regime labels: a constructed market gets the labels its construction implies, no label moves
when later bars change, and results split by the regime of the entry bar."""

from __future__ import annotations

import numpy as np
import pytest

from scalpd.data.bars import BarColumns
from scalpd.engine.portfolio import ClosedTrade
from scalpd.replay import regimes as rg

T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
M = 60_000


def bars_from_close(close: np.ndarray, symbol: str = "BTC/USDT") -> BarColumns:
    close = np.asarray(close, dtype=np.float64)
    n = len(close)
    opens = np.concatenate(([close[0]], close[:-1]))
    return BarColumns(
        symbol,
        T0 + np.arange(n, dtype=np.int64) * M,
        opens,
        np.maximum(opens, close),
        np.minimum(opens, close),
        close,
        np.ones(n),
        close.copy(),
        np.full(n, 10, dtype=np.int64),
        np.full(n, 0.5),
    )


def alternating(n: int, size: float) -> np.ndarray:
    return np.where(np.arange(n) % 2 == 0, size, -size)


def constructed() -> np.ndarray:
    """Log returns: quiet back-and-forth, a steady climb, a 300 bp jump, quiet again, then
    back-and-forth 7.5 times wider."""
    r = np.empty(700)
    r[:300] = alternating(300, 2e-4)
    r[300:400] = 1.5e-4
    r[400] = 0.03
    r[401:500] = alternating(99, 2e-4)
    r[500:700] = alternating(200, 15e-4)
    return 100 * np.exp(np.cumsum(r))


PARAMS = rg.RegimeParams(
    vol_window_bars=200, vol_percentile=80, trend_er_min=0.3, shock_sigmas=4, shock_bars=15
)


def test_labels_of_a_constructed_market() -> None:
    labels = rg.label_bars(bars_from_close(constructed()), PARAMS)
    # GARCH needs 120 bars before it is valid.
    assert set(labels[:120]) == {rg.WARMUP}
    assert set(labels[250:300]) == {rg.RANGING}  # efficiency ratio ~0: back and forth
    assert set(labels[320:400]) == {rg.TRENDING}  # 20 bars all up: efficiency ratio 1
    # 300 bp against a ~2 bp volatility: a shock from its bar for exactly shock_bars bars.
    assert set(labels[400:415]) == {rg.SHOCK}
    assert labels[415] == rg.HIGH_VOL  # volatility is still far above its recent range
    # The wider swings are a jump of their own, then a volatility above the 80th percentile.
    assert set(labels[500:515]) == {rg.SHOCK}
    assert set(labels[515:]) == {rg.HIGH_VOL}


def test_labels_use_past_bars_only() -> None:
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.standard_t(3, 900) * 5e-4))
    before = rg.label_bars(bars_from_close(close), PARAMS)
    for cut in (250, 480, 700):
        changed = close.copy()
        changed[cut + 1 :] *= np.exp(np.cumsum(rng.normal(0, 3e-3, len(close) - cut - 1)))
        after = rg.label_bars(bars_from_close(changed), PARAMS)
        assert np.array_equal(before[: cut + 1], after[: cut + 1]), cut
        assert not np.array_equal(before, after)


def test_trailing_rank_by_hand() -> None:
    values = np.array([np.nan, 3.0, 1.0, 2.0, 5.0, 4.0])
    # Window 4 (at least 2 values): share of the window's values strictly below this one.
    ranks = rg.trailing_rank(values, 4)
    assert np.isnan(ranks[0]) and np.isnan(ranks[1])  # one value so far: too few
    # [1, 3] -> 1 lowest; [1, 2, 3] -> 2 above one of three; [1, 2, 3, 5] (the NaN left the
    # window); 3 leaves as 4 comes in: [1, 2, 4, 5] -> 4 above two of four.
    assert ranks[2:].tolist() == pytest.approx([0.0, 1 / 3, 3 / 4, 2 / 4])


def test_results_split_by_the_entry_bars_regime() -> None:
    bars = bars_from_close(np.array([100.0, 110.0, 99.0, 99.0, 108.9]))
    labels = {"BTC/USDT": np.array([rg.TRENDING, rg.TRENDING, rg.SHOCK, rg.RANGING, rg.RANGING])}

    def trade(entry_min: int, pnl: float) -> ClosedTrade:
        # Filled at the open of the bar after the decision: its time is the decision's close.
        t = T0 + entry_min * M
        return ClosedTrade("BTC/USDT", t, t + M, 1.0, 100.0, 100.0 + pnl, 0.0, pnl, "x")

    trades = [trade(1, 4.0), trade(2, -2.0), trade(3, 6.0), trade(4, 1.0)]
    rows = {r["regime"]: r for r in rg.regime_table([bars], labels, trades)}
    # Entry at T0 + 1 min: decided at the close of bar 0 (trending); + 2 min: bar 1.
    assert rows["trending"]["trades"] == 2
    assert rows["trending"]["win_rate"] == 0.5
    assert rows["trending"]["pnl"] == 2.0
    assert rows["trending"]["avg_trade_pnl"] == 1.0
    assert rows["shock"]["trades"] == 1 and rows["shock"]["pnl"] == 6.0
    assert rows["ranging"]["trades"] == 1
    assert rows["high volatility"]["trades"] == 0
    assert rows["trending"]["time_share"] == pytest.approx(2 / 5)
    # Bar t's return belongs to bar t-1's label: trending holds 100->110->99 (-1 %),
    # shock holds 99->99, ranging holds 99->108.9 (+10 %).
    assert rows["trending"]["buy_and_hold_return"]["BTC/USDT"] == pytest.approx(-0.01)
    assert rows["shock"]["buy_and_hold_return"]["BTC/USDT"] == pytest.approx(0.0)
    assert rows["ranging"]["buy_and_hold_return"]["BTC/USDT"] == pytest.approx(0.1)
