"""Prometheus metrics: a small registry, the text exposition format 0.0.4, and its HTTP endpoint.

No client library: the format is a few lines per metric and the daemon needs only counters,
gauges and one histogram. Updating a metric is plain attribute arithmetic (asyncio runs one
callback at a time, so no locks); the text is built only when Prometheus scrapes.

Use (the daemon)::

    metrics = DaemonMetrics()                 # every scalpd_* metric, defined here once
    metrics.on_bar("BTC/USDT", bar.close_time_ms)
    metrics.on_decision(latency_s)            # closed candle in -> order out, seconds
    metrics.on_order("filled"); metrics.on_fill()
    metrics.on_equity(equity_usdt, realized_pnl_usdt)
    metrics.on_position("BTC/USDT", qty, price)
    metrics.on_breakers({"daily_loss": False, "price_jump:BTC/USDT": True})
    metrics.follow(reconnects=lambda: source.reconnects,
                   alerts_failed=lambda: alerter.stats.failed)   # counts kept elsewhere
    server = MetricsServer.from_settings(settings.metrics, metrics.registry)
    await server.start(); ...; await server.close()

`grafana/scalpd.json` at the repository root is a dashboard of these metrics; a test keeps its
expressions to names the registry defines.
"""

from __future__ import annotations

import math
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from scalpd.events import OrderStatus
from scalpd.risk.breakers import CONFIDENCE, CONSECUTIVE_LOSSES, DAILY_LOSS, MANUAL

if TYPE_CHECKING:
    from scalpd.config.settings import MetricsSettings

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_M = TypeVar("_M", bound="_Metric")

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def format_value(value: float) -> str:
    """A sample value or `le` bound as Prometheus parses it (Go's float syntax)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


class _Metric:
    """A metric family: one child (a time series) per combination of label values."""

    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"metric name {name!r} is not a Prometheus name")
        for label in labelnames:
            if not _LABEL_RE.match(label) or label.startswith("__"):
                raise ValueError(f"label name {label!r} of {name} is not a Prometheus label")
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        if not self.labelnames:
            self.labels()  # a series without labels exists from the start, at zero

    def _new_child(self) -> object:
        raise NotImplementedError

    def labels(self, *values: str):
        """The time series of these label values (created at zero); keep it for hot paths."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values!r}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def remove(self, *values: str) -> None:
        self._children.pop(tuple(str(v) for v in values), None)

    def _only(self):
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self.labels()

    def sample_names(self) -> tuple[str, ...]:
        return (self.name,)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for key in sorted(self._children):
            lines.extend(self._render_child(key, self._children[key]))
        return lines

    def _render_child(self, key: tuple[str, ...], child: object) -> list[str]:
        labels = _label_text(self.labelnames, key)
        return [f"{self.name}{labels} {format_value(child.value)}"]  # type: ignore[attr-defined]


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up; got inc({amount})")
        self.value += amount

    def set_total(self, total: float) -> None:
        # Mirrors a count kept elsewhere; a lower figure would read as a restart to Prometheus.
        if total > self.value:
            self.value = float(total)


class Counter(_Metric):
    kind = "counter"

    def _new_child(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def set_total(self, total: float) -> None:
        self._only().set_total(total)

    @property
    def value(self) -> float:
        return self._only().value


class _GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class Gauge(_Metric):
    kind = "gauge"

    def _new_child(self) -> _GaugeChild:
        return _GaugeChild()

    def set(self, value: float) -> None:
        self._only().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._only().dec(amount)

    @property
    def value(self) -> float:
        return self._only().value


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last = above all
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        if value != value:  # NaN: would poison _sum forever; no bucket holds it either
            return
        # bisect_left: a value equal to a bound belongs to that bucket (le = less or equal).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
    ) -> None:
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is the histogram's own label")
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be finite, increasing and not empty")
        self.buckets = bounds  # before the base class makes the first child
        super().__init__(name, help_text, labelnames)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self.buckets)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    @property
    def count(self) -> int:
        return self._only().count

    def sample_names(self) -> tuple[str, ...]:
        return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")

    def _render_child(self, key: tuple[str, ...], child: object) -> list[str]:
        assert isinstance(child, _HistogramChild)
        names = (*self.labelnames, "le")
        lines = []
        cumulative = 0
        for bound, n in zip((*self.buckets, math.inf), child.counts, strict=True):
            cumulative += n
            labels = _label_text(names, (*key, format_value(bound)))
            lines.append(f"{self.name}_bucket{labels} {cumulative}")
        labels = _label_text(self.labelnames, key)
        lines.append(f"{self.name}_sum{labels} {format_value(child.sum)}")
        lines.append(f"{self.name}_count{labels} {child.count}")
        return lines


class MetricsRegistry:
    """The metrics one endpoint serves, in registration order."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], None]] = []

    def register(self, metric: _M) -> _M:
        taken = set(self.sample_names())
        if metric.name in self._metrics or taken & set(metric.sample_names()):
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        return self.register(Counter(name, help_text, labelnames))

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self.register(Gauge(name, help_text, labelnames))

    def histogram(
        self, name: str, help_text: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> Histogram:
        return self.register(Histogram(name, help_text, buckets, labelnames))

    def add_collector(self, collect: Callable[[], None]) -> None:
        """Run `collect` before each render: for values read at scrape time (ages, counts kept
        by another part)."""
        self._collectors.append(collect)

    def get(self, name: str) -> _Metric:
        return self._metrics[name]

    def sample_names(self) -> list[str]:
        """Every series name a scrape can show (a histogram's _bucket, _sum and _count)."""
        return [s for m in self._metrics.values() for s in m.sample_names()]

    def render(self) -> str:
        for collect in self._collectors:
            collect()
        lines = [line for m in self._metrics.values() for line in m.render()]
        return "\n".join(lines) + "\n" if lines else ""


# Seconds from a closed candle to its order leaving; the target is a p99 under 2 ms, so the
# buckets are densest around it.
DECISION_LATENCY_BUCKETS_S = (
    50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6,
    1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3,
)  # fmt: skip

# Global breakers are shown at 0 from the start, so a dashboard tells "armed" from "unknown".
GLOBAL_BREAKERS = (MANUAL, DAILY_LOSS, CONSECUTIVE_LOSSES, CONFIDENCE)


class DaemonMetrics:
    """Every metric the daemon exports, defined once; one call per event updates them."""

    def __init__(self, clock_s: Callable[[], float] = time.time) -> None:
        self._clock_s = clock_s  # wall clock, s: bar ages are against exchange time
        r = self.registry = MetricsRegistry()
        self.equity = r.gauge("scalpd_equity_usdt", "Account equity (cash + positions), USDT.")
        self.realized_pnl = r.gauge(
            "scalpd_realized_pnl_usdt", "Realised P&L of this run, net of fees, USDT."
        )
        self.position_qty = r.gauge(
            "scalpd_position_qty", "Position held, base units.", ("symbol",)
        )
        self.position_notional = r.gauge(
            "scalpd_position_notional_usdt", "Position held at the last price, USDT.", ("symbol",)
        )
        self.decision_latency = r.histogram(
            "scalpd_decision_latency_seconds",
            "Closed candle received to order sent (features, model, risk), seconds.",
            DECISION_LATENCY_BUCKETS_S,
        )
        self.reconnects = r.counter(
            "scalpd_reconnects_total", "Market-data WebSocket reconnections."
        )
        self.breaker_tripped = r.gauge(
            "scalpd_breaker_tripped",
            "1 while the circuit breaker is tripped, else 0 (per-symbol ones: kind:symbol).",
            ("breaker",),
        )
        self.bars = r.counter("scalpd_bars_total", "Closed candles processed.", ("symbol",))
        self.orders = r.counter(
            "scalpd_orders_total", "Order state changes, by the state reached.", ("status",)
        )
        self.fills = r.counter("scalpd_fills_total", "Fills (partial or complete) recorded.")
        self.alerts_failed = r.counter(
            "scalpd_alerts_failed_total", "Alert deliveries that failed (per target)."
        )
        self.last_bar_age = r.gauge(
            "scalpd_last_bar_age_seconds",
            "Wall-clock time since the last processed candle closed, seconds.",
            ("symbol",),
        )
        # Unknown until the first update: NaN draws a gap where 0 would draw a crash.
        self.equity.set(math.nan)
        for name in GLOBAL_BREAKERS:
            self.breaker_tripped.labels(name).set(0)
        for status in OrderStatus:  # so rate() sees every status from its first scrape
            self.orders.labels(status.value)
        self._last_close_ms: dict[str, int] = {}
        self._follow: list[tuple[_CounterChild, Callable[[], float]]] = []
        r.add_collector(self._collect)

    def on_bar(self, symbol: str, close_time_ms: int) -> None:
        self.bars.labels(symbol).inc()
        self._last_close_ms[symbol] = close_time_ms

    def on_decision(self, latency_s: float) -> None:
        self.decision_latency.observe(latency_s)

    def on_order(self, status: str) -> None:
        self.orders.labels(str(status)).inc()

    def on_fill(self) -> None:
        self.fills.inc()

    def on_reconnect(self) -> None:
        self.reconnects.inc()

    def on_alert_failed(self) -> None:
        self.alerts_failed.inc()

    def on_equity(self, equity_usdt: float, realized_pnl_usdt: float) -> None:
        self.equity.set(equity_usdt)
        self.realized_pnl.set(realized_pnl_usdt)

    def on_position(self, symbol: str, qty: float, price: float) -> None:
        self.position_qty.labels(symbol).set(qty)
        self.position_notional.labels(symbol).set(qty * price)

    def on_breakers(self, tripped: Mapping[str, bool]) -> None:
        """The state of every breaker known, e.g. from the risk manager after a change."""
        for name, is_tripped in tripped.items():
            self.breaker_tripped.labels(name).set(1 if is_tripped else 0)

    def follow(
        self,
        *,
        reconnects: Callable[[], float] | None = None,
        alerts_failed: Callable[[], float] | None = None,
    ) -> None:
        """Read counts another part keeps (the source's reconnects, the alerter's failures,
        counted in its worker thread) at each scrape instead of counting them twice."""
        for counter, read in ((self.reconnects, reconnects), (self.alerts_failed, alerts_failed)):
            if read is not None:
                self._follow.append((counter.labels(), read))

    def _collect(self) -> None:
        for child, read in self._follow:
            child.set_total(read())
        now_ms = self._clock_s() * 1000
        for symbol, close_ms in self._last_close_ms.items():
            self.last_bar_age.labels(symbol).set(max(0.0, (now_ms - close_ms) / 1000))

    def render(self) -> str:
        return self.registry.render()


class MetricsServer:
    """`GET /metrics` on host:port (aiohttp); every other request is a 404."""

    def __init__(self, registry: MetricsRegistry, host: str = "127.0.0.1", port: int = 9464):
        self.registry = registry
        self.host = host
        self.port = port  # 0 = any free port; `port` holds the bound one after start()
        self._runner: web.AppRunner | None = None

    @classmethod
    def from_settings(cls, settings: MetricsSettings, registry: MetricsRegistry) -> MetricsServer:
        return cls(registry, settings.host, settings.port)

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path != "/metrics" or request.method not in ("GET", "HEAD"):
            return web.Response(status=404, text="not found; metrics are at GET /metrics\n")
        body = self.registry.render().encode()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        # No access log: a scrape every few seconds would fill the journal.
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


def metric_names(expressions: Iterable[str]) -> set[str]:
    """The scalpd_* series names a set of PromQL expressions reads."""
    return {m for e in expressions for m in re.findall(r"\bscalpd_[a-zA-Z0-9_]+", e)}
