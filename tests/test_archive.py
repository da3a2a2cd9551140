"""Binance archive import: CSV or zip, header or not, ms or µs, and bad input leaves nothing."""

from __future__ import annotations

import argparse
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from scalpd.data.archive import import_archive, parse_archive_file
from scalpd.data.cli import add_data_commands
from scalpd.data.parquet import DataError
from scalpd.data.store import BarStore

MINUTE_MS = 60_000
HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore"
)


def _ms(when: str) -> int:
    return int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp() * 1000)


def kline_rows(start_ms: int, n: int, unit: int = 1) -> list[list[str]]:
    """Rows as Binance writes them; `unit` 1000 gives the 2025+ microsecond timestamps."""
    rows = []
    for i in range(n):
        t = start_ms + i * MINUTE_MS
        o, c = 60_000 + i, 60_000.5 + i
        rows.append(
            [
                str(t * unit),
                f"{o:.8f}",
                f"{c + 2:.8f}",
                f"{o - 2:.8f}",
                f"{c:.8f}",
                "1.50000000",
                str((t + MINUTE_MS) * unit - 1),
                f"{1.5 * c:.8f}",
                str(10 + i),
                "0.70000000",
                f"{0.7 * c:.8f}",
                "0",
            ]
        )
    return rows


def write_csv(path: Path, rows: list[list[str]], header: bool = False) -> Path:
    lines = ([HEADER] if header else []) + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_zip(path: Path, rows: list[list[str]], header: bool = False) -> Path:
    csv = write_csv(path.parent / (path.stem + ".csv.tmp"), rows, header)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(csv, path.stem + ".csv")
    csv.unlink()
    return path


def assert_store_empty(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.is_file() and p.name != ".lock"]


@pytest.fixture
def store(tmp_path: Path) -> BarStore:
    return BarStore(tmp_path / "store")


# -- good input --------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [False, True])
def test_csv_with_and_without_header(tmp_path: Path, store: BarStore, header: bool) -> None:
    path = write_csv(tmp_path / "BTCUSDT-1m-2024-03.csv", kline_rows(_ms("2024-03-01"), 30), header)
    report = import_archive([path], store)
    assert (report.rows_read, report.rows_added, report.quarantined) == (30, 30, 0)
    bars = store.read("binance", "BTCUSDT", "1m")
    assert bars.symbol == "BTC/USDT" and len(bars) == 30
    assert bars.open_time[0] == _ms("2024-03-01") and bars.open[1] == 60_001.0
    assert bars.close[2] == 60_002.5 and bars.trades[3] == 13 and bars.taker_buy_volume[0] == 0.7
    table = store.read_table("binance", "BTCUSDT", "1m", columns=["taker_buy_quote"])
    assert table.column(0).to_numpy()[0] == pytest.approx(0.7 * 60_000.5)
    assert store.verify("binance", "BTCUSDT", "1m") == []


def test_zip_and_microsecond_timestamps_give_the_same_bars(tmp_path: Path) -> None:
    start = _ms("2025-01-01")
    ms_csv = write_csv(tmp_path / "ETHUSDT-1m-2025-01-01.csv", kline_rows(start, 20))
    us_zip = write_zip(tmp_path / "ETHUSDT-1m-2025-01-01.zip", kline_rows(start, 20, unit=1000))
    a, b = BarStore(tmp_path / "a"), BarStore(tmp_path / "b")
    import_archive([ms_csv], a)
    import_archive([us_zip], b)
    bars_a, bars_b = a.read("binance", "ETHUSDT", "1m"), b.read("binance", "ETHUSDT", "1m")
    assert bars_a.open_time[0] == start
    np.testing.assert_array_equal(bars_a.open_time, bars_b.open_time)
    np.testing.assert_array_equal(bars_a.close, bars_b.close)


def test_overlapping_daily_and_monthly_files_store_each_bar_once(
    tmp_path: Path, store: BarStore
) -> None:
    start = _ms("2024-03-01")
    monthly = write_zip(tmp_path / "BTCUSDT-1m-2024-03.zip", kline_rows(start, 120))
    daily = write_csv(tmp_path / "BTCUSDT-1m-2024-03-01.csv", kline_rows(start, 60), header=True)
    later = write_csv(
        tmp_path / "BTCUSDT-1m-2024-03-02.csv", kline_rows(start + 120 * MINUTE_MS, 5)
    )
    report = import_archive([daily, monthly, later], store)
    assert (report.rows_read, report.duplicates_in_input, report.rows_added) == (185, 60, 125)
    assert report.quarantined == 0 and report.conflicts == 0
    assert len(store.read("binance", "BTCUSDT", "1m")) == 125
    # Importing again adds nothing and keeps the version.
    again = import_archive([monthly], store)
    assert again.rows_added == 0 and again.writes[0].version == report.writes[0].version


def test_symbol_and_timeframe(tmp_path: Path, store: BarStore) -> None:
    rows = kline_rows(_ms("2024-03-01"), 12)[::5]  # 5-minute steps
    path = write_csv(tmp_path / "klines-5m-2024-03.csv", rows)
    import_archive([path], store, exchange="binance", symbol="SOL/USDT")
    [info] = store.datasets()
    assert (info.symbol, info.timeframe, info.rows) == ("SOL/USDT", "5m", 3)
    assert parse_archive_file(path, "SOLUSDT").symbol == "SOL/USDT"


def test_bad_rows_inside_a_good_file_are_quarantined(tmp_path: Path, store: BarStore) -> None:
    rows = kline_rows(_ms("2024-03-01"), 10)
    rows[4][3] = "-1"  # low below zero
    report = import_archive([write_csv(tmp_path / "BTCUSDT-1m-2024-03.csv", rows)], store)
    assert (report.rows_added, report.quarantined) == (9, 1)
    quarantine = Path(report.writes[0].quarantine_path or "")
    assert orjson.loads(quarantine.read_bytes().splitlines()[0])["reason"] == "non-positive price"


# -- bad input: a one-line DataError and an untouched store -----------------------------------


def _bad_wrong_columns(d: Path) -> Path:
    rows = kline_rows(_ms("2024-03-01"), 5)
    rows[2] = rows[2][:11]
    return write_csv(d / "BTCUSDT-1m-2024-03.csv", rows)


def _bad_non_numeric(d: Path) -> Path:
    rows = kline_rows(_ms("2024-03-01"), 5)
    rows[3][4] = "abc"
    return write_csv(d / "BTCUSDT-1m-2024-03.csv", rows)


def _bad_empty_field(d: Path) -> Path:
    rows = kline_rows(_ms("2024-03-01"), 5)
    rows[3][8] = ""
    return write_csv(d / "BTCUSDT-1m-2024-03.csv", rows)


def _bad_corrupt_zip(d: Path) -> Path:
    path = write_zip(d / "BTCUSDT-1m-2024-03.zip", kline_rows(_ms("2024-03-01"), 50))
    data = bytearray(path.read_bytes())
    data[120:140] = b"\0" * 20  # inside the compressed data: a CRC or inflate error
    path.write_bytes(bytes(data))
    return path


def _bad_not_a_zip(d: Path) -> Path:
    path = d / "BTCUSDT-1m-2024-03.zip"
    path.write_bytes(b"this is not a zip file")
    return path


def _bad_symbol(d: Path) -> Path:
    return write_csv(d / "klines-1m-2024-03.csv", kline_rows(_ms("2024-03-01"), 5))


def _bad_timeframe(d: Path) -> Path:
    return write_csv(d / "BTCUSDT-1w-2024-03.csv", kline_rows(_ms("2024-03-01"), 5))


def _bad_seconds(d: Path) -> Path:
    rows = kline_rows(_ms("2024-03-01"), 5)
    for r in rows:
        r[0] = str(int(r[0]) // 1000)
    return write_csv(d / "BTCUSDT-1m-2024-03.csv", rows)


def _bad_empty(d: Path) -> Path:
    path = d / "BTCUSDT-1m-2024-03.csv"
    path.write_text("")
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_bad_wrong_columns, "12-column numeric"),
        (_bad_non_numeric, "12-column numeric"),
        (_bad_empty_field, "12-column numeric"),
        (_bad_corrupt_zip, "corrupt zip"),
        (_bad_not_a_zip, "corrupt zip"),
        (_bad_symbol, "cannot tell the symbol"),
        (_bad_timeframe, "unsupported timeframe"),
        (_bad_seconds, "neither ms nor µs"),
        (_bad_empty, "empty file"),
    ],
)
def test_bad_input_is_one_data_error_and_nothing_is_stored(
    tmp_path: Path, store: BarStore, make, message: str
) -> None:
    good_dir, bad_dir = tmp_path / "good", tmp_path / "bad"
    good_dir.mkdir()
    bad_dir.mkdir()
    good = write_csv(good_dir / "BTCUSDT-1m-2024-02.csv", kline_rows(_ms("2024-02-01"), 10))
    bad = make(bad_dir)
    with pytest.raises(DataError, match=message) as caught:
        import_archive([good, bad], store)  # the good file first: it must not be stored either
    assert "\n" not in str(caught.value)
    assert_store_empty(store.root)


def test_bad_input_leaves_an_existing_dataset_at_its_version(
    tmp_path: Path, store: BarStore
) -> None:
    good = write_csv(tmp_path / "BTCUSDT-1m-2024-02.csv", kline_rows(_ms("2024-02-01"), 10))
    version = import_archive([good], store).writes[0].version
    more = write_csv(tmp_path / "BTCUSDT-1m-2024-03.csv", kline_rows(_ms("2024-03-01"), 10))
    (tmp_path / "bad").mkdir()
    bad = _bad_non_numeric(tmp_path / "bad")
    with pytest.raises(DataError):
        import_archive([more, bad], store)
    [info] = store.datasets()
    assert (info.version, info.rows) == (version, 10)
    assert store.verify("binance", "BTCUSDT", "1m") == []


def test_zip_with_two_csv_files_is_rejected(tmp_path: Path, store: BarStore) -> None:
    path = tmp_path / "BTCUSDT-1m-2024-03.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.csv", "1,2\n")
        archive.writestr("b.csv", "1,2\n")
    with pytest.raises(DataError, match="expected one .csv inside, found 2"):
        import_archive([path], store)


def test_cli_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_csv(tmp_path / "BTCUSDT-1m-2024-03.csv", kline_rows(_ms("2024-03-01"), 30))
    parser = argparse.ArgumentParser(prog="scalpd")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    root = str(tmp_path / "store")
    args = parser.parse_args(["data", "import", str(path), "--root", root, "--json"])
    assert args.func(args) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["rows_added"] == 30 and out["writes"][0]["dataset"] == "binance/BTCUSDT/1m"
    args = parser.parse_args(["data", "import", str(path), "--root", root])
    assert args.func(args) == 0
    assert "+0 rows, 30 already stored" in capsys.readouterr().out
