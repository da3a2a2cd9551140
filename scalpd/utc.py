"""UTC times as the project writes them: milliseconds since the epoch."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_utc_ms(text: str) -> int:
    """'2024-03-01', '2024-03-01T12:30' or an ISO time with an offset -> ms since the epoch.

    A time without an offset is UTC. ValueError with a one-line message otherwise.
    """
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad date {text!r}: use YYYY-MM-DD or an ISO time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)
