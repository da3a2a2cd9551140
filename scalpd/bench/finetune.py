"""finetune_step_ms: one online fine-tuning step (scalpd/models/online.py), per model kind.

A step is what a round of online learning repeats `online.max_steps` times between bars: a
batch of `online.batch_size` windows of `online.seq_len` bars drawn from the replay buffer
(recent ones mixed with `replay_share` older ones), the forward and backward passes, the L2
pull toward the approved weights, the clip and the Adam update (`fine_tune_copy`). The
networks are the default architectures at the strategy's input width, untrained (speed does
not depend on the weights); the buffer holds a seeded random day and a half of matured bars.
Timed: `fine_tune_copy` with `max_steps` of 1 and of 1 + `steps`, the difference divided by
`steps` (the copy of the weights and the optimiser's set-up cancel out), median of 5; on one
thread, as the daemon runs (so that a round never competes with a decision for a core) and on
every core. Defaults from the [online] settings.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

Result = dict[str, Any]
KINDS = ("tcn", "transformer", "lstm")
BUFFER_BARS = 2160
STEPS = 10
REPEATS = 5


def _round_ms(net: Any, draw: Any, steps: int, lr: float, anchor_l2: float) -> float:
    from scalpd.models.online import fine_tune_copy

    t0 = time.perf_counter()
    fine_tune_copy(net, draw, max_steps=steps, lr=lr, anchor_l2=anchor_l2)
    return (time.perf_counter() - t0) * 1e3


def _drawer(buffer: Any, ends: np.ndarray, batch_size: int, seq_len: int) -> Any:
    rng = np.random.default_rng(1)
    return lambda: buffer.batch_at(rng.choice(ends, batch_size), seq_len)


def bench_finetune_step() -> Iterator[Result]:
    from scalpd.config.settings import OnlineSettings
    from scalpd.models.device import set_threads
    from scalpd.models.nets import SeqNet, build_net
    from scalpd.models.online import ReplayBuffer
    from scalpd.strategy.model import MODEL_INPUTS

    online = OnlineSettings()
    n_features = len(MODEL_INPUTS)
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(n_features, online.capacity_bars)
    for _ in range(BUFFER_BARS):
        x = rng.standard_normal(n_features).astype(np.float32)
        buffer.push(x, rng.integers(0, 3, 2), True)
    ends = buffer.valid_ends(online.seq_len)
    all_threads = torch.get_num_threads()
    for kind in KINDS:
        torch.manual_seed(0)
        net = build_net({"kind": kind, "n_features": n_features})
        assert isinstance(net, SeqNet)
        for threads in (1, all_threads):
            set_threads(threads)
            draw = _drawer(buffer, ends, online.batch_size, online.seq_len)
            per_step = []
            for _ in range(REPEATS):
                base = _round_ms(net, draw, 1, online.base_lr, online.anchor_l2)
                full = _round_ms(net, draw, 1 + STEPS, online.base_lr, online.anchor_l2)
                per_step.append((full - base) / STEPS)
            yield {
                "bench": f"finetune_step_ms_{kind}" + ("" if threads == 1 else "_all_cores"),
                "value": round(statistics.median(per_step), 3),
                "unit": "ms",
                "model": kind,
                "params": sum(p.numel() for p in net.parameters()),
                "batch_size": online.batch_size,
                "seq_len": online.seq_len,
                "threads": threads,
                "round_ms_at_max_steps": round(statistics.median(per_step) * online.max_steps, 1),
            }
    set_threads(all_threads)
