"""A local Binance that replays a WebSocket recording: the combined stream and depth snapshots.

`RecordingServer(paths)` serves one symbol's recording (its files in order, read as one
stream, see `binance_ws.iter_recording`) on 127.0.0.1:

  WS   /stream?streams=a/b/c   every recorded `{"stream", "data"}` message of the streams asked
                               for, in recorded order, as the recorded JSON; as fast as the
                               client reads, or paced by the recorded receive times / `speed`
  GET  /api/v3/depth           the first request gets the recording's own REST snapshot (the
                               `lastUpdateId` line); later ones a snapshot consistent with the
                               stream at that moment
  GET  /api/v3/exchangeInfo, /api/v3/time, /api/v3/ping    enough for ccxt's load_markets

The stream position is the server's, not a connection's: a new connection goes on where the
last one stopped (messages are not replayed twice), like a live exchange that kept trading.
One client at a time: a new connection closes the previous one. After the last message (or
`limit` messages) the connection stays open and silent, and `finished` is set.

To answer snapshots the server keeps its own OrderBook, fed with every depth diff it passes in
the recording (sent, deleted or not subscribed) from the recorded snapshot on; a snapshot is
that book, as of the last diff passed, cut to `limit` levels a side.

Fault injection, by message index (0-based, over the stream messages only; the recorded
snapshot line has no index): `drop_after(k)` closes the WebSocket after message k;
`delete(k)` never sends message k (a depth diff deleted is a sequence gap for the client);
`inject(k, frame)` sends an extra frame (text, or bytes for a binary frame) before message k.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from aiohttp import WSMsgType, web

from scalpd.data.binance_ws import (
    SNAPSHOT,
    DepthSnapshot,
    iter_recording,
    parse_depth_snapshot,
    parse_depth_update,
    unwrap,
)
from scalpd.data.orderbook import OrderBook
from scalpd.data.store import display_symbol
from scalpd.fakex import wire
from scalpd.fakex.matching import FakeMarket

Json = Any

_DEPTH_DEFAULT_LIMIT = 100
_DEPTH_MAX_LIMIT = 5000
# Yield to the loop every so many frames so that REST requests are answered while the stream
# runs flat out (a send only suspends when the socket's buffer is full).
_YIELD_EVERY = 64
# How far ahead of the stream the first /depth request may read to find the recorded snapshot.
_SNAPSHOT_LOOKAHEAD = 100_000


class _Line(NamedTuple):
    index: int  # stream message index; -1 for a recorded REST snapshot
    recv_ns: int
    stream: str  # "btcusdt@trade"; "" for a snapshot
    message: dict[str, Any]


class RecordingServer:
    """Replays `paths` (one symbol's recording files, in order); see the module docstring."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        speed: float | None = None,
        *,
        limit: int | None = None,
        market: FakeMarket | None = None,
    ) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive (or None: as fast as the client reads)")
        self._paths = [Path(p) for p in paths]
        self._speed = speed
        self._limit = limit
        self._source: Iterator[_Line] = self._lines()
        self._ahead: deque[_Line] = deque()
        first = self._peek_stream_line()
        if first is None:
            raise ValueError(f"no stream messages in {[str(p) for p in self._paths]}")
        self.market_id = first.stream.partition("@")[0].upper()
        self.market = market or FakeMarket(symbol=display_symbol(self.market_id))
        self._book = OrderBook(self.market_id)
        self._recorded_snapshot: dict[str, Any] | None = None
        self._last_exchange_ms = int(first.message["data"].get("E", 0))
        self._drop_after: set[int] = set()
        self._deleted: set[int] = set()
        self._injected: dict[int, list[str | bytes]] = {}
        self._active: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None
        self.finished = asyncio.Event()
        # Inspection.
        self.position = 0  # index of the next stream message to take
        self.sent = 0  # stream messages sent
        self.frames_sent = 0  # every frame sent: stream messages and injected frames
        self.connections = 0
        self.snapshots_served: list[int] = []  # lastUpdateId of each /depth answer
        self.requests: list[tuple[str, str]] = []
        self.unknown_requests: list[str] = []

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on `host`:`port` (0: any free port); returns the bound port."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self._host = host
        self._port = int(self._runner.addresses[0][1])
        return self._port

    async def stop(self) -> None:
        await self.drop_connection()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RecordingServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """REST root, e.g. http://127.0.0.1:PORT (the spot API is under /api/v3)."""
        return f"http://{self._host}:{self._require_port()}"

    @property
    def ws_url(self) -> str:
        """WebSocket root in the form of the `exchange.ws_url` setting (ends in /stream)."""
        return f"ws://{self._host}:{self._require_port()}/stream"

    def _require_port(self) -> int:
        if self._port is None:
            raise RuntimeError("RecordingServer is not serving: await start() first")
        return self._port

    # -- fault injection -----------------------------------------------------------------------

    def drop_after(self, index: int) -> None:
        """Close the WebSocket right after sending message `index`."""
        self._drop_after.add(index)

    def delete(self, index: int) -> None:
        """Never send message `index` (it still moves the server's own book)."""
        self._deleted.add(index)

    def inject(self, index: int, frame: str | bytes) -> None:
        """Send `frame` (text; bytes for a binary frame) just before message `index`."""
        self._injected.setdefault(index, []).append(frame)

    async def drop_connection(self) -> None:
        """Close the current WebSocket now, if any."""
        ws, self._active = self._active, None
        if ws is not None:
            await _close_quietly(ws)

    # -- the recording -------------------------------------------------------------------------

    def _lines(self) -> Iterator[_Line]:
        index = 0
        for recv_ns, message in iter_recording(self._paths):
            prefix, channel, _ = unwrap(message)
            if channel == SNAPSHOT:
                yield _Line(-1, recv_ns, "", message)
            else:
                yield _Line(index, recv_ns, f"{prefix}@{channel}", message)
                index += 1

    def _pull(self) -> _Line | None:
        return next(self._source, None)

    def _peek_stream_line(self) -> _Line | None:
        for line in self._ahead:
            if line.index >= 0:
                return line
        while (line := self._pull()) is not None:
            self._ahead.append(line)
            if line.index >= 0:
                return line
        return None

    def _take(self) -> _Line | None:
        """The next stream message, moving the server's book past it; None at the end."""
        while not self.finished.is_set():
            line = self._ahead.popleft() if self._ahead else self._pull()
            if line is None or (self._limit is not None and line.index >= self._limit):
                self.finished.set()
                return None
            if line.index < 0:
                self._recorded_snapshot = line.message
                self._book.apply_snapshot(parse_depth_snapshot(line.message))
                continue
            self.position = line.index + 1
            data = line.message["data"]
            self._last_exchange_ms = int(data.get("E", self._last_exchange_ms))
            if line.stream.endswith("@depth@100ms") or line.stream.endswith("@depth"):
                self._book.on_depth(parse_depth_update(data))
            return line
        return None

    def _find_recorded_snapshot(self) -> dict[str, Any] | None:
        if self._recorded_snapshot is not None:
            return self._recorded_snapshot
        for line in self._ahead:
            if line.index < 0:
                return line.message
        while len(self._ahead) < _SNAPSHOT_LOOKAHEAD and (line := self._pull()) is not None:
            self._ahead.append(line)
            if line.index < 0:
                return line.message
        return None

    # -- HTTP ----------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests.append((request.method, path))
        if request.headers.get("Upgrade", "").lower() == "websocket" and path == "/stream":
            return await self._handle_ws(request)
        if request.method != "GET":
            return self._unknown(request)
        params = request.query
        if path == "/api/v3/ping":
            return _json({})
        if path == "/api/v3/time":
            return _json({"serverTime": self._last_exchange_ms})
        if path == "/api/v3/exchangeInfo":
            return _json(wire.exchange_info([self.market], self._last_exchange_ms))
        if path == "/api/v3/depth":
            return self._depth(params)
        return self._unknown(request)

    def _unknown(self, request: web.Request) -> web.Response:
        self.unknown_requests.append(request.path)
        msg = f"recording server does not serve {request.method} {request.path}"
        return _json({"code": -1, "msg": msg}, status=404)

    def _depth(self, params: Mapping[str, str]) -> web.Response:
        if params.get("symbol") != self.market_id:
            return _json({"code": -1121, "msg": "Invalid symbol."}, status=400)
        try:
            limit = int(params.get("limit", _DEPTH_DEFAULT_LIMIT))
        except ValueError:
            limit = 0
        if not 1 <= limit <= _DEPTH_MAX_LIMIT:
            return _json({"code": -1130, "msg": "Invalid data sent for a parameter."}, status=400)
        snapshot = None
        # The first request gets the recorded snapshot; so does any before the stream reaches
        # it (the server's book does not exist yet).
        if not self.snapshots_served or self._recorded_snapshot is None:
            recorded = self._find_recorded_snapshot()
            snapshot = None if recorded is None else parse_depth_snapshot(recorded)
        if snapshot is None and not self._book.needs_resync:
            snapshot = self._book.snapshot()
        if snapshot is None:
            # The recording itself lost a diff: no snapshot is consistent with it any more.
            # Binance's answer when it cannot serve in time; ccxt raises a NetworkError.
            return _json({"code": -1007, "msg": "no consistent snapshot"}, status=503)
        self.snapshots_served.append(snapshot.last_update_id)
        return _json(_snapshot_json(snapshot, limit))

    # -- WebSocket -----------------------------------------------------------------------------

    async def _handle_ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        await self.drop_connection()
        self._active = ws
        self.connections += 1
        streams = {s for s in request.query.get("streams", "").split("/") if s}
        pump = asyncio.create_task(self._pump(ws, streams))
        try:
            async for message in ws:  # nothing to answer; reading handles pings and the close
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            if self._active is ws:
                self._active = None
        return ws

    async def _pump(self, ws: web.WebSocketResponse, streams: set[str]) -> None:
        start_s: float | None = None
        first_recv_ns = 0
        frames = 0
        try:
            while not ws.closed:
                line = self._take()
                if line is None:
                    return
                for frame in self._injected.pop(line.index, []):
                    await (ws.send_bytes if isinstance(frame, bytes) else ws.send_str)(frame)
                    self.frames_sent += 1
                if line.index not in self._deleted and line.stream in streams:
                    if self._speed is not None:
                        if start_s is None:
                            start_s, first_recv_ns = time.monotonic(), line.recv_ns
                        due_s = start_s + (line.recv_ns - first_recv_ns) / 1e9 / self._speed
                        await asyncio.sleep(max(0.0, due_s - time.monotonic()))
                    await ws.send_str(orjson.dumps(line.message).decode())
                    self.sent += 1
                    self.frames_sent += 1
                if line.index in self._drop_after:
                    self._drop_after.discard(line.index)
                    await _close_quietly(ws)
                    return
                frames += 1
                if frames % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        except (ConnectionError, RuntimeError):
            return  # the client went away


def _snapshot_json(snapshot: DepthSnapshot, limit: int) -> Json:
    return {
        "lastUpdateId": snapshot.last_update_id,
        "bids": [[wire.fmt(p), wire.fmt(q)] for p, q in snapshot.bids[:limit]],
        "asks": [[wire.fmt(p), wire.fmt(q)] for p, q in snapshot.asks[:limit]],
    }


def _json(payload: Json, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def _close_quietly(ws: web.WebSocketResponse) -> None:
    try:
        await ws.close(code=1001, message=b"recording server: connection dropped")
    except (TimeoutError, ConnectionError, RuntimeError):
        pass
