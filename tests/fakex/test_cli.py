"""`python -m scalpd.fakex.cli`: arguments, and a real server process run by hand."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalpd.fakex import FakeExchange
from scalpd.fakex.cli import (
    _exchange_from_args,
    build_parser,
    main,
    parse_balances,
    symbol_from_filename,
)
from scalpd.fakex.matching import FeeSchedule
from scalpd.fakex.testing import DEFAULT_START_MS, random_walk_bars

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "symbol"),
    [
        ("BTCUSDT-1m-2024.parquet", "BTC/USDT"),
        ("ETHUSDT-1m-windows.parquet", "ETH/USDT"),
        ("ethbtc_1m.parquet", "ETH/BTC"),
        ("SOLFDUSD-1m.parquet", "SOL/FDUSD"),
        ("prices.parquet", None),
        ("USDT-1m.parquet", None),
    ],
)
def test_symbol_from_filename(name: str, symbol: str | None) -> None:
    assert symbol_from_filename(Path(name)) == symbol


def test_balances_parse_and_bad_ones_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse_balances(["usdt=250.5", "BTC=0.1"]) == {"USDT": 250.5, "BTC": 0.1}
    data = tmp_path / "BTCUSDT-1m.parquet"
    pq.write_table(pa.table(random_walk_bars(3)), data)
    for bad in ("USDT", "USDT=lots", "=5"):
        assert main(["--data", str(data), "--balance", bad]) == 2
        assert "is not ASSET=AMOUNT" in capsys.readouterr().err


def test_usage_errors_return_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["--data", str(tmp_path / "missing.parquet")]) == 2
    assert "data file not found" in capsys.readouterr().err
    unnamed = tmp_path / "prices.parquet"
    pq.write_table(pa.table(random_walk_bars(3)), unnamed)
    assert main(["--data", str(unnamed)]) == 2
    assert "pass --symbol" in capsys.readouterr().err
    assert main(["--data", str(unnamed), "--symbol", "BTC/USDT", "--from", "2030-01-01"]) == 2
    assert "outside the data" in capsys.readouterr().err
    assert main(["--help"]) == 0


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_serves_by_hand_until_signalled(tmp_path: Path, stop_signal: signal.Signals) -> None:
    data = tmp_path / "BTCUSDT-1m-test.parquet"
    pq.write_table(pa.table(random_walk_bars(200)), data)
    proc = subprocess.Popen(
        [sys.executable, "-m", "scalpd.fakex.cli", "--data", str(data), "--port", "0",
         "--from", "2024-01-01T00:10", "--bar-interval-s", "60", "--balance", "USDT=500"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        words = banner.split()
        rest = next(w for w in words if w.startswith("http://"))
        ws = next(w for w in words if w.startswith("ws://"))
        assert ws.endswith("/stream") and "fake-key" in words and "fake-secret" in words
        assert _get_json(rest + "/api/v3/time") == {"serverTime": DEFAULT_START_MS + 600_000}
        history = _get_json(rest + "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1000")
        assert isinstance(history, list) and len(history) == 10
    finally:
        proc.send_signal(stop_signal)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_fee_and_fill_flags(tmp_path: Path) -> None:
    data = tmp_path / "BTCUSDT-1m.parquet"
    pq.write_table(pa.table(random_walk_bars(3)), data)

    def exchange(*flags: str) -> FakeExchange:
        fx, _ = _exchange_from_args(build_parser().parse_args(["--data", str(data), *flags]))
        return fx

    default = exchange()
    assert default.fees == FeeSchedule(maker_bps=10.0, taker_bps=10.0, bnb=False)
    assert default._engine.limit_queue == "through"
    assert default._engine.max_participation == 0.1
    both = exchange("--fee-bps", "7.5")
    assert (both.fees.maker_bps, both.fees.taker_bps) == (7.5, 7.5)
    vip3 = exchange(
        "--fee-bps", "9", "--maker-fee-bps", "4.2", "--taker-fee-bps", "6", "--bnb-fees",
        "--bnb-price-usdt", "550", "--limit-queue", "touch", "--max-participation", "0.25",
    )  # fmt: skip
    assert vip3.fees == FeeSchedule(4.2, 6.0, bnb=True, bnb_price_usdt=550.0)
    assert vip3._engine.limit_queue == "touch" and vip3._engine.max_participation == 0.25
