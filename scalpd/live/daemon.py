"""`scalpd run`: the daemon loop for paper and live trading, on uvloop.

Per closed bar: learn what resting exits did (`broker.sync`), run the engine's per-event code
(the same `Engine.on_bar` replay calls), commit what it recorded, then send what it decided
(`broker.flush`). Paper mode swaps the ccxt broker for the simulated one and nothing else.

The sending, and the accounting of the bar after it (latency, metrics, its log line), run in a
task per bar, each after the one before (orders leave in decision order, bars are counted in
it): the candles of the other symbols of the same minute are decided while one symbol's orders
are on the wire. A bar waits only for its own symbol's orders in flight: its decision must see
what they did.

Under systemd (`systemd/scalpd.service`) it reports READY once market data flows, pings the
watchdog from this event loop and says STOPPING on shutdown; start, stop and fatal errors go
to the operator through `self.alerter` (scalpd/ops), which other parts use for their alerts.
The operator's control socket, the metrics endpoint and the disconnect alert are served by
`scalpd/live/services.py` for as long as the run lasts.

Risk: every breaker trip and reset is alerted (BREAKER_TRIP, DAILY_LOSS_LIMIT; resets at level
info), and the risk state is saved in the store under the account key (`risk_account`) each
time it changes and restored at start, so a restart keeps a halt or a cool-down. A task calls
`Engine.tick` every `RISK_TICK_S` so stale data and the end of a cool-down are noticed with no
bar coming. The risk layer's time is the bars' time: the last bar's close plus the wall time
since it was handled. On a real exchange that is the wall clock; against the fake exchange,
whose time is its data's (minutes served faster than real time), cool-downs and the day run on
the data's time, and stale data means `risk.stale_after_s` of wall time with no bar.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import ccxt
import structlog

from scalpd.config.settings import MarketRules, Settings
from scalpd.data.recorder import TickRecorder
from scalpd.engine.build import build_engine, portfolio_for
from scalpd.engine.engine import Engine
from scalpd.engine.ports import WallClock
from scalpd.events import Bar, Gap, Trade
from scalpd.execution.ccxt_broker import CcxtBroker
from scalpd.execution.sim import SimBroker
from scalpd.faults import crash_point
from scalpd.live.book_feed import BookFeed
from scalpd.live.eager import start_now
from scalpd.live.exchange import ScalpdBinance, make_exchange, market_rules
from scalpd.live.learning import RoundRunner
from scalpd.live.pacing import Pacer
from scalpd.live.recovery import Recovery, fill_from_row, rebuild_book, recover
from scalpd.live.services import DaemonServices, ServiceError
from scalpd.live.source import CcxtBarSource
from scalpd.logs import DeferredLog, configure_logging
from scalpd.ops import alerts, systemd
from scalpd.ops.alerts import Alerter
from scalpd.risk.breakers import DAILY_LOSS, MANUAL, TRIP, RiskEvent, RiskState, kind_of
from scalpd.store.sqlite import SqliteJournal, Store

SWITCH_INTERVAL_S = 0.0005
log = structlog.get_logger("scalpd.live")

# How often the risk layer is told that time passed (stale data, cool-downs, the UTC day).
RISK_TICK_S = 1.0
# Decision latencies kept (Daemon.decision_latency_s): the recent bars' only.
DECISION_LATENCY_BARS = 10_000
# The reason of the pause a stop puts on entries (lifted again once the loop has ended).
STOPPING = "stopping"


def risk_account(settings: Settings, paper: bool) -> str:
    """The key the risk state is saved under: one per account traded, so a halt follows the
    account across restarts (and run ids) but not to another account. Live: the exchange and
    a hash of the API key (never the key); paper: the exchange (one simulated account)."""
    name = settings.exchange.name
    if paper:
        return f"paper:{name}"
    key = settings.exchange.api_key
    digest = hashlib.sha256(key.get_secret_value().encode()).hexdigest()[:16] if key else "-"
    return f"live:{name}:{digest}"


def restore_risk_state(store: Store, account: str) -> RiskState | None:
    """The account's saved risk state; None when it has none. An unreadable one stops the
    start: trading on as if nothing were tripped could ignore a halt."""
    text = store.load_risk_state(account)
    if text is None:
        return None
    try:
        return RiskState.from_json(text)
    except (ValueError, TypeError, KeyError) as exc:
        raise RuntimeError(
            f"risk state of account {account!r} in {store.path} is unreadable ({exc}); "
            "check it, then delete that risk_state row to start with no breaker tripped"
        ) from None


def lift_stop_pause(state: RiskState) -> None:
    """A stop pauses entries until the loop has ended (`Daemon.stop`); a daemon killed in
    between (systemd's stop timeout) saved that pause. It was no one's decision: lift it.
    An operator's pause ("paused by operator", or any other reason) stays."""
    manual = state.breakers.get(MANUAL)
    if manual is not None and manual.tripped and manual.reason == f"paused by {STOPPING}":
        manual.tripped = False
        log.warning("stop_pause_lifted", tripped_ms=manual.tripped_ms)


class Pending(NamedTuple):
    """A bar decided, for its sender (see the module doc)."""

    bar: Bar
    received_ns: int  # its closed candle's frame handled
    decided_ns: int  # its decision (and the journal commit) done
    first: int  # the outbox items its decision queued: first..end-1 (see CcxtBroker.flush)
    end: int


class Daemon:
    def __init__(self, settings: Settings, *, paper: bool, max_bars: int | None = None) -> None:
        self.settings = settings
        self.paper = paper
        self.max_bars = max_bars
        self.mode = "paper" if paper else "live"
        self.engine: Engine | None = None
        self.source: CcxtBarSource | None = None
        self.recording: TickRecording | None = None
        self.run_id: int | None = None
        self.bars_processed = 0
        self.broker: SimBroker | CcxtBroker | None = None
        self.journal: SqliteJournal | None = None
        self._bars_by_symbol: dict[str, int] = {}
        self.recovery: Recovery | None = None  # what the start took over (live)
        self.recovery_s = 0.0
        self.alerter: Alerter | None = None
        self.risk_account = risk_account(settings, paper)
        # The risk layer's clock (see the module doc): the latest bar close handled, and when.
        self._data_ms: int | None = None
        self._data_mono_s = 0.0
        self._ready = False
        self._progress = asyncio.Condition()
        self._stop = asyncio.Event()
        self.services: DaemonServices | None = None
        self._user_stream: asyncio.Task[None] | None = None  # live: the broker's watch_account
        # The newest batch of bars being sent and accounted for (each awaits the one before),
        # and per symbol the batch its latest orders are in.
        self._sending: asyncio.Task[None] | None = None
        self._sending_for: dict[str, asyncio.Task[None]] = {}
        self._decided = 0  # bars decided (counted at once; bars_processed when accounted)
        self.rounds: RoundRunner | None = None  # online learning's rounds, when it is on
        self.pacer: Pacer | None = None  # the loop's quiet-time work, while it runs
        # Lines written in the loop's quiet moments, stamped when logged (scalpd/logs.py).
        self._quiet_log = DeferredLog(log, self._later)
        # Held while a bar is synced, decided and sent, and by the control commands that act
        # (flatten, reload-model): they land between bars, and a flush never interleaves.
        self.bar_lock = asyncio.Lock()
        # Per bar, seconds from the closed candle's arrival to its orders sent (live) or
        # decided (paper): the status, the metrics and `scalpd bench` read them.
        self.decision_latency_s: deque[float] = deque(maxlen=DECISION_LATENCY_BARS)
        self.stopping = False
        self._stop_paused = False  # whether the stop paused entries (and lifts the pause)

    def stop(self) -> None:
        """Finish the current bar, then shut down cleanly (SIGTERM, SIGINT). No entry is sent
        after the signal: entries are paused ("paused by stopping") unless an operator's pause
        already holds them; the loop lifts that pause once it has ended, so the risk state it
        saves is the one from before the signal and a restart trades. With
        `live.cancel_on_stop` the loop also cancels our resting orders (see `_stop_trading`)."""
        if self.stopping:
            return
        self.stopping = True
        self._stop.set()
        engine = self.engine
        manual = engine.risk.state.breakers.get(MANUAL) if engine is not None else None
        if engine is not None and not (manual is not None and manual.tripped):
            self._stop_paused = True
            engine.pause(self._now_ms(), STOPPING)
            self.commit()

    async def wait_processed(self, bars: int) -> None:
        """Until `bars` closed bars have been fully handled (decided and sent)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.bars_processed >= bars)

    async def run(self) -> int:
        settings = self.settings
        if not self.paper and (
            settings.exchange.api_key is None or settings.exchange.api_secret is None
        ):
            log.error("missing_api_keys", hint="set SCALPD_EXCHANGE__API_KEY and _API_SECRET")
            print(
                "scalpd: error: live trading needs API keys (SCALPD_EXCHANGE__API_KEY, "
                "SCALPD_EXCHANGE__API_SECRET or exchange.secrets_file); or use --paper",
                file=sys.stderr,
            )
            return 2
        # First: a bad alert URL is a configuration error, and any later failure is alerted.
        self.alerter = alerter = Alerter(settings.alerts)
        watchdog = systemd.Watchdog()
        watchdog.start()
        store = Store(settings.store.path)
        exchange = make_exchange(settings.exchange)
        status, error = "failed", ""
        try:
            await exchange.load_markets()
            symbols = settings.symbols.trade
            rules = {s: market_rules(exchange, s) for s in symbols}
            cash = settings.sim.starting_cash_usdt
            account = self.risk_account
            book = None
            if self.paper:
                broker: SimBroker | CcxtBroker = SimBroker(
                    cash=cash, fees=settings.fees, rules=rules, sim=settings.sim
                )
            else:
                broker = CcxtBroker(
                    exchange,
                    rules,
                    limit_ttl_bars=settings.sim.limit_ttl_bars,
                    order_lookup_tries=settings.live.order_lookup_tries,
                    user_stream=settings.live.user_stream,
                )
                # The account's book as its runs left it (recovery.py); cash is the exchange's.
                fills = [fill_from_row(row) for row in store.account_fills(account)]
                book = rebuild_book(fills, portfolio_for(settings, 0.0))
                balance = await exchange.fetch_balance()
                book.cash = cash = float(balance.get("USDT", {}).get("total") or 0.0)
            self.broker = broker
            label = f"{self.mode}: {exchange.urls['api']['public']}"
            risk_state = restore_risk_state(store, account)
            if risk_state is not None:
                lift_stop_pause(risk_state)
            self.run_id = store.start_run(self.mode, settings.redacted(), label, account)
            self.journal = store.journal(self.run_id, durable=True)
            self.engine = engine = build_engine(
                settings,
                broker=broker,
                journal=self.journal,
                clock=WallClock(),
                run_id=self.run_id,
                cash=cash,
                risk_state=risk_state,
                on_risk_event=self._alert_risk,
                # Written in the current transaction: every path that changes it commits
                # (a bar before its orders leave, a tick, a pause or resume, a stop).
                save_risk_state=lambda state_json: store.save_risk_state(
                    account, state_json, commit=False
                ),
                portfolio=book,
                log=DeferredLog(structlog.get_logger("scalpd.engine"), self._later),
            )
            if isinstance(broker, CcxtBroker):
                await self._recover(store, engine, broker, exchange, rules)
                self._user_stream = asyncio.create_task(broker.watch_account(), name="user-stream")
            if risk_state is not None:
                log.info(
                    "risk_state_restored",
                    account=account,
                    tripped=risk_state.tripped(),
                    consecutive_losses=risk_state.consecutive_losses,
                )
            self.source = CcxtBarSource(
                exchange, symbols, settings.exchange, trades=settings.symbols.stream_trades
            )
            self.services = DaemonServices(self, engine, broker)
            await self.services.start()
            online = getattr(engine.strategy, "online", None)
            if online is not None:  # its rounds run in a worker process (live/learning.py)
                online.defer_rounds()
                self.rounds = RoundRunner(online, self.bar_lock, self._record_models)
                self.rounds.start()
            log.info("daemon_started", mode=self.mode, run_id=self.run_id, symbols=symbols)
            alerter.send(
                alerts.START,
                f"scalpd started ({self.mode})",
                f"run {self.run_id}: {', '.join(symbols)}",
            )
            if settings.data.record_ticks:
                self.recording = TickRecording(exchange, settings)
            try:
                await self._loop(engine, broker, exchange)
            finally:
                if self.recording is not None:
                    await self.recording.close()
            status = "completed" if self.max_bars else "stopped"
            return 0
        except ccxt.AuthenticationError as exc:
            error = f"authentication failed: {type(exc).__name__}"
            print(f"scalpd: error: {error}", file=sys.stderr)
            return 1
        except ccxt.NetworkError as exc:
            error = f"exchange unreachable: {type(exc).__name__}: {exc}"
            print(f"scalpd: error: {error}", file=sys.stderr)
            return 1
        except ServiceError as exc:
            error = str(exc)
            print(f"scalpd: error: {error}", file=sys.stderr)
            return 1
        except asyncio.CancelledError:
            status = "interrupted"
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            systemd.stopping()
            if self.rounds is not None:
                await self.rounds.close()
            if self._user_stream is not None:
                self._user_stream.cancel()
                await asyncio.gather(self._user_stream, return_exceptions=True)
            if self.services is not None:
                await self.services.close()
            if self.run_id is not None:
                if self.engine is not None:
                    self.engine.finish(WallClock().now_ms())
                summary = self._summary()
                store.finish_run(self.run_id, status, summary, error)
                log.info("daemon_stopped", run_id=self.run_id, status=status, **summary)
            self._alert_stopped(status, error)
            await exchange.close()
            store.close()
            await watchdog.stop()
            await asyncio.to_thread(alerter.close, settings.alerts.timeout_s)

    async def _loop(
        self, engine: Engine, broker: SimBroker | CcxtBroker, exchange: ScalpdBinance
    ) -> None:
        assert self.source is not None
        live_broker = broker if isinstance(broker, CcxtBroker) else None
        source = self.source
        stop_wait = asyncio.ensure_future(self._stop.wait())
        # A stop wakes the source's wait; the events queued are taken without a task or a
        # future each (every one is an event-loop hop on the way to a decision).
        stop_wait.add_done_callback(lambda _: source.interrupt())
        ticker = asyncio.create_task(self._tick_risk(engine), name="risk-tick")
        # Other threads (alerts, online learning's hand-offs, SQLite reads) hold the
        # interpreter lock at most this long before the loop gets it back (Python's 5 ms
        # default would be the decision latency's tail).
        switch_interval_s = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        pacer = self._pacer(engine)
        pacer.start()
        source.on_queued = pacer.busy
        source.start()
        try:
            while not self._stop.is_set():
                self._raise_if_sending_failed()
                event = source.poll()
                if event is None:
                    pacer.idle()
                    await source.wait()
                    continue
                pacer.busy()
                if not self._ready:  # market data flows: systemd may consider us started
                    self._ready = True
                    systemd.ready()
                    systemd.status(f"{self.mode} run {self.run_id}: trading")
                kind = type(event)
                if kind is Trade:
                    engine.on_trade(event)
                    continue
                if kind is Gap:
                    engine.on_gap(event)
                    continue
                received_ns = source.received_ns
                pacer.arrived(event.symbol)
                # A bar's decision must see what its symbol's orders in flight did.
                await self._sent(event.symbol)
                async with self.bar_lock:
                    first = live_broker.queued_total if live_broker is not None else 0
                    if live_broker is not None:
                        await live_broker.sync(event)
                        if live_broker.has_unbooked_fills():
                            crash_point("fill_unrecorded")
                    engine.on_bar(event)
                    if self.services is not None:  # online learning's versions, with the bar's
                        self.services.record_models()
                    # What the bar recorded (fills, intents, orders) is on disk before any of
                    # its orders leaves.
                    self.commit()
                    end = live_broker.queued_total if live_broker is not None else 0
                    close_ms = event.open_time_ms + 60_000
                    if self._data_ms is None or close_ms >= self._data_ms:
                        self._data_ms = close_ms
                        self._data_mono_s = time.monotonic()
                decided = Pending(event, received_ns, time.monotonic_ns(), first, end)
                self._decided += 1
                # Its orders leave now (the sender runs at once to its first request's send);
                # the next candle, of another symbol, is decided during their round trip.
                self._send_pending(decided, engine, live_broker, exchange)
                if self.max_bars and self._decided >= self.max_bars:
                    break
            await self._all_sent()
            if self._stop.is_set():
                await self._stop_trading(engine, live_broker)
        finally:
            stop_wait.cancel()
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            if self._sending is not None and not self._sending.done():
                self._sending.cancel()
                await asyncio.gather(self._sending, return_exceptions=True)
            sys.setswitchinterval(switch_interval_s)
            pacer.close()
            await source.close()

    def _pacer(self, engine: Engine) -> Pacer:
        """The loop's quiet-time work (scalpd/live/pacing.py); online learning's part of a
        bar and its rounds' hand-offs go there too."""
        warm = getattr(engine.strategy, "warm", None)  # strategy/base.py Warmable
        if not self.settings.live.prewarm:
            warm = None
        self.pacer = pacer = Pacer(self.settings.symbols.trade, warm)
        if self.rounds is not None:
            self.rounds.pace(pacer)
        return pacer

    async def _recover(
        self,
        store: Store,
        engine: Engine,
        broker: CcxtBroker,
        exchange: Any,
        rules: dict[str, MarketRules],
    ) -> None:
        """Take over what earlier runs of the account left (scalpd/live/recovery.py) before
        the first bar; each surprise is alerted."""
        started = time.monotonic()
        self.recovery = found = await recover(
            store=store,
            account=self.risk_account,
            engine=engine,
            broker=broker,
            exchange=exchange,
            symbols=self.settings.symbols.trade,
            rules=rules,
            settings=self.settings.live,
            now_ms=WallClock().now_ms,
        )
        self.commit()
        self.recovery_s = time.monotonic() - started
        if found.surprises and self.alerter is not None:
            self.alerter.send(
                alerts.RECONCILIATION,
                f"scalpd start: {len(found.surprises)} reconciliation surprise(s)",
                "\n".join(found.surprises[:20]),
                level="warning",
            )

    def _send_pending(
        self,
        decided: Pending,
        engine: Engine,
        live_broker: CcxtBroker | None,
        exchange: ScalpdBinance,
    ) -> None:
        """Send the orders of a bar decided, then account for it, in a task chained after the
        previous bar's: orders leave in decision order, and bars are counted in it. A bar with
        orders starts its task at once (scalpd/live/eager.py): its first request leaves before
        the loop turns to the other frames it holds."""
        coro = self._send_and_account(decided, self._sending, engine, live_broker, exchange)
        if decided.end > decided.first:
            self._sending = self._sending_for[decided.bar.symbol] = start_now(
                coro, name="send-orders"
            )
        else:
            self._sending = asyncio.create_task(coro, name="account-bar")

    async def _send_and_account(
        self,
        decided: Pending,
        previous: asyncio.Task[None] | None,
        engine: Engine,
        live_broker: CcxtBroker | None,
        exchange: ScalpdBinance,
    ) -> None:
        """The bar's decision latency (to its orders' first request leaving, else to its
        decision's end), the resting orders' check, metrics, progress and its log line."""
        if previous is not None:
            await previous
        bar, end_ns = decided.bar, decided.decided_ns
        if live_broker is not None and decided.end > decided.first:
            exchange.first_order_sent_ns = None
            await live_broker.flush(until=decided.end)
            end_ns = exchange.first_order_sent_ns or end_ns
        latency_s = (end_ns - decided.received_ns) / 1e9
        self.decision_latency_s.append(latency_s)
        if self.rounds is not None:  # online learning's share of the bar, its orders out
            self.rounds.after_bar(bar.symbol)  # (in the loop's next quiet moment)
        if live_broker is not None:
            await self._check_resting(live_broker, bar.symbol)
        # The bar's line and its model-quality scoring wait for a quiet moment: done now,
        # they would delay the decisions of the minute's other candles (~0.3 ms a bar).
        if self.services is not None:
            self.services.on_bar(bar, latency_s, self._later)
        self._quiet_log.info(
            "bar",
            symbol=bar.symbol,
            open_time_ms=bar.open_time_ms,
            close=bar.close,
            equity=round(engine.equity(), 2),
        )
        async with self._progress:
            self.bars_processed += 1
            self._progress.notify_all()

    def _later(self, job: Callable[[], None]) -> None:
        """`job` in the loop's next quiet moment (at once without a pacer)."""
        if self.pacer is None:
            job()
        else:
            self.pacer.defer(job)

    async def _sent(self, symbol: str) -> None:
        """Until the orders `symbol`'s bars queued have been answered."""
        task = self._sending_for.get(symbol)
        if task is not None:
            if not task.done():
                await asyncio.shield(task)
            del self._sending_for[symbol]
        self._raise_if_sending_failed()

    async def _all_sent(self) -> None:
        if self._sending is not None:
            await asyncio.shield(self._sending)
        self._sending_for.clear()

    def _raise_if_sending_failed(self) -> None:
        """A sender's error ends the run as it would have in the loop itself."""
        task = self._sending
        if task is not None and task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                raise error

    async def _check_resting(self, broker: CcxtBroker, symbol: str) -> None:
        """Every `live.check_resting_every_bars` bars of a symbol, after its decision: ask
        about its resting orders the bars did not reach (see `CcxtBroker.sync`)."""
        seen = self._bars_by_symbol[symbol] = self._bars_by_symbol.get(symbol, 0) + 1
        if seen % self.settings.live.check_resting_every_bars == 0:
            async with self.bar_lock:
                await broker.check_resting(symbol)

    async def _stop_trading(self, engine: Engine, live_broker: CcxtBroker | None) -> None:
        """After a stop, before the run is finished: with `live.cancel_on_stop`, our resting
        orders (limit entries, OCO brackets) are cancelled and their ends booked and journaled
        like any report; then the stop's own pause is lifted (see `stop`)."""
        async with self.bar_lock:
            now_ms = self._now_ms()
            if live_broker is not None:
                # Fills of the last orders sent, learnt after the last bar: booked now, so the
                # run ends with the book the exchange has.
                engine.apply_reports(live_broker.take_reports())
            if live_broker is not None and self.settings.live.cancel_on_stop:
                reports = await live_broker.cancel_all(now_ms)
                engine.apply_reports(reports)
                log.info("orders_cancelled_on_stop", reports=len(reports))
            if self._stop_paused:
                engine.resume(now_ms, MANUAL)
                self._stop_paused = False
            self.commit()

    def _record_models(self) -> None:
        """After a round's candidate was judged (under the bar lock): its records on disk."""
        if self.services is not None:
            self.services.record_models()
        self.commit()

    def commit(self) -> None:
        """Make what the engine recorded durable; called before anything recorded is acted on
        (orders sent) and after every batch of reports booked."""
        if self.journal is not None:
            self.journal.flush()

    def _now_ms(self) -> int:
        now_ms = self.risk_now_ms()
        return now_ms if now_ms is not None else WallClock().now_ms()

    def risk_now_ms(self) -> int | None:
        """Now on the bars' time scale (see the module doc); None before the first bar."""
        if self._data_ms is None:
            return None
        return self._data_ms + int((time.monotonic() - self._data_mono_s) * 1000)

    async def _tick_risk(self, engine: Engine) -> None:
        while True:
            await asyncio.sleep(RISK_TICK_S)
            now_ms = self.risk_now_ms()
            if now_ms is not None:
                engine.tick(now_ms)
                self.commit()  # a cool-down's end or a new day's reset, on disk

    def _alert_risk(self, event: RiskEvent) -> None:
        if self.alerter is None:
            return
        if self._stop_paused and event.breaker == MANUAL:
            return  # the stop's own pause and its lifting: the STOP alert says it all
        tripped = event.action == TRIP
        daily = kind_of(event.breaker) == DAILY_LOSS
        what = f"tripped ({self.mode}): entries paused" if tripped else f"reset ({self.mode})"
        self.alerter.send(
            alerts.DAILY_LOSS_LIMIT if daily else alerts.BREAKER_TRIP,
            f"risk breaker {event.breaker} {what}",
            f"run {self.run_id}: {event.reason}",
            key=f"risk:{event.breaker}:{'trip' if tripped else 'reset'}",
            level="warning" if tripped else "info",
        )

    def _alert_stopped(self, status: str, error: str) -> None:
        if self.alerter is None:
            return
        summary = self._summary()
        facts = ", ".join(
            f"{k} {summary[k]}" for k in ("bars", "trades", "equity_usdt") if k in summary
        )
        where = f"run {self.run_id}" if self.run_id is not None else "before its run started"
        if status == "failed":
            self.alerter.send(
                alerts.ERROR,
                f"scalpd stopped on an error ({self.mode})",
                f"{where}: {error or 'unknown error'}. {facts}".strip(),
                level="error",
            )
        else:
            self.alerter.send(
                alerts.STOP,
                f"scalpd stopped ({self.mode})",
                f"{where}: {status}. {facts}".strip(),
                level="warning" if status == "interrupted" else "info",
            )

    def _summary(self) -> dict[str, Any]:
        engine = self.engine
        if engine is None:
            return {}
        src = self.source
        return {
            "bars": engine.bars_seen,
            "trades": len(engine.trades),
            "equity_usdt": round(engine.equity(), 2),
            "fees_usdt": round(engine.portfolio.fees_paid, 2),
            "reconnects": src.reconnects if src else 0,
            "duplicates_dropped": src.duplicates if src else 0,
            "bars_quarantined": src.quarantined if src else 0,
            "anomalies": engine.anomalies,
            "malformed_messages": src.malformed if src else 0,
            "broker_anomalies": getattr(self.broker, "anomalies", 0),
        }


class TickRecording:
    """Records trades and the order book beside trading (data.record_ticks), off the decision
    path: the feed runs as its own task, files are written from a thread, and a failure of
    either is logged and ends the recording, never the trading."""

    _FLUSH_CHECK_S = 5.0

    def __init__(self, exchange: Any, settings: Settings) -> None:
        self.recorder = TickRecorder(settings.data.market_root)
        self.feed = BookFeed(
            exchange,
            settings.symbols.trade,
            self.recorder.add,
            ws_url=settings.exchange.ws_url,
            initial_backoff_s=settings.exchange.reconnect_initial_backoff_s,
            max_backoff_s=settings.exchange.reconnect_max_backoff_s,
        )
        self._tasks = [
            asyncio.create_task(self._run_feed(), name="tick-feed"),
            asyncio.create_task(self._flush_periodically(), name="tick-flush"),
        ]

    async def _run_feed(self) -> None:
        try:
            await self.feed.run()
        except Exception as exc:  # the recording is optional; trading goes on
            log.error("tick_recording_stopped", error=f"{type(exc).__name__}: {exc}")

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._FLUSH_CHECK_S)
            try:
                await asyncio.to_thread(self.recorder.flush_due)
            except OSError as exc:
                log.error("tick_flush_failed", error=str(exc))

    async def close(self) -> None:
        await self.feed.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.to_thread(self.recorder.close)
        except OSError as exc:
            log.error("tick_flush_failed", error=str(exc))
        log.info("tick_recording_closed", rows=self.recorder.rows_written, **vars(self.feed.stats))


def run_daemon(settings: Settings, *, paper: bool, max_bars: int | None = None) -> int:
    secrets = [
        key.get_secret_value()
        for key in (settings.exchange.api_key, settings.exchange.api_secret)
        if key is not None
    ]
    configure_logging(settings.logging.level, settings.logging.format, secrets=secrets)
    daemon = Daemon(settings, paper=paper, max_bars=max_bars)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.stop)
        return await daemon.run()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main())
    return uvloop.run(main())
