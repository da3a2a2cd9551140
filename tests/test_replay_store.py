"""Replay reads the bar store that `scalpd download` fills, with the same result as the files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from scalpd.data.parquet import read_parquet
from scalpd.data.store import BarStore
from tests.conftest import shared_file


def _replay(tmp_path: Path, *args: str) -> dict:
    env_root = str(tmp_path / "market")
    done = subprocess.run(
        [sys.executable, "-m", "scalpd", "replay", "--json", "--db", str(tmp_path / "r.db"),
         "--from", "2020-03-01", "--to", "2020-04-01", *args],
        capture_output=True, text=True, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "SCALPD_DATA__MARKET_ROOT": env_root},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def test_replay_from_the_store_equals_replay_from_the_file(tmp_path: Path) -> None:
    path = shared_file("binance-spot/BTCUSDT-1m-2020.parquet")
    store = BarStore(tmp_path / "market")
    store.write("binance", "BTC/USDT", "1m", read_parquet(path), path.name)
    from_store = _replay(tmp_path, "--stored", "BTC/USDT")
    from_file = _replay(tmp_path, "--data", str(path))
    assert from_store["data"].startswith("real data: binance store (BTC/USDT v")
    assert from_store["gaps"] == from_file["gaps"] >= 1  # 2020-03 has an exchange gap
    keys = ("bars", "trades", "total_return_pct", "max_drawdown_pct", "fees_usdt")
    assert {k: from_store[k] for k in keys} == {k: from_file[k] for k in keys}


def test_replay_of_a_symbol_not_in_the_store_says_how_to_get_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scalpd", "replay", "--stored", "ETH/USDT",
         "--db", str(tmp_path / "r.db")],
        capture_output=True, text=True, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "SCALPD_DATA__MARKET_ROOT": str(tmp_path / "none")},
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"scalpd: error: no ETH/USDT 1m bars in {tmp_path / 'none'}; "
        "run `scalpd download ETH/USDT --since DATE` first"
    ]
