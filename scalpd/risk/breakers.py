"""Circuit-breaker state: what is tripped, why, since when, until when; and its JSON form.

A breaker is a two-state machine (armed -> tripped -> armed) keyed by name. Global breakers
pause every entry; per-symbol ones (`<kind>:<symbol>`) pause that symbol's entries only. Every
transition yields a `RiskEvent` for the engine to log and alert. `RiskState` is everything that
must survive a restart (so a halt is not forgotten); rolling market estimates are not in it:
they re-warm from the bars after a restart, as they do after a gap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

# Global breakers.
MANUAL = "manual"
DAILY_LOSS = "daily_loss"
CONSECUTIVE_LOSSES = "consecutive_losses"
CONFIDENCE = "confidence_collapse"
# Per-symbol kinds: the breaker's name is "<kind>:<symbol>".
PRICE_JUMP = "price_jump"
VOLATILITY = "volatility"
SPREAD = "spread"
STALE_DATA = "stale_data"

# The order a blocked entry names its breakers in: the one needing a person first.
_PRIORITY = {MANUAL: 0, DAILY_LOSS: 1, CONSECUTIVE_LOSSES: 2, CONFIDENCE: 3}

TRIP = "trip"
RESET = "reset"

STATE_VERSION = 1


class RiskEvent(NamedTuple):
    """A breaker changed state: what the engine logs and alerts."""

    breaker: str
    action: str  # TRIP or RESET
    reason: str
    time_ms: int


@dataclass(slots=True)
class Breaker:
    tripped: bool = False
    reason: str = ""  # why it last tripped
    tripped_ms: int | None = None
    # Time-based reset rules: not before this (cool-down end, next UTC day). None: the reset
    # waits for a condition (a fresh bar, confidence recovering) or a person.
    until_ms: int | None = None
    trips: int = 0  # times tripped since the state was created


def kind_of(name: str) -> str:
    return name.split(":", 1)[0]


def scope_of(name: str) -> str | None:
    """The symbol a per-symbol breaker pauses; None for a global one."""
    _, sep, symbol = name.partition(":")
    return symbol if sep else None


def priority(name: str) -> tuple[int, str]:
    return (_PRIORITY.get(kind_of(name), len(_PRIORITY)), name)


def iso_ms(time_ms: int | None) -> str:
    if time_ms is None:
        return "-"
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reset_rule(name: str, breaker: Breaker) -> str:
    """How this breaker resets, in words (part of every rejection it causes)."""
    kind = kind_of(name)
    if kind == MANUAL:
        return "until resumed"
    if kind == DAILY_LOSS:
        return f"until the next UTC day ({iso_ms(breaker.until_ms)}) or a manual resume"
    if kind == STALE_DATA:
        return "until a fresh bar arrives"
    if kind == CONFIDENCE:
        return "until the rolling mean confidence recovers"
    return f"until {iso_ms(breaker.until_ms)}"


@dataclass(slots=True)
class RiskState:
    """The risk layer's persisted state. `to_json` / `from_json` round-trip it exactly."""

    breakers: dict[str, Breaker] = field(default_factory=dict)
    # The UTC day (ms // 86_400_000) the daily P&L is measured in, and its starting equity
    # (re-anchored by a manual resume of the daily-loss halt).
    day_index: int | None = None
    day_start_equity: float | None = None
    consecutive_losses: int = 0

    def to_json(self) -> str:
        data = asdict(self)
        data["version"] = STATE_VERSION
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> RiskState:
        data: dict[str, Any] = orjson.loads(text)
        version = data.pop("version", None)
        if version != STATE_VERSION:
            raise ValueError(
                f"risk state version {version!r}: this scalpd reads version {STATE_VERSION}"
            )
        breakers = {name: Breaker(**b) for name, b in data.pop("breakers").items()}
        return cls(breakers=breakers, **data)

    def tripped(self) -> list[str]:
        """Names of the tripped breakers, the most serious first."""
        return sorted((n for n, b in self.breakers.items() if b.tripped), key=priority)
