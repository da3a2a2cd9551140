"""Logging setup: JSON lines when stdout is not a TTY (journald), readable console otherwise."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TextIO

import orjson
import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


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
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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
