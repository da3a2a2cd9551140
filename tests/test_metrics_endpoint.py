"""Prometheus metrics: exposition text checked against hand-written expectations, a real scrape of
the running endpoint, the loopback rule of the settings, and the dashboard kept to the registry."""

from __future__ import annotations

import asyncio
import json
import math

import aiohttp
import pytest

from scalpd.config import ConfigError, load_settings
from scalpd.ops.metrics import (
    CONTENT_TYPE,
    DaemonMetrics,
    MetricsRegistry,
    MetricsServer,
    format_value,
    metric_names,
)
from tests.conftest import REPO_ROOT

DASHBOARD = REPO_ROOT / "grafana" / "scalpd.json"


def test_counter_text() -> None:
    registry = MetricsRegistry()
    fills = registry.counter("x_fills_total", "Fills.")
    fills.inc()
    fills.inc(2)
    assert registry.render() == "# HELP x_fills_total Fills.\n# TYPE x_fills_total counter\n" + (
        "x_fills_total 3\n"
    )
    with pytest.raises(ValueError, match="only goes up"):
        fills.inc(-1)
    fills.set_total(2)  # a lower mirrored count is ignored, never a reset
    assert fills.value == 3


def test_gauge_labels_are_escaped_and_sorted() -> None:
    registry = MetricsRegistry()
    qty = registry.gauge("x_qty", 'Held; a "quoted" help \\ with\nnewline.', ("symbol",))
    qty.labels("ETH/USDT").set(0.25)
    qty.labels('we"ird\\sym\nbol').set(-3)
    qty.labels("BTC/USDT").set(math.nan)
    expected = (
        '# HELP x_qty Held; a "quoted" help \\\\ with\\nnewline.\n'
        "# TYPE x_qty gauge\n"
        'x_qty{symbol="BTC/USDT"} NaN\n'
        'x_qty{symbol="ETH/USDT"} 0.25\n'
        'x_qty{symbol="we\\"ird\\\\sym\\nbol"} -3\n'
    )
    assert registry.render() == expected
    with pytest.raises(ValueError, match="use .labels"):
        qty.set(1)


def test_histogram_buckets_are_cumulative_with_inf() -> None:
    registry = MetricsRegistry()
    latency = registry.histogram("x_latency_seconds", "Latency.", (0.001, 0.01, 0.1))
    # 0.001 sits exactly on a bound: le is "less or equal", so it counts in that bucket.
    for value in (0.0005, 0.001, 0.005, 0.05, 0.05, 2.0, math.nan):
        latency.observe(value)
    expected = (
        "# HELP x_latency_seconds Latency.\n"
        "# TYPE x_latency_seconds histogram\n"
        'x_latency_seconds_bucket{le="0.001"} 2\n'
        'x_latency_seconds_bucket{le="0.01"} 3\n'
        'x_latency_seconds_bucket{le="0.1"} 5\n'
        'x_latency_seconds_bucket{le="+Inf"} 6\n'
        "x_latency_seconds_sum 2.1065\n"
        "x_latency_seconds_count 6\n"
    )
    assert registry.render() == expected  # the NaN is dropped, not counted


def test_labelled_histogram_puts_le_last() -> None:
    registry = MetricsRegistry()
    h = registry.histogram("x_h", "H.", (1.0,), ("symbol",))
    h.labels("A").observe(1)
    assert registry.render().splitlines()[2:] == [
        'x_h_bucket{symbol="A",le="1"} 1',
        'x_h_bucket{symbol="A",le="+Inf"} 1',
        'x_h_sum{symbol="A"} 1',
        'x_h_count{symbol="A"} 1',
    ]


def test_registry_refuses_bad_or_duplicate_names() -> None:
    registry = MetricsRegistry()
    registry.counter("x_total", "X.")
    with pytest.raises(ValueError, match="already registered"):
        registry.gauge("x_total", "again")
    registry.histogram("x_h", "H.", (1.0,))
    with pytest.raises(ValueError, match="already registered"):
        registry.counter("x_h_count", "clashes with the histogram's series")
    with pytest.raises(ValueError, match="not a Prometheus name"):
        registry.counter("x-y", "dash")
    with pytest.raises(ValueError, match="not a Prometheus label"):
        registry.gauge("x_g", "G.", ("__reserved",))
    with pytest.raises(ValueError, match="increasing"):
        registry.histogram("x_h2", "H.", (2.0, 1.0))


def test_format_value() -> None:
    assert [format_value(v) for v in (3.0, -0.5, 5e-05, math.inf, -math.inf)] == [
        "3",
        "-0.5",
        "5e-05",
        "+Inf",
        "-Inf",
    ]


def _samples(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = value
    return out


def test_daemon_metrics_one_call_per_event() -> None:
    now_s = [1_700_000_100.0]
    metrics = DaemonMetrics(clock_s=lambda: now_s[0])
    reconnects = [0]
    metrics.follow(reconnects=lambda: reconnects[0], alerts_failed=lambda: 4)
    samples = _samples(metrics.render())
    assert samples["scalpd_equity_usdt"] == "NaN"  # unknown before the first update
    assert samples['scalpd_breaker_tripped{breaker="daily_loss"}'] == "0"
    assert samples['scalpd_orders_total{status="rejected"}'] == "0"

    metrics.on_bar("BTC/USDT", 1_700_000_040_000)  # closed 60 s before "now"
    metrics.on_equity(10_250.5, 250.5)
    metrics.on_position("BTC/USDT", 0.1, 40_000.0)
    metrics.on_decision(0.0008)
    metrics.on_order("filled")
    metrics.on_fill()
    metrics.on_breakers({"price_jump:BTC/USDT": True, "daily_loss": False})
    reconnects[0] = 2
    now_s[0] += 30
    samples = _samples(metrics.render())
    assert samples['scalpd_bars_total{symbol="BTC/USDT"}'] == "1"
    assert samples['scalpd_last_bar_age_seconds{symbol="BTC/USDT"}'] == "90"
    assert samples["scalpd_equity_usdt"] == "10250.5"
    assert samples["scalpd_realized_pnl_usdt"] == "250.5"
    assert samples['scalpd_position_notional_usdt{symbol="BTC/USDT"}'] == "4000"
    assert samples['scalpd_decision_latency_seconds_bucket{le="0.00075"}'] == "0"
    assert samples['scalpd_decision_latency_seconds_bucket{le="0.001"}'] == "1"
    assert samples['scalpd_orders_total{status="filled"}'] == "1"
    assert samples["scalpd_fills_total"] == "1"
    assert samples['scalpd_breaker_tripped{breaker="price_jump:BTC/USDT"}'] == "1"
    assert samples["scalpd_reconnects_total"] == "2"
    assert samples["scalpd_alerts_failed_total"] == "4"


async def _scrape(metrics: DaemonMetrics) -> list[tuple[int, str, str]]:
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    await server.start()
    try:
        assert server.port > 0
        base = f"http://127.0.0.1:{server.port}"
        out = []
        async with aiohttp.ClientSession() as session:
            for method, path in (("GET", "/metrics"), ("GET", "/"), ("POST", "/metrics")):
                async with session.request(method, base + path) as resp:
                    out.append(
                        (resp.status, resp.headers.get("Content-Type", ""), await resp.text())
                    )
        return out
    finally:
        await server.close()


def test_scrape_the_running_server() -> None:
    metrics = DaemonMetrics(clock_s=lambda: 0.0)
    metrics.on_bar("ETH/USDT", 0)
    (ok, root, post) = asyncio.run(_scrape(metrics))
    assert ok[0] == 200
    assert ok[1] == CONTENT_TYPE
    assert ok[2] == metrics.render()
    assert 'scalpd_bars_total{symbol="ETH/USDT"} 1\n' in ok[2]
    assert root[0] == 404 and post[0] == 404


def test_settings_refuse_a_non_loopback_host() -> None:
    assert load_settings(None).metrics.host == "127.0.0.1"
    assert not load_settings(None).metrics.enabled
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert load_settings(None, {"metrics": {"host": host}}).metrics.host == host
    for host in ("0.0.0.0", "192.168.1.10", "::", "metrics.example.org"):
        with pytest.raises(ConfigError, match="metrics.host.*allow_remote") as err:
            load_settings(None, {"metrics": {"host": host}})
        assert "\n" not in str(err.value)
        allowed = load_settings(None, {"metrics": {"host": host, "allow_remote": True}})
        assert allowed.metrics.host == host


def _expressions(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for v in node.values() for e in _expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in _expressions(v)]
    return []


def test_dashboard_uses_only_metrics_the_registry_defines() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = _expressions(dashboard["panels"])
    used = metric_names(expressions)
    defined = set(DaemonMetrics().registry.sample_names())
    assert used <= defined, f"dashboard reads undefined metrics: {sorted(used - defined)}"
    # ... and shows every one of them (a histogram through its buckets).
    families = {n.removesuffix("_bucket") for n in used}
    assert families >= {n for n in defined if not n.endswith(("_sum", "_count", "_bucket"))}
    assert "histogram_quantile(0.99" in " ".join(expressions)
    datasources = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert datasources == {"${DS_PROMETHEUS}"}
