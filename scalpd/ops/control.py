"""The control socket: a local Unix socket through which the operator steers a running daemon.

Used by `scalpd ctl status|pause|resume|flatten|reload-model` and the terminal UI. Only the
daemon's own user can connect: the socket file is 0600 from the moment it has its name.

Protocol: one JSON object per line in, one per line out, any number of requests on a
connection::

    {"cmd": "status"}                          -> {"ok": true, "result": {...}}
    {"cmd": "pause", "reason": "news at 14:30"}
    {"cmd": "resume"}                          (optionally "breaker": a name, else all)
    {"cmd": "flatten"}                         close every position
    {"cmd": "reload-model", "path": "/abs/models/tcn/v3"}
    anything wrong                             -> {"ok": false, "error": "one line"}

A malformed line, an unknown command, a line over `MAX_REQUEST_BYTES` or a handler that raises
gets an error answer; the connection and the server go on.

The server knows nothing of the daemon: it maps each command to a handler, a plain function or
a coroutine function taking the request's arguments (the object without "cmd") and returning
anything JSON-able. The daemon wires it (an example, not the daemon's code)::

    handlers = {
        "status": lambda args: daemon.status(),
        "pause": lambda args: risk.pause(now_ms(), args.get("reason", "operator")),
        "resume": lambda args: risk.resume(now_ms(), args.get("breaker")),
        "flatten": daemon.flatten,                  # async def flatten(args) -> dict
        "reload-model": daemon.reload_model,
    }
    server = ControlServer(settings.control.socket_path, handlers)
    await server.start()          # refuses when another daemon answers on that path
    ...
    await server.close()          # removes the socket file

Client: `await request(path, "pause", reason="...")` returns the result or raises
`ControlError` (`NoDaemonError` when nothing listens there); `call` is the same for
synchronous code (the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import os
import secrets
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import structlog

log = structlog.get_logger("scalpd.control")

COMMANDS = ("status", "pause", "resume", "flatten", "reload-model")
MAX_REQUEST_BYTES = 64 * 1024
# Answers (a status) may be larger than requests; the client still bounds what it buffers.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
MAX_SUN_PATH_BYTES = 107
DEFAULT_TIMEOUT_S = 10.0

Handler = Callable[[dict[str, Any]], Awaitable[Any] | Any]


class ControlError(Exception):
    """A control request that failed: the daemon's error answer, a timeout, a bad socket."""


class NoDaemonError(ControlError):
    """Nothing listens at the socket path (no file, or a stale one)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(f"no daemon listening at {path} (is `scalpd run` running?)")
        self.path = Path(path)


# -- server ------------------------------------------------------------------------------------


class ControlServer:
    """Serves `handlers` on a Unix socket at `path` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], handlers: Mapping[str, Handler]) -> None:
        self.path = Path(path)
        self.handlers = dict(handlers)
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen at `path`. Creates its directory (0700) if missing, replaces a stale socket
        left by a crashed daemon, and raises ControlError when another daemon answers there."""
        if self._server is not None:
            raise ControlError(f"control socket {self.path} already started")
        parent = self.path.parent
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Two daemons starting together: the liveness check and the rename must not interleave.
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX)
            self._refuse_live_socket()
            sock, private_dir = self._bind_private(parent)
            try:
                self._server = await asyncio.start_unix_server(
                    self._serve, sock=sock, limit=MAX_REQUEST_BYTES
                )
                sock = None  # the server owns it now
                # The socket was 0600 inside a 0700 directory: nobody could reach it before
                # this rename gives it its name (atomically replacing a stale file).
                tmp = private_dir / "s"
                st = os.stat(tmp)
                os.rename(tmp, self.path)
                self._inode = (st.st_dev, st.st_ino)
            except BaseException:
                if self._server is not None:
                    self._server.close()
                    self._server = None
                raise
            finally:
                if sock is not None:
                    sock.close()
                with contextlib.suppress(OSError):
                    (private_dir / "s").unlink()
                with contextlib.suppress(OSError):
                    private_dir.rmdir()
        finally:
            os.close(dir_fd)  # releases the lock
        log.info("control socket listening", path=str(self.path), commands=sorted(self.handlers))

    async def close(self) -> None:
        """Stop listening, end open connections and remove the socket file (if still ours)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.close()
        await server.wait_closed()
        if self._inode is not None:
            # Another daemon may have taken the name since (ours was then stale to it).
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    self.path.unlink()
            self._inode = None
        log.info("control socket closed", path=str(self.path))

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _refuse_live_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(
                f"control socket path {self.path} exists and is not a socket; not replacing it "
                "(remove it or set control.socket_path)"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.warning("replacing stale control socket", path=str(self.path))
            return
        except PermissionError:
            raise ControlError(
                f"control socket {self.path} belongs to another user; not replacing it"
            ) from None
        except OSError:
            pass  # a timeout (full backlog): someone is listening
        finally:
            probe.close()
        raise ControlError(
            f"another daemon is listening at {self.path}; stop it first or give this one "
            "another control.socket_path"
        )

    def _bind_private(self, parent: Path) -> tuple[socket.socket, Path]:
        """A listening-ready socket bound at <parent>/.ctlXXXXXXXX/s, mode 0600, in a directory
        only we can enter: no moment where anyone else could connect to it."""
        for _ in range(100):
            private_dir = parent / f".ctl{secrets.token_hex(4)}"
            try:
                os.mkdir(private_dir, 0o700)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 collisions of 32 random bits
            raise ControlError(f"cannot create a private directory in {parent}")
        tmp = private_dir / "s"
        if len(os.fsencode(tmp)) > MAX_SUN_PATH_BYTES:
            private_dir.rmdir()
            raise ControlError(
                f"control socket path {self.path} is too long: binding it goes through {tmp}, "
                f"over the {MAX_SUN_PATH_BYTES} bytes a Unix socket path allows; choose a "
                "shorter control.socket_path"
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fsencode(tmp))
            os.chmod(tmp, 0o600)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            with contextlib.suppress(OSError):
                private_dir.rmdir()
            raise
        return sock, private_dir

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            async for line in _read_lines(reader, MAX_REQUEST_BYTES):
                answer = await self._answer(line)
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to answer
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _answer(self, line: bytes | None) -> bytes:
        if line is None:
            return _error(f"request line over {MAX_REQUEST_BYTES} bytes")
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return _error(f"malformed JSON: {exc}")
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return _error('a request is a JSON object with a string "cmd"')
        cmd = request.pop("cmd")
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            return _error(f"unknown command {cmd!r}; known: {known}")
        try:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            # The operator's request failed, not the daemon: answer and keep serving.
            log.warning("control command failed", cmd=cmd, error=_message(exc))
            return _error(_message(exc))
        try:
            answer = orjson.dumps(
                {"ok": True, "result": result},
                default=str,
                option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE,
            )
        except TypeError as exc:
            log.warning("control answer not JSON-able", cmd=cmd, error=str(exc))
            return _error(f"the answer to {cmd!r} could not be encoded as JSON: {exc}")
        log.info("control command", cmd=cmd)
        return answer


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _error(message: str) -> bytes:
    return orjson.dumps({"ok": False, "error": message}, option=orjson.OPT_APPEND_NEWLINE)


async def _read_lines(reader: asyncio.StreamReader, max_bytes: int) -> AsyncIterator[bytes | None]:
    """The lines of a stream without their newline; None for each line over `max_bytes`, whose
    bytes are skipped to its end so the next line reads clean. At most `max_bytes` buffered."""
    buf = bytearray()
    oversize = False
    while True:
        chunk = await reader.read(64 * 1024)
        if not chunk:
            if oversize:
                yield None
            elif buf.strip():
                yield bytes(buf)
            return
        buf += chunk
        while (end := buf.find(b"\n")) >= 0:
            line = bytes(buf[:end])
            del buf[: end + 1]
            if oversize or len(line) > max_bytes:
                oversize = False
                yield None
            elif line.strip():
                yield line
        if len(buf) > max_bytes:
            buf.clear()
            oversize = True


# -- client ------------------------------------------------------------------------------------


async def request(
    path: str | os.PathLike[str],
    cmd: str,
    /,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    **args: Any,
) -> Any:
    """Send one command to the daemon at `path` and return its result. `args` are the request's
    fields (positional-only `path` and `cmd` leave `path=` free for reload-model); those that
    are None are left out. Raises NoDaemonError when nothing listens there, ControlError on an error
    answer (its message), no answer within `timeout_s`, or a socket we may not use."""
    payload = {"cmd": cmd, **{k: v for k, v in args.items() if v is not None}}
    line = orjson.dumps(payload, option=orjson.OPT_APPEND_NEWLINE)
    if len(line) > MAX_REQUEST_BYTES:
        raise ControlError(f"request over {MAX_REQUEST_BYTES} bytes")
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(
                os.fspath(path), limit=MAX_RESPONSE_BYTES
            )
            try:
                writer.write(line)
                await writer.drain()
                answer = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
    except (FileNotFoundError, ConnectionRefusedError):
        raise NoDaemonError(path) from None
    except PermissionError:
        raise ControlError(
            f"permission denied on {path}: the control socket is owner-only; run as the "
            "daemon's user"
        ) from None
    except TimeoutError:
        raise ControlError(f"no answer from the daemon at {path} within {timeout_s:g} s") from None
    except ValueError:  # the answer's line over MAX_RESPONSE_BYTES
        raise ControlError(f"answer from {path} over {MAX_RESPONSE_BYTES} bytes") from None
    except OSError as exc:
        raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
    if not answer:
        raise ControlError(f"the daemon at {path} closed the connection without answering")
    try:
        response = orjson.loads(answer)
    except orjson.JSONDecodeError as exc:
        raise ControlError(f"malformed answer from {path}: {exc}") from None
    if not isinstance(response, dict) or "ok" not in response:
        raise ControlError(f"malformed answer from {path}: no 'ok'")
    if not response["ok"]:
        raise ControlError(str(response.get("error", "unknown error")))
    return response.get("result")


def call(
    path: str | os.PathLike[str],
    cmd: str,
    /,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    **args: Any,
) -> Any:
    """`request` for synchronous code (the CLI); not from inside a running event loop."""
    return asyncio.run(request(path, cmd, timeout_s=timeout_s, **args))


def format_result(value: Any, indent: int = 0) -> str:
    """A result as indented `key: value` lines, for people (`scalpd ctl` without --json)."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return f"{pad}(none)"
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list) and item and not _flat_list(item):
                lines.append(f"{pad}{key}:")
                lines.append(format_result(item, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if _flat_list(value):
            return f"{pad}{_scalar(value)}"
        return "\n".join(
            f"{pad}-\n{format_result(item, indent + 1)}"
            if isinstance(item, dict | list)
            else f"{pad}- {_scalar(item)}"
            for item in value
        )
    return f"{pad}{_scalar(value)}"


def _flat_list(value: Any) -> bool:
    return isinstance(value, list) and not any(isinstance(v, dict | list) for v in value)


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value) if value else "(none)"
    if isinstance(value, dict):
        return "(none)"
    return str(value)
