"""A trained model as a strategy: features -> streaming prediction -> long entries above a
confidence threshold, with the exits the model was trained to predict.

The features come from the same incremental engine that training's batch computation is proven
equal to, and the model refuses a feature set other than the one it was trained on. A bar whose
prediction is unavailable (warming up, invalid features, after a gap) never trades.

The decision code is one; where the per-bar probability comes from is a port
(`ProbabilitySource`) with two implementations:

- `StreamingProbabilities` (live, paper): the incremental feature engine and the model's
  one-bar step, bar by bar as bars arrive.
- `PrecomputedProbabilities` (replay): replay knows the whole bar series before it starts, so
  the batch features and the model's full-series forward run once, per gap-free segment from
  a fresh state, and each bar reads its value keyed by (symbol, open time). This is not a
  look-ahead: both computations are causal (a feature at bar t uses bars up to t, the
  network's output at t inputs up to t; tests/test_features_lookahead.py and the streaming
  tests prove it), so the value read at bar t is the one streaming would have computed at t,
  to float rounding (features 1e-9, network 1e-5). tests/test_model_strategy.py replays one
  span both ways and gets the same orders and trades.
- `OnlineModel` (strategy/online.py, when online.enabled): streaming, with a network that
  keeps fine-tuning on matured labels between bars; replay streams then (run_replay).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from scalpd.config.settings import OnlineSettings, StrategySettings, SymbolsSettings
from scalpd.data.bars import BarColumns
from scalpd.events import BAR_INTERVAL_MS, Bar, Bracket, Fill, Gap, OrderIntent, Trade
from scalpd.features.batch import compute
from scalpd.features.incremental import FeatureEngine
from scalpd.features.spec import FEATURE_NAMES, FEATURE_SET_ID, feature_specs
from scalpd.models.artifact import ModelArtifact, load_artifact
from scalpd.models.backends import Predictor
from scalpd.models.errors import ModelError
from scalpd.models.labels import CLASS_NAMES, SIDE_NAMES, LabelParams
from scalpd.strategy.base import StrategyContext
from scalpd.strategy.long_only import NO_INTENTS, LongOnly
from scalpd.strategy.online import OnlineModel

# The features a model sees: those that bars alone provide. Tick features (spread, depth,
# trade sizes) and the cross-asset mean need recorded ticks or several symbols, and a column
# that is NaN on every row would leave a model nothing to train on.
MODEL_INPUTS: tuple[str, ...] = tuple(
    spec.name for spec in feature_specs() if spec.group not in ("tick", "cross")
)
MODEL_INPUT_INDEX = np.array([FEATURE_NAMES.index(name) for name in MODEL_INPUTS])
MODEL_INPUTS_ID = (
    "mi-"
    + hashlib.sha256((FEATURE_SET_ID + "|" + ",".join(MODEL_INPUTS)).encode()).hexdigest()[:16]
)
_LONG = SIDE_NAMES.index("long")
_TAKE_PROFIT = CLASS_NAMES.index("take_profit")


class ProbabilitySource(Protocol):
    """P(a long hits its take-profit first) after each bar, for the model strategy."""

    def on_bar(self, bar: Bar) -> float | None:
        """The probability after `bar` (NaN: no prediction), or None: the bar was refused
        (bad or out of order) and must not be traded on."""

    def on_gap(self, gap: Gap) -> None: ...

    def on_trade(self, trade: Trade) -> None: ...

    def warm(self, symbol: str) -> None:
        """A throwaway step of `symbol`'s model (strategy/base.py `Warmable`)."""


class StreamingProbabilities:
    """Live and paper: incremental features and the model's one-bar step."""

    def __init__(self, artifact: ModelArtifact, symbols: Sequence[str], backend: str) -> None:
        self._features = FeatureEngine(symbols)
        self._predictors = self.predictors_for(artifact, symbols, backend)

    @staticmethod
    def predictors_for(
        artifact: ModelArtifact, symbols: Sequence[str], backend: str
    ) -> dict[str, Predictor]:
        # One thread: a one-bar step is far too small to split, and a second thread waiting
        # on a busy core turned 150 µs steps into 8 ms ones.
        return artifact.predictors(backend, symbols, threads=1)

    @property
    def symbols(self) -> list[str]:
        return list(self._predictors)

    def use_predictors(self, predictors: dict[str, Predictor]) -> None:
        """Another model's predictors from the next bar on; the features stay warm."""
        self._predictors = predictors

    def on_bar(self, bar: Bar) -> float | None:
        if not self._features.on_bar(bar):
            return None  # refused bar (bad or out of order): counted by the engine
        x = self._features.vector(bar.symbol)[MODEL_INPUT_INDEX]
        probs = self._predictors[bar.symbol].predict_step(x)
        return float(probs[_LONG, _TAKE_PROFIT]) if probs is not None else float("nan")

    def on_gap(self, gap: Gap) -> None:
        self._features.on_gap(gap)
        self._predictors[gap.symbol].reset()  # a model's context never spans a gap

    def on_trade(self, trade: Trade) -> None:
        self._features.on_trade(trade)

    def warm(self, symbol: str) -> None:
        self._predictors[symbol].warm()


class PrecomputedProbabilities:
    """Replay: every bar's probability computed before the replay starts (causal batch pass,
    see the module doc), read bar by bar. A bar that was not in the precomputed series (or
    differs from it) is a bug, not a missing prediction: it raises. (With the int8 backend a
    series and a step differ slightly, activations being scaled per call: replay gives the
    series' numbers.)"""

    def __init__(self, table: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """table: symbol -> (open_time_ms, close, probability) arrays of equal length, in
        time order."""
        # Python lists: indexing one per bar is several times cheaper than a numpy scalar.
        self._times = {s: t.tolist() for s, (t, _, _) in table.items()}
        self._closes = {s: c.tolist() for s, (_, c, _) in table.items()}
        self._probs = {s: p.tolist() for s, (_, _, p) in table.items()}
        self._next = dict.fromkeys(table, 0)

    @classmethod
    def from_bars(
        cls, artifact: ModelArtifact, series: Sequence[BarColumns], backend: str
    ) -> PrecomputedProbabilities:
        table = {}
        for bars in series:
            x, _, _ = feature_matrix(bars)
            # Restarted at every gap (open times one minute apart or not), as streaming resets
            # at the engine's gap events, which replay emits on the same rule.
            pred = artifact.predictor(backend).predict_series(x, bars.open_time)
            p_up = pred.probs[:, _LONG, _TAKE_PROFIT].astype(np.float64)
            table[bars.symbol] = (bars.open_time, bars.close, p_up)
        return cls(table)

    def on_bar(self, bar: Bar) -> float | None:
        symbol, t = bar.symbol, bar.open_time_ms
        times = self._times.get(symbol)
        if times is None:
            raise ModelError(f"no precomputed probabilities for {symbol}: not in the replay")
        i = self._next[symbol]
        if i >= len(times) or times[i] != t:
            if i and t <= times[i - 1]:
                return None  # out of order: the streaming feature engine refuses it too
            i = bisect_left(times, t)
            if i >= len(times) or times[i] != t:
                raise ModelError(f"no precomputed probability for {symbol} at {t} ms")
        if self._closes[symbol][i] != bar.close:
            raise ModelError(f"{symbol} bar at {t} ms differs from the precomputed series")
        self._next[symbol] = i + 1
        return self._probs[symbol][i]

    def on_gap(self, gap: Gap) -> None:
        return None  # the precomputed series restarted at the same gaps

    def on_trade(self, trade: Trade) -> None:
        return None  # bar replay has no trade prints (and the model reads no tick features)

    def warm(self, symbol: str) -> None:
        return None  # a table lookup: nothing to warm


class ModelSwap(NamedTuple):
    """A model loaded and its streaming predictors built, ready to go in between bars."""

    model: str  # name/version
    predictors: dict[str, Predictor]
    warmup_bars: int


class ModelStrategy:
    name = "model"

    def __init__(
        self,
        settings: StrategySettings,
        symbols: SymbolsSettings,
        model_path: Path,
        replay_bars: Sequence[BarColumns] | None = None,
        online: OnlineSettings | None = None,
    ) -> None:
        """`replay_bars`: the whole series a replay will feed (probabilities precomputed from
        it); None: streaming, bar by bar (live, paper). `online` with enabled: the model keeps
        learning (strategy/online.py), streaming only."""
        artifact = load_artifact(model_path, list(MODEL_INPUTS), MODEL_INPUTS_ID)
        label = artifact.meta["label"]
        self.model = f"{artifact.name}/{artifact.version}"
        self._label = _barriers(label)
        self._threshold = settings.min_confidence
        # Trade the barriers the model learned to predict, not the rule baseline's.
        self._position = LongOnly.from_settings(
            settings,
            symbols,
            Bracket(float(label["take_profit_bps"]), float(label["stop_loss_bps"])),
            int(label["horizon_bars"]) * BAR_INTERVAL_MS,
        )
        self.online: OnlineModel | None = None
        self.probabilities: ProbabilitySource
        if online is not None and online.enabled:
            if replay_bars is not None:
                raise ModelError("online learning needs streaming probabilities, not precomputed")
            self.online = OnlineModel(
                artifact, symbols.trade, online, LabelParams(*self._label), MODEL_INPUT_INDEX,
                (_LONG, _TAKE_PROFIT),
            )  # fmt: skip
            self.probabilities = self.online
        elif replay_bars is None:
            self.probabilities = StreamingProbabilities(
                artifact, symbols.trade, settings.model_backend
            )
        else:
            self.probabilities = PrecomputedProbabilities.from_bars(
                artifact, replay_bars, settings.model_backend
            )
        # Symbol -> this bar's P(take-profit first) (NaN: no prediction): the engine hands it
        # to the risk manager as the model's confidence (see strategy/base.py).
        self.last_probability: dict[str, float] = {}

    def on_bar(self, bar: Bar, ctx: StrategyContext) -> Sequence[OrderIntent]:
        p_up = self.probabilities.on_bar(bar)
        if p_up is None:
            # No output at this bar: the engine must not take an older one for it.
            self.last_probability.pop(bar.symbol, None)
            return NO_INTENTS
        self.last_probability[bar.symbol] = p_up
        # NaN (no prediction) never enters.
        intents = self._position.decide(bar, ctx, p_up >= self._threshold, f"model_p_tp={p_up:.3f}")
        if self.online is not None:  # learning comes after the decision, never before it
            flat = ctx.position(bar.symbol) is None
            self.online.after_decision(bar.symbol, bar.open_time_ms + BAR_INTERVAL_MS, flat)
        return intents

    def on_gap(self, gap: Gap) -> None:
        self.probabilities.on_gap(gap)
        self._position.on_gap(gap)

    def on_fill(self, fill: Fill) -> None:
        if self.online is not None:
            self.online.on_fill(fill)

    def on_trade(self, trade: Trade) -> None:
        self.probabilities.on_trade(trade)

    def warm(self, symbol: str) -> None:
        """strategy/base.py `Warmable`: the model's step is the costly part of a decision."""
        self.probabilities.warm(symbol)

    def prepare_swap(self, model_path: Path | str, backend: str) -> ModelSwap:
        """Load the model at `model_path` and build its predictors, leaving the running one
        alone: slow (torch, ONNX export), so call it off the event loop. Refuses a model of
        other inputs (as at start) or of other barriers: the brackets and time stops of open
        positions came from the running model's, and a restart is the place to change them."""
        probabilities = self.probabilities
        if not isinstance(probabilities, StreamingProbabilities):
            raise ModelError(
                "only a streaming model strategy (paper, live) without online learning swaps "
                "its model"
            )
        artifact = load_artifact(model_path, list(MODEL_INPUTS), MODEL_INPUTS_ID)
        label = _barriers(artifact.meta["label"])
        if label != self._label:
            raise ModelError(
                f"{model_path} was trained on barriers (take-profit bps, stop-loss bps, "
                f"horizon bars) {label}, the running model on {self._label}; restart to change"
            )
        predictors = probabilities.predictors_for(artifact, probabilities.symbols, backend)
        warmup = max((p.warmup_bars for p in predictors.values()), default=0)
        return ModelSwap(f"{artifact.name}/{artifact.version}", predictors, warmup)

    def swap(self, prepared: ModelSwap) -> str:
        """Put a prepared model in, between bars; returns the previous one's name/version. The
        features stay warm; the new model predicts (and enters) after its own warm-up."""
        assert isinstance(self.probabilities, StreamingProbabilities)
        self.probabilities.use_predictors(prepared.predictors)
        self.last_probability.clear()
        previous, self.model = self.model, prepared.model
        return previous


def _barriers(label: dict) -> tuple[float, float, int]:
    return (
        float(label["take_profit_bps"]),
        float(label["stop_loss_bps"]),
        int(label["horizon_bars"]),
    )


def feature_matrix(bars: BarColumns) -> tuple[np.ndarray, list[str], str]:
    """Training's inputs: the batch twin of what the strategy above computes bar by bar
    (`scalpd train` uses it)."""
    matrix = compute(bars)
    return matrix.values[:, MODEL_INPUT_INDEX], list(MODEL_INPUTS), MODEL_INPUTS_ID
