"""Alerts through apprise's real delivery code to a local HTTP endpoint: no mocks.

Nothing here waits on time: a delivery is awaited through `Alerter.wait_idle`/`close`, and a
slow target is one the test holds shut until it has checked that every `send` came back.
"""

from __future__ import annotations

import json
import logging
import os

import pytest
import structlog
from pydantic import SecretStr

from scalpd.config.settings import AlertsSettings, ConfigError, load_settings
from scalpd.ops.alerts import (
    BREAKER_TRIP,
    ERROR,
    START,
    Alerter,
    RateLimiter,
    secret_fragments,
    target_label,
)
from tests.conftest import Endpoint, closed_port

TOKEN = "Zq7tok3n-not-a-real-webhook-9fX2"
PASSWORD = "pw-Hh51-not-real"
WAIT_S = 20  # only a bound on a hang: every wait returns as soon as its condition holds


def settings(*urls: str, **kw) -> AlertsSettings:
    return AlertsSettings(urls=[SecretStr(u) for u in urls], **kw)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_alerts_arrive_with_title_body_and_type(endpoint: Endpoint) -> None:
    alerter = Alerter(settings(endpoint.url()))
    assert alerter.targets == ["json://127.0.0.1"]
    assert alerter.send(START, "scalpd started (paper)", "run 7: BTC/USDT")
    assert alerter.send(ERROR, "scalpd stopped on an error", "RuntimeError: boom", level="error")
    assert alerter.close(WAIT_S)
    got = sorted((m["title"], m["message"], m["type"]) for m in endpoint.received)
    assert got == [
        ("scalpd started (paper)", "run 7: BTC/USDT", "info"),
        ("scalpd stopped on an error", "RuntimeError: boom", "failure"),
    ]
    assert endpoint.paths == ["/alerts", "/alerts"]
    assert (alerter.stats.sent, alerter.stats.delivered, alerter.stats.failed) == (2, 2, 0)


def test_rate_limiter_by_hand() -> None:
    limiter = RateLimiter(min_interval_s=300)
    assert limiter.allow("a", 0.0) == (True, 0)
    assert limiter.allow("a", 299.9) == (False, 0)  # within 300 s of the one sent at 0
    assert limiter.allow("b", 100.0) == (True, 0)  # another key is not held
    assert limiter.allow("a", 150.0) == (False, 0)
    assert limiter.allow("a", 300.0) == (True, 2)  # 300 s after the last sent; two held back
    assert limiter.allow("a", 301.0) == (False, 0)


def test_duplicates_within_min_interval_are_dropped_and_counted(endpoint: Endpoint) -> None:
    clock = FakeClock()
    alerter = Alerter(settings(endpoint.url(), min_interval_s=300), clock=clock)
    assert alerter.send(BREAKER_TRIP, "losses breaker", "5 losses", key="breaker:losses")
    clock.now_s += 10
    assert not alerter.send(BREAKER_TRIP, "losses breaker", "6 losses", key="breaker:losses")
    assert not alerter.send(BREAKER_TRIP, "losses breaker", "7 losses", key="breaker:losses")
    # Same kind, other key (default key: kind and title): not a duplicate.
    assert alerter.send(BREAKER_TRIP, "volatility breaker", "z = 6")
    clock.now_s += 300
    assert alerter.send(BREAKER_TRIP, "losses breaker", "8 losses", key="breaker:losses")
    assert alerter.close(WAIT_S)
    assert alerter.stats.suppressed == 2
    assert alerter.stats.delivered == 3
    bodies = sorted(m["message"] for m in endpoint.received)
    assert bodies == [
        "5 losses",
        "8 losses\n(2 more like this held back in the last interval)",
        "z = 6",
    ]


def test_unreachable_target_is_counted_and_never_raises() -> None:
    port = closed_port()
    alerter = Alerter(settings(f"json://127.0.0.1:{port}/alerts"))
    assert alerter.send(ERROR, "boom", "the run ended", level="error")
    assert alerter.close(WAIT_S)
    assert alerter.stats.failed == 1
    assert alerter.stats.delivered == 0
    assert alerter.stats.failed_by_target == {"json://127.0.0.1": 1}


def test_send_returns_while_a_delivery_hangs_and_a_full_queue_drops(endpoint: Endpoint) -> None:
    """The target holds the first request open: every later send must still come back, queued
    or dropped. Had any send waited for a delivery it would wait on the shut gate."""
    endpoint.gate.clear()
    alerter = Alerter(settings(endpoint.url(), max_queued=3, timeout_s=WAIT_S))
    assert alerter.send(START, "first", "held by the target")
    assert endpoint.request_started.wait(WAIT_S)  # the worker is inside apprise's notify now
    accepted = [alerter.send(ERROR, f"alert {i}", "queued", level="error") for i in range(4)]
    assert accepted == [True, True, True, False]  # queue of 3, the 4th dropped
    assert alerter.stats.dropped == 1
    assert alerter.pending == 4  # one in delivery, three queued
    assert alerter.stats.delivered == 0 and endpoint.received == []
    endpoint.gate.set()
    assert alerter.close(WAIT_S)
    assert alerter.stats.delivered == 4
    assert sorted(m["title"] for m in endpoint.received) == [
        "alert 0",
        "alert 1",
        "alert 2",
        "first",
    ]


def test_tokens_never_reach_a_log_line(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # apprise's and urllib3's debug lines print request paths
    caplog.set_level(logging.DEBUG, logger="apprise")
    good = f"json://scalpd:{PASSWORD}@127.0.0.1:{endpoint.port}/hooks/{TOKEN}"
    dead = f"json://127.0.0.1:{closed_port()}/hooks/{TOKEN}"
    with structlog.testing.capture_logs() as ours:
        alerter = Alerter(settings(good, dead))
        alerter.send(START, "started", "hello")
        assert alerter.close(WAIT_S)
        with pytest.raises(ConfigError) as bad:
            Alerter(settings(f"nosuchscheme://{TOKEN}/x"))
    assert endpoint.paths == [f"/hooks/{TOKEN}"]  # the token did its job
    assert alerter.stats.delivered == 1 and alerter.stats.failed == 1
    assert any(line["event"] == "alert_failed" for line in ours)
    assert caplog.records  # the third-party lines were captured, not silenced
    everything = caplog.text + repr(ours) + str(bad.value)
    for secret in (TOKEN, PASSWORD):
        assert secret not in everything
    assert "nosuchscheme://<hidden>" in str(bad.value)


def test_secret_parts_and_labels() -> None:
    url = f"discord://123456789/{TOKEN}"
    assert target_label(url) == "discord://<hidden>"  # a webhook id is not a hostname
    assert {"123456789", TOKEN} <= secret_fragments(url)
    assert target_label(f"json://hooks.example.com/{TOKEN}") == "json://hooks.example.com"
    slack = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#alerts"
    assert target_label(slack) == "slack://<hidden>"
    assert {"T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ"} <= secret_fragments(slack)


def test_without_urls_alerts_are_only_logged() -> None:
    alerter = Alerter(AlertsSettings())
    with structlog.testing.capture_logs() as ours:
        assert alerter.send(START, "started", "paper", level="info")
    assert [(e["event"], e["kind"], e["title"]) for e in ours] == [("alert", "start", "started")]
    assert alerter.targets == [] and alerter.pending == 0
    assert alerter.close(1)
    with pytest.raises(ValueError, match="unknown alert kind"):
        alerter.send("nonsense", "t", "b")


def test_urls_from_the_environment_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SCALPD_") and key != "SCALPD_REQUIRE_SHARED_DATA":
            monkeypatch.delenv(key)
    url = f"discord://123456789/{TOKEN}"
    monkeypatch.setenv("SCALPD_ALERTS__URLS", json.dumps([url]))
    loaded = load_settings(None)
    assert [u.get_secret_value() for u in loaded.alerts.urls] == [url]
    assert TOKEN not in repr(loaded) and TOKEN not in json.dumps(loaded.redacted())
    assert "urls" not in loaded.redacted()["alerts"]
    monkeypatch.setenv("SCALPD_ALERTS__URLS", json.dumps([TOKEN]))
    with pytest.raises(ConfigError) as bad:
        load_settings(None)
    assert TOKEN not in str(bad.value)
    assert "alerts.urls" in str(bad.value) and "not an apprise URL" in str(bad.value)
