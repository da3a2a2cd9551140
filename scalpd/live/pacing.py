"""What the daemon's event loop does between candles, and when (`Pacer`).

A decision's latency is set as much by what else the process does while a candle is handled
as by the decision itself. Three kinds of work are moved to the quiet time between candles:

- **Garbage collection.** CPython's cyclic collector runs when allocations pass a threshold,
  usually mid-decision (where the daemon allocates). Timed with gc.callbacks around the live
  run of `scalpd bench decision_latency` before this module: a middle-generation collection
  every ~45 bars at 0.8 ms on average (3.5 ms at worst), and full collections of the ~750,000
  objects torch, ccxt and the models leave after start-up at ~240 ms each (a quarter of a
  second in which no candle is handled). So at start (`start`): `gc.freeze()` (what is alive
  then lives as long as the process: modules, markets, models; the collector never walks it
  again), and automatic collection only as a backstop (`BACKSTOP_GEN0`, `BACKSTOP_GEN2`, for
  a loop that never goes quiet); the collections the interpreter would have run are run in
  quiet moments, youngest first, a full one at most every `FULL_EVERY_S` and only when no
  candle is due for `FULL_LEAD_S`.
- **Deferred jobs** (`defer`, `quiet_moment`): a bar's accounting (its log line, its
  model-quality scoring) and online learning's work after a decision and its hand-offs
  (scalpd/live/learning.py) wait for a quiet moment too, `JOBS_BUDGET_S` of them at a time.
- **Warm steps.** After a pause the first model step costs several times a hot one: the
  CPU's caches hold everything else by then (other processes, the kernel, a virtual machine's
  neighbours). `scalpd bench models_ensemble` shows it (`infer_*_after_pause_*`). From
  `LEAD_S` before each symbol's candle is due until it comes, the loop runs a throwaway step
  of that symbol's model (strategy/base.py `Warmable`) every `EVERY_S`, one symbol at a time.

A quiet moment: no event queued or handled for `QUIET_S` and no candle due within `LEAD_S`.
Warm steps too wait `QUIET_S` after an event: the minute's other candles are arriving. When
a candle is due is learned from arrivals: per symbol, the last one plus the median of the
recent intervals (a minute live; the benchmark's pace against the fake exchange). A frame
arriving during quiet work or a warm step waits for it (a warm step ~0.3 ms, a young
collection ~1 ms):
the decision-latency benchmark's "from the step's first frame" figures include such waits,
the daemon's own figure (from the frame handled) does not.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence

QUIET_S = 0.003  # no event for this long: the loop is between candles
LEAD_S = 0.015  # warm steps start this long before a candle is due; quiet work stops
EVERY_S = 0.003  # one warm step this often (each ~0.2 ms of the loop)
PATIENCE_S = 2.0  # warm steps stop this long after a candle was due (late or missing)
INTERVALS = 9  # arrivals whose intervals set the expected one (median: a gap is an outlier)
BACKSTOP_GEN0 = 10_000  # allocations: automatic collection when no quiet moment comes (~1 ms)
# A quiet moment collects the young generation from this many allocations on (the
# interpreter's own 700 is net of frees: a quiet moment rarely sees it, and the backstop then
# ran mid-decision, ~4 ms each, timed with gc.callbacks in the decision-latency benchmark).
QUIET_GEN0 = 100
FULL_EVERY_S = 300.0  # the oldest (unfrozen) generation is walked at most this often
# ... and only with no candle due within FULL_LEAD_S (it takes ~0.3-0.5 s, timed with
# gc.callbacks in the decision-latency benchmark). The interpreter's own full collection, which
# the quiet moments' younger ones would bring on mid-decision once their count passes its
# threshold (10), waits for BACKSTOP_GEN2 of them instead (seen: stalls of 0.25 and 1.9 s).
FULL_LEAD_S = 1.0
BACKSTOP_GEN2 = 1_000
# Deferred jobs run this long per quiet moment at most (a bar's accounting ~0.2 ms: a burst of
# bars after a reconnect leaves hundreds); the rest wait EVERY_S for the next.
JOBS_BUDGET_S = 0.002


class _Due:
    """When a symbol's next candle is expected (monotonic seconds), from its arrivals."""

    def __init__(self) -> None:
        self.last_s: float | None = None
        self.intervals: deque[float] = deque(maxlen=INTERVALS)
        self.next_s: float | None = None

    def arrived(self, now_s: float) -> None:
        if self.last_s is not None:
            self.intervals.append(now_s - self.last_s)
        self.last_s = now_s
        self.next_s = now_s + statistics.median(self.intervals) if self.intervals else None


class Pacer:
    def __init__(self, symbols: Sequence[str], warm: Callable[[str], None] | None = None) -> None:
        """`warm`: a throwaway step of a symbol's model, or None (no warm steps)."""
        self._warm = warm
        self._due = {s: _Due() for s in symbols}
        self._thresholds = gc.get_threshold()
        self._jobs: deque[Callable[[], None]] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when it fires (monotonic s)
        self._last_event_s = 0.0  # the loop's last activity: an event begun or finished
        self._last_full_s = 0.0
        self._turn = 0
        self._started = False
        self._busy = False  # events are being handled: no warm step, no quiet work
        self._closed = False
        self.collections = [0, 0, 0]  # run in quiet moments, by generation
        self.warm_steps = 0

    # -- the loop tells it ------------------------------------------------------------------

    def start(self) -> None:
        """After start-up, before the first event. No collection first: one of the start-up's
        objects takes ~0.3 s, which a restart would spend before trading again; the garbage
        frozen with them is a one-off."""
        gc.freeze()
        self._last_full_s = time.monotonic()
        t0, t1, t2 = self._thresholds
        gc.set_threshold(max(t0, BACKSTOP_GEN0), t1, max(t2, BACKSTOP_GEN2))
        self._started = True

    def busy(self) -> None:
        """An event came or is being handled; until `idle`, the timer does nothing (it may
        fire at one of the event's awaits, or between an event queued and the loop taking it:
        a warm step there would delay a decision or its orders by the step's ~0.3 ms). The
        market-data source calls it as it queues an event, the loop as it takes one."""
        self._busy = True
        self._last_event_s = time.monotonic()

    def arrived(self, symbol: str) -> None:
        """`symbol`'s candle came (before its decision)."""
        due = self._due.get(symbol)
        if due is not None:
            due.arrived(time.monotonic())

    def idle(self) -> None:
        """The loop has no event left to handle: plan the next quiet work or warm step."""
        now_s = time.monotonic()
        self._busy = False
        self._last_event_s = now_s  # quiet is counted from the end of the last event's work
        self._rearm(now_s)

    # -- work for quiet moments ---------------------------------------------------------------

    def defer(self, job: Callable[[], None]) -> None:
        """Run `job` (on the loop) at the next quiet moment, after the jobs deferred before;
        once closed, at once."""
        if self._closed:
            job()
            return
        self._jobs.append(job)
        if not self._busy:  # else `idle` arms the timer
            self._rearm(time.monotonic())

    def quiet_moment(self) -> asyncio.Future[None]:
        """Resolved at the next quiet moment (await it, then act at once: it is yours until
        your next await)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if not self._busy:
            self._rearm(time.monotonic())
        return waiter

    # -- the timer ----------------------------------------------------------------------------

    def _warming(self, now_s: float, within_s: float = LEAD_S) -> list[str]:
        """Symbols whose candle is due within `within_s` (or late, up to PATIENCE_S)."""
        out = []
        for symbol, due in self._due.items():
            if due.next_s is None:
                continue
            if now_s > due.next_s + PATIENCE_S:
                due.next_s = None  # it never came: wait for the next arrival
            elif now_s >= due.next_s - within_s:
                out.append(symbol)
        return out

    def _wanted(self) -> bool:
        return bool(self._jobs or self._waiters) or gc.get_count()[0] >= QUIET_GEN0

    def _rearm(self, now_s: float) -> None:
        """The timer for what is due first now: one armed earlier for later (say the next
        warm window) would hold back the quiet work wanted sooner; one that comes first
        stays (no timer made again for each deferred job)."""
        at = self._next_s(now_s)
        if self._timer is not None:
            if at is None or self._timer_at <= at:
                return
            self._timer.cancel()
            self._timer = None
        self._arm_at(now_s, at)

    def _arm_at(self, now_s: float, at: float | None) -> None:
        if at is not None:
            self._timer = asyncio.get_running_loop().call_later(at - now_s, self._tick)
            self._timer_at = at

    def _next_s(self, now_s: float) -> float | None:
        """When the timer should fire next (monotonic s); None: nothing to do."""
        at: float | None = None
        if self._warm is not None:
            starts = [d.next_s - LEAD_S for d in self._due.values() if d.next_s is not None]
            at = min(starts) if starts else None
        if self._wanted():
            quiet_at = self._last_event_s + QUIET_S
            at = quiet_at if at is None else min(at, quiet_at)
        if at is None:
            return None
        return at if at > now_s else now_s + EVERY_S  # a window open now: the next step

    def _tick(self) -> None:
        self._timer = None
        if self._busy:
            return  # the loop's `idle` arms it again
        now_s = time.monotonic()
        # Quiet since the last event: also after one candle, for the rest of its minute's
        # candles are arriving (a warm step between two would delay the second's decision).
        settled = now_s - self._last_event_s >= QUIET_S
        warming = self._warming(now_s)  # (it also forgets candles past their patience)
        if settled and not warming:
            self._quiet_work()
        elif settled:
            if self._warm is not None:
                symbol = warming[self._turn % len(warming)]
                self._turn += 1
                self._warm(symbol)
                self.warm_steps += 1
            if all(now_s > (self._due[s].next_s or 0.0) for s in warming):
                # Every candle awaited is late: waiting for them (up to PATIENCE_S) would
                # starve the deferred work; a late candle waits for one budget at most.
                self._quiet_work()
        self._rearm(time.monotonic())

    def _quiet_work(self) -> None:
        if not self._release(JOBS_BUDGET_S):
            return  # more jobs next time: a frame arriving meanwhile would wait for them all
        if self._started and gc.get_count()[0] >= QUIET_GEN0:
            self._collect()

    def _release(self, budget_s: float | None = None) -> bool:
        """The deferred jobs in order, for `budget_s` (at least one; None: all), then, if none
        is left, whoever awaits a quiet moment. True when none is left."""
        jobs = self._jobs
        deadline_s = None if budget_s is None else time.monotonic() + budget_s
        while jobs:
            jobs.popleft()()
            if jobs and deadline_s is not None and time.monotonic() >= deadline_s:
                return False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return True

    def _collect(self) -> None:
        _, count1, count2 = gc.get_count()
        _, t1, t2 = self._thresholds
        generation = 0
        if count1 >= t1:
            generation = 1
            now_s = time.monotonic()
            if (
                count2 >= t2
                and now_s - self._last_full_s >= FULL_EVERY_S
                and not self._warming(now_s, FULL_LEAD_S)
            ):
                generation, self._last_full_s = 2, now_s
        gc.collect(generation)
        self.collections[generation] += 1

    def close(self) -> None:
        """The interpreter's own collection again; deferred jobs run now (nothing is lost)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release()
        if self._started:
            gc.set_threshold(*self._thresholds)
            gc.unfreeze()
            self._started = False
