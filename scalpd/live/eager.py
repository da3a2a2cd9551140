"""Start a coroutine at once, as a task (`start_now`): an order's request leaves before the
event loop turns to anything else.

`asyncio.create_task` only schedules a task's first step: it runs after every callback the
loop already holds. When a minute's candles close together, those are the other symbols'
WebSocket frames (ccxt parsing them, the feed waking): timed in `scalpd bench
decision_latency`, an order waited ~0.25-0.4 ms behind them before its request was built.
Python 3.12 has eager tasks for this (`eager_start=True`); on 3.11 the same is done here: the
coroutine is stepped to its first suspension with the new task as the current one (so
`asyncio.current_task()`, which aiohttp's timeouts use, names it), then the task drives it.
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def start_now(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
    """A task running `coro`, whose first step (up to its first suspension) has run before
    this returns. Call it from a running task or callback of the running loop."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, name=name, eager_start=True)  # type: ignore[call-arg]
    started = _Started()
    task = loop.create_task(_resume(coro, started), name=name)
    current = asyncio.current_task(loop)
    if current is not None:
        asyncio.tasks._leave_task(loop, current)
    asyncio.tasks._enter_task(loop, task)
    try:
        started.first = coro.send(None)
    except StopIteration as stop:
        started.done, started.result = True, stop.value
    except BaseException as exc:  # noqa: BLE001 - the task raises it to whoever awaits it
        started.done, started.error = True, exc
    finally:
        asyncio.tasks._leave_task(loop, task)
        if current is not None:
            asyncio.tasks._enter_task(loop, current)
    return task


class _Started:
    """How the first step ended: suspended on `first`, or done (`result` or `error`)."""

    def __init__(self) -> None:
        self.first: Any = None
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], started: _Started) -> Generator[Any, Any, Any]:
    """The task's body: hand it what the first step suspended on, then drive `coro` on,
    passing in what the task sends or throws (a cancellation reaches `coro`)."""
    if started.done:
        if started.error is not None:
            raise started.error
        return started.result
    yielded = started.first
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - thrown in by the task: coro's to handle
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value
