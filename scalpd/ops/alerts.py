"""Operator alerts through apprise: never blocking the event loop, never leaking a webhook token.

Use (from the event loop or any thread)::

    alerter = Alerter(settings.alerts)          # starts its worker thread when URLs are set
    alerter.send(BREAKER_TRIP, "losses breaker tripped", "5 losses in a row; paused 30 min",
                 key="breaker:losses", level="warning")
    ...
    await asyncio.to_thread(alerter.close, settings.alerts.timeout_s)   # drains at shutdown

`send` checks the rate limit, writes one structured log line (logger "scalpd.alerts", at the
alert's level) and puts the alert on a bounded queue; it returns at once, True when the alert
was accepted. A worker thread delivers each alert to every URL in `alerts.urls` with apprise,
whose `notify` is synchronous network I/O bounded by `alerts.timeout_s`. A full queue drops the
alert (counted in `stats.dropped`); a failed or unreachable target is logged and counted
(`stats.failed`); neither raises into the caller. With no URLs, alerts are only logged.

The same `key` (default: kind and title) again within `alerts.min_interval_s` is dropped and
counted (`stats.suppressed`); the next one let through says how many were dropped. Put what
identifies the condition in the key, not what changes each time (a P&L figure).

Kinds (constants below) and who sends them: START, STOP and ERROR (a run that ends on an error)
the daemon (`scalpd/live/daemon.py`); BREAKER_TRIP, DAILY_LOSS_LIMIT, DISCONNECT (market data
down longer than `alerts.disconnect_after_s`), RECONCILIATION (a surprise when reconciling with
the exchange) and MODEL_CHANGE (a model reloaded, or an online version promoted, rolled back
or restored: scalpd/live/services.py) whoever builds those features, through `Daemon.alerter`.

Secrets: apprise URLs carry tokens (a Discord webhook's path, a Slack URL's host and path). Logs
name a target by scheme and host only, the host too hidden unless it is a hostname or an IP,
and a filter on apprise's and urllib3's loggers blanks every secret-looking part of the URLs
(their debug lines print request paths).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import apprise
import structlog

from scalpd.config.settings import AlertsSettings, ConfigError

log = structlog.get_logger("scalpd.alerts")

START = "start"
STOP = "stop"
ERROR = "error"
BREAKER_TRIP = "breaker_trip"
DAILY_LOSS_LIMIT = "daily_loss_limit"
DISCONNECT = "disconnect"
RECONCILIATION = "reconciliation"
MODEL_CHANGE = "model_change"
KINDS = frozenset(
    {START, STOP, ERROR, BREAKER_TRIP, DAILY_LOSS_LIMIT, DISCONNECT, RECONCILIATION, MODEL_CHANGE}
)

Level = Literal["info", "warning", "error"]
_NOTIFY_TYPES = {
    "info": apprise.NotifyType.INFO,
    "warning": apprise.NotifyType.WARNING,
    "error": apprise.NotifyType.FAILURE,
}

# Loggers whose lines can hold a target URL's path or credentials (apprise's debug lines print
# the request URL, urllib3's the request path).
_THIRD_PARTY_LOGGERS = ("apprise", "urllib3.connectionpool", "urllib3.util.retry")
_REDACTED = "<redacted>"
# Shorter pieces of a URL are not secret enough to be worth blanking everywhere ("json", "80").
_MIN_SECRET_LEN = 4


class RateLimiter:
    """Lets one alert per key through every `min_interval_s`; counts the ones it holds back.

    Pure: the caller passes the time, so tests need no clock.
    """

    _PRUNE_ABOVE_KEYS = 1000

    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s = min_interval_s
        self._last_s: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str, now_s: float) -> tuple[bool, int]:
        """(whether to send, how many of this key were held back since the last one sent)."""
        last = self._last_s.get(key)
        if last is not None and now_s - last < self.min_interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        self._last_s[key] = now_s
        held = self._held.pop(key, 0)
        if len(self._last_s) > self._PRUNE_ABOVE_KEYS:
            self._prune(now_s)
        return True, held

    def _prune(self, now_s: float) -> None:
        # Keys built from changing text would otherwise grow without bound over weeks.
        for key, last in list(self._last_s.items()):
            if now_s - last >= self.min_interval_s and key not in self._held:
                del self._last_s[key]


@dataclass
class AlertStats:
    sent: int = 0  # accepted by `send`: logged, and queued where there are targets
    suppressed: int = 0  # duplicates within min_interval_s
    dropped: int = 0  # queue full or alerter closed
    delivered: int = 0  # per target
    failed: int = 0  # per target
    failed_by_target: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Alert:
    kind: str
    title: str
    body: str
    notify_type: apprise.NotifyType


@dataclass(frozen=True, slots=True)
class _Target:
    label: str
    apprise: apprise.Apprise


def _hostname_like(host: str) -> bool:
    return host == "localhost" or "." in host or ":" in host


def target_label(url: str) -> str:
    """How logs name a target: its scheme and host, the host hidden when it is not a hostname
    or an IP (a Discord webhook id, a Slack token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host if _hostname_like(host) else '<hidden>'}"


def secret_fragments(url: str) -> set[str]:
    """The parts of an apprise URL that may be a token: credentials, a non-hostname host, path
    segments and query values, raw and unquoted."""
    parts = urlsplit(url)
    found = {url, parts.username or "", parts.password or ""}
    # As written: `hostname` is lower-cased, and a token is case-sensitive.
    host = parts.netloc.rpartition("@")[2]
    if not _hostname_like(parts.hostname or ""):
        found.add(host)
    found.update(parts.path.split("/"))
    found.update(value for _, value in parse_qsl(parts.query))
    found |= {unquote(piece) for piece in found}
    return {piece for piece in found if len(piece) >= _MIN_SECRET_LEN}


class _Redactor(logging.Filter):
    def __init__(self, secrets: set[str]) -> None:
        super().__init__()
        # Longest first: a URL is blanked whole before its pieces are.
        self._secrets = sorted(secrets, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix; let logging report it
            return True
        cleaned = self._clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info:
            record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class Alerter:
    """Alerts to the operator through apprise; see the module docstring."""

    def __init__(
        self,
        settings: AlertsSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._limiter = RateLimiter(settings.min_interval_s)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._closed = False
        self.stats = AlertStats()
        urls = [url.get_secret_value() for url in settings.urls]
        secrets: set[str] = set()
        for url in urls:
            secrets |= secret_fragments(url)
        self._redactor = _Redactor(secrets)
        self._filtered = [logging.getLogger(name) for name in _THIRD_PARTY_LOGGERS] if urls else []
        for logger in self._filtered:
            logger.addFilter(self._redactor)
        # Our own lines say what was sent where; apprise's info lines would repeat them.
        apprise_logger = logging.getLogger("apprise")
        if apprise_logger.level == logging.NOTSET:
            apprise_logger.setLevel(logging.WARNING)
        try:
            self._targets = [self._target(i, url) for i, url in enumerate(urls)]
        except ConfigError:
            for logger in self._filtered:
                logger.removeFilter(self._redactor)
            raise
        self._queue: queue.Queue[_Alert | None] = queue.Queue(maxsize=settings.max_queued)
        self._thread: threading.Thread | None = None
        if self._targets:
            self._thread = threading.Thread(target=self._work, name="alerts", daemon=True)
            self._thread.start()

    def _target(self, index: int, url: str) -> _Target:
        asset = apprise.AppriseAsset(app_id="scalpd", storage_mode="memory")
        plugin = apprise.Apprise.instantiate(url, asset=asset)
        if plugin is None:  # apprise logged why, through the redacting filter
            raise ConfigError(
                f"config key 'alerts.urls' entry {index} ({target_label(url)}): "
                "apprise cannot use this URL; allowed: a URL of a service apprise supports"
            )
        bundle = apprise.Apprise(asset=asset)
        bundle.add(plugin)
        return _Target(target_label(url), bundle)

    @property
    def targets(self) -> list[str]:
        """The targets' log labels (scheme and host)."""
        return [target.label for target in self._targets]

    @property
    def pending(self) -> int:
        """Alerts queued or being delivered."""
        with self._lock:
            return self._pending

    def send(
        self,
        kind: str,
        title: str,
        body: str,
        key: str | None = None,
        level: Level = "info",
    ) -> bool:
        """Log the alert and queue it for delivery; never blocks, never raises for delivery.

        False when it was held back (a duplicate within min_interval_s) or dropped (queue full,
        alerter closed). Raises ValueError only for an unknown kind or level (a bug at the call
        site, caught by its tests).
        """
        if kind not in KINDS:
            raise ValueError(f"unknown alert kind {kind!r}; allowed: {sorted(KINDS)}")
        if level not in _NOTIFY_TYPES:
            raise ValueError(f"unknown alert level {level!r}; allowed: {sorted(_NOTIFY_TYPES)}")
        key = key or f"{kind}:{title}"
        with self._lock:
            allowed, held = self._limiter.allow(key, self._clock())
            if not allowed:
                self.stats.suppressed += 1
        if not allowed:
            log.debug("alert_suppressed", kind=kind, key=key)
            return False
        if held:
            body = f"{body}\n({held} more like this held back in the last interval)"
        getattr(log, level)("alert", kind=kind, title=title, body=body, key=key)
        if not self._targets:
            with self._lock:
                self.stats.sent += 1
            return True
        alert = _Alert(kind, title, body, _NOTIFY_TYPES[level])
        with self._lock:
            if self._closed:
                self.stats.dropped += 1
                accepted = False
            else:
                try:
                    self._queue.put_nowait(alert)
                    self._pending += 1
                    self.stats.sent += 1
                    accepted = True
                except queue.Full:
                    self.stats.dropped += 1
                    accepted = False
        if not accepted:
            log.warning(
                "alert_dropped",
                kind=kind,
                key=key,
                reason="closed" if self._closed else "queue full",
                dropped=self.stats.dropped,
            )
        return accepted

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block (a thread, not the event loop) until nothing is queued or in delivery."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self, timeout_s: float | None = None) -> bool:
        """Stop taking alerts and deliver the queued ones, waiting up to timeout_s (default
        alerts.timeout_s). True when everything queued was delivered or given up on. Blocking:
        from the event loop call it through asyncio.to_thread."""
        if timeout_s is None:
            timeout_s = self._settings.timeout_s
        deadline = time.monotonic() + timeout_s
        with self._lock:
            already = self._closed
            self._closed = True
        if self._thread is not None and not already:
            try:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                pass
            self._thread.join(max(0.0, deadline - time.monotonic()))
        drained = self.pending == 0
        if not already:
            for logger in self._filtered:
                # Left in place while a delivery still runs (abandoned), since it may yet log.
                if drained:
                    logger.removeFilter(self._redactor)
            stats = {k: v for k, v in vars(self.stats).items() if k != "failed_by_target"}
            if drained:
                log.info("alerts_closed", **stats)
            else:
                log.warning("alerts_not_drained", pending=self.pending, **stats)
        return drained

    # -- worker thread -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            try:
                self._deliver(alert)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _deliver(self, alert: _Alert) -> None:
        for target in self._targets:
            try:
                result = target.apprise.notify(
                    body=alert.body,
                    title=alert.title,
                    notify_type=alert.notify_type,
                    timeout=self._settings.timeout_s,
                )
                ok = bool(result)
                why = getattr(result.status, "name", str(result.status))
            except Exception as exc:  # apprise failing must not end the worker
                # The type only: an exception's text may quote the URL.
                ok, why = False, type(exc).__name__
            with self._lock:
                if ok:
                    self.stats.delivered += 1
                else:
                    self.stats.failed += 1
                    by_target = self.stats.failed_by_target
                    by_target[target.label] = by_target.get(target.label, 0) + 1
            if ok:
                log.debug("alert_delivered", kind=alert.kind, target=target.label)
            else:
                log.warning(
                    "alert_failed",
                    kind=alert.kind,
                    target=target.label,
                    status=why,
                    failed=self.stats.failed,
                )
