"""`scalpd download` with the real ccxt client against the fake exchange serving real bars."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scalpd.data.bars import BarColumns
from scalpd.data.download import RetryPolicy, download
from scalpd.data.parquet import DataError, read_parquet
from scalpd.data.store import BarStore
from scalpd.fakex import FakeExchange
from scalpd.fakex.server import DROP_CONNECTION
from scalpd.live.exchange import ScalpdBinance
from tests.conftest import shared_file

WEEK_BARS = 7 * 24 * 60
FAST_RETRIES = RetryPolicy(max_tries=8, initial_backoff_s=0.01, max_backoff_s=0.05)
DAY_MS = 86_400_000


def _three_weeks() -> BarColumns:
    bars = read_parquet(shared_file("binance-spot/BTCUSDT-1m-2024.parquet"))
    first = int(np.datetime64("2024-05-01T00:00", "ms").astype(np.int64))
    i = int(bars.open_time.searchsorted(first))
    return bars.take(slice(i, i + 3 * WEEK_BARS + 1))  # +1: the bar still open at the fake


def _assert_same_bars(got: BarColumns, want: BarColumns) -> None:
    assert len(got) == len(want)
    for name in ("open_time", "open", "high", "low", "close", "volume", "quote_volume", "trades"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    np.testing.assert_array_equal(got.taker_buy_volume, want.taker_buy_volume)


async def _with_fake(bars: BarColumns, body):
    fx = FakeExchange({"BTC/USDT": bars.kline_columns()}, start_index=len(bars) - 1)
    await fx.start()
    exchange = ScalpdBinance({"enableRateLimit": False})
    fx.configure_ccxt(exchange)
    try:
        return await body(fx, exchange)
    finally:
        await exchange.close()
        await fx.stop()


def test_multi_week_download_matches_the_source_bar_for_bar(tmp_path: Path) -> None:
    bars = _three_weeks()
    store = BarStore(tmp_path / "market")
    since, until = int(bars.open_time[0]), int(bars.open_time[-1])

    async def body(fx, exchange):
        return await download(exchange, store, ["BTC/USDT"], since_ms=since, until_ms=until)

    (report,) = asyncio.run(_with_fake(bars, body))
    assert report.bars_written == 3 * WEEK_BARS and report.chunks == 3
    _assert_same_bars(store.read("binance", "BTC/USDT", "1m"), bars.take(slice(0, -1)))
    assert store.verify("binance", "BTC/USDT", "1m") == []


def test_faults_are_retried_and_nothing_is_duplicated_or_missing(tmp_path: Path) -> None:
    bars = _three_weeks()
    store = BarStore(tmp_path / "market")
    since, until = int(bars.open_time[0]), int(bars.open_time[-1])

    async def body(fx, exchange):
        # Five runs, each interrupted short of the end and continued by the next, each
        # meeting its own kind of fault on the way.
        await exchange.load_markets()  # so that every fault meets a download request
        reports = []
        faults = ((4, 429, 2), (8, 418, 1), (12, DROP_CONNECTION, 2), (17, 500, 1), (None, 503, 2))
        for days, status, times in faults:
            fx.fail_next_requests(times, status=status, retry_after_s=0)
            end = until if days is None else since + days * DAY_MS
            (report,) = await download(
                exchange, store, ["BTC/USDT"], since_ms=since, until_ms=end, policy=FAST_RETRIES
            )
            reports.append(report)
        return reports

    reports = asyncio.run(_with_fake(bars, body))
    # (aiohttp itself retries a request once when a kept-alive connection was reset.)
    assert [r.retries for r in reports] in ([2, 1, 2, 1, 2], [2, 1, 1, 1, 2])
    assert [r.resumed_from_ms for r in reports] == [None] + [
        since + days * DAY_MS - 60_000 for days in (4, 8, 12, 17)
    ]
    assert sum(r.bars_written for r in reports) == 3 * WEEK_BARS
    _assert_same_bars(store.read("binance", "BTC/USDT", "1m"), bars.take(slice(0, -1)))


def test_kill_9_in_the_middle_then_rerun_completes(tmp_path: Path) -> None:
    """The real CLI, killed with SIGKILL after its first chunk, then run again."""
    data = shared_file("binance-spot/BTCUSDT-1m-2024.parquet")
    fake = subprocess.Popen(
        [sys.executable, "-m", "scalpd", "fake-exchange", "--data", str(data),
         "--from", "2024-02-01", "--bar-interval-s", "3600"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        rest = next(w for w in fake.stdout.readline().split() if w.startswith("http://"))
        env = {**os.environ, "SCALPD_EXCHANGE__REST_URL": rest}
        root = tmp_path / "market"
        cmd = [sys.executable, "-m", "scalpd", "download", "BTC/USDT", "--since", "2024-01-01",
               "--until", "2024-01-29", "--chunk-days", "1", "--root", str(root)]  # fmt: skip
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        manifest = root / "binance" / "BTCUSDT" / "1m" / "manifest.json"
        deadline = time.monotonic() + 60
        while not manifest.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert first.returncode == -signal.SIGKILL, "the download finished before the kill"
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
    finally:
        fake.send_signal(signal.SIGINT)
        fake.wait(10)
    store = BarStore(root)
    got = store.read("binance", "BTC/USDT", "1m")
    want = read_parquet(data)
    lo, hi = want.open_time.searchsorted([got.open_time[0], got.open_time[-1] + 1])
    assert got.open_time[0] == want.open_time[0]  # 2024-01-01 00:00
    assert len(got) == 28 * 1440
    _assert_same_bars(got, want.take(slice(int(lo), int(hi))))
    assert store.verify("binance", "BTC/USDT", "1m") == []


def test_bad_requests_fail_at_once_with_one_line(tmp_path: Path) -> None:
    bars = _three_weeks()
    store = BarStore(tmp_path / "market")
    since = int(bars.open_time[0])

    async def unknown_symbol(fx, exchange):
        await download(exchange, store, ["NOPE/USDT"], since_ms=since, until_ms=since + DAY_MS)

    async def end_before_start(fx, exchange):
        await download(exchange, store, ["BTC/USDT"], since_ms=since, until_ms=since - DAY_MS)

    with pytest.raises(DataError, match="unknown symbol"):
        asyncio.run(_with_fake(bars, unknown_symbol))
    with pytest.raises(DataError, match="end date is not after the start"):
        asyncio.run(_with_fake(bars, end_before_start))
    assert not (tmp_path / "market").exists() or not any((tmp_path / "market").rglob("*.parquet"))


def test_cli_bad_dates_and_symbols_are_one_line_errors(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "scalpd", "download", "BTC/USDT", "--since", "2024-13-40"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "scalpd: error: bad date '2024-13-40': use YYYY-MM-DD or an ISO time"
    ]


def test_cli_from_archive_imports_into_the_store(tmp_path: Path) -> None:
    import zipfile

    rows = [
        f"{1704067200000 + i * 60_000},42000.0,42010.5,41990.0,42005.0,1.5,"
        f"{1704067200000 + i * 60_000 + 59_999},63000.0,12,0.7,29400.0,0"
        for i in range(3)
    ]
    archive = tmp_path / "BTCUSDT-1m-2024-01-01.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("BTCUSDT-1m-2024-01-01.csv", "\n".join(rows) + "\n")
    root = tmp_path / "market"
    done = subprocess.run(
        [sys.executable, "-m", "scalpd", "download", "--from-archive", str(archive),
         "--root", str(root)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    bars = BarStore(root).read("binance", "BTC/USDT", "1m")
    assert bars.open_time.tolist() == [1704067200000 + i * 60_000 for i in range(3)]
    assert bars.taker_buy_volume.tolist() == [0.7] * 3
