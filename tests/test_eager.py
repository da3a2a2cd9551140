"""`start_now` (scalpd/live/eager.py): a task whose first step has run when it is returned,
as the task itself, and which then behaves as any task (result, error, cancellation)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from scalpd.live.eager import start_now

# The daemon's loop (uvloop) and asyncio's own.
RUNNERS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


@RUNNERS
def test_the_first_step_runs_at_once_as_the_task_before_what_the_loop_holds(run) -> None:
    async def main() -> None:
        seen: list[str] = []
        me: list[asyncio.Task | None] = []

        async def work() -> int:
            me.append(asyncio.current_task())
            seen.append("first step")
            await asyncio.sleep(0)
            seen.append("second step")
            return 7

        asyncio.get_running_loop().call_soon(seen.append, "queued before")
        task = start_now(work(), name="eager")
        assert seen == ["first step"] and me == [task]
        assert asyncio.current_task() is not task  # the caller is current again
        assert await task == 7
        assert seen == ["first step", "queued before", "second step"]
        assert task.get_name() == "eager"

    run(main())


@RUNNERS
def test_errors_before_and_after_the_first_suspension_reach_the_awaiter(run) -> None:
    async def fails_at_once() -> None:
        raise ValueError("at once")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("later")

    async def main() -> None:
        with pytest.raises(ValueError, match="at once"):
            await start_now(fails_at_once())
        with pytest.raises(KeyError, match="later"):
            await start_now(fails_later())

    run(main())


@RUNNERS
def test_a_cancellation_reaches_the_coroutine(run) -> None:
    async def main() -> None:
        cleaned: list[bool] = []
        gate = asyncio.Event()

        async def waits() -> None:
            try:
                await gate.wait()
            finally:
                cleaned.append(True)

        task = start_now(waits())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned == [True]

    run(main())
