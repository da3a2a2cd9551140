"""The daemon's operator services: the control socket, the metrics endpoint, disconnect alerts.

`Daemon.run` starts them once its engine is built and closes them in its `finally`:

- the control socket (`control.enabled`, scalpd/ops/control.py) with the commands status,
  pause, resume, flatten, reload-model, models and restore-model. A command that changes what
  the engine does runs under the daemon's bar lock, so it lands between two bars and never
  between a bar's sync, decision and flush; a flatten in live mode sends its orders
  (`broker.flush`) at once;
- the model versions online learning makes (`record_models`, called by the bar loop after
  each decision, before its commit): journaled with the bar's other records, and a promotion,
  a rollback (warning) or a restore alerted (MODEL_CHANGE);
- the Prometheus endpoint (`metrics.enabled`, scalpd/ops/metrics.py), fed by a `DaemonMetrics`:
  bars and decision latency as each bar is handled, orders and fills as they are journaled,
  equity, positions and breakers read from the engine when Prometheus scrapes;
- a watch on the market-data source: a connection lost for longer than
  `alerts.disconnect_after_s` is alerted once per outage (DISCONNECT), and again, at level info,
  when it is back.
- what `status` says of the daemon itself (scalpd/live/insight.py): event-loop lag, the log
  tail, and the served model's confidence, matured accuracy and calibration and permutation
  feature importance (`model_quality`), fed from `on_bar` after each bar's orders left.

The handlers are thin: each reads or calls the engine's own API (`Engine.pause`, `resume`,
`flatten`; the model strategy's `prepare_swap`/`swap`), so a command does what the same call
would do in a replay.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from scalpd.events import Bar, Fill, Order, OrderStatus, OrderUpdate
from scalpd.execution.ccxt_broker import CcxtBroker
from scalpd.live.insight import Insight
from scalpd.models.versions import VersionEvent, VersionRecord
from scalpd.ops import alerts
from scalpd.ops.control import ControlError, ControlServer
from scalpd.ops.metrics import DaemonMetrics, MetricsServer
from scalpd.risk.breakers import iso_ms
from scalpd.store.sqlite import Store, StoreError

if TYPE_CHECKING:
    from scalpd.config.settings import Settings
    from scalpd.engine.engine import Engine, Journal
    from scalpd.execution.sim import SimBroker
    from scalpd.live.daemon import Daemon

log = structlog.get_logger("scalpd.live.services")

# Status shows latency percentiles over at most this many recent bars.
STATUS_LATENCY_BARS = 1000


class ServiceError(RuntimeError):
    """A service could not start (socket taken, port in use): the daemon stops with it."""


class DaemonServices:
    """One daemon run's services (see the module doc): `start`, `on_bar` per bar, `close`."""

    def __init__(self, daemon: Daemon, engine: Engine, broker: SimBroker | CcxtBroker) -> None:
        self.daemon = daemon
        self.settings = daemon.settings
        self.engine = engine
        self.broker = broker
        self.metrics: DaemonMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        self.control: ControlServer | None = None
        self._watch: asyncio.Task | None = None
        self._outage_alerted: float | None = None  # start (monotonic s) of the outage alerted
        # The online model (strategy/online.py) when the strategy learns; None: it does not.
        self.online: Any = getattr(engine.strategy, "online", None)
        # Loop lag, log tail, the model's matured quality: for status, off the decision path.
        self.insight = Insight(engine)

    async def start(self) -> None:
        settings = self.settings
        self.insight.start()
        if settings.metrics.enabled:
            self.metrics = metrics = DaemonMetrics()
            # Orders and fills are counted where the engine journals them; the journal is
            # wrapped here so the start-up code that builds the engine stays as it is.
            engine = self.engine
            engine._journal = MeteredJournal(engine._journal, metrics)
            metrics.follow(
                reconnects=lambda: self.daemon.source.reconnects if self.daemon.source else 0,
                alerts_failed=lambda: (
                    self.daemon.alerter.stats.failed if self.daemon.alerter else 0
                ),
            )
            metrics.registry.add_collector(self._collect)
            server = MetricsServer.from_settings(settings.metrics, metrics.registry)
            try:
                await server.start()
            except OSError as exc:
                await server.close()
                raise ServiceError(
                    f"metrics endpoint {server.host}:{server.port}: {exc.strerror or exc}; "
                    "set metrics.port (or metrics.enabled = false)"
                ) from None
            self.metrics_server = server
            log.info("metrics_serving", url=self.metrics_server.url)
        if settings.control.enabled:
            self.control = ControlServer(
                settings.control.socket_path,
                {
                    "status": self.status,
                    "pause": self.pause,
                    "resume": self.resume,
                    "flatten": self.flatten,
                    "reload-model": self.reload_model,
                    "models": self.models,
                    "restore-model": self.restore_model,
                },
            )
            try:
                await self.control.start()
            except ControlError as exc:
                self.control = None
                raise ServiceError(str(exc)) from None
            except OSError as exc:  # a directory we may not create, say
                self.control = None
                path = settings.control.socket_path
                raise ServiceError(f"control socket {path}: {exc.strerror or exc}") from None
        self._watch = asyncio.create_task(self._watch_connection(), name="disconnect-watch")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        if self.control is not None:
            await self.control.close()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        await self.insight.close()

    # -- from the bar loop ---------------------------------------------------------------------

    def on_bar(
        self, bar: Bar, latency_s: float, later: Callable[[Callable[[], None]], None]
    ) -> None:
        """A bar's accounting, after its orders left. `later`: where its model-quality
        scoring goes (the daemon's quiet moments, see scalpd/live/pacing.py)."""
        metrics = self.metrics
        if metrics is not None:
            metrics.on_bar(bar.symbol, bar.open_time_ms + 60_000)
            metrics.on_decision(latency_s)
        seen = self.insight.observe(bar)
        if seen is not None:
            later(functools.partial(self.insight.score, seen))

    def record_models(self) -> list[VersionRecord]:
        """The model versions and version events online learning made at the bar just
        decided, into the journal (committed with the bar's records by the caller); each
        promotion, rollback and restore alerted. Returns them."""
        if self.online is None:
            return []
        records = self.online.take_records()
        if records:
            self._journal_models(records)
        return records

    def _journal_models(self, records: list[VersionRecord]) -> None:
        journal = self.daemon.journal
        assert journal is not None
        for record in records:
            journal.record_model(record)
        for record in records:
            if isinstance(record, VersionEvent) and record.kind in _ALERTED:
                self._alert_version(record)

    def _alert_version(self, event: VersionEvent) -> None:
        alerter, daemon = self.daemon.alerter, self.daemon
        verb, level = _ALERTED[event.kind]
        if alerter is not None:  # it also logs the alert
            because = f": {event.reason}" if event.reason else ""
            alerter.send(
                alerts.MODEL_CHANGE,
                f"model version {verb} ({daemon.mode}): {event.symbol} v{event.version}",
                f"run {daemon.run_id}: {event.model} {event.symbol} version {event.version} "
                f"{verb} at {iso_ms(event.time_ms)}{because}",
                key=f"model:{event.symbol}:{event.model}:{event.version}:{event.kind}",
                level=level,
            )

    # -- control commands ----------------------------------------------------------------------

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        daemon, engine = self.daemon, self.engine
        pf = engine.portfolio
        positions = {}
        for symbol, pos in pf.positions.items():
            last = pf.last_price.get(symbol, pos.avg_price)
            positions[symbol] = {
                "qty": pos.qty,
                "avg_price": pos.avg_price,
                "last_price": last,
                # As if sold at the last price now: entry fees in, the exit's fee not.
                "unrealized_pnl_usdt": round(pos.qty * (last - pos.avg_price) - pos.entry_fees, 4),
                "opened": iso_ms(pos.opened_ms),
            }
        orders = [
            {
                "client_id": o.client_id,
                "symbol": o.symbol,
                "side": o.side.value,
                "type": o.type.value,
                "qty": o.qty,
                "price": o.price,
                "reason": o.reason,
                "parent_id": o.parent_id,
            }
            for o in engine.open_orders.values()
        ]
        now_ms = time.time() * 1000
        last_bars = {
            symbol: {
                "open_time": iso_ms(open_ms),
                "age_s": round(max(0.0, now_ms - open_ms - 60_000) / 1000, 3),
            }
            for symbol, open_ms in engine.last_bar_ms.items()
        }
        source = daemon.source
        since = source.disconnected_since_s() if source is not None else None
        strategy = engine.strategy
        return {
            "mode": daemon.mode,
            "run_id": daemon.run_id,
            "stopping": daemon.stopping,
            "bars_processed": daemon.bars_processed,
            "equity_usdt": round(engine.equity(), 4),
            "cash_usdt": round(pf.cash, 4),
            "realized_pnl_usdt": round(pf.realized_pnl, 4),
            "fees_usdt": round(pf.fees_paid, 4),
            "trades": len(engine.trades),
            "positions": positions,
            "open_orders": orders,
            "paused": engine.risk.entries_paused(),
            "risk": engine.risk.status(),
            "last_bar": last_bars,
            "connection": {
                "state": "connected" if since is None else "disconnected",
                "disconnected_for_s": (
                    None if since is None else round(time.monotonic() - since, 3)
                ),
                "reconnects": source.reconnects if source is not None else 0,
            },
            "decision_latency_ms": latency_summary_ms(daemon.decision_latency_s),
            "loop_lag_ms": self.insight.loop_lag_ms(),
            # What the start took over from earlier runs (live): orders, fills, surprises.
            "recovery": daemon.recovery.summary() if daemon.recovery is not None else None,
            "strategy": getattr(strategy, "name", type(strategy).__name__),
            "model": getattr(strategy, "model", None),
            # Per symbol: confidence, matured accuracy and calibration, feature importance,
            # who serves (online learning); None for a rule strategy.
            "model_quality": self.insight.model_quality(self.online),
            "log_tail": self.insight.log_tail(),
        }

    def pause(self, args: dict[str, Any]) -> dict[str, Any]:
        reason = str(args.get("reason") or "operator")
        self.engine.pause(self._now_ms(), reason)
        self.daemon.commit()  # the pause outlives a crash
        return {"paused": self.engine.risk.entries_paused(), "reason": reason}

    def resume(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.daemon.stopping:
            raise RuntimeError("the daemon is stopping: no resume")
        breaker = args.get("breaker")
        names = self.engine.resume(self._now_ms(), None if breaker is None else str(breaker))
        self.daemon.commit()
        if breaker is not None and not names:
            tripped = ", ".join(self.engine.risk.state.tripped()) or "none"
            raise ValueError(f"breaker {breaker!r} is not tripped; tripped: {tripped}")
        return {"reset": names, "paused": self.engine.risk.entries_paused()}

    async def flatten(self, args: dict[str, Any]) -> dict[str, Any]:
        async with self.daemon.bar_lock:
            sent = self.engine.flatten(self._now_ms(), str(args.get("reason") or "flatten"))
            self.daemon.commit()  # the exits are on disk before they are sent
            if isinstance(self.broker, CcxtBroker):
                await self.broker.flush()
        log.warning("flatten", orders=sent)
        return {"orders": sent}

    async def reload_model(self, args: dict[str, Any]) -> dict[str, Any]:
        settings = self.settings.strategy
        strategy = self.engine.strategy
        if settings.name != "model" or not hasattr(strategy, "prepare_swap"):
            raise ValueError(
                f"reload-model needs the model strategy; this daemon runs {settings.name!r} "
                '(strategy.name = "model" and a restart to use one)'
            )
        raw = args.get("path") or settings.model_path
        if raw is None:
            raise ValueError("no model path given and strategy.model_path is not set")
        path = Path(str(raw))
        # Loading (torch, an ONNX export) takes long enough to stall the bar loop: a thread.
        prepared = await asyncio.to_thread(strategy.prepare_swap, path, settings.model_backend)
        async with self.daemon.bar_lock:
            previous = strategy.swap(prepared)
        log.warning("model_changed", previous=previous, model=prepared.model, path=str(path))
        alerter = self.daemon.alerter
        if alerter is not None:
            alerter.send(
                alerts.MODEL_CHANGE,
                f"model changed ({self.daemon.mode}): {prepared.model}",
                f"run {self.daemon.run_id}: {previous} -> {prepared.model} from {path}; "
                f"entries resume after its warm-up of {prepared.warmup_bars} bars",
                level="warning",
            )
        return {"previous": previous, "model": prepared.model, "warmup_bars": prepared.warmup_bars}

    def models(self, args: dict[str, Any]) -> dict[str, Any]:
        """The model versions of this run (or `run`), of every symbol (or `symbol`)."""
        run_id = _run_arg(args.get("run"), self.daemon.run_id)
        symbol = args.get("symbol")
        rows = self._store().model_versions(run_id, None if symbol is None else str(symbol))
        online = self.online
        serving = getattr(online, "serving", None)
        return {
            "run_id": run_id,
            "online": online is not None,
            "model": getattr(online, "model", None),
            # Who serves each symbol now (champion, challenger and its share of decisions).
            "serving": None
            if serving is None
            else {s: serving(s) for s in sorted(online.counts())},
            "versions": [
                {
                    "symbol": r["symbol"],
                    "model": r["model"],
                    "version": r["version"],
                    "parent": r["parent"],
                    "state": r["state"],
                    "champion": r["champion"],
                    "created": iso_ms(r["created_ms"]),
                    "has_weights": r["has_weights"],
                    "metrics": r["metrics"],
                    "reason": r["reason"],
                }
                for r in rows
            ],
        }

    async def restore_model(self, args: dict[str, Any]) -> dict[str, Any]:
        """Serve an earlier version of a symbol's online model again: its weights from the
        store (version 0: the trained artifact's), swapped in between two bars."""
        online = self.online
        if online is None:
            raise ValueError(
                "restore-model needs online learning: the model strategy with online.enabled "
                "= true (and a restart to turn it on)"
            )
        symbol = str(args.get("symbol") or "")
        symbols = sorted(online.counts())
        if symbol not in symbols:
            raise ValueError(f"unknown symbol {symbol!r}; online learning runs for: {symbols}")
        try:
            version = int(args.get("version"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"version {args.get('version')!r}: allowed an integer >= 0") from None
        if version < 0:
            raise ValueError(f"version {version}: allowed an integer >= 0")
        run_id = _run_arg(args.get("run"), self.daemon.run_id)
        model = online.model
        if version == 0:
            # Loading torch weights from disk: off the event loop.
            weights = await asyncio.to_thread(_artifact_weights, self.settings, model)
        else:
            try:
                weights = self._store().model_weights(run_id, symbol, model, version)
            except StoreError as exc:
                raise ValueError(f"{exc}; `scalpd ctl models` lists them") from None
        async with self.daemon.bar_lock:
            time_ms = self._now_ms()
            online.restore(symbol, version, weights, time_ms)  # it records a "restored"
            self.record_models()
            self.daemon.commit()
        return {
            "symbol": symbol,
            "model": model,
            "version": version,
            "from_run": run_id,
            "time": iso_ms(time_ms),
        }

    def _store(self) -> Store:
        journal = self.daemon.journal
        if journal is None or journal.store is None:
            raise RuntimeError("the daemon has no store open")
        return journal.store

    # -- internals -----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        now_ms = self.daemon.risk_now_ms()
        return now_ms if now_ms is not None else int(time.time() * 1000)

    def _collect(self) -> None:
        """Engine state into the gauges, at each scrape (cheaper than at each bar)."""
        metrics, engine = self.metrics, self.engine
        assert metrics is not None
        pf = engine.portfolio
        metrics.on_equity(engine.equity(), pf.realized_pnl)
        for symbol in self.settings.symbols.trade:
            pos = pf.positions.get(symbol)
            price = pf.last_price.get(symbol, 0.0)
            metrics.on_position(symbol, pos.qty if pos is not None else 0.0, price)
        metrics.on_breakers({n: b.tripped for n, b in engine.risk.state.breakers.items()})

    async def _watch_connection(self) -> None:
        after_s = self.settings.alerts.disconnect_after_s
        check_s = min(1.0, after_s / 4)
        while True:
            await asyncio.sleep(check_s)
            source = self.daemon.source
            if source is not None:
                self.check_connection(source.disconnected_since_s(), time.monotonic(), after_s)

    def check_connection(self, since_s: float | None, now_s: float, after_s: float) -> None:
        """One look at the source: alert an outage past `after_s` once, and its end."""
        alerter, daemon = self.daemon.alerter, self.daemon
        if since_s is None:
            started = self._outage_alerted
            if started is not None:
                self._outage_alerted = None
                if alerter is not None:
                    alerter.send(
                        alerts.DISCONNECT,
                        f"market data back ({daemon.mode})",
                        f"run {daemon.run_id}: reconnected after about {now_s - started:.0f} s",
                        key=f"disconnect:{started}:back",
                        level="info",
                    )
            return
        if since_s != self._outage_alerted and now_s - since_s >= after_s:
            self._outage_alerted = since_s
            if alerter is not None:
                alerter.send(
                    alerts.DISCONNECT,
                    f"market data disconnected ({daemon.mode})",
                    f"run {daemon.run_id}: no market-data connection for {now_s - since_s:.0f} s "
                    f"(alerts.disconnect_after_s = {after_s:g}); retrying with backoff",
                    key=f"disconnect:{since_s}",
                    level="warning",
                )


class MeteredJournal:
    """A journal that also counts orders and fills into the metrics, then records as before."""

    def __init__(self, journal: Journal, metrics: DaemonMetrics) -> None:
        self._journal = journal
        self._metrics = metrics

    def record_order(self, order: Order, status: OrderStatus = OrderStatus.NEW) -> None:
        self._journal.record_order(order, status)
        self._metrics.on_order(status.value)

    def record_order_update(self, update: OrderUpdate, filled_qty: float) -> None:
        self._journal.record_order_update(update, filled_qty)
        self._metrics.on_order(update.status.value)

    def record_fill(self, fill: Fill, position: Any) -> None:
        self._journal.record_fill(fill, position)
        self._metrics.on_fill()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)


# Version events alerted: kind -> (the verb in the alert, its level).
_ALERTED: dict[str, tuple[str, alerts.Level]] = {
    "promoted": ("promoted", "info"),
    "rolled_back": ("rolled back", "warning"),
    "restored": ("restored", "info"),
}


def _run_arg(value: Any, default: int | None) -> int:
    if value is None:
        if default is None:
            raise RuntimeError("the daemon has no run yet")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"run {value!r}: allowed a run id (an integer)") from None


def _artifact_weights(settings: Settings, model: str) -> bytes:
    """The trained artifact's weights (version 0 of every lineage), as a version stores them;
    refused when strategy.model_path now holds another model than the one running."""
    import io

    import torch

    from scalpd.models.artifact import load_artifact
    from scalpd.strategy.model import MODEL_INPUTS, MODEL_INPUTS_ID

    path = settings.strategy.model_path
    if path is None:
        raise ValueError("strategy.model_path is not set: version 0 cannot be loaded")
    artifact = load_artifact(path, list(MODEL_INPUTS), MODEL_INPUTS_ID)
    found = f"{artifact.name}/{artifact.version}"
    if found != model:
        raise ValueError(f"{path} now holds {found}, not the running {model}: version 0 is gone")
    buffer = io.BytesIO()
    torch.save(artifact.net.state_dict(), buffer)
    return buffer.getvalue()


def latency_summary_ms(latencies_s: Any) -> dict[str, Any]:
    """p50 and p99 (ms) of the last STATUS_LATENCY_BARS decision latencies; None before any."""
    recent = list(latencies_s)[-STATUS_LATENCY_BARS:]
    if not recent:
        return {"bars": 0, "p50": None, "p99": None}
    p50, p99 = np.percentile(np.asarray(recent) * 1000, [50, 99])
    return {"bars": len(recent), "p50": round(float(p50), 3), "p99": round(float(p99), 3)}
