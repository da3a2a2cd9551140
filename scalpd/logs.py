"""Logging setup: JSON lines when stdout is not a TTY (journald), readable console otherwise."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import orjson
import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_STAMPER = structlog.processors.TimeStamper(fmt="iso", utc=True)


def _stamp_unless_stamped(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """The line's time: when it was logged, or when a DeferredLog was called."""
    if "timestamp" in event_dict:
        return event_dict
    return _STAMPER(logger, method, event_dict)


class DeferredLog:
    """A structlog logger whose info lines are written later, by `later` (the daemon's quiet
    moments, scalpd/live/pacing.py), in the order logged and stamped with the time of the call.
    Formatting and writing a line costs ~50-80 us: on an order's path (its intent, the fill
    that preceded it) that was a tenth of the decision. Warnings and errors are written at
    once: a crash must not lose them. What the engine logs at info is all in SQLite too."""

    def __init__(self, log: Any, later: Callable[[Callable[[], None]], None]) -> None:
        self._log, self._later = log, later

    def info(self, event: str, **kw: Any) -> None:
        kw.setdefault("timestamp", _STAMPER(None, "info", {})["timestamp"])
        self._later(functools.partial(self._log.info, event, **kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._log.debug(event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log.warning(event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log.error(event, **kw)


class SecretRedactor(logging.Filter):
    """Blanks given secrets in every standard-library log record. Third-party clients log what
    they send at debug level (ccxt prints each request's headers, the API key among them);
    structlog lines never hold secrets (nothing of ours logs them)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for secret in self._secrets:
            redacted = redacted.replace(secret, "<redacted>")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Daemon logs go to stdout; commands whose stdout is their result pass stderr. `secrets`
    (API keys) are blanked in every third-party log line."""
    stream = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _stamp_unless_stamped,
    ]
    if use_json:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory = structlog.BytesLoggerFactory(stream.buffer)
    else:
        processors.append(structlog.dev.ConsoleRenderer())
        factory = structlog.PrintLoggerFactory(stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=_LEVELS[level], stream=sys.stderr, format="%(name)s %(message)s")
    redactor = SecretRedactor(secrets)
    for handler in logging.getLogger().handlers:
        # A handler filter sees records propagated from every logger (a logger's own filter
        # would not); replaced, not stacked, when logging is configured again.
        for old in [f for f in handler.filters if isinstance(f, SecretRedactor)]:
            handler.removeFilter(old)
        handler.addFilter(redactor)
