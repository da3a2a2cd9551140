"""BarStore: versioned Parquet datasets, merge, atomic commits, manifest checks, gaps, CLI."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalpd.data.bars import BarColumns, from_arrays
from scalpd.data.cli import add_data_commands
from scalpd.data.parquet import DataError, read_parquet
from scalpd.data.store import MANIFEST_NAME, QUARANTINE_NAME, SCHEMA, BarStore
from tests.conftest import shared_file

MINUTE_MS = 60_000
DS = ("binance", "BTCUSDT", "1m")


def _ms(when: str) -> int:
    return int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp() * 1000)


def make_bars(start_ms: int, n: int, step_ms: int = MINUTE_MS, seed: int = 0) -> BarColumns:
    rng = np.random.default_rng(seed)
    close = 40_000 + np.cumsum(rng.normal(0, 10, n))
    open_ = np.concatenate([[close[0]], close[:-1]])
    volume = rng.uniform(1, 10, n)
    return from_arrays(
        "BTC/USDT",
        {
            "open_time": start_ms + step_ms * np.arange(n, dtype=np.int64),
            "open": open_,
            "high": np.maximum(open_, close) + 5,
            "low": np.minimum(open_, close) - 5,
            "close": close,
            "volume": volume,
            "quote_volume": volume * close,
            "trades": rng.integers(1, 500, n),
            "taker_buy_base": volume / 2,
        },
    )


def assert_bars_equal(a: BarColumns, b: BarColumns) -> None:
    assert a.symbol == b.symbol
    for name in ("open_time", "open", "high", "low", "close", "volume", "quote_volume", "trades"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.taker_buy_volume, b.taker_buy_volume)


def dataset_dir(root: Path) -> Path:
    return root / "binance" / "BTCUSDT" / "1m"


def manifest_json(root: Path) -> dict:
    return orjson.loads((dataset_dir(root) / MANIFEST_NAME).read_bytes())


# -- write / read ------------------------------------------------------------------------------


def test_round_trip_across_a_year_boundary(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    bars = make_bars(_ms("2023-12-31T22:00"), 240)
    tbq = bars.taker_buy_volume * bars.close
    report = store.write(*DS, bars, source="unit", taker_buy_quote=tbq)

    assert (report.rows_in, report.rows_added, report.quarantined, report.conflicts) == (
        240,
        240,
        0,
        0,
    )
    assert report.files_written == ["2023.parquet", "2024.parquet"]
    assert_bars_equal(store.read(*DS), bars)
    np.testing.assert_array_equal(store.read_table(*DS).column("taker_buy_quote").to_numpy(), tbq)

    manifest = manifest_json(tmp_path)
    assert manifest["version"] == report.version and len(report.version) == 64
    assert manifest["symbol"] == "BTC/USDT" and manifest["rows"] == 240
    first = manifest["files"][0]
    assert (first["name"], first["rows"], first["sources"]) == ("2023.parquet", 120, ["unit"])
    assert first["first_open_time_ms"] == _ms("2023-12-31T22:00")
    assert first["last_open_time_ms"] == _ms("2023-12-31T23:59")
    assert store.verify(*DS) == []
    assert store.gaps(*DS) == []
    [info] = store.datasets()
    assert (info.symbol, info.rows, info.files, info.version) == (
        "BTC/USDT",
        240,
        2,
        report.version,
    )


def test_range_read_is_half_open_and_touches_only_needed_files(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    bars = make_bars(_ms("2023-12-31T22:00"), 240)
    store.write(*DS, bars, source="unit")
    start, end = _ms("2023-12-31T23:30"), _ms("2024-01-01T00:30")
    got = store.read(*DS, start_ms=start, end_ms=end)
    assert got.open_time[0] == start and got.open_time[-1] == end - MINUTE_MS and len(got) == 60
    # A range inside 2024 must not need 2023's file.
    (dataset_dir(tmp_path) / "2023.parquet").unlink()
    assert len(store.read(*DS, start_ms=_ms("2024-01-01T00:00"))) == 120
    assert len(store.read(*DS, start_ms=_ms("2030-01-01"))) == 0


def test_year_file_layout_sorted_zstd_weekly_row_groups_with_statistics(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(*DS, make_bars(_ms("2024-01-01"), 3 * 10_080), source="unit")
    meta = pq.ParquetFile(dataset_dir(tmp_path) / "2024.parquet").metadata
    assert pq.read_schema(dataset_dir(tmp_path) / "2024.parquet").equals(SCHEMA)
    assert meta.num_row_groups == 3
    for i in range(meta.num_row_groups):
        column = meta.row_group(i).column(0)
        assert column.compression == "ZSTD"
        assert column.statistics.has_min_max
        assert column.statistics.min == _ms("2024-01-01") + i * 10_080 * MINUTE_MS


def test_merge_with_overlap_keeps_every_bar_once(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    full = make_bars(_ms("2024-03-01"), 150)
    first = store.write(*DS, full.take(slice(0, 100)), source="a")
    second = store.write(*DS, full.take(slice(50, 150)), source="b")
    assert (second.rows_added, second.rows_unchanged, second.conflicts) == (50, 50, 0)
    assert second.version != first.version
    assert_bars_equal(store.read(*DS), full)
    assert manifest_json(tmp_path)["files"][0]["sources"] == ["a", "b"]
    # Writing the same bars again changes nothing, not even the version.
    again = store.write(*DS, full, source="c")
    assert (again.rows_added, again.rows_unchanged, again.files_written) == (0, 150, [])
    assert again.version == second.version
    assert store.verify(*DS) == []


def test_a_different_bar_for_a_stored_minute_is_a_quarantined_conflict(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    changed = make_bars(_ms("2024-03-01"), 12)
    bars = changed.take(np.arange(10))  # an index array copies, a slice would share memory
    store.write(*DS, bars, source="a")
    changed.close[3] += 1.0
    changed.high[3] += 1.0
    report = store.write(*DS, changed, source="b")
    assert (report.rows_added, report.rows_unchanged, report.conflicts) == (2, 9, 1)
    assert store.read(*DS).close[3] == bars.close[3]  # the stored bar wins
    [line] = (dataset_dir(tmp_path) / QUARANTINE_NAME).read_bytes().splitlines()
    record = orjson.loads(line)
    assert record["reason"].startswith("conflicts")
    assert record["source"] == "b"
    assert record["row"]["open_time"] == int(bars.open_time[3])
    assert record["row"]["close"] == changed.close[3]


def test_invalid_rows_are_quarantined_not_stored(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    bars = make_bars(_ms("2024-03-01"), 10)
    bars.low[2] = -1.0  # non-positive price
    bars.open_time[5] = bars.open_time[4]  # duplicate
    report = store.write(*DS, bars, source="bad")
    assert (report.quarantined, report.rows_added) == (2, 8)
    stored = store.read(*DS)
    assert len(stored) == 8 and not np.any(stored.low < 0)
    reasons = [
        orjson.loads(line)["reason"]
        for line in (dataset_dir(tmp_path) / QUARANTINE_NAME).read_bytes().splitlines()
    ]
    assert sorted(reasons) == ["duplicate open_time", "non-positive price"]
    assert store.verify(*DS) == []


def test_input_order_does_not_matter(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    bars = make_bars(_ms("2024-03-01"), 50)
    shuffled = bars.take(np.random.default_rng(1).permutation(50))
    assert store.write(*DS, shuffled, source="x").quarantined == 0
    assert_bars_equal(store.read(*DS), bars)


def test_other_timeframes_check_their_alignment_and_gaps(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    bars = make_bars(_ms("2024-03-01"), 20, step_ms=5 * MINUTE_MS)
    keep = np.ones(20, dtype=bool)
    keep[7:9] = False  # a 15-minute hole: two missing 5m candles
    bars = bars.take(keep)
    bars.open_time[-1] += MINUTE_MS  # not on a 5-minute boundary
    report = store.write("binance", "BTC/USDT", "5m", bars, source="x")
    assert (report.quarantined, report.rows_added) == (1, 17)
    [gap] = store.gaps("binance", "BTCUSDT", "5m")
    assert gap.next_open_time_ms - gap.last_open_time_ms == 15 * MINUTE_MS


@pytest.mark.parametrize(
    ("exchange", "symbol", "timeframe"),
    [
        ("Binance", "BTCUSDT", "1m"),
        ("binance", "../x", "1m"),
        ("binance", "BTCUSDT", "7m"),
        ("binance", "BTCUSDT", "1w"),
        ("binance", "BTCXYZ", "1m"),
    ],
)
def test_bad_dataset_names_are_data_errors(
    tmp_path: Path, exchange: str, symbol: str, timeframe: str
) -> None:
    with pytest.raises(DataError):
        BarStore(tmp_path).write(exchange, symbol, timeframe, make_bars(0, 1), source="x")
    assert not any(tmp_path.rglob("*.parquet"))


def test_reading_a_missing_dataset_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no dataset binance/BTCUSDT/1m"):
        BarStore(tmp_path).read(*DS)


# -- atomicity and verification ----------------------------------------------------------------


def test_crash_between_temp_write_and_rename_leaves_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BarStore(tmp_path)
    old = make_bars(_ms("2024-03-01"), 100)
    before = store.write(*DS, old, source="old")
    manifest_before = (dataset_dir(tmp_path) / MANIFEST_NAME).read_bytes()
    real_replace = os.replace

    def crash(src: object, dst: object) -> None:
        if str(dst).endswith(".parquet"):
            raise OSError("simulated crash before rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.write(*DS, make_bars(_ms("2024-03-01"), 200), source="new")
    monkeypatch.setattr(os, "replace", real_replace)

    assert (dataset_dir(tmp_path) / MANIFEST_NAME).read_bytes() == manifest_before
    assert store.verify(*DS) == []
    assert_bars_equal(store.read(*DS), old)
    assert store.datasets()[0].version == before.version
    # A temp file a real crash leaves behind is ignored by readers and removed by the next write.
    (dataset_dir(tmp_path) / ".tmp-2024.parquet.leftover").write_bytes(b"half a file")
    assert store.verify(*DS) == []
    store.write(*DS, make_bars(_ms("2024-03-01"), 200), source="new")
    assert not list(dataset_dir(tmp_path).glob(".tmp-*"))
    assert len(store.read(*DS)) == 200 and store.verify(*DS) == []


def test_manifest_sha256_detects_a_flipped_byte(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(*DS, make_bars(_ms("2024-03-01"), 2000), source="x")
    path = dataset_dir(tmp_path) / "2024.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = store.verify(*DS)
    assert any("sha256 does not match" in p for p in problems), problems
    with pytest.raises(DataError, match="does not match its manifest"):
        store.write(*DS, make_bars(_ms("2024-04-01"), 10), source="y")


def test_verify_finds_missing_and_unlisted_files(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(*DS, make_bars(_ms("2023-12-31T23:00"), 120), source="x")
    directory = dataset_dir(tmp_path)
    (directory / "2023.parquet").rename(directory / "2019.parquet")
    problems = store.verify(*DS)
    assert any(p.endswith("2023.parquet: missing") for p in problems), problems
    assert any("2019.parquet: not listed" in p for p in problems), problems


def _rewrite_behind_the_manifest(root: Path, table: pa.Table, **changes: object) -> None:
    """Replace 2024.parquet with `table` and record its new sha256, as a buggy writer would."""
    import hashlib

    directory = dataset_dir(root)
    pq.write_table(table, directory / "2024.parquet")
    manifest = manifest_json(root)
    entry = manifest["files"][0]
    entry["sha256"] = hashlib.sha256((directory / "2024.parquet").read_bytes()).hexdigest()
    entry.update(changes)
    (directory / MANIFEST_NAME).write_bytes(orjson.dumps(manifest))


def test_verify_finds_unsorted_and_duplicate_times_and_count_mismatch(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(*DS, make_bars(_ms("2024-03-01"), 10), source="x")
    table = store.read_table(*DS)
    order = [0, 1, 2, 2, 4, 3, 5, 6, 7, 8, 9]  # a duplicate and a step back
    _rewrite_behind_the_manifest(tmp_path, table.take(order))
    problems = store.verify(*DS)
    assert any("duplicate open_time" in p for p in problems), problems
    assert any("not sorted" in p for p in problems), problems
    assert any("11 rows, manifest says 10" in p for p in problems), problems
    assert any("version id does not match" in p for p in problems), problems


def test_verify_finds_first_last_mismatch(tmp_path: Path) -> None:
    store = BarStore(tmp_path)
    store.write(*DS, make_bars(_ms("2024-03-01"), 10), source="x")
    table = store.read_table(*DS)
    _rewrite_behind_the_manifest(tmp_path, table, last_open_time_ms=_ms("2024-03-02"))
    assert any("spans" in p for p in store.verify(*DS))


# -- real data ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("year", "gaps", "missing"), [(2020, 8, 1274), (2021, 6, 993), (2023, 1, 80)]
)
def test_gaps_on_real_data_match_the_readme(
    tmp_path: Path, year: int, gaps: int, missing: int
) -> None:
    path = shared_file(f"binance-spot/BTCUSDT-1m-{year}.parquet")
    store = BarStore(tmp_path)
    report = store.write(*DS, read_parquet(path), source=path.name)
    assert report.quarantined == 0
    found = store.gaps(*DS)
    assert (len(found), sum(g.missing_bars for g in found)) == (gaps, missing)
    assert store.verify(*DS) == []


# -- CLI ---------------------------------------------------------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="scalpd")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_list_verify_gaps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = BarStore(tmp_path)
    bars = make_bars(_ms("2024-03-01"), 100)
    store.write(*DS, bars.take(np.r_[0:40, 45:100]), source="x")
    root = ["--root", str(tmp_path)]

    code, out, _ = run_cli(["data", "list", *root], capsys)
    assert code == 0 and "binance/BTCUSDT/1m" in out and "95 rows" in out
    code, out, _ = run_cli(["data", "list", *root, "--json"], capsys)
    assert orjson.loads(out)["datasets"][0]["rows"] == 95

    code, out, _ = run_cli(["data", "gaps", *root, "--json"], capsys)
    assert code == 0 and orjson.loads(out)["datasets"][0]["missing_bars"] == 5
    code, out, _ = run_cli(["data", "gaps", *root, "--symbol", "BTC/USDT"], capsys)
    assert "1 gap(s), 5 missing" in out

    assert run_cli(["data", "verify", *root], capsys)[0] == 0
    (dataset_dir(tmp_path) / "2024.parquet").unlink()
    code, out, err = run_cli(["data", "verify", *root, "--json"], capsys)
    assert code == 1 and orjson.loads(out)["ok"] is False
    assert err.startswith("scalpd: error: verify found 1 problem")

    with pytest.raises(DataError, match="no matching dataset"):
        run_cli(["data", "verify", *root, "--symbol", "ETHUSDT"], capsys)
