"""The model strategy's online model: a probability source whose network keeps learning from
the outcomes it sees (issue 8), the same in replay, paper and live.

Per symbol there is one learner (scalpd/models/online.py) and a predictor for each model in
play (champion, challenger, a champion on probation's predecessor). Each closed bar:
1. the streaming features (the strategy's own rows: a feature is defined once) go through the
   deciding predictor, and the probability is returned for the decision;
2. after the decision (`after_decision`), the bar goes to the learner, whose samples enter
   its replay buffer only once their label has matured; the prediction made at a bar is then
   scored against that label (`matured_losses`: the served model's log-loss, no look-ahead);
3. at an update time (after a closed trade, or when the bar time enters a new hour or day),
   a round fine-tunes a copy of the learner's anchor weights and the guard judges it on the
   held-out bars. A rejected candidate is a `rejected` record. An approved one becomes the
   CHALLENGER (a predictor of its own, its streaming state rebuilt by re-feeding the rows of
   its context since the last gap: exact for the TCN and the Transformer, whose output depends
   on those rows only; for the LSTM its state is truncated to them, its documented context).

Champion/challenger (scalpd/models/challenger.py has the test and the state machine): every
model in play predicts every bar; the one that decides does so before the decision, the others
(shadows) right after it (`after_decision`), so shadowing costs the decision nothing. Each
matured bar scores both models of a trial. The challenger decides a share of the bars (a hash
of (seed, symbol, bar time) against the share: reproducible) that climbs
`challenger_shares` each time the shadow test finds it better over the bars scored so far;
at 1.0 it is promoted, and the old champion stays in shadow for `probation_bars` against it.
A challenger found worse, or a new champion found worse than the one it replaced, is rolled
back: a `rolled_back` record (the daemon alerts on it), and the learner's anchor returns to
the champion's weights. The learner keeps fine-tuning from the newest approved version, so a
challenger is a line: a round approved while a trial runs replaces the challenger and keeps
the trial's evidence (the test judges the fine-tuning since the champion; restarting it every
round would never gather enough bars at hourly rounds); a rollback drops the whole line.
`restore` brings an operator's version back as champion at once.

Replay runs a round synchronously with the step budget only, so a seed gives the same
versions, hence the same trades (one thread: float sums depend on how work is split). Live,
`budget_ms` also bounds a round. Online models run on the eager backend: a new version is
served at once, where ONNX would cost an export per approval.

Records (scalpd/models/versions.py, drained by `take_records`): every candidate gets a version
number (1, 2, ... per symbol; 0 is the trained artifact) and a ModelVersion naming its parent
(weights None when rejected), then events: challenger, promoted, rolled_back, rejected,
restored. `lineage` keeps one dict per round (version, parent, accepted, losses) for reports.
"""

from __future__ import annotations

import copy
import io
import math
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import structlog
import torch

from scalpd.config.settings import OnlineSettings
from scalpd.events import BAR_INTERVAL_MS, Bar, Fill, Gap, Side, Trade
from scalpd.features.incremental import FeatureEngine
from scalpd.models.artifact import ModelArtifact
from scalpd.models.backends import Predictor, make_predictor
from scalpd.models.challenger import Trial, challenger_decides
from scalpd.models.errors import ModelError
from scalpd.models.labels import LabelParams, log_loss_row
from scalpd.models.nets import SeqNet
from scalpd.models.online import Candidate, OnlineLearner, OnlineParams, VolatilityLr
from scalpd.models.versions import ModelVersion, VersionEvent, VersionEventKind, VersionRecord

log = structlog.get_logger("scalpd.online")

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
_PERIOD_MS = {"hour": HOUR_MS, "day": DAY_MS}


@dataclass(eq=False)
class _Served:
    """One version with a predictor of its own, stepped every bar (decider or shadow)."""

    version: int
    net: SeqNet
    predictor: Predictor


@dataclass(eq=False)
class _Pair:
    """One bar's predictions of two models on trial (old: the incumbent), to score later."""

    trial: Trial
    old: _Served
    new: _Served
    old_probs: np.ndarray | None = None
    new_probs: np.ndarray | None = None


@dataclass(eq=False)
class _Entry:
    served: np.ndarray | None  # the deciding model's probabilities
    pairs: list[_Pair]


@dataclass
class _SymbolModel:
    learner: OnlineLearner
    champion: _Served
    context: deque[np.ndarray]  # feature rows since the last gap, the model's context at most
    predictions: deque[_Entry] = field(default_factory=deque)  # awaiting labels
    challenger: _Served | None = None
    trial: Trial | None = None  # the challenger's, against the champion
    previous: _Served | None = None  # the champion a promotion replaced, during probation
    probation: Trial | None = None  # the champion's, against `previous`
    anchor_version: int = 0  # the version the learner fine-tunes from (learner.approved)
    next_version: int = 1
    # This bar, its row, the predictions made so far (by id of _Served) and its entry: the
    # shadow models step, and the learner learns, after the decision (`settle`).
    step: tuple[Bar, np.ndarray, dict[int, np.ndarray | None], _Entry] | None = None
    flat: bool = True  # the symbol held no position after the last decision
    last_ms: int | None = None
    last_close: float | None = None
    var_bps2: float = math.nan  # EWMA of squared 1m log returns, bps^2
    period: int | None = None  # hour or day index of the last bar seen
    due: bool = False
    sold: bool = False  # an exit filled since the position was last flat
    # Daemon (rounds deferred): a round is due since the bar that closed at `round_ms`, and the
    # context rows seen so far (a round's predictor is rebuilt on a copy of them in a thread).
    round_due: bool = False
    round_ms: int = 0
    rows_seen: int = 0
    gaps: int = 0
    approved: int = 0
    rejected: int = 0
    loss_time_ms: array = field(default_factory=lambda: array("q"))
    loss_nats: array = field(default_factory=lambda: array("d"))

    def models(self) -> list[_Served]:
        return [s for s in (self.champion, self.challenger, self.previous) if s is not None]


def _weights(net: SeqNet) -> bytes:
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.getvalue()


@dataclass(frozen=True)
class RoundResult:
    candidate: Candidate
    predictor: Predictor | None  # the candidate's, fed the job's context (None: rejected)
    weights: bytes | None = None  # its state_dict serialized where it was trained


@dataclass
class RoundJob:
    """A round's inputs, copied off the loop's state (`OnlineModel.prepare_round`)."""

    symbol: str
    learner: OnlineLearner  # a shallow copy with its own replay buffer
    parent: SeqNet  # the weights it fine-tunes: stale if the anchor moves meanwhile
    close_ms: int
    lr: float
    vol_bps: float
    max_steps: int
    budget_ms: float | None
    context: list[np.ndarray]
    rows_seen: int
    gaps: int

    def train(self) -> tuple[Candidate, bytes | None] | None:
        """The optimiser steps and the guard's judgement, on the job's copies only: safe in a
        worker thread or process (the job pickles); an approved candidate's weights are
        serialized there too, not on the event loop."""
        candidate = self.learner.fine_tune(
            self.max_steps, budget_ms=self.budget_ms, recent_vol=self.vol_bps
        )
        if candidate is None:
            return None
        return candidate, _weights(candidate.net) if candidate.verdict.accept else None

    def predictor_for(self, candidate: Candidate) -> Predictor:
        """An approved candidate's predictor, fed the job's context rows (on the daemon's
        loop, at the hand-off)."""
        return OnlineModel._rebuilt(candidate.net, self.context)


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
        self._index, self._long_tp, self._label = input_index, long_tp, label
        self._budget_ms: float | None = None  # replay counts steps only; see defer_rounds
        self._lr = VolatilityLr.from_settings(settings)
        self._decay = 1.0 - 2.0 ** (-1.0 / settings.lr_vol_halflife_bars)
        params = OnlineParams.from_settings(settings)
        keep = max(net.context_bars, net.warmup_bars)
        self._models: dict[str, _SymbolModel] = {}
        for symbol in symbols:
            learner = OnlineLearner(copy.deepcopy(net), label, params, self._lr)
            champion = _Served(0, learner.approved, self._predictor(learner.approved))
            self._models[symbol] = _SymbolModel(learner, champion, deque(maxlen=keep))
        # Every round (approved or rejected), in order: what the log says, for reports and tests.
        self.lineage: list[dict[str, Any]] = []
        self._records: list[VersionRecord] = []
        self._deferred = False  # rounds run where they fall due (replay); see defer_rounds

    @staticmethod
    def _predictor(net: SeqNet) -> Predictor:
        # One thread, as StreamingProbabilities: a one-bar step is too small to split.
        return make_predictor(net, "eager", threads=1)

    def _new_trial(self, *, probation: bool = False) -> Trial:
        s = self.settings
        horizon = self._label.horizon_bars
        return Trial(
            tuple(s.challenger_shares),
            s.challenger_min_bars,
            s.challenger_alpha,
            lag_bars=horizon - 1,  # labels of bars closer than the horizon overlap
            probation=probation,
            probation_bars=s.probation_bars,
        )

    # -- the probability source ------------------------------------------------------------

    def on_bar(self, bar: Bar) -> float | None:
        if not self._features.on_bar(bar):
            return None  # refused bar (bad or out of order): counted by the engine
        m = self._models[bar.symbol]
        self._settle(m)  # the previous bar's, if nobody did it after its decision
        x = self._features.vector(bar.symbol)[self._index]
        decider = m.champion
        if m.challenger is not None and m.trial is not None:
            share = m.trial.share
            if challenger_decides(self.settings.seed, bar.symbol, bar.open_time_ms, share):
                decider = m.challenger
        probs = decider.predictor.predict_step(x)
        m.context.append(x)
        m.rows_seen += 1
        pairs = []
        if m.trial is not None and m.challenger is not None:
            pairs.append(_Pair(m.trial, m.champion, m.challenger))
        if m.probation is not None and m.previous is not None:
            pairs.append(_Pair(m.probation, m.previous, m.champion))
        entry = _Entry(None if probs is None else probs.copy(), pairs)
        m.step = (bar, x, {id(decider): probs}, entry)
        if probs is None:
            return float("nan")
        return float(probs[self._long_tp])

    def _settle(self, m: _SymbolModel) -> None:
        """What follows a decision, before the symbol's next bar: the models that did not
        decide see the bar's row (their predictions go to its trial pairs), the learner takes
        the bar and scores what matured, and a round runs if one is due (deferred: noted for
        the daemon's round runner). Nothing here changes the decision it follows."""
        if m.step is None:
            return
        bar, x, made, entry = m.step
        m.step = None
        for served in m.models():
            if id(served) not in made:
                made[id(served)] = served.predictor.predict_step(x)
        for pair in entry.pairs:
            old, new = made.get(id(pair.old)), made.get(id(pair.new))
            pair.old_probs = None if old is None else old.copy()
            pair.new_probs = None if new is None else new.copy()
        self._learn(m, bar, x, entry)
        if m.sold and m.flat:
            m.sold, m.due = False, True
        if not m.due:
            return
        m.due = False
        close_ms = bar.open_time_ms + BAR_INTERVAL_MS
        if self._deferred:
            m.round_due, m.round_ms = True, close_ms
        else:
            self._round(m, bar.symbol, close_ms)

    def on_gap(self, gap: Gap) -> None:
        self._features.on_gap(gap)
        m = self._models[gap.symbol]
        self._settle(m)
        m.gaps += 1
        for served in m.models():
            served.predictor.reset()  # a model's context never spans a gap
        m.context.clear()

    def on_trade(self, trade: Trade) -> None:
        self._features.on_trade(trade)

    def warm(self, symbol: str) -> None:
        """A throwaway step of each model in play for `symbol` (the decider is drawn per bar)."""
        for served in self._models[symbol].models():
            served.predictor.warm()

    # -- learning ----------------------------------------------------------------------------

    def _learn(self, m: _SymbolModel, bar: Bar, x: np.ndarray, entry: _Entry) -> None:
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
        m.predictions.append(entry)
        learner = m.learner
        # At a gap the learner also flushes the bars still pending (unlabelled): the count it
        # returns is not "one label matured". The oldest prediction is scored when the
        # predictions outnumber the horizon: its label matured with this bar.
        learner.on_bar(t, x, bar.high, bar.low, bar.close)
        if len(m.predictions) > learner.label.horizon_bars:
            scored = m.predictions.popleft()
            y, ok = learner.buffer.last()
            if ok:
                if scored.served is not None:
                    m.loss_time_ms.append(t - learner.label.horizon_bars * BAR_INTERVAL_MS)
                    m.loss_nats.append(log_loss_row(scored.served, y))
                self._judge(m, bar.symbol, scored, y, t + BAR_INTERVAL_MS)
        close_ms = t + BAR_INTERVAL_MS
        period_ms = _PERIOD_MS.get(self.settings.update_every)
        if period_ms is not None:
            period = close_ms // period_ms
            if m.period is not None and period != m.period:
                m.due = True
            m.period = period

    def _judge(self, m: _SymbolModel, symbol: str, scored: _Entry, y: np.ndarray, t: int) -> None:
        """Score a matured bar's trial pairs and act on what the trials say."""
        for pair in scored.pairs:
            if pair.old_probs is None or pair.new_probs is None:
                continue
            trial = pair.trial
            if trial is not m.trial and trial is not m.probation:
                continue  # a trial that has ended (rollback, promotion, restore)
            action = trial.add(log_loss_row(pair.old_probs, y), log_loss_row(pair.new_probs, y))
            if action is not None:
                self._act(m, symbol, trial, action, t)

    def _act(self, m: _SymbolModel, symbol: str, trial: Trial, action: str, t: int) -> None:
        reason = trial.reason()
        if trial is m.trial:
            challenger = m.challenger
            assert challenger is not None
            if action == "advance":
                log.info("online_challenger_share", symbol=symbol, version=challenger.version,
                         share=trial.share, reason=reason)  # fmt: skip
            elif action == "promote":
                m.previous, m.champion = m.champion, challenger
                m.probation = (
                    self._new_trial(probation=True) if self.settings.probation_bars else None
                )
                if m.probation is None:
                    m.previous = None
                m.challenger, m.trial = None, None
                self._event(symbol, challenger.version, "promoted", t, reason)
                log.info("online_version_promoted", symbol=symbol, version=challenger.version,
                         reason=reason)  # fmt: skip
            elif action == "rollback":
                m.challenger, m.trial = None, None
                self._anchor(m, m.champion)
                why = f"worse than champion v{m.champion.version} in shadow: {reason}"
                self._rolled_back(symbol, challenger.version, t, why)
        elif trial is m.probation:
            if action == "confirm":
                log.info("online_version_confirmed", symbol=symbol, version=m.champion.version,
                         reason=reason)  # fmt: skip
                m.previous, m.probation = None, None
            elif action == "rollback":
                bad, good = m.champion, m.previous
                assert good is not None
                m.champion, m.previous, m.probation = good, None, None
                why = f"worse than the champion it replaced, v{good.version}: {reason}"
                self._rolled_back(symbol, bad.version, t, why)
                # The one it replaced serves again: said as a promotion, since a rolled-back
                # champion's parent need not be the champion before it (a challenger line).
                back = f"back in service: v{bad.version} was rolled back"
                self._event(symbol, good.version, "promoted", t, back)
                if m.challenger is not None:  # its line descends from the dropped champion
                    self._rolled_back(
                        symbol,
                        m.challenger.version,
                        t,
                        f"its champion v{bad.version} was rolled back",
                    )
                m.challenger, m.trial = None, None
                self._anchor(m, good)

    def _anchor(self, m: _SymbolModel, served: _Served) -> None:
        """The learner fine-tunes from (and is pulled toward) `served` from now on."""
        m.learner.approved = served.net  # one assignment, as OnlineLearner.approve
        m.anchor_version = served.version

    def _event(self, symbol: str, version: int, kind: VersionEventKind, t: int, why: str) -> None:
        self._records.append(VersionEvent(symbol, self.model, version, kind, t, why))

    def _rolled_back(self, symbol: str, version: int, t: int, why: str) -> None:
        self._event(symbol, version, "rolled_back", t, why)
        log.warning("online_version_rolled_back", symbol=symbol, model=self.model,
                    version=version, reason=why)  # fmt: skip

    def on_fill(self, fill: Fill) -> None:
        """An exit fill, for update_every = "trade". The strategy is long only, so a sell is
        an exit; the trade has closed once the position is flat (an exit may fill in parts)."""
        if self.settings.update_every == "trade" and fill.side is Side.SELL:
            m = self._models.get(fill.symbol)
            if m is not None:
                m.sold = True

    def request_round(self, symbol: str) -> None:
        """A round runs after the next decision on `symbol`, whatever `update_every` says."""
        self._models[symbol].due = True

    def after_decision(self, symbol: str, close_ms: int, flat: bool) -> None:
        """This bar's decision is made (`flat`: the symbol holds no position, so a trade that
        sold has closed). Replay settles it at once (`settle`); the daemon later, once the
        bar's orders have left."""
        m = self._models.get(symbol)
        if m is None:
            return
        m.flat = flat
        if not self._deferred:
            self._settle(m)

    def settle(self, symbol: str) -> None:
        """The daemon: the work after `symbol`'s decision (see `_settle`), off its decision
        path; it also happens at the symbol's next bar if not done by then."""
        m = self._models.get(symbol)
        if m is not None:
            self._settle(m)

    def _round(self, m: _SymbolModel, symbol: str, close_ms: int) -> None:
        learner = m.learner
        lr_rule = self._lr_rule(learner)
        learner.lr_rule = lr_rule
        vol_bps = self._vol_bps(m)
        candidate = learner.fine_tune(
            self.settings.max_steps, budget_ms=self._budget_ms, recent_vol=vol_bps
        )
        if candidate is None:
            return  # nothing to train on or judge on yet
        self._consider(m, symbol, candidate, close_ms, lr_rule(vol_bps))

    def _lr_rule(self, learner: OnlineLearner) -> VolatilityLr:
        return replace(self._lr, base_lr=self._lr.base_lr * self.settings.lr_decay**learner.rounds)

    @staticmethod
    def _vol_bps(m: _SymbolModel) -> float:
        return math.sqrt(m.var_bps2) if m.var_bps2 >= 0 else math.nan

    # -- rounds off the event loop (the daemon: scalpd/live/learning.py) ----------------------

    def defer_rounds(self) -> None:
        """From now on a due round is only noted (`due_rounds`), for a runner that computes
        it in a worker process (`prepare_round`, `RoundJob.train`) and hands the candidate back
        between bars (`finish_round`); `online.budget_ms` bounds each."""
        self._deferred = True
        self._budget_ms = self.settings.budget_ms

    def due_rounds(self) -> list[str]:
        return [s for s, m in self._models.items() if m.round_due]

    def prepare_round(self, symbol: str) -> RoundJob | None:
        """A due round's inputs, copied so that the worker touches nothing the loop uses:
        the learner with its own replay buffer, the context rows for the candidate's
        predictor."""
        m = self._models[symbol]
        if not m.round_due:
            return None
        m.round_due = False
        learner = copy.copy(m.learner)
        learner.buffer = copy.deepcopy(m.learner.buffer)
        lr_rule = self._lr_rule(learner)
        learner.lr_rule = lr_rule
        vol_bps = self._vol_bps(m)
        return RoundJob(
            symbol,
            learner,
            parent=m.learner.approved,
            close_ms=m.round_ms,
            lr=lr_rule(vol_bps),
            vol_bps=vol_bps,
            max_steps=self.settings.max_steps,
            budget_ms=self._budget_ms,
            context=list(m.context),
            rows_seen=m.rows_seen,
            gaps=m.gaps,
        )

    def finish_round(self, job: RoundJob, result: RoundResult | None) -> None:
        """The worker's candidate, between bars: judged and recorded as a replay's would be,
        unless a rollback or restore moved the learner's anchor meanwhile (then it is stale:
        dropped, logged)."""
        m = self._models[job.symbol]
        if result is None:
            return
        # The round counted on the job's copy: the next round's seed follows it.
        m.learner.rounds = max(m.learner.rounds, result.candidate.round)
        if m.learner.approved is not job.parent:
            log.info("online_round_stale", symbol=job.symbol, round=result.candidate.round)
            return
        predictor = result.predictor
        fresh = m.rows_seen - job.rows_seen
        if predictor is not None and m.gaps == job.gaps and fresh <= len(m.context):
            if fresh:  # the rows that came while it was built
                predictor.feed(np.asarray(list(m.context)[len(m.context) - fresh :]))
        else:
            predictor = None  # a gap meanwhile: rebuilt from the context as it is now
        self._consider(
            m, job.symbol, result.candidate, job.close_ms, job.lr, predictor, result.weights
        )

    def _consider(
        self,
        m: _SymbolModel,
        symbol: str,
        candidate: Candidate,
        close_ms: int,
        lr: float,
        predictor: Predictor | None = None,
        weights: bytes | None = None,
    ) -> None:
        """A round's candidate: a challenger if the guard approves it, else a rejection."""
        version, parent = m.next_version, m.anchor_version
        m.next_version += 1
        record = {
            "symbol": symbol,
            "model": self.model,
            "round": candidate.round,
            "version": version,
            "parent": parent,
            "accepted": candidate.verdict.accept,
            "bar_close_ms": close_ms,
            "steps": candidate.steps,
            "lr": lr,
            "holdout_loss": candidate.holdout_loss,
            "approved_loss": candidate.approved_loss,
            "reason": candidate.verdict.reason,
        }
        metrics = {
            k: float(record[k])
            for k in ("round", "steps", "lr", "holdout_loss", "approved_loss")
            if math.isfinite(record[k])
        }
        self.lineage.append(record)
        if not m.learner.approve(candidate):
            m.rejected += 1
            self._records.append(
                ModelVersion(symbol, self.model, version, parent, close_ms, None, metrics)
            )
            self._event(symbol, version, "rejected", close_ms, candidate.verdict.reason)
            log.warning("online_candidate_rejected", **record)
            return
        m.approved += 1
        m.anchor_version = version
        net = candidate.net
        self._records.append(
            ModelVersion(
                symbol, self.model, version, parent, close_ms, weights or self._kept(net), metrics
            )
        )
        # A newer version of a live challenger line takes its place and its evidence.
        m.challenger = _Served(version, net, predictor or self._rebuilt(net, m.context))
        if m.trial is None:
            m.trial = self._new_trial()
        self._event(symbol, version, "challenger", close_ms, candidate.verdict.reason)
        log.info("online_challenger", share=m.trial.share, **record)

    @staticmethod
    def _rebuilt(net: SeqNet, context: Sequence[np.ndarray]) -> Predictor:
        predictor = OnlineModel._predictor(net)
        if context:  # the same rows, in order: the new weights' state at this bar
            predictor.feed(np.asarray(context))
        return predictor

    def _kept(self, net: SeqNet) -> bytes | None:
        """A version's weights as its record keeps them: always in the daemon (its rounds
        are deferred), in a replay only with `online.replay_weights` (else not serialized at
        all: a year of hourly versions would be gigabytes)."""
        return _weights(net) if self._deferred or self.settings.replay_weights else None

    # -- versions in and out -------------------------------------------------------------------

    def take_records(self) -> list[VersionRecord]:
        """The versions made and the events since the last call, in order (drained)."""
        out, self._records = self._records, []
        return out

    def restore(self, symbol: str, version: int, weights: bytes, time_ms: int) -> None:
        """An operator brings back an earlier version (`weights`: torch.save of its state_dict):
        it is the champion from the next bar on, any challenger or probation ends, and the
        learner fine-tunes from it."""
        m = self._models.get(symbol)
        if m is None:
            raise ModelError(f"online model has no symbol {symbol}")
        net = copy.deepcopy(m.champion.net)
        try:
            state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as e:  # noqa: BLE001 - any failure means the weights do not fit
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(
                f"version {version} does not fit {self.model}'s network "
                f"({type(net).__name__}): {first}"
            ) from e
        net.eval()
        self._settle(m)  # the bar before finishes with the models it was decided with
        m.champion = _Served(version, net, self._rebuilt(net, m.context))
        m.challenger = m.trial = m.previous = m.probation = None
        self._anchor(m, m.champion)
        self._event(symbol, version, "restored", time_ms, "restored by the operator")
        log.warning("online_version_restored", symbol=symbol, model=self.model, version=version)

    # -- what it did -----------------------------------------------------------------------

    def counts(self) -> dict[str, tuple[int, int]]:
        """symbol -> (candidates the guard approved, candidates it rejected)."""
        return {s: (m.approved, m.rejected) for s, m in self._models.items()}

    def serving(self, symbol: str) -> dict[str, Any]:
        """Who serves `symbol` now: champion and challenger versions, the challenger's share,
        and the champion a promotion replaced while it is on probation."""
        m = self._models[symbol]
        return {
            "champion": m.champion.version,
            "challenger": None if m.challenger is None else m.challenger.version,
            "share": 0.0 if m.trial is None else m.trial.share,
            "previous": None if m.previous is None else m.previous.version,
            "anchor": m.anchor_version,
        }

    def matured_losses(self, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        """(open time ms of the predicted bar, log-loss nats of the prediction served there,
        averaged over both sides): only bars whose label matured and that had a prediction."""
        m = self._models[symbol]
        return np.frombuffer(m.loss_time_ms, np.int64).copy(), np.frombuffer(m.loss_nats).copy()
