"""Import Binance public-archive kline files (data.binance.vision) into a BarStore.

A file is `BTCUSDT-1m-2024-03.csv` (monthly) or `BTCUSDT-1m-2024-03-05.csv` (daily), or a
`.zip` holding that CSV: 12 columns, no header in the archive (a header line is accepted).
Spot files switched their timestamps to microseconds on 2025-01-01; both units are accepted.

Every file is parsed and checked before anything is written, so bad input raises a one-line
DataError and leaves the store as it was. Bad values inside good files (a negative price) are
not errors: the store quarantines those rows.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from scalpd.data.bars import BarColumns, from_arrays, symbol_from_filename
from scalpd.data.parquet import DataError
from scalpd.data.store import BarStore, WriteReport, display_symbol, symbol_dir, timeframe_minutes

ARCHIVE_COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_base",
    "taker_buy_quote",
    "ignore",
)
_INT_COLUMNS = ("open_time", "close_time", "count")
_KEPT = tuple(c for c in ARCHIVE_COLUMNS if c not in ("close_time", "ignore"))
# Any real open time in ms is below this (year 5138); in µs, any after 1973 is above it.
_US_THRESHOLD = 10**14
_MS_MINIMUM = 10**11  # 1973: smaller values are seconds, or garbage


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    """One parsed archive file, ready to store."""

    name: str
    symbol: str  # display form, e.g. BTC/USDT
    timeframe: str
    bars: BarColumns
    taker_buy_quote: np.ndarray


@dataclass(slots=True)
class ImportReport:
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    duplicates_in_input: int = 0  # identical rows in overlapping files, stored once
    writes: list[WriteReport] = field(default_factory=list)

    @property
    def rows_added(self) -> int:
        return sum(w.rows_added for w in self.writes)

    @property
    def quarantined(self) -> int:
        return sum(w.quarantined for w in self.writes)

    @property
    def conflicts(self) -> int:
        return sum(w.conflicts for w in self.writes)


def import_archive(
    paths: Iterable[Path],
    store: BarStore,
    exchange: str = "binance",
    symbol: str | None = None,
) -> ImportReport:
    """Parse every file first, then write one merge per dataset (symbol, timeframe)."""
    parsed = [parse_archive_file(Path(p), symbol) for p in paths]
    if not parsed:
        raise DataError("no archive files given")
    report = ImportReport(
        files=[f.name for f in parsed], rows_read=sum(len(f.bars) for f in parsed)
    )
    groups: dict[tuple[str, str], list[ArchiveFile]] = {}
    for f in parsed:
        groups.setdefault((symbol_dir(f.symbol), f.timeframe), []).append(f)
    for (_, timeframe), files in sorted(groups.items()):
        bars, taker_buy_quote, dropped = _join(files)
        report.duplicates_in_input += dropped
        report.writes.append(
            store.write(
                exchange,
                files[0].symbol,
                timeframe,
                bars,
                _source(files),
                taker_buy_quote=taker_buy_quote,
            )
        )
    return report


def parse_archive_file(path: Path, symbol: str | None = None) -> ArchiveFile:
    """Read one .csv or .zip archive file; raise DataError on anything not a kline file."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".zip"):
        raise DataError(f"{path.name}: expected a Binance kline .csv or .zip file")
    stem = path.name[: -len(suffix)]
    parts = stem.split("-")
    if len(parts) < 2:
        raise DataError(f"{path.name}: name it like BTCUSDT-1m-2024-03{suffix}")
    timeframe = parts[1]
    try:
        timeframe_minutes(timeframe)
    except DataError as exc:
        raise DataError(f"{path.name}: {exc}") from None
    if symbol is not None:
        pair = display_symbol(symbol)
    else:
        found = symbol_from_filename(stem)
        if found is None:
            raise DataError(
                f"cannot tell the symbol of {path.name}; name it like BTCUSDT-1m-2024-03{suffix} "
                "or pass --symbol"
            )
        pair = found
    if not path.is_file():
        raise DataError(f"archive file not found: {path}")
    data = _read_zip(path) if suffix == ".zip" else path.read_bytes()
    bars, taker_buy_quote = _parse_csv(path.name, data, pair)
    return ArchiveFile(path.name, pair, timeframe, bars, taker_buy_quote)


def _read_zip(path: Path) -> bytes:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m.lower().endswith(".csv")]
            if len(members) != 1:
                raise DataError(f"{path.name}: expected one .csv inside, found {len(members)}")
            return archive.read(members[0])
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise DataError(f"{path.name}: corrupt zip file: {_one_line(exc)}") from None


def _has_header(data: bytes) -> bool:
    first = data.lstrip()[:64].split(b",", 1)[0].strip()
    return bool(first) and not first.lstrip(b"-").isdigit()


def _parse_csv(name: str, data: bytes, symbol: str) -> tuple[BarColumns, np.ndarray]:
    if not data.strip():
        raise DataError(f"{name}: empty file")
    types = {c: (pa.int64() if c in _INT_COLUMNS else pa.float64()) for c in ARCHIVE_COLUMNS[:-1]}
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(
                column_names=list(ARCHIVE_COLUMNS), skip_rows=1 if _has_header(data) else 0
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                include_columns=list(_KEPT),
                null_values=[],  # an empty field is an error, not a silent NaN
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise DataError(f"{name}: not a 12-column numeric kline file: {_one_line(exc)}") from None
    if table.num_rows == 0:
        raise DataError(f"{name}: no rows")
    cols = {c: table.column(c).to_numpy() for c in _KEPT}
    cols["open_time"] = _to_ms(name, cols["open_time"])
    cols["trades"] = cols.pop("count")
    taker_buy_quote = cols.pop("taker_buy_quote")
    return from_arrays(symbol, cols), taker_buy_quote


def _to_ms(name: str, open_time: np.ndarray) -> np.ndarray:
    """Microsecond timestamps (spot files from 2025 on) to milliseconds; check the range."""
    is_us = open_time >= _US_THRESHOLD
    ms = np.where(is_us, open_time // 1000, open_time)
    if np.any(is_us & (open_time % 1000 != 0)):
        raise DataError(f"{name}: microsecond open_time not on a millisecond")
    if np.any(ms < _MS_MINIMUM):
        bad = int(open_time[np.argmax(ms < _MS_MINIMUM)])
        raise DataError(f"{name}: open_time {bad} is neither ms nor µs since the epoch")
    return ms


def _join(files: list[ArchiveFile]) -> tuple[BarColumns, np.ndarray, int]:
    """Concatenate, sort by open time and drop rows identical to the row before (overlapping
    daily and monthly files); different rows for one minute are left for validation."""
    fields = [f.name for f in dataclasses.fields(BarColumns) if f.name != "symbol"]
    cols = {f: np.concatenate([getattr(x.bars, f) for x in files]) for f in fields}
    cols["taker_buy_quote"] = np.concatenate([x.taker_buy_quote for x in files])
    order = np.argsort(cols["open_time"], kind="stable")
    cols = {f: v[order] for f, v in cols.items()}
    same = np.zeros(len(order), dtype=bool)
    if len(order) > 1:
        same[1:] = True
        for v in cols.values():
            a, b = v[1:], v[:-1]
            eq = (a == b) | (np.isnan(a) & np.isnan(b)) if v.dtype.kind == "f" else a == b
            same[1:] &= eq
    keep = ~same
    bars = BarColumns(files[0].symbol, *(cols[f][keep] for f in fields))
    return bars, cols["taker_buy_quote"][keep], int(same.sum())


def _source(files: list[ArchiveFile]) -> str:
    names = sorted(f.name for f in files)
    if len(names) <= 3:
        return "archive: " + ", ".join(names)
    return f"archive: {names[0]} .. {names[-1]} ({len(names)} files)"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
