"""A versioned Parquet store of bars: `root/<exchange>/<SYMBOL>/<timeframe>/<year>.parquet`.

Each dataset directory holds one file per UTC year, a `manifest.json` naming every file with
its row count, first/last open time, sha256 and sources, and a version id derived from those
entries, so a backtest can name the exact data it ran on and `verify` can prove it is intact.

Writes merge with what is stored (a stored bar wins; a different value for the same minute is
quarantined as a conflict), replace each touched year file atomically and then the manifest.
A crash between the two leaves a file whose sha256 no longer matches: `verify` reports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from scalpd.data.bars import BarColumns, symbol_from_filename, validate
from scalpd.data.parquet import DataError
from scalpd.events import BAR_INTERVAL_MS, Gap

MANIFEST_NAME = "manifest.json"
QUARANTINE_NAME = "quarantine.jsonl"
MANIFEST_FORMAT = 1
_TMP_PREFIX = ".tmp-"
_DAY_MS = 86_400_000
_WEEK_MS = 7 * _DAY_MS
_MIN_ROW_GROUP_ROWS = 1024

FLOAT_COLUMNS = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "taker_buy_base",
    "taker_buy_quote",
)
SCHEMA = pa.schema(
    [
        ("open_time", pa.int64()),
        *((name, pa.float64()) for name in FLOAT_COLUMNS[:6]),
        ("trades", pa.int64()),
        *((name, pa.float64()) for name in FLOAT_COLUMNS[6:]),
    ]
)
COLUMNS = tuple(SCHEMA.names)
# BarColumns field -> stored column; taker_buy_quote has no BarColumns field (see write()).
_FIELD_TO_COLUMN = {
    "open_time": "open_time",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "volume": "volume",
    "quote_volume": "quote_volume",
    "trades": "trades",
    "taker_buy_volume": "taker_buy_base",
}

_EXCHANGE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SYMBOL_DIR_RE = re.compile(r"[A-Z0-9]+")
_TIMEFRAME_RE = re.compile(r"([1-9][0-9]*)([mhd])")
_UNIT_MINUTES = {"m": 1, "h": 60, "d": 1440}

Columns = dict[str, np.ndarray]


def timeframe_minutes(timeframe: str) -> int:
    """'1m' -> 1, '1h' -> 60, '1d' -> 1440; only periods that tile a UTC day, as exchanges use."""
    match = _TIMEFRAME_RE.fullmatch(timeframe)
    minutes = int(match.group(1)) * _UNIT_MINUTES[match.group(2)] if match else 0
    if not minutes or 1440 % minutes:
        raise DataError(f"unsupported timeframe {timeframe!r}: use e.g. 1m, 5m, 15m, 1h, 4h, 1d")
    return minutes


def symbol_dir(symbol: str) -> str:
    """'BTC/USDT' or 'btcusdt' -> 'BTCUSDT' (the directory name)."""
    name = symbol.replace("/", "").upper()
    if not _SYMBOL_DIR_RE.fullmatch(name):
        raise DataError(f"bad symbol {symbol!r}: use e.g. BTCUSDT or BTC/USDT")
    return name


def display_symbol(symbol: str) -> str:
    """'BTCUSDT' -> 'BTC/USDT', the form the engine uses; 'BTC/USDT' is kept."""
    if "/" in symbol:
        base, _, quote = symbol.upper().partition("/")
        symbol_dir(base + quote)
        return f"{base}/{quote}"
    pair = symbol_from_filename(symbol_dir(symbol))
    if pair is None:
        raise DataError(f"cannot tell base and quote of {symbol!r}: write it as BASE/QUOTE")
    return pair


@dataclass(frozen=True, slots=True)
class DatasetKey:
    exchange: str
    symbol: str  # directory form, e.g. BTCUSDT
    timeframe: str

    @classmethod
    def of(cls, exchange: str, symbol: str, timeframe: str) -> DatasetKey:
        if not _EXCHANGE_RE.fullmatch(exchange):
            raise DataError(f"bad exchange name {exchange!r}: use lower case, e.g. binance")
        timeframe_minutes(timeframe)
        return cls(exchange, symbol_dir(symbol), timeframe)

    def __str__(self) -> str:
        return f"{self.exchange}/{self.symbol}/{self.timeframe}"


@dataclass(frozen=True, slots=True)
class FileEntry:
    name: str  # e.g. "2024.parquet"
    rows: int
    first_open_time_ms: int
    last_open_time_ms: int
    sha256: str
    sources: tuple[str, ...]
    written_at: str

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rows": self.rows,
            "first_open_time_ms": self.first_open_time_ms,
            "last_open_time_ms": self.last_open_time_ms,
            "sha256": self.sha256,
            "sources": list(self.sources),
            "written_at": self.written_at,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FileEntry:
        return cls(
            str(raw["name"]),
            int(raw["rows"]),
            int(raw["first_open_time_ms"]),
            int(raw["last_open_time_ms"]),
            str(raw["sha256"]),
            tuple(raw["sources"]),
            str(raw["written_at"]),
        )


def dataset_version(files: list[FileEntry]) -> str:
    """sha256 over what identifies the content (not when or from where it was written)."""
    ident = [
        [f.name, f.rows, f.first_open_time_ms, f.last_open_time_ms, f.sha256]
        for f in sorted(files, key=lambda f: f.name)
    ]
    return hashlib.sha256(orjson.dumps(ident)).hexdigest()


@dataclass(frozen=True, slots=True)
class Manifest:
    exchange: str
    symbol: str  # display form, e.g. BTC/USDT
    timeframe: str
    files: tuple[FileEntry, ...]
    version: str
    updated_at: str

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def as_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "exchange": self.exchange,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "version": self.version,
            "updated_at": self.updated_at,
            "rows": self.rows,
            "files": [f.as_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Manifest:
        files = tuple(FileEntry.from_json(f) for f in raw["files"])
        return cls(
            str(raw["exchange"]),
            str(raw["symbol"]),
            str(raw["timeframe"]),
            files,
            str(raw["version"]),
            str(raw["updated_at"]),
        )


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    exchange: str
    symbol: str  # display form
    timeframe: str
    files: int
    rows: int
    first_open_time_ms: int | None
    last_open_time_ms: int | None
    version: str


@dataclass(slots=True)
class WriteReport:
    dataset: str
    source: str
    rows_in: int = 0
    rows_added: int = 0
    rows_unchanged: int = 0  # identical to a stored bar: nothing to do
    conflicts: int = 0  # same open time as a stored bar, different values: quarantined
    quarantined: int = 0  # failed validation: quarantined
    files_written: list[str] = field(default_factory=list)
    version: str = ""
    quarantine_path: str | None = None


class BarStore:
    """Bars on disk, one dataset per (exchange, symbol, timeframe); see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- paths and manifests -------------------------------------------------------------------

    def dataset_dir(self, exchange: str, symbol: str, timeframe: str) -> Path:
        key = DatasetKey.of(exchange, symbol, timeframe)
        return self.root / key.exchange / key.symbol / key.timeframe

    def manifest(self, exchange: str, symbol: str, timeframe: str) -> Manifest | None:
        """The dataset's manifest, None when the dataset does not exist."""
        path = self.dataset_dir(exchange, symbol, timeframe) / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            return Manifest.from_json(orjson.loads(path.read_bytes()))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path} is not a valid manifest: {exc}") from None

    def _require_manifest(self, exchange: str, symbol: str, timeframe: str) -> Manifest:
        found = self.manifest(exchange, symbol, timeframe)
        if found is None:
            key = DatasetKey.of(exchange, symbol, timeframe)
            raise DataError(f"no dataset {key} under {self.root}")
        return found

    def datasets(self) -> list[DatasetInfo]:
        """Every dataset under the root, sorted by exchange, symbol, timeframe."""
        out = []
        for path in sorted(self.root.glob(f"*/*/*/{MANIFEST_NAME}")):
            tf_dir = path.parent
            m = self.manifest(tf_dir.parent.parent.name, tf_dir.parent.name, tf_dir.name)
            if m is None:
                continue
            out.append(
                DatasetInfo(
                    m.exchange,
                    m.symbol,
                    m.timeframe,
                    len(m.files),
                    m.rows,
                    m.files[0].first_open_time_ms if m.files else None,
                    m.files[-1].last_open_time_ms if m.files else None,
                    m.version,
                )
            )
        return out

    # -- write ---------------------------------------------------------------------------------

    def write(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        bars: BarColumns,
        source: str,
        taker_buy_quote: np.ndarray | None = None,
    ) -> WriteReport:
        """Validate `bars`, merge them into the dataset, and commit touched files atomically.

        `taker_buy_quote` (one value per row of `bars`) is stored when given, NaN otherwise:
        BarColumns has no field for it. Rows are sorted by open time first, so input order does
        not matter; bad rows and conflicts go to `quarantine.jsonl` with their reason.
        """
        key = DatasetKey.of(exchange, symbol, timeframe)
        tf_ms = timeframe_minutes(timeframe) * BAR_INTERVAL_MS
        pair = display_symbol(symbol)
        report = WriteReport(str(key), source, rows_in=len(bars))
        incoming = _columns_of(bars, taker_buy_quote)
        order = np.argsort(incoming["open_time"], kind="stable")
        incoming = {name: col[order] for name, col in incoming.items()}
        clean, rejects = _validate_columns(pair, incoming, tf_ms)
        report.quarantined = len(rejects["reason"])

        directory = self.dataset_dir(exchange, symbol, timeframe)
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory / ".lock"):
            _remove_stale_temp_files(directory)
            manifest = self.manifest(exchange, symbol, timeframe)
            entries = {f.name: f for f in manifest.files} if manifest else {}
            years = _years(clean["open_time"])
            written: list[tuple[str, Path, FileEntry]] = []
            conflict_parts: list[Columns] = []
            try:
                for year in np.unique(years):
                    name = f"{int(year)}.parquet"
                    part = {c: v[years == year] for c, v in clean.items()}
                    stored = _read_checked(directory / name, entries.get(name))
                    merged, added, unchanged, conflicts = _merge(stored, part)
                    report.rows_added += added
                    report.rows_unchanged += unchanged
                    report.conflicts += len(conflicts["open_time"])
                    conflict_parts.append(conflicts)
                    if added:
                        tmp = _write_temp(directory, name, merged, tf_ms)
                        sources = _add_source(entries.get(name), source)
                        written.append((name, tmp, _entry_for(name, tmp, merged, sources)))
                for name, tmp, _ in written:
                    os.replace(tmp, directory / name)
                _fsync_dir(directory)
            finally:
                for _, tmp, _ in written:
                    tmp.unlink(missing_ok=True)
            if written:
                for name, _, entry in written:
                    entries[name] = entry
                manifest = _make_manifest(key, pair, list(entries.values()))
                _write_bytes_atomic(
                    directory / MANIFEST_NAME,
                    orjson.dumps(manifest.as_json(), option=orjson.OPT_INDENT_2),
                )
            report.files_written = [name for name, _, _ in written]
            report.version = manifest.version if manifest else ""
            # Quarantine after the commit: a failed write leaves no trace behind in the store.
            conflicts_all = _concat_columns(conflict_parts)
            if report.quarantined or report.conflicts:
                report.quarantine_path = str(directory / QUARANTINE_NAME)
                _append_quarantine(directory / QUARANTINE_NAME, source, rejects, conflicts_all)
        return report

    # -- read ----------------------------------------------------------------------------------

    def read_table(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Rows opening in [start_ms, end_ms) as an Arrow table (all stored columns by default).

        Only the year files overlapping the range are opened and, inside them, row-group
        statistics on open_time skip the rest.
        """
        manifest = self._require_manifest(exchange, symbol, timeframe)
        directory = self.dataset_dir(exchange, symbol, timeframe)
        lo = -(2**63) if start_ms is None else start_ms
        hi = 2**63 - 1 if end_ms is None else end_ms
        wanted = [
            f for f in manifest.files if f.last_open_time_ms >= lo and f.first_open_time_ms < hi
        ]
        columns = list(columns or COLUMNS)
        if not wanted:
            return SCHEMA.empty_table().select(columns)
        paths = [str(directory / f.name) for f in wanted]
        for path in paths:
            if not os.path.isfile(path):
                raise DataError(f"{path} is listed in the manifest but missing; run data verify")
        dataset = pads.dataset(paths, schema=SCHEMA, format="parquet")
        cut = None
        if start_ms is not None and wanted[0].first_open_time_ms < start_ms:
            cut = pc.field("open_time") >= start_ms
        if end_ms is not None and wanted[-1].last_open_time_ms >= end_ms:
            below = pc.field("open_time") < end_ms
            cut = below if cut is None else cut & below
        try:
            return dataset.to_table(columns=columns, filter=cut, use_threads=True)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{directory} could not be read: {_one_line(exc)}") from None

    def read(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> BarColumns:
        """Bars opening in [start_ms, end_ms), sorted; validated when they were written."""
        manifest = self._require_manifest(exchange, symbol, timeframe)
        table = self.read_table(
            exchange, symbol, timeframe, start_ms, end_ms, list(_FIELD_TO_COLUMN.values())
        )
        arrays = [table.column(column).to_numpy() for column in _FIELD_TO_COLUMN.values()]
        return BarColumns(manifest.symbol, *arrays)

    # -- checks --------------------------------------------------------------------------------

    def gaps(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[Gap]:
        """Missing bars inside the dataset (or the range). For timeframes above 1m a Gap's
        `missing_bars` counts minutes, as Gap is defined on 1m bars."""
        tf_ms = timeframe_minutes(timeframe) * BAR_INTERVAL_MS
        if tf_ms == BAR_INTERVAL_MS:
            return self.read(exchange, symbol, timeframe, start_ms, end_ms).gaps()
        manifest = self._require_manifest(exchange, symbol, timeframe)
        table = self.read_table(exchange, symbol, timeframe, start_ms, end_ms, ["open_time"])
        ot = table.column("open_time").to_numpy()
        where = np.flatnonzero(np.diff(ot) != tf_ms)
        return [Gap(manifest.symbol, int(ot[i]), int(ot[i + 1])) for i in where]

    def verify(self, exchange: str, symbol: str, timeframe: str) -> list[str]:
        """Problems found in the dataset; an empty list means it matches its manifest."""
        directory = self.dataset_dir(exchange, symbol, timeframe)
        try:
            manifest = self._require_manifest(exchange, symbol, timeframe)
        except DataError as exc:
            return [str(exc)]
        problems: list[str] = []
        if dataset_version(list(manifest.files)) != manifest.version:
            problems.append(f"{directory / MANIFEST_NAME}: version id does not match its files")
        tf_ms = timeframe_minutes(timeframe) * BAR_INTERVAL_MS
        listed = set()
        for entry in manifest.files:
            listed.add(entry.name)
            problems.extend(_verify_file(directory / entry.name, entry, tf_ms))
        for path in sorted(directory.glob("*.parquet")):
            if path.name not in listed:
                problems.append(f"{path}: not listed in the manifest")
        return problems


# -- helpers ---------------------------------------------------------------------------------


def _columns_of(bars: BarColumns, taker_buy_quote: np.ndarray | None) -> Columns:
    cols = {column: np.asarray(getattr(bars, f)) for f, column in _FIELD_TO_COLUMN.items()}
    n = len(bars)
    if taker_buy_quote is None:
        taker_buy_quote = np.full(n, np.nan)
    elif len(taker_buy_quote) != n:
        raise DataError(f"taker_buy_quote has {len(taker_buy_quote)} values for {n} bars")
    cols["taker_buy_quote"] = np.asarray(taker_buy_quote, dtype=np.float64)
    cols["open_time"] = cols["open_time"].astype(np.int64, copy=False)
    cols["trades"] = cols["trades"].astype(np.int64, copy=False)
    return {name: cols[name] for name in COLUMNS}


def _to_bars(symbol: str, cols: Columns) -> BarColumns:
    return BarColumns(symbol, *(cols[c] for c in _FIELD_TO_COLUMN.values()))


def _validate_columns(symbol: str, cols: Columns, tf_ms: int) -> tuple[Columns, Columns]:
    """(clean rows, rejected rows with a 'reason' column). `validate` knows 1m bars; the
    timeframe's own alignment is checked here."""
    _, quarantined = validate(_to_bars(symbol, cols))
    n = len(cols["open_time"])
    reasons = np.full(n, "", dtype=object)
    for row in quarantined:
        reasons[row.row_index] = row.reason
    misaligned = (cols["open_time"] % tf_ms != 0) & (reasons == "")
    reasons[misaligned] = f"open_time not on a {tf_ms // BAR_INTERVAL_MS}-minute boundary"
    bad = reasons != ""
    clean = {c: v[~bad] for c, v in cols.items()}
    rejects = {c: v[bad] for c, v in cols.items()}
    rejects["reason"] = reasons[bad]
    return clean, rejects


def _years(open_time_ms: np.ndarray) -> np.ndarray:
    return open_time_ms.astype("datetime64[ms]").astype("datetime64[Y]").astype(np.int64) + 1970


def _read_checked(path: Path, entry: FileEntry | None) -> Columns | None:
    """The stored year file, after checking it is the one the manifest names."""
    if entry is None:
        return None
    if not path.is_file():
        raise DataError(f"{path} is listed in the manifest but missing; run data verify")
    if _sha256(path) != entry.sha256:
        raise DataError(f"{path} does not match its manifest sha256; run data verify")
    table = pq.read_table(path, schema=SCHEMA)
    return {c: table.column(c).to_numpy() for c in COLUMNS}


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise equality where NaN equals NaN."""
    if a.dtype.kind == "f":
        return (a == b) | (np.isnan(a) & np.isnan(b))
    return a == b


def _merge(stored: Columns | None, incoming: Columns) -> tuple[Columns, int, int, Columns]:
    """(merged, rows added, rows unchanged, conflicting incoming rows). A stored bar wins."""
    empty = {c: v[:0] for c, v in incoming.items()}
    if stored is None or len(stored["open_time"]) == 0:
        return incoming, len(incoming["open_time"]), 0, empty
    s_ot, i_ot = stored["open_time"], incoming["open_time"]
    pos = np.searchsorted(s_ot, i_ot)
    pos_in = np.minimum(pos, len(s_ot) - 1)
    present = s_ot[pos_in] == i_ot
    equal = present.copy()
    for c in COLUMNS[1:]:
        equal &= _same(stored[c][pos_in], incoming[c])
    conflict = present & ~equal
    new = ~present
    n_new = int(new.sum())
    conflicts = {c: v[conflict] for c, v in incoming.items()}
    if not n_new:
        return stored, 0, int(equal.sum()), conflicts
    merged_ot = np.concatenate([s_ot, i_ot[new]])
    order = np.argsort(merged_ot, kind="stable")
    merged = {c: np.concatenate([stored[c], incoming[c][new]])[order] for c in COLUMNS}
    return merged, n_new, int(equal.sum()), conflicts


def _write_temp(directory: Path, name: str, cols: Columns, tf_ms: int) -> Path:
    """Write a year file to a temp file beside its target, fsynced; the caller renames it."""
    table = pa.table({c: cols[c] for c in COLUMNS}, schema=SCHEMA)
    # A week of bars per row group (at least 1024 rows) lets a range read skip the rest.
    row_group_rows = max(_WEEK_MS // tf_ms, _MIN_ROW_GROUP_ROWS)
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX + name + ".", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(
                table,
                f,
                compression="zstd",
                compression_level=3,
                # Prices rarely repeat exactly: dictionaries only cost; open_time is arithmetic.
                use_dictionary=False,
                column_encoding={"open_time": "DELTA_BINARY_PACKED"},
                row_group_size=row_group_rows,
                write_statistics=True,
                sorting_columns=[pq.SortingColumn(0)],
            )
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temp_files(directory: Path) -> None:
    """Temp files left by a crashed writer; safe to remove while holding the lock."""
    for path in directory.glob(_TMP_PREFIX + "*"):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer per dataset at a time, also across processes."""
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _add_source(entry: FileEntry | None, source: str) -> tuple[str, ...]:
    sources = entry.sources if entry else ()
    return sources if source in sources else (*sources, source)


def _entry_for(name: str, path: Path, cols: Columns, sources: tuple[str, ...]) -> FileEntry:
    ot = cols["open_time"]
    return FileEntry(name, len(ot), int(ot[0]), int(ot[-1]), _sha256(path), sources, _now_iso())


def _make_manifest(key: DatasetKey, pair: str, entries: list[FileEntry]) -> Manifest:
    files = sorted(entries, key=lambda f: f.name)
    return Manifest(
        key.exchange, pair, key.timeframe, tuple(files), dataset_version(files), _now_iso()
    )


def _concat_columns(parts: list[Columns]) -> Columns:
    if not parts:
        return {c: np.empty(0) for c in COLUMNS}
    return {c: np.concatenate([p[c] for p in parts]) for c in COLUMNS}


def _append_quarantine(path: Path, source: str, rejects: Columns, conflicts: Columns) -> None:
    """One JSON object a line: when, from where, why, and the row as it came in."""
    now = _now_iso()
    lines = []
    for cols, reasons in (
        (rejects, rejects["reason"]),
        (conflicts, ["conflicts with a different stored bar"] * len(conflicts["open_time"])),
    ):
        rows = [
            dict(zip(COLUMNS, values, strict=True))
            for values in zip(*(cols[c].tolist() for c in COLUMNS), strict=True)
        ]
        for reason, row in zip(reasons, rows, strict=True):
            record = {"quarantined_at": now, "source": source, "reason": str(reason), "row": row}
            lines.append(orjson.dumps(record))
    with open(path, "ab") as f:
        f.write(b"\n".join(lines) + b"\n")
        f.flush()
        os.fsync(f.fileno())


def _verify_file(path: Path, entry: FileEntry, tf_ms: int) -> list[str]:
    if not path.is_file():
        return [f"{path}: missing"]
    problems = []
    if _sha256(path) != entry.sha256:
        problems.append(f"{path}: sha256 does not match the manifest")
    try:
        ot = pq.read_table(path, columns=["open_time"]).column("open_time").to_numpy()
    except (pa.ArrowException, OSError) as exc:
        return [*problems, f"{path}: unreadable: {_one_line(exc)}"]
    if len(ot) != entry.rows:
        problems.append(f"{path}: {len(ot)} rows, manifest says {entry.rows}")
    if len(ot) and (int(ot[0]), int(ot[-1])) != (entry.first_open_time_ms, entry.last_open_time_ms):
        problems.append(
            f"{path}: spans {int(ot[0])}..{int(ot[-1])}, manifest says "
            f"{entry.first_open_time_ms}..{entry.last_open_time_ms}"
        )
    steps = np.diff(ot)
    if (steps == 0).any():
        problems.append(f"{path}: {int((steps == 0).sum())} duplicate open_time(s)")
    if (steps < 0).any():
        problems.append(f"{path}: open_time not sorted ({int((steps < 0).sum())} step(s) back)")
    if len(ot) and (ot % tf_ms != 0).any():
        problems.append(f"{path}: open_time not aligned to the timeframe")
    year = path.stem
    if len(ot) and not (year.isdigit() and (_years(ot) == int(year)).all()):
        problems.append(f"{path}: holds bars outside the year {year}")
    return problems


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
