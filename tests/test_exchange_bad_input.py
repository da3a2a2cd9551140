"""Bad input from the exchange, through the real ccxt client against the fake exchange: malformed
or truncated WebSocket frames, NaN and negative prices, klines out of order, repeated or for a
symbol never asked for, order answers about another order, trades for an order never sent or
with a NaN price. Each is logged and counted; the daemon goes on, and what it trades (and
stores) equals a run that saw none of it.

The fake is stepped by hand and each bar is awaited through `Daemon.wait_processed`; a bad
frame is sent before the step that closes the next bar, so it has been read by the time that bar
is handled (frames on one connection arrive in order).
"""

from __future__ import annotations

import asyncio
import copy
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from scalpd.config.settings import Settings, load_settings
from scalpd.data.synthetic import generate
from scalpd.events import Fill, Order, OrderType, Side
from scalpd.execution.ccxt_broker import CcxtBroker
from scalpd.fakex import FakeExchange
from scalpd.fakex.testing import exchange_section
from scalpd.live.daemon import Daemon
from scalpd.live.exchange import make_exchange, market_rules
from scalpd.store.sqlite import Store

API_KEY, API_SECRET = "bad-input-key-4Rt", "bad-input-secret-9Lm"
STRATEGY = {"fast_period_bars": 3, "slow_period_bars": 8, "max_hold_bars": 12}
WAIT_S = 20  # a bound on a hang only: every wait returns as soon as its condition holds
BTC = "BTC/USDT"
KLINES = "btcusdt@kline_1m"
TRADES = "btcusdt@trade"

Hook = Callable[[FakeExchange, int], Awaitable[None]]


def daemon_settings(tmp_path: Path, fx: FakeExchange, db: str, **sections: Any) -> Settings:
    overrides: dict[str, Any] = {
        "exchange": exchange_section(fx, API_KEY, API_SECRET),
        "symbols": {"trade": [BTC]},
        "strategy": STRATEGY,
        "store": {"path": str(tmp_path / db)},
        "logging": {"level": "warning"},
        # Tests run side by side: no socket at the shared default path.
        "control": {"enabled": False},
    }
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_settings(None, overrides)


async def drive(
    fx: FakeExchange,
    settings: Settings,
    *,
    paper: bool,
    steps: int,
    before_step: Hook | None,
    started: list[Daemon] | None = None,
) -> Daemon:
    """Run a daemon against `fx` (serving) for `steps` steps, each closing one bar of every
    symbol; `before_step(fx, k)` runs before the step that closes bar k. `started` gets the
    daemon as soon as it exists (for a hook that looks at it)."""
    daemon = Daemon(settings, paper=paper)
    if started is not None:
        started.append(daemon)
    task = asyncio.create_task(daemon.run())
    symbols = len(settings.symbols.trade)
    try:
        streams = symbols * (2 if settings.symbols.stream_trades else 1)  # klines (+ trades)
        await asyncio.wait_for(fx.wait_subscribed(streams), WAIT_S)
        for k in range(steps):
            if before_step is not None:
                await before_step(fx, k)
            assert await fx.step()
            await asyncio.wait_for(daemon.wait_processed((k + 1) * symbols), WAIT_S)
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, WAIT_S) == 0
        await fx.stop()
    return daemon


def trade_rows(daemon: Daemon) -> list[tuple]:
    assert daemon.engine is not None
    return [
        (t.entry_time_ms, t.exit_time_ms, t.qty, t.entry_price, t.exit_price, t.exit_reason)
        for t in daemon.engine.trades
    ]


# -- the market-data stream ---------------------------------------------------------------------


def _bad_frames(fx: FakeExchange, k: int) -> list[tuple[str, Any]]:
    """(stream, frame) to send before bar k closes: a str goes verbatim, anything else as JSON.
    Kline k itself is the base of the crafted ones: the real one follows them."""
    real = fx.kline_event(BTC, k)

    def kline(**fields: Any) -> dict:
        event = copy.deepcopy(real)
        event["k"].update(fields)
        return event

    text = orjson.dumps({"stream": KLINES, "data": real}).decode()
    return [
        (KLINES, text[: len(text) // 2]),  # truncated JSON
        (KLINES, "[1, 2"),  # truncated JSON array
        (KLINES, "not json at all"),
        (KLINES, "null"),
        (KLINES, {"e": "kline", "s": "BTCUSDT", "k": [1, 2]}),  # wrong type: ccxt raises
        (KLINES, kline(t="soon")),  # wrong type: our parser refuses it
        (KLINES, kline(o=None)),
        (KLINES, kline(o="NaN")),  # quarantined: NaN
        (KLINES, kline(c="nan")),
        (KLINES, kline(l="-5")),  # quarantined: non-positive price
        (KLINES, kline(h="1.0", l="2.0")),  # quarantined: high below low
        (KLINES, kline(s="XYZUSDT")),  # a symbol we never asked for
        (TRADES, '{"e": "trade", "s": "BTCU'),
    ]


BAD_FRAMES_PER_BAR = 13
# Per bar: ccxt could not decode or handle 5 (two truncated, a non-object twice, a kline that
# is a list), the foreign kline 1; ours refused 2 and quarantined 4; the repeats are duplicates.
MALFORMED_PER_BAR, QUARANTINED_PER_BAR = 6, 6


def test_bad_frames_are_counted_and_the_daemon_trades_as_on_a_clean_stream(
    tmp_path: Path,
) -> None:
    bars = generate(days=0.1, seed=3, start="2024-01-01T00:00:00Z")  # 144 synthetic bars
    steps = len(bars) - 1
    spoiled = range(10, steps, 7)  # bars preceded by garbage

    async def garbage(fx: FakeExchange, k: int) -> None:
        if k in spoiled:
            frames = _bad_frames(fx, k)
            assert len(frames) == BAD_FRAMES_PER_BAR
            for stream, frame in frames:
                send = fx.push_raw if isinstance(frame, str) else fx.push_event
                assert await send(stream, frame) == 1
        if k - 2 in spoiled:
            # Late and repeated klines: two bars ago's and the last one's again.
            for old in (k - 2, k - 1):
                assert await fx.push_event(KLINES, fx.kline_event(BTC, old)) == 1

    async def run(hook: Hook | None, db: str) -> tuple[Daemon, list[tuple]]:
        fx = FakeExchange({BTC: bars.kline_columns()}, api_key=API_KEY, api_secret=API_SECRET)
        await fx.start()
        settings = daemon_settings(tmp_path, fx, db, symbols={"stream_trades": True})
        with capture_logs() as logs:
            daemon = await drive(fx, settings, paper=True, steps=steps, before_step=hook)
        seen = [(e["symbol"], e["open_time_ms"], e["close"]) for e in logs if e["event"] == "bar"]
        return daemon, seen

    clean, clean_bars = asyncio.run(run(None, "clean.db"))
    dirty, dirty_bars = asyncio.run(run(garbage, "dirty.db"))
    assert dirty_bars == clean_bars and len(clean_bars) == steps
    assert trade_rows(dirty) == trade_rows(clean) and len(trade_rows(clean)) >= 2
    assert dirty.engine is not None and clean.engine is not None
    assert dirty.engine.equity() == clean.engine.equity()
    assert dirty.engine.gaps_seen == 0 and dirty.engine.anomalies == 0
    src = dirty.source
    assert src is not None
    n = len(spoiled)
    assert src.reconnects == 0  # the connection survived every frame
    assert src.malformed == MALFORMED_PER_BAR * n + n  # + the truncated trade frame
    assert src.quarantined == QUARANTINED_PER_BAR * n
    assert src.duplicates == 2 * n
    assert src.trades_seen == clean.source.trades_seen  # type: ignore[union-attr]


# -- order answers and trades -------------------------------------------------------------------

FOREIGN_TRADE = {
    "symbol": "BTCUSDT",
    "id": 990_001,
    "orderId": 880_001,  # no order of ours
    "orderListId": -1,
    "price": "42000.00000000",
    "qty": "1.00000000",
    "quoteQty": "42000.00000000",
    "commission": "0.00100000",
    "commissionAsset": "BTC",
    "time": 1_704_067_260_000,
    "isBuyer": True,
    "isMaker": False,
    "isBestMatch": True,
}


def _with_foreign_trade(trades: list[dict]) -> list[dict]:
    return [*trades, FOREIGN_TRADE]


def test_trades_of_orders_never_sent_are_never_booked(tmp_path: Path) -> None:
    """Live, resting orders polled (no user-data stream): every myTrades answer also lists a
    trade of an order we never sent. The run's trades, cash, stored fills and the exchange's
    balances equal a clean run's."""
    # 57 bars whose two round trips both end on their take-profit: a bracket leg's fills are
    # looked up in myTrades.
    bars = generate(days=0.04, seed=11, start="2024-01-01T00:00:00Z")
    steps = len(bars) - 1

    async def run(inject: bool, db: str) -> tuple[Daemon, FakeExchange, Settings]:
        fx = FakeExchange({BTC: bars.kline_columns()}, api_key=API_KEY, api_secret=API_SECRET)
        if inject:
            fx.rewrite_next_response("GET", "/api/v3/myTrades", _with_foreign_trade, n=10_000)
        await fx.start()
        settings = daemon_settings(tmp_path, fx, db, live={"user_stream": False})
        daemon = await drive(fx, settings, paper=False, steps=steps, before_step=None)
        return daemon, fx, settings

    clean, clean_fx, _ = asyncio.run(run(False, "clean.db"))
    dirty, dirty_fx, settings = asyncio.run(run(True, "dirty.db"))
    assert dirty.engine is not None and clean.engine is not None
    broker = dirty.engine._broker
    assert isinstance(broker, CcxtBroker)
    assert broker.anomalies == 2  # once for each take-profit leg's lookup
    assert dirty.engine.anomalies == 0
    assert trade_rows(dirty) == trade_rows(clean) and len(trade_rows(clean)) >= 2
    assert dirty.engine.portfolio.cash == pytest.approx(clean.engine.portfolio.cash, rel=1e-12)
    assert dirty_fx.balances == clean_fx.balances
    assert dirty.engine.portfolio.cash == pytest.approx(dirty_fx.balances["USDT"], rel=1e-9)
    store = Store(settings.store.path)
    fills = store.rows("fills", dirty.run_id)
    assert len(fills) == len(dirty_fx.trades)
    assert str(FOREIGN_TRADE["id"]) not in {str(f.get("trade_id")) for f in fills}
    store.close()


def _report(client_id: str, **fields: Any) -> str:
    """A user-data stream frame: an executionReport of `client_id`, fields as given."""
    event = {
        "e": "executionReport", "E": 1_704_067_260_000, "s": "BTCUSDT", "c": client_id,
        "S": "SELL", "o": "LIMIT_MAKER", "f": "GTC", "q": "0.1", "p": "41000", "P": "0",
        "g": -1, "C": "", "x": "TRADE", "X": "FILLED", "r": "NONE", "i": 880_002,
        "l": "0.1", "z": "0.1", "L": "41000", "n": "4.1", "N": "USDT", "T": 1_704_067_260_000,
        "t": 990_002, "w": False, "m": True, "O": 1_704_067_200_000, "Z": "4100", "Y": "4100",
        **fields,
    }  # fmt: skip
    return orjson.dumps({"subscriptionId": 0, "event": event}).decode()


def test_bad_user_stream_reports_are_counted_and_never_booked(tmp_path: Path) -> None:
    """Live with the user-data stream: while a bracket rests, the stream also brings a
    truncated frame, a fill of an order we never sent, and a report of our own take-profit
    leg "filled" at a NaN price. Nothing of it is booked: the run's trades, cash and stored
    fills equal a clean run's, and the exchange's balances too."""
    bars = generate(days=0.04, seed=11, start="2024-01-01T00:00:00Z")
    steps = len(bars) - 1
    spoiled: list[int] = []

    async def run(inject: bool, db: str) -> tuple[Daemon, FakeExchange]:
        fx = FakeExchange({BTC: bars.kline_columns()}, api_key=API_KEY, api_secret=API_SECRET)
        await fx.start()
        settings = daemon_settings(tmp_path, fx, db)
        daemons: list[Daemon] = []

        async def spoil(fx: FakeExchange, k: int) -> None:
            broker = daemons[0].broker if daemons else None
            bracket = (
                broker.brackets.get(BTC) if isinstance(broker, CcxtBroker) else None
            )  # fmt: skip
            if not inject or bracket is None or len(spoiled) >= 3:
                return
            spoiled.append(k)
            await fx.push_user_raw('{"subscriptionId": 0, "event": {"e": "executionRep')
            await fx.push_user_raw(_report("not-ours-1"))
            tp = bracket.take_profit.client_id
            (order_id,) = [o["orderId"] for o in fx.orders if o["clientOrderId"] == tp]
            await fx.push_user_raw(_report(tp, i=order_id, L="NaN", t=990_100 + k))

        daemon = await drive(
            fx, settings, paper=False, steps=steps, before_step=spoil, started=daemons
        )
        return daemon, fx

    clean, clean_fx = asyncio.run(run(False, "clean.db"))
    dirty, dirty_fx = asyncio.run(run(True, "dirty.db"))
    assert spoiled, "no bracket rested: nothing was injected"
    assert trade_rows(dirty) == trade_rows(clean) and len(trade_rows(clean)) >= 2
    assert dirty.engine is not None and clean.engine is not None
    assert dirty.engine.portfolio.cash == pytest.approx(clean.engine.portfolio.cash, rel=1e-12)
    assert dirty_fx.balances == clean_fx.balances
    assert dirty.engine.anomalies == 0
    broker = dirty.broker
    assert isinstance(broker, CcxtBroker)
    # Each NaN report of our own leg is counted (and so is the real fill's report after them:
    # ccxt keeps the bad trades in that order's list); the REST answers decided meanwhile.
    assert broker.anomalies >= len(spoiled) and broker.stream_reconnects == 0


def test_live_broker_refuses_answers_about_other_orders_and_nan_fills(tmp_path: Path) -> None:
    """The broker alone against the fake: a market buy whose answer carries a fill with a NaN
    fee, then a resting order's status answered with another order's id; nothing of either is
    booked. (A NaN price never reaches the broker: ccxt's parser raises on it, see below.)"""
    bars = generate(days=0.01, seed=1, start="2024-01-01T00:00:00Z")

    def nan_fill(answer: dict) -> dict:
        answer["fills"][0]["commission"] = "NaN"
        return answer

    def other_order(answer: dict) -> dict:
        return {**answer, "orderId": 770_001, "clientOrderId": "somebody-else"}

    async def run() -> tuple[CcxtBroker, list, list]:
        fx = FakeExchange({BTC: bars.kline_columns()}, api_key=API_KEY, api_secret=API_SECRET)
        await fx.start()
        settings = daemon_settings(tmp_path, fx, "unused.db")
        exchange = make_exchange(settings.exchange)
        try:
            await exchange.load_markets()
            broker = CcxtBroker(exchange, {BTC: market_rules(exchange, BTC)})
            fx.rewrite_next_response("POST", "/api/v3/order", nan_fill)
            time_ms = fx.server_time_ms
            broker.submit(Order("t-1", BTC, Side.BUY, OrderType.MARKET, 0.01, time_ms, "test"))
            with capture_logs() as logs:
                await broker.flush()
            after_nan = list(broker._reports)
            broker._reports.clear()
            # A limit entry far below the market rests; its status comes back for another order.
            price = round(bars.close[0] * 0.5, 2)
            broker.submit(
                Order("t-2", BTC, Side.BUY, OrderType.LIMIT, 0.01, time_ms, "test", price)
            )
            await broker.flush()
            fx.rewrite_next_response("GET", "/api/v3/order", other_order)
            with capture_logs() as more:
                await broker.sync()
            return broker, after_nan, logs + more
        finally:
            await exchange.close()
            await fx.stop()

    broker, reports, logs = asyncio.run(run())
    assert not [r for r in reports if type(r).__name__ == "Fill"]
    assert broker.anomalies == 2
    events = [e["event"] for e in logs if e["log_level"] == "error"]
    assert events == ["exchange_trade_not_booked", "order_answer_for_another_order"]
    bad = next(e for e in logs if e["event"] == "exchange_trade_not_booked")
    assert "nan" in bad["trade"]["fee"] and bad["client_id"] == "t-1"
    # The resting entry is still ours, known by its own exchange id.
    assert "t-2" in broker.working_entries
    assert broker.working_entries["t-2"].exchange_id != "770001"


def test_a_nan_price_in_an_order_answer_does_not_stop_the_broker(tmp_path: Path) -> None:
    bars = generate(days=0.01, seed=1, start="2024-01-01T00:00:00Z")

    def nan_price(answer: dict) -> dict:
        answer["fills"][0]["price"] = "NaN"
        return answer

    async def run() -> CcxtBroker:
        fx = FakeExchange({BTC: bars.kline_columns()}, api_key=API_KEY, api_secret=API_SECRET)
        await fx.start()
        exchange = make_exchange(daemon_settings(tmp_path, fx, "unused.db").exchange)
        try:
            await exchange.load_markets()
            broker = CcxtBroker(exchange, {BTC: market_rules(exchange, BTC)})
            fx.rewrite_next_response("POST", "/api/v3/order", nan_price)
            order = Order("t-1", BTC, Side.BUY, OrderType.MARKET, 0.01, fx.server_time_ms, "test")
            broker.submit(order)
            await broker.flush()
            return broker
        finally:
            await exchange.close()
            await fx.stop()

    with capture_logs() as logs:
        broker = asyncio.run(run())
    # Counted, then the order found by its client id and its fill booked from the trade list.
    assert broker.anomalies == 1
    assert any(e["event"] == "exchange_answer_unreadable" for e in logs)
    (fill,) = [r for r in broker.take_reports() if type(r) is Fill]
    assert fill.client_id == "t-1" and fill.qty == 0.01 and math.isfinite(fill.price)
