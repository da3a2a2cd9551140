"""Recording live order books: BookFeed (real ccxt client) against the RecordingServer replaying
the real BTC recording (2024-08-08 + 09), into a TickRecorder; and the recorder on its own.

The reference everything is compared with is the recording read offline: its trades, its
book tickers, and the top 5 levels of an OrderBook fed the recorded diffs and the recorded
snapshot, after each diff applied (keyed by the diff's final update id).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pyarrow as pa
import pytest

from scalpd.config.settings import ExchangeSettings
from scalpd.data import recorder as recorder_mod
from scalpd.data.binance_ws import (
    SNAPSHOT,
    BookTicker,
    iter_recording,
    parse_book_ticker,
    parse_depth_snapshot,
    parse_depth_update,
    parse_trade,
    unwrap,
)
from scalpd.data.orderbook import BookLevels, OrderBook, Outcome
from scalpd.data.record_cli import add_record_command, record
from scalpd.data.recorder import BOOK_LEVELS, BOOK_TOP, TRADES, TickRecorder, read_ticks
from scalpd.events import BookTop, Side, Trade
from scalpd.fakex.recording import RecordingServer
from scalpd.live.book_feed import BookFeed, combined_stream_url
from scalpd.live.exchange import make_exchange
from tests.conftest import REPO_ROOT, shared_file

SYMBOL = "BTC/USDT"
MIDNIGHT_MS = 1_723_161_600_000  # 2024-08-09T00:00:00Z, inside the recording
LEVEL_COLUMNS = [
    f"{side}_{what}_{i}" for side in ("bid", "ask") for what in ("px", "qty") for i in range(1, 6)
]
WAIT_S = 20.0


def _btc_paths() -> list[Path]:
    return [
        shared_file("binance-ws/spot-btcusdt_20240808.gz"),
        shared_file("binance-ws/spot-btcusdt_20240809.gz"),
    ]


# -- the offline reference ---------------------------------------------------------------------


class Reference(NamedTuple):
    channels: list[str]  # by stream message index
    trades: list[tuple[int, tuple[Any, ...]]]  # (index, (time_ms, price, qty, side, trade_id))
    tickers: list[tuple[int, tuple[Any, ...]]]  # (index, (update_id, bid, bid_qty, ask, ask_qty))
    depth: list[tuple[int, int]]  # (index, final update id) of every depth diff
    levels: dict[int, tuple[float, ...]]  # final update id -> top 5, in LEVEL_COLUMNS order
    snapshot_id: int


def _flat(levels: BookLevels) -> tuple[float, ...]:
    out: list[float] = []
    for side in (levels.bids, levels.asks):
        out += [price for price, _ in side[:5]]
        out += [qty for _, qty in side[:5]]
    return tuple(out)


@lru_cache(maxsize=1)
def _reference() -> Reference:
    ref = Reference([], [], [], [], {}, -1)
    book = OrderBook(SYMBOL)
    snapshot_id = -1
    index = 0
    for _, message in iter_recording(_btc_paths()):
        _, channel, data = unwrap(message)
        if channel == SNAPSHOT:
            snapshot = parse_depth_snapshot(data)
            snapshot_id = snapshot.last_update_id
            assert book.apply_snapshot(snapshot)
            if book.time_ms >= 0:
                ref.levels[book.update_id] = _flat(book.levels(5))
            continue
        ref.channels.append(channel)
        if channel == "trade":
            t = parse_trade(data, SYMBOL)
            ref.trades.append((index, (t.time_ms, t.price, t.qty, str(t.taker_side), t.trade_id)))
        elif channel == "bookTicker":
            k = parse_book_ticker(data, SYMBOL, 0)
            top = k.top
            ref.tickers.append((index, (k.update_id, top.bid, top.bid_qty, top.ask, top.ask_qty)))
        else:
            update = parse_depth_update(data)
            ref.depth.append((index, update.final_update_id))
            if book.on_depth(update) is Outcome.APPLIED:
                ref.levels[update.final_update_id] = _flat(book.levels(5))
        index += 1
    assert book.gaps == 0
    return ref._replace(snapshot_id=snapshot_id)


def _upto(rows: list[tuple[int, Any]], limit: int | None) -> list[Any]:
    return [row for index, row in rows if limit is None or index < limit]


# -- driving a replay --------------------------------------------------------------------------


class Replay(NamedTuple):
    server: RecordingServer
    feed: BookFeed
    recorder: TickRecorder
    root: Path


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def _replay(
    root: Path,
    *,
    limit: int | None = None,
    faults: Callable[[RecordingServer], None] = lambda server: None,
    flush_rows: int = 5000,
) -> Replay:
    """Replay the BTC recording (or its first `limit` messages) through BookFeed into a
    TickRecorder under `root`; returns once every frame sent has been read, books synced."""
    server = RecordingServer(_btc_paths(), limit=limit)
    faults(server)
    await server.start()
    exchange = make_exchange(ExchangeSettings(rest_url=server.base_url, ws_url=server.ws_url))
    exchange.enableRateLimit = False  # a 1000-level snapshot weighs 50: 2.5 s between two
    recorder = TickRecorder(root, flush_rows=flush_rows)
    feed = BookFeed(
        exchange,
        [SYMBOL],
        recorder.add,
        ws_url=server.ws_url,
        initial_backoff_s=0.01,
        max_backoff_s=0.05,
    )
    task = asyncio.create_task(feed.run())
    try:
        await _until(
            lambda: (
                server.finished.is_set()
                and feed.stats.messages >= server.frames_sent
                and feed.synced()
            ),
            "the replay to be read",
        )
        assert not task.done(), task
    finally:
        await feed.stop()
        await asyncio.wait_for(task, WAIT_S)
        await exchange.close()
        await server.stop()
        recorder.close()
    return Replay(server, feed, recorder, root)


def _levels_rows(root: Path) -> list[tuple[int, tuple[float, ...]]]:
    table = read_ticks(root, SYMBOL, BOOK_LEVELS)
    ids = table.column("update_id").to_pylist()
    columns = [table.column(name).to_pylist() for name in LEVEL_COLUMNS]
    return [(uid, tuple(col[i] for col in columns)) for i, uid in enumerate(ids)]


def _assert_levels_match(root: Path) -> list[int]:
    """Every recorded top-5 equals the reference at its update id; the ids recorded."""
    ref = _reference()
    rows = _levels_rows(root)
    assert rows
    for update_id, levels in rows:
        assert update_id in ref.levels, update_id
        assert levels == ref.levels[update_id], update_id
    ids = [uid for uid, _ in rows]
    assert ids == sorted(set(ids))  # one row per diff, in order
    return ids


def _expected_ids_after(first_id: int, last_id: int) -> list[int]:
    return [uid for uid in sorted(_reference().levels) if first_id <= uid <= last_id]


def _trade_rows(root: Path) -> list[tuple[Any, ...]]:
    t = read_ticks(root, SYMBOL, TRADES)
    names = ("time_ms", "price", "qty", "side", "trade_id")
    return list(zip(*(t.column(n).to_pylist() for n in names), strict=True))


def _top_rows(root: Path) -> list[tuple[Any, ...]]:
    t = read_ticks(root, SYMBOL, BOOK_TOP)
    names = ("update_id", "bid", "bid_qty", "ask", "ask_qty")
    return list(zip(*(t.column(n).to_pylist() for n in names), strict=True))


# -- (a) the whole recording, end to end -------------------------------------------------------


def test_replay_of_the_real_recording_is_recorded_exactly(tmp_path: Path) -> None:
    ref = _reference()
    run = asyncio.run(_replay(tmp_path))
    stats = run.feed.stats
    # 99,573 stream messages: 19,904 trades, 73,174 book tickers, 6,495 depth diffs.
    assert stats.messages == len(ref.channels) == run.server.sent
    assert (stats.trades, stats.book_tickers, stats.depth_updates) == (
        len(ref.trades),
        len(ref.tickers),
        len(ref.depth),
    )
    assert (stats.malformed, stats.gaps, stats.resyncs, stats.reconnects) == (0, 0, 0, 0)
    assert stats.snapshots == 1
    assert run.server.snapshots_served == [ref.snapshot_id]  # the recorded snapshot
    assert run.server.unknown_requests == []

    assert _trade_rows(tmp_path) == _upto(ref.trades, None)
    assert _top_rows(tmp_path) == _upto(ref.tickers, None)
    ids = _assert_levels_match(tmp_path)
    # A row after every diff from the first one the synced book showed to the last one.
    assert ids == _expected_ids_after(ids[0], ref.depth[-1][1])
    assert len(ids) > len(ref.depth) - 100

    # Book tickers carry the exchange clock (latest E/T seen), so they sort with the rest.
    tops = read_ticks(tmp_path, SYMBOL, BOOK_TOP)
    trades = read_ticks(tmp_path, SYMBOL, TRADES)
    top_times = tops.column("time_ms").to_pylist()
    assert top_times == sorted(top_times)
    assert abs(top_times[0] - trades.column("time_ms")[0].as_py()) < 1_000
    assert tops.column("recv_time_ns").null_count == 0

    # The recording spans midnight: parts are split by UTC day and read back across it.
    days = {p.parent.name for p in run.recorder.files_written}
    assert days == {"2024-08-08", "2024-08-09"}
    after = read_ticks(tmp_path, SYMBOL, TRADES, start_ms=MIDNIGHT_MS)
    before = read_ticks(tmp_path, SYMBOL, TRADES, end_ms=MIDNIGHT_MS)
    assert after.num_rows == sum(1 for _, t in ref.trades if t[0] >= MIDNIGHT_MS) > 0
    assert before.num_rows + after.num_rows == len(ref.trades)
    assert run.recorder.rows_written == {
        TRADES: len(ref.trades),
        BOOK_TOP: len(ref.tickers),
        BOOK_LEVELS: len(ids),
    }


# -- (b) a deleted depth diff: gap, resync, right again ----------------------------------------


def test_a_deleted_depth_diff_is_a_gap_healed_by_a_new_snapshot(tmp_path: Path) -> None:
    ref = _reference()
    limit = 20_000
    deleted_index, deleted_id = ref.depth[500]
    assert deleted_index < limit // 2
    run = asyncio.run(_replay(tmp_path, limit=limit, faults=lambda s: s.delete(deleted_index)))
    stats = run.feed.stats
    assert (stats.gaps, stats.resyncs, stats.snapshots) == (1, 1, 2)
    assert (stats.malformed, stats.reconnects) == (0, 0)
    first, second = run.server.snapshots_served
    assert first == ref.snapshot_id and second > deleted_id  # built past the lost diff

    ids = _assert_levels_match(tmp_path)  # right before the gap and again after it
    last_id = max(uid for index, uid in ref.depth if index < limit)
    assert ids[-1] == last_id
    resumed = [uid for uid in ids if uid > deleted_id]
    assert resumed and resumed == _expected_ids_after(resumed[0], last_id)
    assert deleted_id not in ids
    book = run.feed.books[SYMBOL]
    assert _flat(book.levels(5)) == ref.levels[last_id]
    # Trades and tickers do not depend on the book: all there.
    assert _trade_rows(tmp_path) == _upto(ref.trades, limit)
    assert _top_rows(tmp_path) == _upto(ref.tickers, limit)


# -- (c) a dropped connection: reconnect, fresh snapshot, recording goes on ---------------------


def test_a_dropped_connection_reconnects_and_recording_continues(tmp_path: Path) -> None:
    ref = _reference()
    limit, drop_index = 15_000, 5_000
    run = asyncio.run(_replay(tmp_path, limit=limit, faults=lambda s: s.drop_after(drop_index)))
    stats = run.feed.stats
    assert (stats.reconnects, stats.connects, run.server.connections) == (1, 2, 2)
    assert stats.snapshots == 2 and stats.gaps == 0 and stats.malformed == 0
    assert len(run.server.snapshots_served) == 2
    # The server goes on where the dropped connection stopped: nothing is lost or repeated.
    assert stats.messages == limit
    assert _trade_rows(tmp_path) == _upto(ref.trades, limit)
    assert _top_rows(tmp_path) == _upto(ref.tickers, limit)
    ids = _assert_levels_match(tmp_path)
    drop_id = max(uid for index, uid in ref.depth if index <= drop_index)
    last_id = max(uid for index, uid in ref.depth if index < limit)
    resumed = [uid for uid in ids if uid > drop_id]
    assert resumed and resumed == _expected_ids_after(resumed[0], last_id)


# -- (d) malformed frames are counted and skipped ----------------------------------------------


def test_malformed_messages_are_counted_and_skipped(tmp_path: Path) -> None:
    ref = _reference()
    limit = 3_000
    trade_message = next(
        m for _, m in iter_recording(_btc_paths()) if "@trade" in m.get("stream", "")
    )
    text = orjson.dumps(trade_message).decode()
    bad_price = {**trade_message, "data": {**trade_message["data"], "p": "abc"}}
    depth_backwards = {
        "stream": "btcusdt@depth@100ms",
        "data": {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 9, "u": 5, "b": [], "a": []},
    }
    malformed: list[str | bytes] = [
        text[: len(text) // 2],  # truncated
        "not json at all",
        orjson.dumps(bad_price).decode(),
        orjson.dumps(depth_backwards).decode(),
        "[1, 2, 3]",
        b"\x00\x01binary",
        "{}",
    ]
    other_symbol = orjson.dumps({**trade_message, "stream": "ethusdt@trade"}).decode()

    def inject(server: RecordingServer) -> None:
        for i, frame in enumerate(malformed):
            server.inject(100 + 300 * i, frame)
        server.inject(2_500, other_symbol)

    run = asyncio.run(_replay(tmp_path, limit=limit, faults=inject))
    stats = run.feed.stats
    assert stats.malformed == len(malformed)
    assert stats.ignored == 1
    assert stats.messages == limit + len(malformed) + 1
    assert (stats.gaps, stats.reconnects) == (0, 0)
    assert _trade_rows(tmp_path) == _upto(ref.trades, limit)
    assert _top_rows(tmp_path) == _upto(ref.tickers, limit)
    _assert_levels_match(tmp_path)


def test_stream_url_from_the_ws_url_setting() -> None:
    streams = ["btcusdt@trade", "btcusdt@bookTicker"]
    want = "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/btcusdt@bookTicker"
    assert combined_stream_url(None, streams) == want
    assert combined_stream_url("wss://stream.binance.com:9443/stream", streams) == want
    assert combined_stream_url("wss://stream.binance.com:9443/stream/", streams) == want
    assert combined_stream_url("wss://stream.binance.com:9443/ws", streams) == want
    assert combined_stream_url("wss://stream.binance.com:9443", streams) == want


# -- (e) the recorder on its own ---------------------------------------------------------------


def _trade(time_ms: int, trade_id: int, price: float = 100.0) -> Trade:
    return Trade(
        SYMBOL, time_ms, price, 0.5, Side.BUY if trade_id % 2 else Side.SELL, str(trade_id)
    )


def _parts(root: Path) -> list[Path]:
    return sorted(root.rglob("part-*.parquet"))


def test_a_crash_between_temp_write_and_rename_leaves_no_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = TickRecorder(tmp_path, flush_rows=1000)
    for i in range(10):
        rec.add(_trade(MIDNIGHT_MS + i, i), recv_time_ns=i)
    temps: list[bool] = []

    def crash(src: Any, dst: Any) -> None:
        temps.append(Path(src).is_file() and Path(src).stat().st_size > 0)  # fully written
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        rec.flush()
    monkeypatch.undo()
    assert temps == [True]
    assert _parts(tmp_path) == []
    assert read_ticks(tmp_path, SYMBOL, TRADES).num_rows == 0
    # What a killed process leaves: a half-written temp file. Readers never see it.
    day_dir = tmp_path / "binance" / "BTCUSDT" / "trades" / "2024-08-09"
    (day_dir / ".tmp-part-1.parquet.abc123").write_bytes(b"PAR1 half a file")
    assert read_ticks(tmp_path, SYMBOL, TRADES).num_rows == 0
    # The rows stayed buffered: the next flush writes them, once.
    assert rec.buffered_rows == 10
    rec.close()
    table = read_ticks(tmp_path, SYMBOL, TRADES)
    assert table.column("trade_id").to_pylist() == [str(i) for i in range(10)]
    assert len(_parts(tmp_path)) == 1


def test_a_failed_flush_across_days_keeps_only_the_unwritten_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = TickRecorder(tmp_path, flush_rows=1000)
    times = [MIDNIGHT_MS - 2, MIDNIGHT_MS - 1, MIDNIGHT_MS, MIDNIGHT_MS + 1]
    for i, t in enumerate(times):
        rec.add(_trade(t, i))
    real = recorder_mod._write_bytes_atomic
    calls = []

    def second_fails(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(recorder_mod, "_write_bytes_atomic", second_fails)
    with pytest.raises(OSError, match="disk full"):
        rec.flush()
    assert rec.buffered_rows == 2  # the 9th's rows; the 8th's are on disk
    rec.close()
    ids = read_ticks(tmp_path, SYMBOL, TRADES).column("trade_id").to_pylist()
    assert ids == ["0", "1", "2", "3"]


def test_read_ticks_sorts_by_time_and_filters_half_open(tmp_path: Path) -> None:
    rec = TickRecorder(tmp_path, flush_rows=3)
    # Arrival order is not time order (a late trade), and flushes split the stream in parts.
    times = [MIDNIGHT_MS + d for d in (5, 1, 9, 3, -7, 2, 8, -1, 4)]
    for i, t in enumerate(times):
        rec.add(_trade(t, i))
    rec.close()
    assert len(_parts(tmp_path)) >= 3
    table = read_ticks(tmp_path, SYMBOL, TRADES)
    got = table.column("time_ms").to_pylist()
    assert got == sorted(times)
    sub = read_ticks(tmp_path, SYMBOL, TRADES, start_ms=MIDNIGHT_MS - 1, end_ms=MIDNIGHT_MS + 4)
    assert sub.column("time_ms").to_pylist() == [MIDNIGHT_MS + d for d in (-1, 1, 2, 3)]
    only_8th = read_ticks(tmp_path, SYMBOL, "trades", end_ms=MIDNIGHT_MS)
    assert only_8th.num_rows == 2
    assert read_ticks(tmp_path, "BTCUSDT", TRADES, start_ms=MIDNIGHT_MS + 100).num_rows == 0
    assert read_ticks(tmp_path, "ETH/USDT", TRADES).num_rows == 0  # nothing recorded: empty
    # Same millisecond: arrival order is kept.
    rec = TickRecorder(tmp_path / "same", flush_rows=2)
    for i in range(5):
        rec.add(_trade(MIDNIGHT_MS, i))
    rec.close()
    ids = read_ticks(tmp_path / "same", SYMBOL, TRADES).column("trade_id").to_pylist()
    assert ids == ["0", "1", "2", "3", "4"]
    names = sorted(p.name for p in _parts(tmp_path / "same"))
    assert names == [
        f"part-{MIDNIGHT_MS}-1.parquet",
        f"part-{MIDNIGHT_MS}-2.parquet",
        f"part-{MIDNIGHT_MS}.parquet",
    ]


def test_recorder_columns_and_flush_by_age(tmp_path: Path) -> None:
    now = [0.0]
    rec = TickRecorder(tmp_path, flush_rows=1000, flush_s=10.0, clock_s=lambda: now[0])
    top = BookTop(SYMBOL, MIDNIGHT_MS, 100.0, 1.0, 100.5, 2.0)
    rec.add(BookTicker(42, top), recv_time_ns=123)
    rec.add(top._replace(time_ms=MIDNIGHT_MS + 1))  # a bare BookTop: update id unknown
    shallow = BookLevels(SYMBOL, MIDNIGHT_MS, 7, [(100.0, 1.0), (99.0, 3.0)], [(101.0, 2.0)])
    rec.add(shallow)
    now[0] = 9.0
    assert rec.flush_due() == []
    now[0] = 10.0
    assert len(rec.flush_due()) == 2
    assert rec.buffered_rows == 0

    tops = read_ticks(tmp_path, SYMBOL, BOOK_TOP)
    assert tops.column("update_id").to_pylist() == [42, None]
    assert tops.column("recv_time_ns").to_pylist() == [123, None]
    assert tops.column("ask").to_pylist() == [100.5, 100.5]
    levels = read_ticks(tmp_path, SYMBOL, BOOK_LEVELS)
    row = {name: levels.column(name)[0].as_py() for name in levels.column_names}
    assert (row["bid_px_1"], row["bid_qty_2"], row["ask_px_1"]) == (100.0, 3.0, 101.0)
    assert math.isnan(row["bid_px_3"]) and math.isnan(row["ask_qty_5"])
    assert row["update_id"] == 7
    assert levels.schema.names[:2] == ["time_ms", "recv_time_ns"]

    now[0] = 20.0
    rec.add(_trade(MIDNIGHT_MS, 1))  # the first row of a buffer starts its age
    now[0] = 30.0
    rec.add(_trade(MIDNIGHT_MS + 1, 2))  # ... and `add` flushes a buffer that is due
    assert rec.buffered_rows == 0 and rec.rows_written[TRADES] == 2
    with pytest.raises(ValueError, match="no time"):
        rec.add(_trade(-1, 3))
    with pytest.raises(TypeError):
        rec.add(("not", "a", "tick"))  # type: ignore[arg-type]


def test_read_ticks_of_unknown_kind_is_an_error(tmp_path: Path) -> None:
    from scalpd.data.parquet import DataError

    with pytest.raises(DataError, match="unknown tick kind"):
        read_ticks(tmp_path, SYMBOL, "candles")
    assert read_ticks(tmp_path, SYMBOL, TRADES).schema == recorder_mod.SCHEMAS[TRADES]
    assert isinstance(read_ticks(tmp_path, SYMBOL, BOOK_LEVELS), pa.Table)


# -- the `record` command ----------------------------------------------------------------------


def test_record_runs_the_feed_into_the_store_until_stopped(tmp_path: Path) -> None:
    ref = _reference()
    limit = 2_000

    async def body() -> Any:
        server = RecordingServer(_btc_paths(), limit=limit)
        await server.start()
        settings = ExchangeSettings(
            rest_url=server.base_url, ws_url=server.ws_url, reconnect_initial_backoff_s=0.01
        )
        rec = TickRecorder(tmp_path, flush_rows=500)
        stop = asyncio.Event()
        task = asyncio.create_task(record(settings, [SYMBOL], rec, stop=stop))
        try:
            await _until(
                lambda: (
                    rec.rows_added[TRADES] == len(_upto(ref.trades, limit))
                    and rec.rows_added[BOOK_TOP] == len(_upto(ref.tickers, limit))
                    # The first snapshot waits for ccxt's rate limiter (load_markets used the
                    # weight), so the book may sync after the last ticker.
                    and rec.rows_added[BOOK_LEVELS] > 0
                ),
                "the rows",
            )
            stop.set()
            return await asyncio.wait_for(task, WAIT_S)
        finally:
            await server.stop()

    summary = asyncio.run(body())
    assert summary.feed.messages == limit
    assert summary.rows[TRADES] == len(_upto(ref.trades, limit))
    assert summary.rows[BOOK_TOP] == len(_upto(ref.tickers, limit))
    assert summary.rows[BOOK_LEVELS] > 0
    assert "gaps 0, resyncs 0" in summary.line()
    assert _trade_rows(tmp_path) == _upto(ref.trades, limit)


def test_record_command_line(tmp_path: Path) -> None:
    """`record` as a process: env-configured URLs, timed flushes, SIGTERM, the summary line."""
    import argparse

    parser = argparse.ArgumentParser()
    add_record_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["record", "BTC/USDT", "ETH/USDT", "--flush-s", "0.5"])
    assert (args.symbols, args.flush_s) == (["BTC/USDT", "ETH/USDT"], 0.5)
    assert args.root == Path("state/market") and args.max_seconds is None
    with pytest.raises(SystemExit):
        parser.parse_args(["record", "BTC/USDT", "--flush-rows", "0"])

    ref = _reference()
    limit = 1_500

    async def body() -> tuple[int | None, str, str]:
        server = RecordingServer(_btc_paths(), limit=limit)
        await server.start()
        env = {
            **os.environ,
            "SCALPD_EXCHANGE__REST_URL": server.base_url,
            "SCALPD_EXCHANGE__WS_URL": server.ws_url,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scalpd.data.record_cli", "BTC/USDT",
            "--root", str(tmp_path), "--flush-s", "0.05", "--log-level", "warning",
            cwd=REPO_ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            want = len(_upto(ref.trades, limit))
            await _until(
                lambda: read_ticks(tmp_path, SYMBOL, TRADES).num_rows == want,
                "the trades on disk",
                timeout_s=60,
            )
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
            return proc.returncode, out.decode(), err.decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await server.stop()

    code, out, err = asyncio.run(body())
    assert code == 0, err
    assert out.startswith("recorded BTC/USDT for "), out
    assert f"{limit} messages" in out and f"trades {len(_upto(ref.trades, limit))}," in out
    assert _top_rows(tmp_path) == _upto(ref.tickers, limit)


def test_a_failing_consumer_stops_the_feed_with_its_error() -> None:
    """A recorder that cannot write (OSError: disk full) must not pass for a dropped link."""

    async def body() -> BookFeed:
        async with RecordingServer(_btc_paths(), limit=2_000) as server:
            exchange = make_exchange(
                ExchangeSettings(rest_url=server.base_url, ws_url=server.ws_url)
            )
            seen: list[Any] = []

            def consumer(event: Any, recv_time_ns: int) -> None:
                seen.append(event)
                if len(seen) == 100:
                    raise OSError("No space left on device")

            feed = BookFeed(exchange, [SYMBOL], consumer, ws_url=server.ws_url)
            try:
                with pytest.raises(OSError, match="No space left"):
                    await asyncio.wait_for(feed.run(), WAIT_S)
            finally:
                await exchange.close()
            return feed

    feed = asyncio.run(body())
    assert (feed.stats.reconnects, feed.stats.connects) == (0, 1)
