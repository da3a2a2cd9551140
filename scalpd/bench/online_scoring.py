"""What the online-learning benches share: one model replay (frozen or online) through the
normal path, the matured log-loss of the frozen and base-rate predictors on the bars the online
model scored, and a replay's line (return after fees beside its baselines).

Used by `online_regime` (March 2020) and `online_walkforward` (folds of 2022).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

Result = dict[str, Any]


def pct(fraction: float | None) -> float | None:
    return None if fraction is None else round(100 * fraction, 3)


def replay_model(
    artifact_path: Path,
    bars: Any,
    label: str,
    db: Path,
    online: bool,
    baselines: bool = True,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """`bars` replayed through the model strategy (`run_replay`), probabilities streamed bar by
    bar on the eager backend whether online or not, so the two differ by the learning only;
    every other setting, [online] included, at its default unless `overrides` (section ->
    keys; tests shrink the work with it) says otherwise."""
    from scalpd.config.settings import load_settings
    from scalpd.replay.runner import ReplayInput, run_replay
    from scalpd.store.sqlite import Store

    values: dict[str, dict[str, Any]] = {
        "strategy": {"name": "model", "model_path": str(artifact_path), "model_backend": "eager"},
        "online": {"enabled": online},
        "store": {"path": str(db)},
    }
    for section, keys in (overrides or {}).items():
        values[section] = {**values.get(section, {}), **keys}
    settings = load_settings(None, values)
    store = Store(db)
    try:
        return run_replay(
            settings,
            ReplayInput([bars], label),
            store,
            probabilities="streaming",
            baselines=baselines,
        )
    finally:
        store.close()


class MaturedLosses(NamedTuple):
    """Per scored bar (the online model's matured ones): log-loss nats, both sides averaged."""

    t_ms: np.ndarray  # open time of the predicted bar
    online: np.ndarray  # the prediction the online replay served there
    frozen: np.ndarray  # the frozen model's causal prediction (NaN: it served none there)
    base_rate: np.ndarray  # always the training window's label frequencies


def matured_losses(online: Any, artifact: Any, bars: Any, prior: np.ndarray) -> MaturedLosses:
    """Scores on the bars whose label matured in the online replay of `bars`. The frozen model's
    series prediction equals what a frozen replay streams (to 1e-5) and is scored against the
    same triple-barrier labels, computed from `bars` alone: a label exists only where its whole
    horizon lies inside them, as it does for the online model (no look-ahead)."""
    from scalpd.models.labels import LabelParams, label_bars, log_loss_rows
    from scalpd.strategy.model import feature_matrix

    t_ms, online_loss = online.matured_losses(bars.symbol)
    x, _, _ = feature_matrix(bars)
    probs = artifact.predictor("eager").predict_series(x, bars.open_time).probs
    labels = label_bars(bars, LabelParams(**artifact.meta["label"]))
    at = bars.open_time.searchsorted(t_ms)
    assert np.array_equal(bars.open_time[at], t_ms) and labels.valid[at].all()
    y = labels.y[at].astype(np.int64)
    frozen = log_loss_rows(probs[at], y)
    base = -np.log(prior[[0, 1], y]).mean(axis=1)
    return MaturedLosses(t_ms, online_loss, frozen, base)


def replay_line(name: str, result: Any) -> Result:
    s, baselines = result.summary, (result.report or {}).get("baselines", {})
    rule = (baselines.get("rule") or {}).get("metrics") or {}
    rand = baselines.get("random_entries") or {}
    runs = [r for r in (rand.get("runs") or {}).get("total_return", []) if r is not None]
    return {
        "bench": name,
        "value": s["total_return_pct"],
        "unit": "% return after fees",
        "trades": s["trades"],
        "win_rate_pct": s["win_rate_pct"],
        "fees_usdt": s["fees_usdt"],
        "slippage_usdt": s["slippage_usdt"],
        "max_drawdown_pct": s["max_drawdown_pct"],
        "buy_and_hold_return_pct": s["buy_and_hold_return_pct"],
        "rule_baseline_return_pct": pct(rule.get("total_return")),
        "rule_baseline_trades": rule.get("trades"),
        # The same number of entries at random bars with the same exits and costs.
        "random_entries_median_return_pct": pct(float(np.median(runs)) if runs else None),
        "random_entries_trials": rand.get("trials"),
        "random_entries_p_value": (rand.get("p_value") or {}).get("total_return"),
        "run_s": s["run_s"],
    }
