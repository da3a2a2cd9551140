"""The embedded synthetic market: its default output is pinned (the demo and many tests depend
on it), and the planted flow pattern and regime change do what they say, deterministically."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from scalpd.data.bars import BarColumns
from scalpd.data.synthetic import RegimeChange, generate

START = "2024-01-01T00:00:00Z"
FIELDS = (
    "open_time", "open", "high", "low", "close", "volume", "quote_volume", "trades",
    "taker_buy_volume",
)  # fmt: skip


def digest(bars: BarColumns) -> str:
    h = hashlib.sha256()
    for name in FIELDS:
        h.update(np.ascontiguousarray(getattr(bars, name)).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("days", "seed", "sha256"),
    [  # taken before the pattern and regime options existed
        (0.1, 3, "fb8deb910455229017adbf994715a63279523494556edb3cd3ec581c931be1d3"),
        (2, 7, "ccaa6d62411919c6c21f15f7af041a7b79f16716b84e1cefcba93db711aed607"),
    ],
)
def test_default_output_is_unchanged(days: float, seed: int, sha256: str) -> None:
    assert digest(generate(days, seed, START)) == sha256
    # Options that plant nothing leave it as it was too.
    quiet = RegimeChange(at_fraction=0.5, flow_drift_sigmas_after=0.0, volatility_mult=1.0)
    assert digest(generate(days, seed, START, regime_change=quiet)) == sha256


def forward_corr(bars: BarColumns, lo: int, hi: int, horizon_bars: int = 15) -> float:
    """Correlation of the taker-buy share at bar t with the log return over the next bars."""
    share = bars.taker_buy_volume / bars.volume
    lc = np.log(bars.close)
    fwd = lc[lo + horizon_bars : hi] - lc[lo : hi - horizon_bars]
    return float(np.corrcoef(share[lo : hi - horizon_bars], fwd)[0, 1])


def test_regime_change_flips_the_flow_pattern_and_raises_volatility() -> None:
    change = RegimeChange(at_fraction=0.5, flow_drift_sigmas_after=-0.5, volatility_mult=1.5)
    bars = generate(4, 11, START, flow_drift_sigmas=0.5, regime_change=change)
    assert digest(bars) == digest(
        generate(4, 11, START, flow_drift_sigmas=0.5, regime_change=change)
    )
    n = len(bars.close)
    at = change.bar_index(n)
    assert at == n // 2
    # Before the change: bar for bar what the unchanged pattern gives.
    steady = generate(4, 11, START, flow_drift_sigmas=0.5)
    assert np.array_equal(bars.close[:at], steady.close[:at])
    assert not np.array_equal(bars.close[at:], steady.close[at:])
    # Informed flow before, faded flow after (seen: +0.45 and -0.21 with this seed).
    assert forward_corr(bars, 100, at) > 0.2
    assert forward_corr(bars, at + 100, n) < -0.15
    # The GARCH constant scaled by 1.5^2: realised volatility ~1.5x once settled (seen: 1.43).
    r = np.diff(np.log(bars.close))
    ratio = r[at + 200 :].std() / r[:at].std()
    assert 1.3 < ratio < 1.7
    # Without the pattern, the flow says nothing about what follows.
    assert abs(forward_corr(generate(4, 11, START), 100, n)) < 0.05


def test_bad_regime_change_is_refused() -> None:
    with pytest.raises(ValueError, match="at_fraction"):
        RegimeChange(at_fraction=1.5)
    with pytest.raises(ValueError, match="volatility_mult"):
        RegimeChange(volatility_mult=0.0)
