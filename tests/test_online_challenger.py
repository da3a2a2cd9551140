"""Champion/challenger with automatic rollback (issue 8): the shadow test and the share state
machine by hand, then the online model driven bar by bar: a poisoned round never decides, a
worse challenger that passes a lenient guard is rolled back with a record, and an operator's
restore serves the given weights from the next bar. (Promotion on a planted regime change and
identical records on a second replay: tests/test_online_replay.py.)"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
import torch

from scalpd.config.settings import ConfigError, load_settings
from scalpd.data.synthetic import generate
from scalpd.events import BAR_INTERVAL_MS, Bar
from scalpd.models.challenger import (
    Trial,
    challenger_decides,
    newey_west_variance,
    paired_test,
)
from scalpd.models.errors import ModelError
from scalpd.models.labels import TAKE_PROFIT, LabelParams
from scalpd.models.nets import build_net
from scalpd.models.train import TrainParams
from scalpd.models.versions import ModelVersion, VersionEvent
from scalpd.replay.source import ReplaySource
from scalpd.strategy.model import ModelStrategy
from scalpd.strategy.online import OnlineModel
from tests.tiny_models import train_tcn

# -- the statistics, by hand ---------------------------------------------------------------


def _sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def test_newey_west_variance_by_hand() -> None:
    # d = 1, -1, 1, -1: gamma_0 = 1, gamma_1 = -3/4; Bartlett weight at lag 1 of 1 is 1/2.
    assert newey_west_variance([1, -1, 1, -1], 0) == pytest.approx(1.0)
    assert newey_west_variance([1, -1, 1, -1], 1) == pytest.approx(1 - 0.75)
    # Never negative, whatever the autocovariances.
    assert newey_west_variance([1, -1] * 10, 5) >= 0


def test_paired_test_by_hand() -> None:
    # d = .1 .3 .2 .4: mean .25, gamma_0 = .0125, se = sqrt(.0125 / 4); HLN with h = 1:
    # sqrt((4 + 1 - 2) / 4). Statistic sqrt(3/4) * .25 / sqrt(.003125) = sqrt(15).
    t = paired_test([0.1, 0.3, 0.2, 0.4], lag_bars=0)
    assert t.mean_nats == pytest.approx(0.25)
    assert t.se_nats == pytest.approx(math.sqrt(0.003125))
    assert t.stat == pytest.approx(math.sqrt(15))
    assert t.p_better == pytest.approx(_sf(math.sqrt(15)))
    assert t.p_worse == pytest.approx(1 - _sf(math.sqrt(15)))
    # The same differences the other way round: as strong, for "worse".
    assert paired_test([-0.1, -0.3, -0.2, -0.4], 0).p_worse == pytest.approx(t.p_better)
    # Overlap widens the variance: the same mean is weaker evidence with a lag.
    d = ([0.3] * 4 + [-0.1] * 4) * 5  # runs of 4, as overlapping labels make them
    assert paired_test(d, 3).p_better > paired_test(d, 0).p_better
    assert paired_test([0.2], 0).p_better == 1.0  # one bar: no evidence


def test_trial_climbs_shares_then_promotes() -> None:
    trial = Trial((0.5, 1.0), min_bars=2, alpha=0.05, lag_bars=0)
    assert trial.share == 0.0
    # (old, new) losses: d = .1, .3: mean .2, se = sqrt(.01 / 2), HLN sqrt(1/2): DM = 2.0,
    # p = .0228 < .05.
    assert trial.add(1.0, 0.9) is None  # no test before min_bars
    assert trial.add(1.0, 0.7) == "advance"
    assert trial.last is not None and trial.last.stat == pytest.approx(2.0)
    assert trial.share == 0.5
    assert trial.add(1.0, float("nan")) is None  # not a pair: skipped
    assert trial.add(1.0, 0.8) is None
    assert trial.add(1.0, 0.6) == "promote"  # d = .1 .3 .2 .4: DM sqrt(15)
    assert trial.share == 1.0 and trial.done
    assert trial.add(1.0, 0.0) is None  # over


def test_trial_rolls_back_a_worse_model() -> None:
    trial = Trial((0.5, 1.0), min_bars=2, alpha=0.05, lag_bars=0)
    assert trial.add(0.9, 1.0) is None
    assert trial.add(0.7, 1.0) == "rollback"  # DM = -2.0
    assert trial.share == 0.0 and trial.done
    # No evidence either way: it stays in shadow.
    even = Trial((0.5, 1.0), min_bars=2, alpha=0.05, lag_bars=0)
    assert [even.add(1.0, 0.9), even.add(1.0, 1.1)] == [None, None] and even.share == 0.0


def test_probation_confirms_or_rolls_back() -> None:
    watched = Trial((1.0,), min_bars=2, alpha=0.05, lag_bars=0, probation=True, probation_bars=4)
    assert watched.share == 1.0
    assert [watched.add(1.0, 0.9), watched.add(1.0, 1.1)] == [None, None]
    assert [watched.add(1.0, 0.9), watched.add(1.0, 1.1)] == [None, "confirm"]
    bad = Trial((1.0,), min_bars=2, alpha=0.05, lag_bars=0, probation=True, probation_bars=4)
    assert [bad.add(0.9, 1.0), bad.add(0.7, 1.0)] == [None, "rollback"]


def test_trial_and_settings_refuse_bad_shares() -> None:
    with pytest.raises(ValueError, match="rise to 1.0"):
        Trial((0.5, 0.9), min_bars=2, alpha=0.05, lag_bars=0)
    with pytest.raises(ConfigError, match="online.challenger_shares"):
        load_settings(None, {"online": {"challenger_shares": [0.5, 0.25, 1.0]}})
    with pytest.raises(ConfigError, match="online.challenger_alpha"):
        load_settings(None, {"online": {"challenger_alpha": 0.7}})


def test_who_decides_is_a_deterministic_hash() -> None:
    times = range(0, 4000 * BAR_INTERVAL_MS, BAR_INTERVAL_MS)
    picks = [challenger_decides(3, "BTC/USDT", t, 0.25) for t in times]
    assert picks == [challenger_decides(3, "BTC/USDT", t, 0.25) for t in times]
    assert 0.22 < np.mean(picks) < 0.28
    assert picks != [challenger_decides(3, "ETH/USDT", t, 0.25) for t in times]
    assert not any(challenger_decides(3, "BTC/USDT", t, 0.0) for t in times[:50])
    assert all(challenger_decides(3, "BTC/USDT", t, 1.0) for t in times[:50])


# -- the online model, bar by bar --------------------------------------------------------------

START = "2024-01-01T00:00:00Z"
LABEL = LabelParams(take_profit_bps=15, stop_loss_bps=15, horizon_bars=15)
# Rounds only when a test asks (request_round): "trade" with no fills never fires.
ONLINE = {
    "enabled": True, "update_every": "trade", "max_steps": 10, "base_lr": 2.5e-3,
    "lr_vol_power": 0.0, "seq_len": 32, "batch_size": 32, "recent_bars": 240,
    "holdout_bars": 120, "seed": 0, "challenger_min_bars": 60, "probation_bars": 120,
}  # fmt: skip
ROUND_AT = 2200  # bars fed before the round under test


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    bars = generate(2.5, 11, START, flow_drift_sigmas=0.5)
    params = TrainParams(
        epochs=6, lr=3e-3, window_bars=64, stride_bars=8, val_fraction=0.2, keep_best=False,
        label=LABEL, net={"hidden": 16, "levels": 3, "warmup_bars": 16}, seed=0,
        device="cpu", version="v1", threads=1,
    )  # fmt: skip
    art, _, _ = train_tcn(bars, LABEL, tmp_path_factory.mktemp("models"), params, n=1700)
    stream = [b for _, seg in ReplaySource([bars]).segments() for b in seg]
    return {"bars": stream, "artifact": art}


def _online(market: dict, **overrides: Any) -> OnlineModel:
    settings = load_settings(
        None,
        {
            "strategy": {"name": "model", "model_path": str(market["artifact"].path)},
            "symbols": {"trade": [market["bars"][0].symbol]},
            "online": {**ONLINE, **overrides},
        },
    )
    strategy = ModelStrategy(
        settings.strategy, settings.symbols, market["artifact"].path, online=settings.online
    )
    assert strategy.online is not None
    return strategy.online


def _feed(online: OnlineModel, bars: list[Bar]) -> list[float | None]:
    out = []
    for bar in bars:
        out.append(online.on_bar(bar))
        online.after_decision(bar.symbol, bar.close_time_ms, flat=True)
    return out


def _poisoned_round(online: OnlineModel, bar: Bar) -> None:
    """One round on a poisoned training region (the held-out bars stay clean), then the
    buffer back as it was: a broken update, not a broken market."""
    learner = online._models[bar.symbol].learner
    buf = learner.buffer
    _, recent, held = learner._regions()
    seq_len = learner.params.seq_len
    # Every row of a training window, none of a held-out one.
    rows = np.arange(recent.min() - seq_len + 1, held.min() - seq_len + 1)
    assert len(buf) < buf.capacity  # positions are slots
    y = buf._y.copy()
    # A labeller gone wrong: every labelled bar a take-profit, both sides. (Features scaled by
    # 1e6 are no poison for these nets: the clipped inputs teach the class balance only.)
    buf._y[rows] = np.where(buf._y[rows] >= 0, TAKE_PROFIT, buf._y[rows])
    online.request_round(bar.symbol)
    _feed(online, [bar])
    buf._y[:] = y


def _events(records: list) -> list[tuple[str, int]]:
    return [(r.kind, r.version) for r in records if isinstance(r, VersionEvent)]


def test_a_poisoned_round_is_rejected_with_a_record(market: dict) -> None:
    bars = market["bars"]
    online = _online(market)
    _feed(online, bars[:ROUND_AT])
    assert online.take_records() == []  # no round asked for, none ran
    _poisoned_round(online, bars[ROUND_AT])
    records = online.take_records()
    assert _events(records) == [("rejected", 1)]
    version = records[0]
    assert isinstance(version, ModelVersion) and version.weights is None and version.parent == 0
    assert "worse" in records[1].reason or "non-finite" in records[1].reason
    # It never served: the champion is the artifact, no challenger, the anchor unchanged.
    assert online.serving(bars[0].symbol) == {
        "champion": 0, "challenger": None, "share": 0.0, "previous": None, "anchor": 0
    }  # fmt: skip


def test_a_worse_challenger_never_decides_and_is_rolled_back(market: dict) -> None:
    bars, symbol = market["bars"], market["bars"][0].symbol
    # A lenient guard lets the mislabelled candidate through: the shadow test must stop it.
    online = _online(market, guard_margin_nats=1.0)
    _feed(online, bars[:ROUND_AT])
    champion_net = online._models[symbol].learner.approved
    _poisoned_round(online, bars[ROUND_AT])
    records = online.take_records()
    assert _events(records) == [("challenger", 1)]
    assert online.serving(symbol)["challenger"] == 1
    shares = []
    for bar in bars[ROUND_AT + 1 :]:
        _feed(online, [bar])
        shares.append(online.serving(symbol)["share"])
        records += online.take_records()
        if any(isinstance(r, VersionEvent) and r.kind == "rolled_back" for r in records):
            break
    back = [r for r in records if isinstance(r, VersionEvent) and r.kind == "rolled_back"]
    assert len(back) == 1 and back[0].version == 1 and "champion v0" in back[0].reason
    # Caught at the first test: min_bars scored pairs after the label horizon.
    assert len(shares) <= ONLINE["challenger_min_bars"] + LABEL.horizon_bars + 1
    assert max(shares) == 0.0  # it never took a decision
    state = online.serving(symbol)
    assert state["champion"] == 0 and state["challenger"] is None and state["anchor"] == 0
    assert online._models[symbol].learner.approved is champion_net  # the anchor is back


def test_restore_serves_the_weights_from_the_next_bar(market: dict) -> None:
    bars, symbol = market["bars"], market["bars"][0].symbol
    online = _online(market, guard_margin_nats=1.0, replay_weights=True)
    _feed(online, bars[:ROUND_AT])
    online.request_round(symbol)
    _feed(online, bars[ROUND_AT : ROUND_AT + 1])
    made = [r for r in online.take_records() if isinstance(r, ModelVersion)]
    assert len(made) == 1 and made[0].weights is not None
    weights = made[0].weights
    # The same weights served from the first bar, for reference.
    reference = _online(market)
    reference.restore(symbol, 1, weights, bars[0].open_time_ms)
    expected = _feed(reference, bars[: ROUND_AT + 40])
    got = _feed(online, bars[ROUND_AT + 1 : ROUND_AT + 20])
    assert not np.allclose(got, expected[ROUND_AT + 1 : ROUND_AT + 20])  # v0 still serves
    online.restore(symbol, 1, weights, bars[ROUND_AT + 19].close_time_ms)
    assert _events(online.take_records()) == [("restored", 1)]
    assert online.serving(symbol) == {
        "champion": 1, "challenger": None, "share": 0.0, "previous": None, "anchor": 1
    }  # fmt: skip
    got = _feed(online, bars[ROUND_AT + 20 : ROUND_AT + 40])
    np.testing.assert_allclose(got, expected[ROUND_AT + 20 :], rtol=0, atol=1e-6)
    # Weights of another network are refused, saying why; nothing changes.
    other = build_net({"kind": "tcn", "n_features": 3, "hidden": 4, "levels": 1})
    buf = io.BytesIO()
    torch.save(other.state_dict(), buf)
    with pytest.raises(ModelError, match="version 7 does not fit tcn/v1"):
        online.restore(symbol, 7, buf.getvalue(), bars[ROUND_AT + 39].close_time_ms)
    with pytest.raises(ModelError, match="does not fit"):
        online.restore(symbol, 7, b"not weights", bars[ROUND_AT + 39].close_time_ms)
    assert online.serving(symbol)["champion"] == 1 and online.take_records() == []


def test_a_champion_worse_than_the_one_it_replaced_is_rolled_back(market: dict) -> None:
    bars, symbol = market["bars"], market["bars"][0].symbol
    online = _online(market, guard_margin_nats=1.0)
    _feed(online, bars[:ROUND_AT])
    _poisoned_round(online, bars[ROUND_AT])
    assert _events(online.take_records()) == [("challenger", 1)]
    # Say the shadow test had been fooled: the mislabelled version is promoted (the trial's
    # own action, taken by hand), and the artifact stays beside it on probation.
    m = online._models[symbol]
    assert m.trial is not None
    online._act(m, symbol, m.trial, "promote", bars[ROUND_AT].close_time_ms)
    assert online.serving(symbol) == {
        "champion": 1, "challenger": None, "share": 0.0, "previous": 0, "anchor": 1
    }  # fmt: skip
    records: list = online.take_records()
    for bar in bars[ROUND_AT + 1 : ROUND_AT + 1 + ONLINE["probation_bars"]]:
        _feed(online, [bar])
        records += online.take_records()
    # Back to the champion it replaced, said twice: the rollback, and who serves again.
    assert _events(records) == [("promoted", 1), ("rolled_back", 1), ("promoted", 0)]
    assert "worse than the champion it replaced, v0" in records[1].reason
    assert online.serving(symbol) == {
        "champion": 0, "challenger": None, "share": 0.0, "previous": None, "anchor": 0
    }  # fmt: skip
