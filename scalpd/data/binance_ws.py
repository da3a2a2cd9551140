"""Binance spot WebSocket messages: the combined-stream envelope, trades, book tickers, depth.

Pure functions, shared by the live feed, the recorder and the tests on recorded traffic. A
malformed message raises `MessageError` (a ValueError) whose text names the message kind and
the bad field, so that a caller can quarantine one message with a single `except` and never
has to guess whether a KeyError came from the payload or from its own code.

Recordings (`iter_recording`) are gzip text, one message a line: `<receive time ns> <JSON>`.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from scalpd.events import BookTop, Side, Trade

Level = tuple[float, float]  # (price, quantity); quantity 0 means "remove this price"

SNAPSHOT = "snapshot"  # the channel `unwrap` gives a REST depth snapshot recorded in-line


class MessageError(ValueError):
    """A WebSocket or REST message is not in the documented shape; the text is one line."""


class BookTicker(NamedTuple):
    """A `<symbol>@bookTicker` event: the best bid/ask as of order-book update `update_id`."""

    update_id: int
    top: BookTop


class DepthUpdate(NamedTuple):
    """A `<symbol>@depth` diff: the new absolute quantity of every level changed by the
    order-book updates `first_update_id` ..= `final_update_id` (Binance's `U` and `u`)."""

    first_update_id: int
    final_update_id: int
    time_ms: int  # exchange event time `E`
    bids: list[Level]
    asks: list[Level]


class DepthSnapshot(NamedTuple):
    """A REST /api/v3/depth answer: the book as of update `last_update_id`."""

    last_update_id: int
    bids: list[Level]
    asks: list[Level]


def _snippet(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 160 else text[:157] + "..."


def _field(data: Any, key: str, kind: str) -> Any:
    if not isinstance(data, dict):
        raise MessageError(
            f"malformed {kind} message: expected a JSON object, got {_snippet(data)}"
        )
    try:
        return data[key]
    except KeyError:
        raise MessageError(
            f"malformed {kind} message: no field {key!r} in {_snippet(data)}"
        ) from None


def _float(value: Any, key: str, kind: str) -> float:
    # bool is an int subclass: a flag where a number belongs is a broken message, not 1.0.
    if isinstance(value, bool):
        raise MessageError(f"malformed {kind} message: field {key!r} is a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MessageError(
            f"malformed {kind} message: field {key!r} is not a number: {value!r}"
        ) from None
    if not math.isfinite(number):
        raise MessageError(f"malformed {kind} message: field {key!r} is not finite: {value!r}")
    return number


def _int(value: Any, key: str, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"malformed {kind} message: field {key!r} is not an integer: {value!r}")
    return value


def _levels(value: Any, key: str, kind: str) -> list[Level]:
    if not isinstance(value, list):
        raise MessageError(f"malformed {kind} message: field {key!r} is not a list of levels")
    try:
        levels = [(float(price), float(qty)) for price, qty in value]
    except (TypeError, ValueError):
        raise MessageError(
            f"malformed {kind} message: field {key!r} holds a level that is not "
            f"[price, quantity]: {_snippet(value)}"
        ) from None
    for price, qty in levels:
        # Negated comparisons also reject NaN.
        if not (price > 0.0 and math.isfinite(price) and qty >= 0.0 and math.isfinite(qty)):
            raise MessageError(
                f"malformed {kind} message: field {key!r} has a bad level ({price}, {qty})"
            )
    return levels


def unwrap(message: Any) -> tuple[str, str, dict[str, Any]]:
    """(lower-case symbol, channel, payload) of a combined-stream message.

    The channel is the stream name after the symbol: "trade", "bookTicker", "depth@100ms"...
    A REST depth snapshot (which a recording holds in-line) gives ("", SNAPSHOT, message).
    """
    if isinstance(message, dict) and "lastUpdateId" in message and "stream" not in message:
        return "", SNAPSHOT, message
    stream = _field(message, "stream", "stream envelope")
    data = _field(message, "data", "stream envelope")
    if not isinstance(stream, str) or "@" not in stream:
        raise MessageError(f"malformed stream envelope: bad stream name {stream!r}")
    if not isinstance(data, dict):
        raise MessageError(f"malformed stream envelope: data of {stream} is not an object")
    symbol, _, channel = stream.partition("@")
    return symbol, channel, data


def parse_trade(data: Any, symbol: str) -> Trade:
    """A `<symbol>@trade` payload. `m` true means the buyer was the maker: the taker sold."""
    kind = "trade"
    buyer_is_maker = _field(data, "m", kind)
    if not isinstance(buyer_is_maker, bool):
        raise MessageError(
            f"malformed trade message: field 'm' is not a boolean: {buyer_is_maker!r}"
        )
    price = _float(_field(data, "p", kind), "p", kind)
    qty = _float(_field(data, "q", kind), "q", kind)
    if price <= 0.0 or qty <= 0.0:
        raise MessageError(f"malformed trade message: price {price} or quantity {qty} not > 0")
    return Trade(
        symbol,
        _int(_field(data, "T", kind), "T", kind),
        price,
        qty,
        Side.SELL if buyer_is_maker else Side.BUY,
        str(_int(_field(data, "t", kind), "t", kind)),
    )


def parse_book_ticker(data: Any, symbol: str, time_ms: int) -> BookTicker:
    """A `<symbol>@bookTicker` payload.

    Spot book tickers carry no timestamp, so the caller gives one (the receive time, or the
    time of the depth update it is matched with); the update id `u` orders it against depth.
    """
    kind = "bookTicker"
    top = BookTop(
        symbol,
        time_ms,
        _float(_field(data, "b", kind), "b", kind),
        _float(_field(data, "B", kind), "B", kind),
        _float(_field(data, "a", kind), "a", kind),
        _float(_field(data, "A", kind), "A", kind),
    )
    return BookTicker(_int(_field(data, "u", kind), "u", kind), top)


def parse_depth_update(data: Any) -> DepthUpdate:
    """A `<symbol>@depth` or `<symbol>@depth@100ms` payload."""
    kind = "depthUpdate"
    first_id = _int(_field(data, "U", kind), "U", kind)
    final_id = _int(_field(data, "u", kind), "u", kind)
    if final_id < first_id:
        raise MessageError(f"malformed depthUpdate message: u {final_id} < U {first_id}")
    return DepthUpdate(
        first_id,
        final_id,
        _int(_field(data, "E", kind), "E", kind),
        _levels(_field(data, "b", kind), "b", kind),
        _levels(_field(data, "a", kind), "a", kind),
    )


def parse_depth_snapshot(data: Any) -> DepthSnapshot:
    """A REST /api/v3/depth answer {"lastUpdateId": ..., "bids": [...], "asks": [...]}."""
    kind = "depth snapshot"
    return DepthSnapshot(
        _int(_field(data, "lastUpdateId", kind), "lastUpdateId", kind),
        _levels(_field(data, "bids", kind), "bids", kind),
        _levels(_field(data, "asks", kind), "asks", kind),
    )


def iter_recording(paths: Iterable[str | Path]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(receive time ns, message) of every line of gzip recordings, read in order as one stream.

    A broken line raises MessageError naming the file and line: a recording is evidence, so
    it is not silently skipped.
    """
    for path in paths:
        number = 0
        try:
            with gzip.open(path, "rb") as lines:
                for number, line in enumerate(lines, 1):
                    yield _recorded_line(line, path, number)
        except (OSError, EOFError) as exc:
            # A recorder killed mid-write leaves a truncated gzip stream: say where it ends.
            raise MessageError(f"{path}: unreadable after line {number}: {exc}") from None


def _recorded_line(line: bytes, path: str | Path, number: int) -> tuple[int, dict[str, Any]]:
    stamp, _, body = line.partition(b" ")
    try:
        recv_ns = int(stamp)
        message = orjson.loads(body)
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        raise MessageError(f"{path}:{number}: not '<ns> <JSON>': {exc}") from None
    if not isinstance(message, dict):
        raise MessageError(f"{path}:{number}: the JSON is not an object")
    return recv_ns, message
