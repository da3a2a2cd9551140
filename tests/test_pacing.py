"""The daemon's quiet-time work (scalpd/live/pacing.py) and the warm steps it runs: a warm
step changes nothing a decision uses; deferred work waits for a lull; the collector is frozen,
paced and given back. No timing is asserted beyond "before" and "after" a lull."""

from __future__ import annotations

import asyncio
import gc

import numpy as np
import pytest
import torch

from scalpd.live import pacing
from scalpd.live.pacing import Pacer, _Due
from scalpd.models.backends import make_predictor
from scalpd.models.nets import EnsembleNet, build_net

SMALL = {"tcn": {"hidden": 8, "levels": 2}, "transformer": {"window_bars": 8}, "lstm": {}}


def _net(kind: str):
    torch.manual_seed(0)
    if kind == "ensemble":
        return EnsembleNet([_net(k) for k in SMALL])
    return build_net({"kind": kind, "n_features": 5, "warmup_bars": 4, **SMALL[kind]})


@pytest.mark.parametrize(
    ("kind", "backend"),
    [
        ("tcn", "eager"),
        ("transformer", "eager"),
        ("lstm", "eager"),
        ("ensemble", "eager"),
        ("tcn", "onnx"),
    ],  # fmt: skip
)
def test_a_warm_step_changes_no_prediction(kind: str, backend: str, one_torch_thread) -> None:
    net = _net(kind)
    x = np.random.default_rng(1).standard_normal((40, 5)).astype(np.float32)
    plain, warmed = make_predictor(net, backend, threads=1), make_predictor(net, backend, threads=1)
    for row in x:
        warmed.warm()
        warmed.warm()
        a, b = plain.predict_step(row), warmed.predict_step(row)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert a is not None  # the stream was served by the end


def test_a_candle_is_due_an_interval_after_the_last() -> None:
    due = _Due()
    due.arrived(100.0)
    assert due.next_s is None  # one arrival says nothing of the pace
    for t in (160.0, 220.0, 280.0):
        due.arrived(t)
    assert due.next_s == pytest.approx(340.0)
    due.arrived(400.0 + 3600.0)  # back after an hour's gap: one outlier, the median holds
    assert due.next_s == pytest.approx(4000.0 + 60.0)


def test_warm_steps_run_from_just_before_a_candle_is_due_until_it_comes(monkeypatch) -> None:
    warmed: list[str] = []
    pacer = Pacer(["A", "B"], warmed.append)
    for t in (0.0, 60.0, 120.0):
        pacer._due["A"].arrived(t)
        pacer._due["B"].arrived(t + 0.5)
    assert pacer._warming(179.0) == []
    assert pacer._warming(180.0 - pacing.LEAD_S / 2) == ["A"]
    assert pacer._warming(180.6) == ["A", "B"]
    pacer._due["A"].arrived(180.6)
    assert pacer._warming(180.7) == ["B"]
    assert pacer._warming(180.5 + pacing.PATIENCE_S + 0.1) == []  # B never came: stop
    assert pacer._due["B"].next_s is None


def _run(coro) -> None:
    asyncio.run(coro)


def test_deferred_work_waits_while_events_come_and_runs_in_the_lull() -> None:
    async def main() -> None:
        pacer = Pacer(["A"])
        done: list[int] = []
        pacer.defer(lambda: done.append(1))
        pacer.defer(lambda: done.append(2))
        pacer.busy()  # an event was just handled: not quiet (the clock is not waited on)
        pacer._tick()
        assert done == []
        pacer._last_event_s -= 1.0  # a second without events
        waiter = pacer.quiet_moment()
        pacer._tick()
        assert done == [1, 2]  # in order, before the waiter is told
        await asyncio.wait_for(waiter, 5)
        pacer.defer(lambda: done.append(3))
        pacer.close()  # nothing deferred is dropped
        assert done == [1, 2, 3]

    _run(main())


def test_the_collector_is_frozen_paced_and_given_back() -> None:
    before = gc.get_threshold()

    async def main() -> None:
        pacer = Pacer(["A"])
        pacer.start()
        try:
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold()[0] >= pacing.BACKSTOP_GEN0
            junk = [[i] for i in range(before[0] * 3)]  # past the interpreter's threshold
            pacer.idle()
            await asyncio.wait_for(pacer.quiet_moment(), 5)
            assert pacer.collections[0] + pacer.collections[1] >= 1
            assert len(junk) == before[0] * 3
        finally:
            pacer.close()

    try:
        _run(main())
    finally:
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
