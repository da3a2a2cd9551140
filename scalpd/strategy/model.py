"""A trained model as a strategy: features -> streaming prediction -> long entries above a
confidence threshold, with the exits the model was trained to predict.

The features come from the same incremental engine that training's batch computation is proven
equal to, and the model refuses a feature set other than the one it was trained on. A bar whose
prediction is unavailable (warming up, invalid features, after a gap) never trades.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scalpd.config.settings import StrategySettings, SymbolsSettings
from scalpd.data.bars import BarColumns
from scalpd.events import BAR_INTERVAL_MS, Bar, Bracket, Fill, Gap, OrderIntent, Trade
from scalpd.features.batch import compute
from scalpd.features.incremental import FeatureEngine
from scalpd.features.spec import FEATURE_NAMES, FEATURE_SET_ID, feature_specs
from scalpd.models.artifact import load_artifact
from scalpd.models.backends import Predictor
from scalpd.models.labels import CLASS_NAMES, SIDE_NAMES
from scalpd.strategy.base import StrategyContext
from scalpd.strategy.long_only import NO_INTENTS, LongOnly

# The features a model sees: those that bars alone provide. Tick features (spread, depth,
# trade sizes) and the cross-asset mean need recorded ticks or several symbols, and a column
# that is NaN on every row would leave a model nothing to train on.
MODEL_INPUTS: tuple[str, ...] = tuple(
    spec.name for spec in feature_specs() if spec.group not in ("tick", "cross")
)
_INPUT_INDEX = np.array([FEATURE_NAMES.index(name) for name in MODEL_INPUTS])
MODEL_INPUTS_ID = (
    "mi-"
    + hashlib.sha256((FEATURE_SET_ID + "|" + ",".join(MODEL_INPUTS)).encode()).hexdigest()[:16]
)
_LONG = SIDE_NAMES.index("long")
_TAKE_PROFIT = CLASS_NAMES.index("take_profit")


class ModelStrategy:
    name = "model"

    def __init__(
        self, settings: StrategySettings, symbols: SymbolsSettings, model_path: Path
    ) -> None:
        artifact = load_artifact(model_path, list(MODEL_INPUTS), MODEL_INPUTS_ID)
        label = artifact.meta["label"]
        self.model = f"{artifact.name}/{artifact.version}"
        self._threshold = settings.min_confidence
        # Trade the barriers the model learned to predict, not the rule baseline's.
        self._position = LongOnly(
            symbols,
            settings.position_fraction,
            Bracket(float(label["take_profit_bps"]), float(label["stop_loss_bps"])),
            int(label["horizon_bars"]) * BAR_INTERVAL_MS,
        )
        self._features = FeatureEngine(symbols.trade)
        # One thread: a one-bar step is far too small to split, and a second thread waiting
        # on a busy core turned 150 µs steps into 8 ms ones.
        self._predictors: dict[str, Predictor] = {
            s: artifact.predictor(settings.model_backend, threads=1) for s in symbols.trade
        }
        self.last_probability: dict[str, float] = {}

    def on_bar(self, bar: Bar, ctx: StrategyContext) -> Sequence[OrderIntent]:
        symbol = bar.symbol
        if not self._features.on_bar(bar):
            return NO_INTENTS  # refused bar (bad or out of order): counted by the engine
        x = self._features.vector(symbol)[_INPUT_INDEX]
        probs = self._predictors[symbol].predict_step(x)
        p_up = float(probs[_LONG, _TAKE_PROFIT]) if probs is not None else float("nan")
        self.last_probability[symbol] = p_up
        # NaN (no prediction) never enters.
        return self._position.decide(bar, ctx, p_up >= self._threshold, f"model_p_tp={p_up:.3f}")

    def on_gap(self, gap: Gap) -> None:
        self._features.on_gap(gap)
        self._predictors[gap.symbol].reset()  # a model's context never spans a gap

    def on_fill(self, fill: Fill) -> None:
        return None

    def on_trade(self, trade: Trade) -> None:
        self._features.on_trade(trade)


def feature_matrix(bars: BarColumns) -> tuple[np.ndarray, list[str], str]:
    """Training's inputs: the batch twin of what the strategy above computes bar by bar
    (`scalpd train` uses it)."""
    matrix = compute(bars)
    return matrix.values[:, _INPUT_INDEX], list(MODEL_INPUTS), MODEL_INPUTS_ID
