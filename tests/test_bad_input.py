"""Bad input through the real command line: one line naming the problem, never a traceback.

Each case runs `python -m scalpd` in a fresh directory with a clean environment. Exit codes
(cli.py): 2 for bad configuration or usage, 1 for a run that failed (bad data).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

M = 60_000
T = 1_709_251_200_000  # 2024-03-01 00:00 UTC
N = 120
API_KEY = "k-7Hq2-should-never-print"


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    cwd: Path
    db: Path

    @property
    def err_lines(self) -> list[str]:
        return self.stderr.splitlines()

    def runs(self) -> list[tuple[int, str]]:
        if not self.db.exists():
            return []
        with sqlite3.connect(self.db) as conn:
            return conn.execute("SELECT id, status FROM runs ORDER BY id").fetchall()

    def quarantine(self) -> list[tuple]:
        if not self.db.exists():
            return []
        with sqlite3.connect(self.db) as conn:
            return conn.execute(
                "SELECT run_id, source, row_index, open_time_ms, reason FROM quarantine ORDER BY id"
            ).fetchall()


def scalpd(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCALPD_")}
    clean.update(env or {})
    db = cwd / "state" / "test.db"
    argv = [sys.executable, "-m", "scalpd", *args]
    if "replay" in args:
        argv += ["--db", str(db)]
    proc = subprocess.run(argv, cwd=cwd, env=clean, capture_output=True, text=True, timeout=120)
    return Result(proc.returncode, proc.stdout, proc.stderr, cwd, db)


def assert_one_error_line(r: Result, fragment: str) -> None:
    assert "Traceback" not in r.stdout + r.stderr
    assert r.err_lines == [r.err_lines[0]] and r.err_lines[0].startswith("scalpd: error: "), (
        r.stderr
    )
    assert fragment in r.err_lines[0]


# -- bad configuration: exit 2 ---------------------------------------------------------------


def _config(body: str) -> Callable[[Path], list[str]]:
    def prepare(cwd: Path) -> list[str]:
        (cwd / "my.toml").write_text(body)
        return ["--config", "my.toml"]

    return prepare


def _group_readable_secrets(cwd: Path) -> list[str]:
    secrets = cwd / "secrets.toml"
    secrets.write_text(f'api_key = "{API_KEY}"\napi_secret = "x"\n')
    secrets.chmod(0o640)
    (cwd / "config.toml").write_text(f'[exchange]\nsecrets_file = "{secrets}"\n')
    return []  # ./config.toml is read by default


CONFIG_CASES: dict[str, tuple[Callable[[Path], list[str]], dict[str, str], str]] = {
    "wrong_type": (
        _config('[strategy]\nslow_period_bars = "many"\n'),
        {},
        "'strategy.slow_period_bars' has bad value 'many'",
    ),
    "unknown_key": (_config("[risk]\nmax_leverage = 3\n"), {}, "'risk.max_leverage' is unknown"),
    "missing_file": (lambda cwd: ["--config", "absent.toml"], {}, "config file not found"),
    "invalid_toml": (_config("[fees\ntaker_bps = 10\n"), {}, "is not valid TOML"),
    "api_key_in_config": (
        _config(f'[exchange]\napi_key = "{API_KEY}"\n'),
        {},
        "'exchange.api_key'",
    ),
    "secrets_file_readable_by_group": (_group_readable_secrets, {}, "readable by others"),
    "env_bad_value": (
        lambda cwd: [],
        {"SCALPD_RISK__MAX_ORDER_NOTIONAL_USDT": "-5"},
        "'risk.max_order_notional_usdt' has bad value '-5'",
    ),
    "env_bad_choice": (
        lambda cwd: [],
        {"SCALPD_DATA__ON_BAD_ROWS": "ignore"},
        "'data.on_bad_rows' has bad value 'ignore'",
    ),
    "config_env_var_missing_file": (
        lambda cwd: [],
        {"SCALPD_CONFIG": "elsewhere.toml"},
        "config file not found: elsewhere.toml",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config(tmp_path: Path, case: str) -> None:
    prepare, env, fragment = CONFIG_CASES[case]
    before = prepare(tmp_path)
    r = scalpd(tmp_path, *before, "replay", env=env)
    assert r.rc == 2, r.stderr
    assert_one_error_line(r, fragment)
    assert r.stdout == ""
    assert API_KEY not in r.stdout + r.stderr
    assert r.runs() == []


def test_bad_env_value_for_a_list_key(tmp_path: Path) -> None:
    r = scalpd(tmp_path, "replay", env={"SCALPD_SYMBOLS__TRADE": "BTC/USDT"})
    assert r.rc == 2
    assert_one_error_line(r, "symbols")


# -- bad data: exit 1 ------------------------------------------------------------------------


def _columns() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    close = np.round(60_000 + np.cumsum(rng.normal(0, 20, N)), 2)
    open_ = np.concatenate([[60_000.0], close[:-1]])
    return {
        "open_time": T + np.arange(N, dtype=np.int64) * M,
        "open": open_,
        "high": np.maximum(open_, close) + 5.0,
        "low": np.minimum(open_, close) - 5.0,
        "close": close,
        "volume": np.full(N, 3.5),
        "quote_volume": np.full(N, 210_000.0),
        "trades": np.full(N, 100, dtype=np.int64),
        "taker_buy_base": np.full(N, 1.5),
    }


def _write(path: Path, cols: dict[str, np.ndarray]) -> None:
    pq.write_table(pa.table(cols), path)


def _nan_prices(c):
    c["close"][40] = np.nan
    c["high"][70] = np.nan
    return [(40, "NaN or infinite value"), (70, "NaN or infinite value")]


def _non_positive(c):
    c["open"][50] = 0.0
    c["low"][50] = 0.0
    c["low"][51] = -3.0
    return [(50, "non-positive price"), (51, "non-positive price")]


def _high_below_low(c):
    c["high"][60] = c["low"][60] - 1.0
    return [(60, "high below low")]


def _duplicated(c):
    c["open_time"][80] = c["open_time"][79]
    return [(80, "duplicate open_time")]


def _unsorted(c):
    c["open_time"][[90, 91]] = c["open_time"][[91, 90]]
    return [(91, "open_time out of order")]


ROW_CASES: dict[str, Callable[[dict], list[tuple[int, str]]]] = {
    "nan_prices": _nan_prices,
    "non_positive_price": _non_positive,
    "high_below_low": _high_below_low,
    "duplicated_timestamps": _duplicated,
    "unsorted_timestamps": _unsorted,
}

_ROW_RESULTS: dict[str, tuple[Result, dict, list]] = {}


def _row_case(case: str, tmp_path_factory: pytest.TempPathFactory):
    """Run each bad-rows case once; several tests read its result."""
    if case not in _ROW_RESULTS:
        cwd = tmp_path_factory.mktemp(case)
        cols = _columns()
        bad = ROW_CASES[case](cols)
        _write(cwd / "BTCUSDT-1m-bad.parquet", cols)
        r = scalpd(cwd, "replay", "--data", "BTCUSDT-1m-bad.parquet")
        _ROW_RESULTS[case] = (r, cols, bad)
    return _ROW_RESULTS[case]


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_bad_rows_stop_the_replay(case: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    r, cols, bad = _row_case(case, tmp_path_factory)
    assert r.rc == 1, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    errors = [line for line in r.err_lines if line.startswith("scalpd: error: ")]
    assert len(errors) == 1 and errors == r.err_lines[-1:]
    assert f"{len(bad)} bad row(s) quarantined" in errors[0]
    for _, reason in bad:
        assert reason in errors[0]
    assert r.stdout == ""
    # The run is recorded as failed, never completed, and holds the quarantined rows.
    (run,) = r.runs()
    assert run[1] == "failed"
    # Each bad row is in the quarantine table with its reason, linked to the failed run.
    assert r.quarantine() == [
        (run[0], "BTC/USDT", i, int(cols["open_time"][i]), reason) for i, reason in bad
    ]


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_bad_rows_print_one_line(case: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    r, _, _ = _row_case(case, tmp_path_factory)
    assert_one_error_line(r, "bad row(s) quarantined")


def _missing_column(cwd: Path) -> str:
    cols = _columns()
    del cols["low"]
    _write(cwd / "BTCUSDT-1m-x.parquet", cols)
    return "lacks required column(s) low"


def _not_parquet(cwd: Path) -> str:
    (cwd / "BTCUSDT-1m-x.parquet").write_text("open_time,open,high,low,close,volume\n1,2,3,1,2,5\n")
    return "is not a readable Parquet file"


def _missing_file(cwd: Path) -> str:
    return "data file not found: BTCUSDT-1m-x.parquet"


def _wrong_column_type(cwd: Path) -> str:
    cols = _columns()
    cols["close"] = np.array(["n/a"] * N)
    _write(cwd / "BTCUSDT-1m-x.parquet", cols)
    return "has a column of the wrong type"


FILE_CASES = {
    "missing_column": _missing_column,
    "not_parquet": _not_parquet,
    "missing_file": _missing_file,
    "wrong_column_type": _wrong_column_type,
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_data_file(tmp_path: Path, case: str) -> None:
    fragment = FILE_CASES[case](tmp_path)
    r = scalpd(tmp_path, "replay", "--data", "BTCUSDT-1m-x.parquet")
    assert r.rc == 1, r.stderr
    assert_one_error_line(r, fragment)
    assert r.stdout == ""
    assert not [run for run in r.runs() if run[1] == "completed"]


def test_symbol_not_in_file_name(tmp_path: Path) -> None:
    _write(tmp_path / "bars.parquet", _columns())
    r = scalpd(tmp_path, "replay", "--data", "bars.parquet")
    assert r.rc == 1
    assert_one_error_line(r, "cannot tell the symbol of bars.parquet")


# -- on_bad_rows = skip --------------------------------------------------------------------


def test_skip_bad_rows_completes_without_them(tmp_path: Path) -> None:
    cols = _columns()
    bad = _nan_prices(cols) + _high_below_low(cols) + _duplicated(cols)
    _write(tmp_path / "BTCUSDT-1m-bad.parquet", cols)
    r = scalpd(
        tmp_path,
        "replay",
        "--data",
        "BTCUSDT-1m-bad.parquet",
        "--json",
        env={"SCALPD_DATA__ON_BAD_ROWS": "skip"},
    )
    assert r.rc == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    summary = orjson.loads(r.stdout)
    assert summary["bars"] == N - len(bad)
    # Each dropped row leaves a one-minute hole (row 80 carried minute 79's time: minute 80 is
    # missing too), and the replay treats each as a gap.
    assert summary["gaps"] == len(bad)
    runs = r.runs()
    assert runs == [(summary["run_id"], "completed")]
    assert r.quarantine() == [
        (summary["run_id"], "BTC/USDT", i, int(cols["open_time"][i]), reason)
        for i, reason in sorted(bad)
    ]
    logged = [orjson.loads(line) for line in r.err_lines if line.startswith("{")]
    quarantined = [e for e in logged if e.get("event") == "rows_quarantined"]
    assert len(quarantined) == 1
    assert quarantined[0]["count"] == len(bad)
    assert quarantined[0]["reasons"] == {
        "NaN or infinite value": 2,
        "high below low": 1,
        "duplicate open_time": 1,
    }
