"""An order request leaves only once the records it carries are on disk: the journal commits
in its own thread (SqliteJournal.commit_soon) while the request is built, and the real ccxt
client's request asks its gate (ScalpdBinance.send_after) for that commit before it leaves,
against the local fake exchange. A failed commit lets nothing leave."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from pathlib import Path

import pytest

from scalpd.config.settings import load_settings
from scalpd.data.synthetic import generate
from scalpd.events import OrderIntent, Side
from scalpd.fakex import FakeExchange
from scalpd.fakex.testing import exchange_section
from scalpd.live.exchange import make_exchange
from scalpd.risk.gate import Decision
from scalpd.store.sqlite import Store

API_KEY, API_SECRET = "durable-key", "durable-secret"


def test_a_commit_started_in_the_journals_thread_is_seen_by_another_connection(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "j.db")
    journal = store.journal(store.start_run("live", {}, "test"), durable=True)
    assert journal.commit_soon() is None  # nothing recorded since the last commit
    journal.record_intent(
        OrderIntent("BTC/USDT", Side.BUY, 0.1, "entry", 60_000), Decision(True, "ok")
    )
    started = journal.commit_soon()
    assert started is not None
    started.result(timeout=30)
    reader = sqlite3.connect(tmp_path / "j.db")
    assert reader.execute("SELECT count(*) FROM intents").fetchone() == (1,)
    reader.close()
    journal.close()
    store.close()


class _Gate(concurrent.futures.Future):
    """A commit's future that notes what the exchange had received when a request asked it."""

    def __init__(self, fx: FakeExchange) -> None:
        super().__init__()
        self.fx = fx
        self.orders_when_asked: list[int] = []

    def result(self, timeout=None):
        self.orders_when_asked.append(len(self.fx.orders))
        return super().result(timeout)


@pytest.mark.parametrize("commit_fails", [False, True], ids=["committed", "commit-failed"])
def test_an_order_request_waits_for_the_commit_and_leaves_only_if_it_succeeded(
    commit_fails: bool,
) -> None:
    bars = generate(days=0.02, seed=1, start="2024-01-01T00:00:00Z")

    async def scenario() -> None:
        fx = FakeExchange(
            {bars.symbol: bars.kline_columns()},
            api_key=API_KEY,
            api_secret=API_SECRET,
            balances={"USDT": 10_000.0},
        )
        await fx.start()
        settings = load_settings(
            None, {"exchange": exchange_section(fx, API_KEY, API_SECRET)}
        ).exchange
        exchange = make_exchange(settings)
        try:
            await exchange.load_markets()
            assert await fx.step()
            gate = exchange.send_after = _Gate(fx)
            if commit_fails:
                gate.set_exception(sqlite3.OperationalError("disk I/O error"))
                with pytest.raises(sqlite3.OperationalError):
                    await exchange.create_order(bars.symbol, "market", "buy", 0.001)
                assert fx.orders == []
            else:
                gate.set_result(None)
                await exchange.create_order(bars.symbol, "market", "buy", 0.001)
                assert len(fx.orders) == 1
            assert gate.orders_when_asked == [0]  # asked once, before the order left
            await exchange.fetch_balance()  # a GET does not ask
            assert gate.orders_when_asked == [0]
        finally:
            await exchange.close()
            await fx.stop()

    asyncio.run(scenario())
