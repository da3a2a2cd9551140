"""Reading bar files in the layout of Binance's kline archive converted to Parquet."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from scalpd.data.bars import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    BarColumns,
    from_arrays,
    symbol_from_filename,
)


class DataError(Exception):
    """Bad market data input; the message is one line."""


def read_parquet(path: Path, symbol: str | None = None) -> BarColumns:
    """Read one Parquet file of 1-minute bars (not yet validated: see `bars.validate`)."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    symbol = symbol or symbol_from_filename(path.stem)
    if symbol is None:
        raise DataError(
            f"cannot tell the symbol of {path.name}; name it like BTCUSDT-1m-2024.parquet "
            "or pass --symbol"
        )
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable Parquet file: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise DataError(
            f"{path.name} lacks required column(s) {', '.join(missing)}; "
            f"needs {', '.join(REQUIRED_COLUMNS)}"
        )
    wanted = [*REQUIRED_COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in schema.names)]
    try:
        table = pq.read_table(path, columns=wanted)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} could not be read: {exc}") from None
    nulls = table.column("open_time").null_count
    if nulls:
        raise DataError(f"{path.name}: open_time is empty in {nulls} row(s)")
    try:
        arrays = {name: table.column(name).to_numpy() for name in wanted}
        return from_arrays(symbol, arrays)
    except (TypeError, ValueError, pa.ArrowException) as exc:
        raise DataError(f"{path.name} has a column of the wrong type: {exc}") from None
