"""`scalpd bench recovery_s`: kill -9 the live daemon at random crash points, many times.

Each trial trades synthetic bars (its own seed) on the fake exchange, is killed with SIGKILL at
a random crash point (scalpd/faults.py) on a random pass, or from outside 0-50 ms after a
random bar closed (wherever it is then), restarts and trades on; the exchange
judges it (scalpd/fakex/crashes.py). Reported: the trials run and failed (a failure names what
was lost), and `recovery_s`, from the restarted process's spawn to its first bar handled
(Python start, imports, markets, reconciliation with the exchange, the WebSocket), median and
worst. A trial whose crash point was never reached (no such pass before the data ended) counts
as run, not crashed.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scalpd.data.synthetic import generate
from scalpd.faults import POINTS

TRIALS = int(os.environ.get("SCALPD_SOAK_TRIALS", "20"))
SEED = 20_261_124


def bench_crash_soak(trials: int = TRIALS, seed: int = SEED) -> Iterator[dict[str, Any]]:
    from scalpd.fakex.crashes import ANYWHERE, crash_and_recover

    rng = random.Random(seed)
    recoveries: list[float] = []
    failures: list[str] = []
    crashed = 0
    points: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for trial in range(trials):
            point = rng.choice((*POINTS, ANYWHERE))
            # A crash point's pass, or (ANYWHERE) the bar after which the kill comes.
            count = rng.randint(1, 4) if point != ANYWHERE else rng.randint(9, 120)
            kill_after_s = rng.uniform(0.0, 0.05)
            bars = generate(days=0.1, seed=rng.randrange(1_000_000), start="2024-01-01T00:00:00Z")
            workdir = Path(tmp) / f"trial-{trial}"
            outcome = asyncio.run(crash_and_recover(workdir, bars, point, count, kill_after_s))
            crashed += outcome.crashed
            points[point] += 1
            if outcome.crashed:
                recoveries.append(outcome.recovery_s)
            if outcome.problems:
                failures.append(f"{point}:{count} trial {trial}: {'; '.join(outcome.problems)}")
    context = {"trials": trials, "crashed": crashed, "seed": seed, "points": dict(points)}
    yield {"bench": "crash_soak_failures", "value": len(failures), "unit": "trials", **context,
           "failures": failures[:10]}  # fmt: skip
    if recoveries:
        yield {
            "bench": "recovery_s",
            "value": round(statistics.median(recoveries), 3),
            "unit": "s (median, restart to first bar handled)",
            "max_s": round(max(recoveries), 3),
            **context,
        }
