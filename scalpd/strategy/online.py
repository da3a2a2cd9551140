"""The model strategy's online model: a probability source whose network keeps learning from
the outcomes it sees (issue 8), the same in replay, paper and live.

Per symbol there is one learner (scalpd/models/online.py) and one predictor serving its
approved weights. Each closed bar:
1. the streaming features (the strategy's own rows: a feature is defined once) go through the
   served predictor, and the probability is returned for the decision;
2. after the decision (`after_decision`), the bar goes to the learner, whose samples enter
   its replay buffer only once their label has matured; the prediction made at a bar is then
   scored against that label (`matured_losses`: the served model's log-loss, no look-ahead);
3. at an update time (after a closed trade, or when the bar time enters a new hour or day),
   a round fine-tunes a copy of the approved weights, the guard judges it on the held-out
   bars, and an approved candidate serves from the next bar on: a new predictor built from
   it, its streaming state rebuilt by re-feeding the rows of its context since the last gap
   (exact for the TCN and the Transformer, whose output depends on those rows only; for the
   LSTM its state is truncated to them, its documented context).

Replay runs a round synchronously with the step budget only, so a seed gives the same
versions, hence the same trades (one thread: float sums depend on how work is split). Live,
`budget_ms` also bounds a round. Online models run on the eager backend: a new version is
served at once, where ONNX would cost an export per approval.

Lineage: every approved version (1, 2, ... per symbol; 0 is the trained artifact) and every
rejected candidate is logged with its parent version. Persisting versions and restoring one
through `scalpd ctl` are a later step.
"""

from __future__ import annotations

import copy
import math
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import structlog

from scalpd.config.settings import OnlineSettings
from scalpd.events import BAR_INTERVAL_MS, Bar, Fill, Gap, Side, Trade
from scalpd.features.incremental import FeatureEngine
from scalpd.models.artifact import ModelArtifact
from scalpd.models.backends import Predictor, make_predictor
from scalpd.models.errors import ModelError
from scalpd.models.labels import LabelParams
from scalpd.models.nets import SeqNet
from scalpd.models.online import OnlineLearner, OnlineParams, VolatilityLr

log = structlog.get_logger("scalpd.online")

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
_PERIOD_MS = {"hour": HOUR_MS, "day": DAY_MS}


@dataclass
class _SymbolModel:
    learner: OnlineLearner
    predictor: Predictor
    context: deque[np.ndarray]  # feature rows since the last gap, the model's context at most
    predictions: deque[np.ndarray | None] = field(default_factory=deque)  # awaiting labels
    last_ms: int | None = None
    last_close: float | None = None
    var_bps2: float = math.nan  # EWMA of squared 1m log returns, bps^2
    period: int | None = None  # hour or day index of the last bar seen
    due: bool = False
    sold: bool = False  # an exit filled since the position was last flat
    approved: int = 0
    rejected: int = 0
    loss_time_ms: array = field(default_factory=lambda: array("q"))
    loss_nats: array = field(default_factory=lambda: array("d"))


class OnlineModel:
    """A probability source (see strategy/model.py) that fine-tunes its model between bars."""

    def __init__(
        self,
        artifact: ModelArtifact,
        symbols: Sequence[str],
        settings: OnlineSettings,
        label: LabelParams,
        input_index: np.ndarray,
        long_tp: tuple[int, int],
        *,
        live: bool = False,
    ) -> None:
        net = artifact.net
        if not isinstance(net, SeqNet):
            raise ModelError(
                "online learning needs a single network (tcn, transformer, lstm); "
                f"{artifact.name}/{artifact.version} is an ensemble"
            )
        self.settings = settings
        self.model = f"{artifact.name}/{artifact.version}"
        self._features = FeatureEngine(symbols)
        self._index, self._long_tp = input_index, long_tp
        self._budget_ms = settings.budget_ms if live else None
        self._lr = VolatilityLr.from_settings(settings)
        self._decay = 1.0 - 2.0 ** (-1.0 / settings.lr_vol_halflife_bars)
        params = OnlineParams.from_settings(settings)
        keep = max(net.context_bars, net.warmup_bars)
        self._models: dict[str, _SymbolModel] = {}
        for symbol in symbols:
            learner = OnlineLearner(copy.deepcopy(net), label, params, self._lr)
            self._models[symbol] = _SymbolModel(
                learner, self._predictor(learner.approved), deque(maxlen=keep)
            )
        # Every approval and rejection, in order: what the log says, for reports and tests.
        self.lineage: list[dict[str, Any]] = []

    @staticmethod
    def _predictor(net: SeqNet) -> Predictor:
        # One thread, as StreamingProbabilities: a one-bar step is too small to split.
        return make_predictor(net, "eager", threads=1)

    # -- the probability source ------------------------------------------------------------

    def on_bar(self, bar: Bar) -> float | None:
        if not self._features.on_bar(bar):
            return None  # refused bar (bad or out of order): counted by the engine
        m = self._models[bar.symbol]
        x = self._features.vector(bar.symbol)[self._index]
        probs = m.predictor.predict_step(x)
        m.context.append(x)
        self._learn(m, bar, x, probs)
        if probs is None:
            return float("nan")
        return float(probs[self._long_tp])

    def on_gap(self, gap: Gap) -> None:
        self._features.on_gap(gap)
        m = self._models[gap.symbol]
        m.predictor.reset()  # a model's context never spans a gap
        m.context.clear()

    def on_trade(self, trade: Trade) -> None:
        self._features.on_trade(trade)

    # -- learning ----------------------------------------------------------------------------

    def _learn(self, m: _SymbolModel, bar: Bar, x: np.ndarray, probs: np.ndarray | None) -> None:
        t = bar.open_time_ms
        if m.last_ms is not None and t - m.last_ms != BAR_INTERVAL_MS:
            # The learner pushes the pending bars unlabelled at a gap: never scored.
            m.predictions.clear()
            m.last_close = None
        if m.last_close is not None and m.last_close > 0 and bar.close > 0:
            r2 = (math.log(bar.close / m.last_close) * 1e4) ** 2
            m.var_bps2 = (
                r2 if math.isnan(m.var_bps2) else m.var_bps2 + self._decay * (r2 - m.var_bps2)
            )
        m.last_ms, m.last_close = t, bar.close
        m.predictions.append(None if probs is None else probs.copy())
        learner = m.learner
        # At a gap the learner also flushes the bars still pending (unlabelled): the count it
        # returns is not "one label matured". The oldest prediction is scored when the
        # predictions outnumber the horizon: its label matured with this bar.
        learner.on_bar(t, x, bar.high, bar.low, bar.close)
        if len(m.predictions) > learner.label.horizon_bars:
            predicted = m.predictions.popleft()
            y, ok = learner.buffer.last()
            if ok and predicted is not None:
                picked = predicted[np.arange(2), y]
                m.loss_time_ms.append(t - learner.label.horizon_bars * BAR_INTERVAL_MS)
                m.loss_nats.append(float(-np.log(np.maximum(picked, 1e-12)).mean()))
        close_ms = t + BAR_INTERVAL_MS
        period_ms = _PERIOD_MS.get(self.settings.update_every)
        if period_ms is not None:
            period = close_ms // period_ms
            if m.period is not None and period != m.period:
                m.due = True
            m.period = period

    def on_fill(self, fill: Fill) -> None:
        """An exit fill, for update_every = "trade". The strategy is long only, so a sell is
        an exit; the trade has closed once the position is flat (an exit may fill in parts)."""
        if self.settings.update_every == "trade" and fill.side is Side.SELL:
            m = self._models.get(fill.symbol)
            if m is not None:
                m.sold = True

    def after_decision(self, symbol: str, close_ms: int, flat: bool) -> None:
        """Between this bar's decision and the next bar: run a round if one is due (`flat`:
        the symbol holds no position, so a trade that sold has closed)."""
        m = self._models.get(symbol)
        if m is None:
            return
        if m.sold and flat:
            m.sold, m.due = False, True
        if not m.due:
            return
        m.due = False
        learner = m.learner
        parent = learner.version
        lr_rule = replace(
            self._lr, base_lr=self._lr.base_lr * self.settings.lr_decay**learner.rounds
        )
        learner.lr_rule = lr_rule
        vol_bps = math.sqrt(m.var_bps2) if m.var_bps2 >= 0 else math.nan
        candidate = learner.fine_tune(
            self.settings.max_steps, budget_ms=self._budget_ms, recent_vol=vol_bps
        )
        if candidate is None:
            return  # nothing to train on or judge on yet
        record = {
            "symbol": symbol,
            "model": self.model,
            "round": candidate.round,
            "parent": parent,
            "bar_close_ms": close_ms,
            "steps": candidate.steps,
            "lr": lr_rule(vol_bps),
            "holdout_loss": candidate.holdout_loss,
            "approved_loss": candidate.approved_loss,
            "reason": candidate.verdict.reason,
        }
        if learner.approve(candidate):
            m.approved += 1
            record["version"] = learner.version
            m.predictor = self._rebuilt(learner.approved, m.context)
            log.info("online_version_approved", **record)
        else:
            m.rejected += 1
            record["version"] = None
            log.warning("online_candidate_rejected", **record)
        self.lineage.append(record)

    def _rebuilt(self, net: SeqNet, context: deque[np.ndarray]) -> Predictor:
        predictor = self._predictor(net)
        for row in context:  # the same rows, in order: the new weights' state at this bar
            predictor.predict_step(row)
        return predictor

    # -- what it did -----------------------------------------------------------------------

    def counts(self) -> dict[str, tuple[int, int]]:
        """symbol -> (versions approved, candidates rejected)."""
        return {s: (m.approved, m.rejected) for s, m in self._models.items()}

    def matured_losses(self, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        """(open time ms of the predicted bar, log-loss nats of the prediction served there,
        averaged over both sides): only bars whose label matured and that had a prediction."""
        m = self._models[symbol]
        return np.frombuffer(m.loss_time_ms, np.int64).copy(), np.frombuffer(m.loss_nats).copy()
