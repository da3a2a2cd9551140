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


def test_no_warm_step_while_the_loop_has_events_to_handle() -> None:
    """A candle due while another symbol's is queued or decided, or just after, gets no warm
    step: it would delay that decision, its orders, or the next candle's decision."""

    async def main() -> None:
        warmed: list[str] = []
        pacer = Pacer(["A", "B"], warmed.append)
        now_s = asyncio.get_running_loop().time()
        for t in (-120.0, -60.0, 0.0):
            pacer._due["B"].arrived(now_s - 60.0 + t)  # B is due now
        pacer.busy()  # A's frame was queued, or A's bar is being decided
        pacer._tick()
        assert warmed == []
        pacer.idle()  # A decided: B's frame may be arriving right now
        pacer._tick()
        assert warmed == []
        pacer._last_event_s -= pacing.QUIET_S  # nothing came since: B's model is warmed
        pacer._tick()
        assert warmed == ["B"]
        pacer.close()

    _run(main())


def _run(coro) -> None:
    asyncio.run(coro)


def test_deferred_work_waits_while_events_come_and_runs_in_the_lull() -> None:
    async def main() -> None:
        pacer = Pacer(["A"])
        done: list[int] = []
        pacer.defer(lambda: done.append(1))
        pacer.defer(lambda: done.append(2))
        pacer.busy()  # an event is being handled: nothing runs, however long it takes
        pacer._last_event_s -= 1.0
        pacer._tick()
        assert done == []
        pacer.idle()  # the loop has nothing left to handle ...
        pacer._tick()
        assert done == []  # ... but it has not been quiet long enough
        pacer._last_event_s -= 1.0  # a second without events
        waiter = pacer.quiet_moment()
        pacer._tick()
        assert done == [1, 2]  # in order, before the waiter is told
        await asyncio.wait_for(waiter, 5)
        pacer.defer(lambda: done.append(3))
        pacer.close()  # nothing deferred is dropped
        assert done == [1, 2, 3]

    _run(main())


def test_a_late_candle_does_not_hold_deferred_work_back() -> None:
    async def main() -> None:
        warmed: list[str] = []
        pacer = Pacer(["A"], warmed.append)
        now_s = asyncio.get_running_loop().time()
        done: list[int] = []
        pacer.defer(lambda: done.append(1))
        for t in (-3.0, -2.0, -1.0):
            pacer._due["A"].arrived(now_s - 0.01 + t)  # due 10 ms ago: late
        pacer.idle()
        pacer._last_event_s -= 1.0
        pacer._tick()
        assert warmed == ["A"] and done == [1]  # still warmed, and the work done
        pacer.close()

    _run(main())


def test_a_burst_of_deferred_work_is_spread_over_quiet_moments(monkeypatch) -> None:
    monkeypatch.setattr(pacing, "JOBS_BUDGET_S", 0.0)  # one job per quiet moment

    async def main() -> None:
        pacer = Pacer(["A"])
        done: list[int] = []
        for i in range(3):
            pacer.defer(lambda i=i: done.append(i))
        waiter = pacer.quiet_moment()
        pacer.idle()
        pacer._last_event_s -= 1.0
        pacer._tick()
        assert done == [0] and not waiter.done()
        pacer._tick()
        pacer._tick()
        assert done == [0, 1, 2]
        await asyncio.wait_for(waiter, 5)  # told once the jobs before it have run
        pacer.close()

    _run(main())


def test_the_collector_is_frozen_paced_and_given_back() -> None:
    before = gc.get_threshold()

    async def main() -> None:
        pacer = Pacer(["A"])
        pacer.start()
        try:
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold()[0] >= pacing.BACKSTOP_GEN0
            assert gc.get_threshold()[2] >= pacing.BACKSTOP_GEN2  # no full one mid-decision
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
