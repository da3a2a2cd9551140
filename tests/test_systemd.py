"""The systemd units pass `systemd-analyze verify`; sd_notify messages reach a real AF_UNIX
datagram socket; the daemon says READY, pings the watchdog and says STOPPING, and alerts its
start and stop through apprise, against the fake exchange.

No timing assertions: the tests wait for messages, bounded only against a hang.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scalpd.config.settings import load_settings
from scalpd.data.synthetic import generate
from scalpd.fakex import FakeExchange
from scalpd.live.daemon import Daemon
from scalpd.ops import systemd
from tests.conftest import REPO_ROOT
from tests.test_alerts import Endpoint

UNITS = REPO_ROOT / "systemd"
WAIT_S = 20


def _unit_settings(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


@pytest.mark.parametrize("unit", ["scalpd.service", "scalpd@.service"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, unit: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt install systemd)")
    text = (UNITS / unit).read_text()
    # verify checks that ExecStart's program exists; /opt/scalpd is not installed here.
    assert "ExecStart=/opt/scalpd/.venv/bin/scalpd run\n" in text
    copy = text.replace("/opt/scalpd/.venv/bin/scalpd run", "/bin/true run")
    (tmp_path / unit).write_text(copy)
    # A template is verified through an instance of it.
    name = unit.replace("@.", "@paper.")
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""  # unknown keys and bad values only warn


@pytest.mark.parametrize("unit", ["scalpd.service", "scalpd@.service"])
def test_units_hold_what_the_daemon_relies_on(unit: str) -> None:
    values = _unit_settings(UNITS / unit)
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "User": "scalpd",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/opt/scalpd/state /opt/scalpd/models",
        "UMask": "0077",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert values.get(key) == [value], key
    # The program is the console script pyproject.toml installs.
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert values["ExecStart"] == ["/opt/scalpd/.venv/bin/scalpd run"] and "scalpd" in scripts
    if "@" in unit:
        env = values["Environment"]
        assert "SCALPD_CONFIG=/etc/scalpd/%i.toml" in env
        assert "SCALPD_STORE__PATH=/opt/scalpd/state/%i/scalpd.db" in env
        assert values["EnvironmentFile"] == ["-/etc/scalpd/%i.env"]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's, and the NOTIFY_SOCKET value naming it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    if len(str(path)) < 100:  # sun_path holds 108 bytes
        sock.bind(str(path))
        name = str(path)
    else:
        name = f"@scalpd-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name[1:])
    sock.settimeout(WAIT_S)
    yield sock, name
    sock.close()


def _drain(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_notify_messages_arrive(notify_socket: tuple[socket.socket, str]) -> None:
    sock, name = notify_socket
    env = {"NOTIFY_SOCKET": name}
    assert systemd.ready(env) and systemd.watchdog(env) and systemd.status("a\nb", env)
    assert systemd.stopping(env)
    got = [sock.recv(4096).decode() for _ in range(4)]
    assert got == ["READY=1", "WATCHDOG=1", "STATUS=a b", "STOPPING=1"]


def test_abstract_namespace_socket() -> None:
    name = f"@scalpd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])
        sock.settimeout(WAIT_S)
        assert systemd.ready({"NOTIFY_SOCKET": name})
        assert sock.recv(4096) == b"READY=1"


def test_without_notify_socket_nothing_is_sent() -> None:
    assert not systemd.ready({})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": ""})
    # A socket that vanished is logged, never raised.
    assert not systemd.ready({"NOTIFY_SOCKET": "/nonexistent/notify.sock"})


def test_watchdog_interval_from_the_environment() -> None:
    pid = str(os.getpid())
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 15.0
    # Inherited from a parent: not ours to ping.
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval_s({}) is None
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert systemd.Watchdog({}).interval_s is None


def test_watchdog_pings_repeatedly_from_a_running_loop(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, name = notify_socket
    sock.setblocking(False)

    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        watchdog = systemd.Watchdog({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "20000"})
        assert watchdog.interval_s == 0.01
        watchdog.start()
        try:
            return [await asyncio.wait_for(loop.sock_recv(sock, 64), WAIT_S) for _ in range(5)]
        finally:
            await watchdog.stop()

    assert asyncio.run(run()) == [b"WATCHDOG=1"] * 5


def test_daemon_says_ready_pings_and_stops_and_alerts(
    tmp_path: Path,
    notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock, name = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    endpoint = Endpoint()
    bars = generate(days=0.01, seed=3, start="2024-01-01T00:00:00Z")

    async def run() -> int:
        fx = FakeExchange({bars.symbol: bars.kline_columns()}, api_key="k", api_secret="s")
        await fx.start()
        settings = load_settings(
            None,
            {
                "exchange": {"rest_url": fx.base_url, "ws_url": fx.ws_url},
                "symbols": {"trade": [bars.symbol], "stream_trades": False},
                "store": {"path": str(tmp_path / "paper.db")},
                "alerts": {"urls": [endpoint.url()]},
                "logging": {"level": "warning"},
            },
        )
        daemon = Daemon(settings, paper=True)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(fx.wait_subscribed(1), WAIT_S)
            for k in range(3):
                assert await fx.step()
                await asyncio.wait_for(daemon.wait_processed(k + 1), WAIT_S)
        finally:
            daemon.stop()
            code = await asyncio.wait_for(task, WAIT_S)
            await fx.stop()
        return code

    try:
        assert asyncio.run(run()) == 0
    finally:
        endpoint.close()
    messages = _drain(sock)
    assert "WATCHDOG=1" in messages  # the first ping goes out as the loop starts
    others = [m for m in messages if m != "WATCHDOG=1"]
    assert others[0] == "READY=1" and others[1].startswith("STATUS=paper run ")
    assert others[-1] == "STOPPING=1"
    titles = [m["title"] for m in endpoint.received]
    assert titles == ["scalpd started (paper)", "scalpd stopped (paper)"]
    assert endpoint.received[1]["message"].startswith("run 1: stopped. bars 3")
