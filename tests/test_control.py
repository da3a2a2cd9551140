"""The control socket: a real Unix socket in tmp_path, plain handler functions, the real CLI."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog.testing

from scalpd.cli import main
from scalpd.config import ConfigError, load_settings
from scalpd.ops.control import (
    MAX_REQUEST_BYTES,
    ControlError,
    ControlServer,
    NoDaemonError,
    call,
    format_result,
    request,
)

STATUS = {
    "mode": "paper",
    "paused": False,
    "positions": {"BTC/USDT": {"qty": 0.01, "avg_price": 60000.0}},
    "breakers": [],
}


class FakeDaemon:
    """What the daemon would do with each command, recorded: plain and coroutine handlers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.paused_by: str | None = None
        self.flatten_error: str | None = None
        self.logs: list[dict[str, Any]] = []

    def handlers(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "pause": self.pause,
            "resume": self.resume,
            "flatten": self.flatten,
            "reload-model": self.reload_model,
            "boom": self.boom,
        }

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("status", args))
        return {**STATUS, "paused": self.paused_by is not None, "paused_by": self.paused_by}

    def pause(self, args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("pause", args))
        self.paused_by = args.get("reason", "operator")
        return {"paused": True}

    def resume(self, args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("resume", args))
        self.paused_by = None
        return {"reset": ["manual"]}

    async def flatten(self, args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("flatten", args))
        await asyncio.sleep(0)
        if self.flatten_error:
            raise RuntimeError(self.flatten_error)
        return {"closed": ["BTC/USDT"]}

    async def reload_model(self, args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("reload-model", args))
        if not str(args.get("path", "")).startswith("/"):
            raise ValueError(f"model path must be absolute: {args.get('path')!r}")
        return {"model": args["path"]}

    def boom(self, args: dict[str, Any]) -> None:
        raise RuntimeError("exchange unreachable\nsecond line not shown")


def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "scalpd.sock"


async def raw_exchange(path: Path, lines: list[bytes]) -> list[dict[str, Any]]:
    """Send raw bytes on one connection and read one answer per line sent."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        answers = []
        for line in lines:
            writer.write(line)
            await writer.drain()
            answers.append(orjson.loads(await reader.readline()))
        return answers
    finally:
        writer.close()
        await writer.wait_closed()


def test_each_command_round_trips(tmp_path: Path) -> None:
    daemon = FakeDaemon()
    path = sock_path(tmp_path)

    async def run() -> list[Any]:
        async with ControlServer(path, daemon.handlers()):
            return [
                await request(path, "status"),
                await request(path, "pause", reason="news at 14:30"),
                await request(path, "status"),
                await request(path, "resume", breaker=None),
                await request(path, "flatten"),
                await request(path, "reload-model", path="/models/tcn/v3"),
            ]

    results = asyncio.run(run())
    assert results[0] == {**STATUS, "paused_by": None}
    assert results[1] == {"paused": True}
    assert results[2]["paused"] is True and results[2]["paused_by"] == "news at 14:30"
    assert results[3] == {"reset": ["manual"]}
    assert results[4] == {"closed": ["BTC/USDT"]}
    assert results[5] == {"model": "/models/tcn/v3"}
    # Handlers get the request without "cmd"; None arguments are not sent.
    assert daemon.calls == [
        ("status", {}),
        ("pause", {"reason": "news at 14:30"}),
        ("status", {}),
        ("resume", {}),
        ("flatten", {}),
        ("reload-model", {"path": "/models/tcn/v3"}),
    ]
    assert not path.exists()  # removed on close


def test_socket_is_owner_only_in_a_private_directory(tmp_path: Path) -> None:
    path = sock_path(tmp_path)
    old_umask = os.umask(0)  # the most permissive umask: the modes must not depend on it
    try:

        async def run() -> tuple[int, int, list[str]]:
            async with ControlServer(path, {}):
                st = os.lstat(path)
                assert stat.S_ISSOCK(st.st_mode)
                return (
                    stat.S_IMODE(st.st_mode),
                    stat.S_IMODE(os.stat(path.parent).st_mode),
                    sorted(os.listdir(path.parent)),
                )

        mode, dir_mode, entries = asyncio.run(run())
    finally:
        os.umask(old_umask)
    assert mode == 0o600
    assert dir_mode == 0o700  # created because missing
    assert entries == ["scalpd.sock"]  # the private bind directory is gone


def test_errors_answered_and_the_connection_survives(tmp_path: Path) -> None:
    path = sock_path(tmp_path)

    async def run() -> list[dict[str, Any]]:
        async with ControlServer(path, FakeDaemon().handlers()):
            return await raw_exchange(
                path,
                [
                    b"{not json\n",
                    b'["status"]\n',
                    b'{"cmd": "sell-everything"}\n',
                    b"x" * (MAX_REQUEST_BYTES + 10) + b"\n",
                    b'{"cmd": "boom"}\n',
                    b'{"cmd": "reload-model", "path": "models/x"}\n',
                    b'{"cmd": "status"}\n',
                ],
            )

    answers = asyncio.run(run())
    assert [a["ok"] for a in answers] == [False] * 6 + [True]
    assert answers[0]["error"].startswith("malformed JSON")
    assert answers[1]["error"] == 'a request is a JSON object with a string "cmd"'
    assert answers[2]["error"].startswith("unknown command 'sell-everything'; known: boom, ")
    assert answers[3]["error"] == f"request line over {MAX_REQUEST_BYTES} bytes"
    assert answers[4]["error"] == "exchange unreachable"
    assert answers[5]["error"] == "model path must be absolute: 'models/x'"
    assert answers[6]["result"]["mode"] == "paper"


def test_oversize_line_in_pieces_and_a_dropped_client_leave_the_server_serving(
    tmp_path: Path,
) -> None:
    path = sock_path(tmp_path)

    async def run() -> tuple[dict[str, Any], dict[str, Any], Any]:
        async with ControlServer(path, FakeDaemon().handlers()):
            reader, writer = await asyncio.open_unix_connection(str(path))
            # An oversize line arriving in chunks, the next request right behind its newline.
            for _ in range(3):
                writer.write(b"y" * (MAX_REQUEST_BYTES // 2))
                await writer.drain()
            writer.write(b'\n{"cmd": "flatten"}\n')
            await writer.drain()
            first = orjson.loads(await reader.readline())
            second = orjson.loads(await reader.readline())
            writer.close()
            await writer.wait_closed()
            # A client that sends half a request and vanishes.
            _, w2 = await asyncio.open_unix_connection(str(path))
            w2.write(b'{"cmd": "sta')
            w2.close()
            return first, second, await request(path, "status")

    first, second, status = asyncio.run(run())
    assert first == {"ok": False, "error": f"request line over {MAX_REQUEST_BYTES} bytes"}
    assert second == {"ok": True, "result": {"closed": ["BTC/USDT"]}}
    assert status["mode"] == "paper"


def test_client_raises_the_error_answer(tmp_path: Path) -> None:
    path = sock_path(tmp_path)

    async def run() -> list[str]:
        out = []
        async with ControlServer(path, FakeDaemon().handlers()):
            for cmd in ("boom", "nope"):
                with pytest.raises(ControlError) as info:
                    await request(path, cmd)
                out.append(str(info.value))
        return out

    boom, nope = asyncio.run(run())
    assert boom == "exchange unreachable"
    assert nope.startswith("unknown command 'nope'; known: boom, flatten, pause, reload-model")


def test_a_second_server_on_a_live_socket_is_refused(tmp_path: Path) -> None:
    path = sock_path(tmp_path)

    async def run() -> tuple[str, Any]:
        async with ControlServer(path, FakeDaemon().handlers()):
            with pytest.raises(ControlError) as info:
                await ControlServer(path, {}).start()
            # The first one still answers, its file untouched.
            return str(info.value), await request(path, "status")

    message, status = asyncio.run(run())
    assert message.startswith(f"another daemon is listening at {path}")
    assert status["mode"] == "paper"


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = sock_path(tmp_path)
    path.parent.mkdir()
    # What a kill -9 leaves: a socket file nobody listens on.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with pytest.raises(NoDaemonError):
        call(path, "status")

    async def run() -> Any:
        async with ControlServer(path, FakeDaemon().handlers()):
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
            return await request(path, "status")

    assert asyncio.run(run())["mode"] == "paper"
    assert not path.exists()


def test_a_file_that_is_not_a_socket_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "scalpd.sock"
    path.write_text("precious")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        asyncio.run(ControlServer(path, {}).start())
    assert path.read_text() == "precious"


def test_server_on_uvloop(tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")
    path = sock_path(tmp_path)

    async def run() -> Any:
        async with ControlServer(path, FakeDaemon().handlers()):
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
            return await request(path, "flatten")

    assert uvloop.run(run()) == {"closed": ["BTC/USDT"]}


def test_missing_socket_is_no_daemon(tmp_path: Path) -> None:
    path = tmp_path / "none.sock"
    with pytest.raises(NoDaemonError) as info:
        call(path, "status")
    assert str(info.value) == f"no daemon listening at {path} (is `scalpd run` running?)"


def test_socket_path_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCALPD_CONTROL__SOCKET_PATH", raising=False)  # set by conftest
    assert load_settings(None).control.socket_path == Path("state/scalpd.sock")
    with pytest.raises(ConfigError, match="control.socket_path.*too long for a Unix socket"):
        load_settings(None, {"control": {"socket_path": "/tmp/" + "d" * 90 + "/s.sock"}})


def test_format_result_is_readable() -> None:
    assert format_result({**STATUS, "paused_by": None}) == (
        "mode: paper\n"
        "paused: no\n"
        "positions:\n"
        "  BTC/USDT:\n"
        "    qty: 0.01\n"
        "    avg_price: 60000.0\n"
        "breakers: (none)\n"
        "paused_by: -"
    )


# -- the CLI against a server running in another thread -------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, FakeDaemon]]:
    """A control server on its own event loop in a thread, as the daemon would run it."""
    path = sock_path(tmp_path)
    daemon = FakeDaemon()
    loop = asyncio.new_event_loop()
    server = ControlServer(path, daemon.handlers())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    # Captured: the server's log lines would otherwise land in the CLI's stdout.
    with structlog.testing.capture_logs() as daemon.logs:
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
            yield path, daemon
        finally:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


def test_cli_ctl_status(served: tuple[Path, FakeDaemon], capsys: pytest.CaptureFixture) -> None:
    path, _ = served
    assert main(["ctl", "status", "--socket", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mode: paper\n" in out and "  BTC/USDT:\n    qty: 0.01\n" in out
    assert main(["ctl", "status", "--socket", str(path), "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == {**STATUS, "paused_by": None}


def test_cli_ctl_commands(
    served: tuple[Path, FakeDaemon],
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, daemon = served
    monkeypatch.chdir(tmp_path)
    sock = ["--socket", str(path)]
    assert main(["ctl", "pause", "--reason", "maintenance", *sock]) == 0
    assert main(["ctl", "resume", "--breaker", "manual", *sock]) == 0
    assert main(["ctl", "flatten", *sock]) == 0
    assert main(["ctl", "reload-model", "models/tcn/v3", *sock]) == 0
    out = capsys.readouterr().out
    assert "paused: yes" in out and "closed: BTC/USDT" in out
    assert daemon.calls == [
        ("pause", {"reason": "maintenance"}),
        ("resume", {"breaker": "manual"}),
        ("flatten", {}),
        # Relative paths are resolved here: the daemon's working directory is not ours.
        ("reload-model", {"path": str(tmp_path / "models" / "tcn" / "v3")}),
    ]


def test_cli_ctl_errors(
    served: tuple[Path, FakeDaemon], capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    missing = tmp_path / "nobody.sock"
    assert main(["ctl", "status", "--socket", str(missing)]) == 1
    assert capsys.readouterr().err == (
        f"scalpd: error: no daemon listening at {missing} (is `scalpd run` running?)\n"
    )
    path, daemon = served
    daemon.flatten_error = "exchange unreachable"
    assert main(["ctl", "flatten", "--socket", str(path)]) == 1
    assert capsys.readouterr().err == "scalpd: error: exchange unreachable\n"
    failed = [e for e in daemon.logs if e["event"] == "control command failed"]
    assert failed == [
        {"event": "control command failed", "cmd": "flatten", "error": "exchange unreachable",
         "log_level": "warning"}
    ]  # fmt: skip
    assert main(["ctl", "status", "extra/path", "--socket", str(path)]) == 2
    assert "takes no PATH" in capsys.readouterr().err
