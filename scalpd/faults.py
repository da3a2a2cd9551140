"""Crash points: where the recovery tests and the soak benchmark kill the daemon with SIGKILL.

`SCALPD_CRASH_AT=<point>:<n>` in the environment makes the daemon kill itself, with no chance to
clean up, the n-th time it passes `crash_point("<point>")`. Unset (always, outside those tests),
a crash point is one global lookup. The points sit where a crash is most dangerous:

- `order_recorded`: an order is in the database and about to be sent.
- `order_sent`: the exchange has accepted an order, the daemon has not read the answer.
- `bracket_sent`: a take-profit/stop-loss pair rests on the exchange, not yet recorded.
- `fill_unrecorded`: the daemon has learnt of a fill and not yet written it down.

A kill from outside (`kill -9`) lands anywhere; these make the worst moments reproducible.
"""

from __future__ import annotations

import os
import signal

ENV = "SCALPD_CRASH_AT"
POINTS = ("order_recorded", "order_sent", "bracket_sent", "fill_unrecorded")


def _parse(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    point, _, count = text.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{ENV}={text!r}: expected <point>:<n>, point one of {', '.join(POINTS)}")
    return point, int(count)


_armed = _parse(os.environ.get(ENV))
_passed = 0


def crash_point(point: str) -> None:
    """Die here (SIGKILL) if the environment armed this point and its count is reached."""
    global _passed
    if _armed is None or _armed[0] != point:
        return
    _passed += 1
    if _passed == _armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)
