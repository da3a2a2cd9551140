"""Model versions born online (issue 8) and what happens to them: the records the online
strategy hands out, the store keeps (lineage), and `scalpd ctl restore-model` brings back.

No I/O here. The strategy (scalpd/strategy/online.py) produces these records between bars;
the replay runner and the daemon drain them into the run's journal with the bar's other
records, and the daemon alerts on a rollback.

Per symbol and trained model (`model` = the artifact's name/version, version 0 of its
lineage), versions count 1, 2, ...; each names the version it was fine-tuned from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

# What can happen to a version, in the order it usually does:
#   challenger: approved by the guard, runs in shadow beside the champion (a share of the
#               decisions once the test says it is better);
#   promoted:   it became the champion;
#   rolled_back: a challenger (or a fresh champion) whose scored performance degraded,
#               replaced by the previous champion;
#   rejected:   a candidate the guard refused (no weights kept);
#   restored:   an operator brought an earlier version back (`scalpd ctl restore-model`).
VersionEventKind = Literal["challenger", "promoted", "rolled_back", "rejected", "restored"]


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One fine-tuned network: its weights and where it came from."""

    symbol: str
    model: str  # trained artifact name/version: version 0 of this lineage
    version: int  # 1, 2, ... per (symbol, model)
    parent: int  # the version it was fine-tuned from (0: the artifact)
    created_ms: int  # close time of the bar after which it was made
    weights: bytes | None  # torch.save of the network's state_dict; None for a rejected one
    metrics: Mapping[str, float] = field(default_factory=dict)  # holdout losses, steps, lr


@dataclass(frozen=True, slots=True)
class VersionEvent:
    """Something that happened to a version (see VersionEventKind)."""

    symbol: str
    model: str
    version: int
    kind: VersionEventKind
    time_ms: int  # bar close time (restore: the bar time it took effect)
    reason: str = ""


VersionRecord = ModelVersion | VersionEvent
