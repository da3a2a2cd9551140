"""Tick recordings in the bar store's root: trades, book tops and top-5 book levels as Parquet.

Layout, beside the bar datasets (`<root>/<exchange>/<SYMBOL>/<timeframe>/`):

    <root>/<exchange>/<SYMBOL>/trades/<YYYY-MM-DD>/part-<first_time_ms>.parquet
    <root>/<exchange>/<SYMBOL>/book_top/<YYYY-MM-DD>/part-<first_time_ms>.parquet
    <root>/<exchange>/<SYMBOL>/book_levels/<YYYY-MM-DD>/part-<first_time_ms>.parquet

A recorder appends; it never rewrites a part file. Each part is written whole to a temp file,
fsynced and renamed (the bar store's `_write_bytes_atomic`), so a crash loses at most the rows
still buffered, never leaves a half-written part visible. Parts are split by the UTC date of
`time_ms` (exchange time), and rows keep their arrival order inside a part; `read_ticks`
merges the parts and sorts by time.

Pure apart from the file writes: no event loop, no clock but the injected monotonic one used
for the age-based flush.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scalpd.data.binance_ws import BookTicker
from scalpd.data.orderbook import BookLevels
from scalpd.data.parquet import DataError
from scalpd.data.store import _fsync_dir, _write_bytes_atomic, symbol_dir
from scalpd.events import BookTop, Trade

TRADES = "trades"
BOOK_TOP = "book_top"
BOOK_LEVELS = "book_levels"
KINDS = (TRADES, BOOK_TOP, BOOK_LEVELS)
LEVELS = 5  # book_levels holds the best 5 of each side

DEFAULT_FLUSH_ROWS = 50_000
DEFAULT_FLUSH_S = 60.0
_DAY_MS = 86_400_000
_PART_RE = re.compile(r"part-(\d+)(?:-(\d+))?\.parquet")

Tick = Trade | BookTop | BookTicker | BookLevels


def _level_fields() -> list[tuple[str, pa.DataType]]:
    out: list[tuple[str, pa.DataType]] = []
    for side in ("bid", "ask"):
        out += [(f"{side}_px_{i}", pa.float64()) for i in range(1, LEVELS + 1)]
        out += [(f"{side}_qty_{i}", pa.float64()) for i in range(1, LEVELS + 1)]
    return out


# recv_time_ns (local receive clock) and update_id are null where the source did not know them.
SCHEMAS: dict[str, pa.Schema] = {
    TRADES: pa.schema(
        [
            ("time_ms", pa.int64()),
            ("recv_time_ns", pa.int64()),
            ("price", pa.float64()),
            ("qty", pa.float64()),
            ("side", pa.string()),  # the taker's side: "buy" or "sell"
            ("trade_id", pa.string()),
        ]
    ),
    BOOK_TOP: pa.schema(
        [
            ("time_ms", pa.int64()),
            ("recv_time_ns", pa.int64()),
            ("bid", pa.float64()),
            ("bid_qty", pa.float64()),
            ("ask", pa.float64()),
            ("ask_qty", pa.float64()),
            ("update_id", pa.int64()),
        ]
    ),
    # Levels a book does not have (fewer than 5 on a side) are NaN.
    BOOK_LEVELS: pa.schema(
        [
            ("time_ms", pa.int64()),
            ("recv_time_ns", pa.int64()),
            *_level_fields(),
            ("update_id", pa.int64()),
        ]
    ),
}


def _row(tick: Tick, recv_time_ns: int | None) -> tuple[str, str, tuple[Any, ...]]:
    """(symbol, kind, row in the kind's column order) of one tick."""
    if isinstance(tick, Trade):
        row = (
            tick.time_ms,
            recv_time_ns,
            tick.price,
            tick.qty,
            str(tick.taker_side),
            tick.trade_id,
        )
        return tick.symbol, TRADES, row
    if isinstance(tick, BookTicker):
        t = tick.top
        row = (t.time_ms, recv_time_ns, t.bid, t.bid_qty, t.ask, t.ask_qty, tick.update_id)
        return t.symbol, BOOK_TOP, row
    if isinstance(tick, BookTop):
        row = (tick.time_ms, recv_time_ns, tick.bid, tick.bid_qty, tick.ask, tick.ask_qty, None)
        return tick.symbol, BOOK_TOP, row
    if isinstance(tick, BookLevels):
        return (
            tick.symbol,
            BOOK_LEVELS,
            (tick.time_ms, recv_time_ns, *_flat_levels(tick), tick.update_id),
        )
    raise TypeError(f"cannot record a {type(tick).__name__}")


def _flat_levels(levels: BookLevels) -> list[float]:
    out: list[float] = []
    for side in (levels.bids, levels.asks):
        top = list(side[:LEVELS]) + [(np.nan, np.nan)] * (LEVELS - min(len(side), LEVELS))
        out += [price for price, _ in top]
        out += [qty for _, qty in top]
    return out


@dataclass
class _Buffer:
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    started_s: float = 0.0  # monotonic time of the oldest buffered row


class TickRecorder:
    """Buffers ticks per (symbol, kind) and writes them as Parquet parts under `root`.

    A buffer is flushed when it holds `flush_rows` rows, when its oldest row is `flush_s`
    old (checked on `add` and `flush_due`: call the latter on a timer so a quiet stream is
    written too), and on `close`. A failed write raises and keeps the unwritten rows buffered.
    """

    def __init__(
        self,
        root: Path,
        exchange: str = "binance",
        *,
        flush_rows: int = DEFAULT_FLUSH_ROWS,
        flush_s: float = DEFAULT_FLUSH_S,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        if flush_rows < 1 or flush_s <= 0:
            raise ValueError("flush_rows must be >= 1 and flush_s > 0")
        self.root = Path(root)
        self.exchange = exchange
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self._clock_s = clock_s
        self._buffers: dict[tuple[str, str], _Buffer] = {}
        self.rows_added: dict[str, int] = dict.fromkeys(KINDS, 0)  # given to `add`
        self.rows_written: dict[str, int] = dict.fromkeys(KINDS, 0)  # in part files
        self.files_written: list[Path] = []

    def add(self, tick: Tick, recv_time_ns: int | None = None) -> None:
        """Buffer one Trade, BookTicker (a BookTop with its update id), BookTop or BookLevels."""
        symbol, kind, row = _row(tick, recv_time_ns)
        if row[0] < 0:
            raise ValueError(f"{kind} tick of {symbol} has no time: {tick!r}")
        key = (symbol, kind)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = _Buffer()
        if not buffer.rows:
            buffer.started_s = self._clock_s()
        buffer.rows.append(row)
        self.rows_added[kind] += 1
        if len(buffer.rows) >= self.flush_rows or self._too_old(buffer):
            self._flush(key)

    @property
    def buffered_rows(self) -> int:
        return sum(len(b.rows) for b in self._buffers.values())

    def flush_due(self) -> list[Path]:
        """Flush the buffers whose oldest row is `flush_s` old; the parts written."""
        before = len(self.files_written)
        for key, buffer in list(self._buffers.items()):
            if buffer.rows and self._too_old(buffer):
                self._flush(key)
        return self.files_written[before:]

    def flush(self) -> list[Path]:
        """Flush every buffer; the parts written."""
        before = len(self.files_written)
        for key, buffer in list(self._buffers.items()):
            if buffer.rows:
                self._flush(key)
        return self.files_written[before:]

    def close(self) -> list[Path]:
        return self.flush()

    def _too_old(self, buffer: _Buffer) -> bool:
        return self._clock_s() - buffer.started_s >= self.flush_s

    def _flush(self, key: tuple[str, str]) -> None:
        symbol, kind = key
        buffer = self._buffers[key]
        rows, buffer.rows = buffer.rows, []
        table = _table(kind, rows)
        days = table.column("time_ms").to_numpy() // _DAY_MS
        directory = self.root / self.exchange / symbol_dir(symbol) / kind
        # One part per UTC day; on a failure the days not yet written go back to the buffer.
        pending = list(np.unique(days))
        try:
            while pending:
                day = pending[0]
                part = table.filter(pa.array(days == day))
                self._write_part(directory / _day_name(int(day)), kind, part)
                pending.pop(0)
        finally:
            if pending:
                keep = np.isin(days, pending)
                buffer.rows = [r for r, k in zip(rows, keep, strict=True) if k] + buffer.rows

    def _write_part(self, directory: Path, kind: str, part: pa.Table) -> None:
        _make_dirs(directory)
        first_ms = int(pc.min(part.column("time_ms")).as_py())
        sink = pa.BufferOutputStream()
        pq.write_table(
            part,
            sink,
            compression="zstd",
            compression_level=3,
            use_dictionary=["side"] if kind == TRADES else False,
            write_statistics=True,
        )
        path = _free_part_path(directory, first_ms)
        _write_bytes_atomic(path, sink.getvalue().to_pybytes())
        self.files_written.append(path)
        self.rows_written[kind] += part.num_rows


def _table(kind: str, rows: list[tuple[Any, ...]]) -> pa.Table:
    schema = SCHEMAS[kind]
    columns = zip(*rows, strict=True)
    return pa.table(
        [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)],
        schema=schema,
    )


def _make_dirs(directory: Path) -> None:
    """mkdir -p, each new directory made durable in its parent: a part renamed into a day
    directory that a crash forgets would be lost with it."""
    if directory.is_dir():
        return
    _make_dirs(directory.parent)
    directory.mkdir(exist_ok=True)
    _fsync_dir(directory.parent)


def _day_name(day: int) -> str:
    return datetime.fromtimestamp(day * _DAY_MS / 1000, UTC).strftime("%Y-%m-%d")


def _free_part_path(directory: Path, first_ms: int) -> Path:
    """part-<first_ms>.parquet, or part-<first_ms>-<n>.parquet when that exists already (two
    flushes can start at the same millisecond): a part is never overwritten."""
    path = directory / f"part-{first_ms}.parquet"
    n = 0
    while path.exists():
        n += 1
        path = directory / f"part-{first_ms}-{n}.parquet"
    return path


def _part_key(path: Path) -> tuple[int, int]:
    match = _PART_RE.fullmatch(path.name)
    assert match is not None
    return int(match.group(1)), int(match.group(2) or 0)


def tick_dir(root: Path, symbol: str, kind: str, exchange: str = "binance") -> Path:
    if kind not in KINDS:
        raise DataError(f"unknown tick kind {kind!r}: use one of {', '.join(KINDS)}")
    return Path(root) / exchange / symbol_dir(symbol) / kind


def read_ticks(
    root: Path,
    symbol: str,
    kind: str,
    start_ms: int | None = None,
    end_ms: int | None = None,
    *,
    exchange: str = "binance",
) -> pa.Table:
    """Recorded rows of `kind` with time in [start_ms, end_ms), sorted by time (stable: rows
    of the same millisecond keep their arrival order). Empty when nothing is recorded."""
    directory = tick_dir(root, symbol, kind, exchange)
    schema = SCHEMAS[kind]
    lo_day = None if start_ms is None else _day_name(start_ms // _DAY_MS)
    hi_day = None if end_ms is None else _day_name((end_ms - 1) // _DAY_MS)
    paths: list[Path] = []
    days = sorted(p for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []
    for day in days:
        # ISO dates sort as text; days outside the range are not opened.
        if (lo_day is not None and day.name < lo_day) or (hi_day is not None and day.name > hi_day):
            continue
        parts = [p for p in day.iterdir() if _PART_RE.fullmatch(p.name)]
        paths += sorted(parts, key=_part_key)
    if not paths:
        return schema.empty_table()
    try:
        table = pa.concat_tables(pq.read_table(p, schema=schema) for p in paths)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{directory} could not be read: {' '.join(str(exc).split())}") from None
    time_ms = table.column("time_ms")
    cut = None
    if start_ms is not None:
        cut = pc.greater_equal(time_ms, start_ms)
    if end_ms is not None:
        below = pc.less(time_ms, end_ms)
        cut = below if cut is None else pc.and_(cut, below)
    if cut is not None:
        table = table.filter(cut)
    order = np.argsort(table.column("time_ms").to_numpy(), kind="stable")
    return table.take(pa.array(order))
