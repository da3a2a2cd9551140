"""Online learning in the daemon: the strategy's fine-tuning rounds run off the event loop.

A replay runs each round where it falls due, between one bar's decision and the next bar, so a
seed gives the same versions. The daemon cannot afford that: a round is hundreds of
milliseconds of torch, and the next candle must not wait for it. So in paper and live the
online strategy (scalpd/strategy/online.py, after `defer_rounds()`) only notes that a round is
due; this runner, told after each bar has been sent and accounted for, does the learning
that follows the decision (`settle`: the shadow models' steps, the learner's bar), takes the
round's inputs on the loop (`prepare_round`: a copy of the replay buffer, the weights, the
context rows), runs the optimiser steps in a worker PROCESS (`RoundJob.train`), and hands the
candidate back between bars, under the daemon's bar lock: its streaming predictor built on
the context rows copied (`RoundJob.predictor_for`; it cannot be pickled), the rows that came
meanwhile fed, then `finish_round` (the champion/challenger bookkeeping, the swap). One round
at a time; a decision never waits for one.

In the daemon all the work on the loop (settle, prepare, hand-off: up to a few ms) waits for
the loop's quiet moments (scalpd/live/pacing.py: no event for a few ms and no candle due),
so that no candle that has come waits behind it.

Why a process: in a thread, the optimiser's Python work (autograd, Adam) holds the
interpreter lock most of the time, and every decision made meanwhile would share it. The
worker process (spawned when the daemon starts; torch on one thread there, scheduled as
SCHED_IDLE: it runs only on a core nothing else wants) leaves the daemon's core to the loop.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import structlog

if TYPE_CHECKING:
    from scalpd.live.pacing import Pacer

log = structlog.get_logger("scalpd.live.learning")


class RoundJob(Protocol):
    symbol: str

    def train(self) -> Any:
        """The optimiser steps on the job's copies (in the worker process): None, or the
        candidate and its serialized weights."""

    def predictor_for(self, candidate: Any) -> Any:
        """An approved candidate's streaming predictor (on the loop, at the hand-off)."""


class OnlineLearning(Protocol):
    def settle(self, symbol: str) -> None:
        """The learning that follows a decision on `symbol` (on the loop)."""

    def due_rounds(self) -> list[str]:
        """Symbols whose round is due, oldest first."""

    def prepare_round(self, symbol: str) -> RoundJob | None:
        """The round's inputs, copied (on the loop); None: none due."""

    def finish_round(self, job: Any, result: Any) -> None:
        """Judge and maybe serve the round's candidate (on the loop, between bars)."""


def _train(job: RoundJob) -> Any:
    """In the worker process."""
    return job.train()


def _ready() -> None:
    """A first task for the worker: its start (the imports) done before any round."""
    import scalpd.strategy.online  # noqa: F401 - what unpickling a job needs


def _worker_start() -> None:
    import os

    import torch

    torch.set_num_threads(1)  # the other core is the daemon's
    # Training yields the CPU to the daemon whenever both want it (a core shared with it):
    # SCHED_IDLE is preempted at once by any normal task, where nice 19 still takes a slice.
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or refused
        os.nice(19)


class RoundRunner:
    def __init__(
        self,
        online: OnlineLearning,
        bar_lock: asyncio.Lock,
        on_finished: Callable[[], None] | None = None,
    ) -> None:
        """`on_finished`: called under the bar lock after a round's candidate was handed back
        (the daemon journals and commits the versions and events it made)."""
        self._online = online
        self._bar_lock = bar_lock
        self._on_finished = on_finished
        self._task: asyncio.Task[None] | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._pacer: Pacer | None = None
        self.rounds = 0
        self.failures = 0

    def start(self) -> None:
        """Spawn the worker process now (it imports torch: seconds), not at the first round."""
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(1, context, initializer=_worker_start)
            self._pool.submit(_ready)

    def pace(self, pacer: Pacer) -> None:
        """From now on the work on the loop waits for `pacer`'s quiet moments."""
        self._pacer = pacer

    def after_bar(self, symbol: str) -> None:
        """After a bar of `symbol` was sent and accounted for: the learning that follows its
        decision (`settle`), then the next due round if none is running (both at the next
        quiet moment when paced)."""
        if self._pacer is not None:
            self._pacer.defer(lambda: self._settle(symbol))
        else:
            self._settle(symbol)

    def _settle(self, symbol: str) -> None:
        self._online.settle(symbol)
        self.poke()

    def poke(self) -> None:
        """Start the next due round unless one is running."""
        if self._task is not None and not self._task.done():
            return
        due = self._online.due_rounds()
        if not due:
            return
        job = self._online.prepare_round(due[0])
        if job is None:
            return
        self._task = asyncio.create_task(self._run(job), name=f"online-round-{job.symbol}")

    async def _run(self, job: RoundJob) -> None:
        from scalpd.strategy.online import RoundResult

        loop = asyncio.get_running_loop()
        try:
            self.start()
            trained = await loop.run_in_executor(self._pool, _train, job)
            if self._pacer is not None:
                await self._pacer.quiet_moment()
            async with self._bar_lock:
                result = None
                if trained is not None:
                    candidate, weights = trained
                    predictor = None
                    if candidate.verdict.accept:
                        predictor = job.predictor_for(candidate)
                    result = RoundResult(candidate, predictor, weights)
                self._online.finish_round(job, result)
                if self._on_finished is not None:
                    self._on_finished()
        except Exception as exc:  # noqa: BLE001 - a failed round never stops trading
            self.failures += 1
            error = f"{type(exc).__name__}: {exc}"
            log.error("online_round_failed", symbol=job.symbol, error=error)
            return
        self.rounds += 1
        self._task = None
        self.poke()  # a round that fell due meanwhile (one per symbol: the latest)

    async def close(self) -> None:
        """Drop a running round, stop the worker process."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
