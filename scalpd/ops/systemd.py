"""sd_notify for `Type=notify` units, and the watchdog task that pings from the event loop.

systemd passes `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace) to a notify
service; each message is one datagram of `KEY=VALUE` lines. Without the variable (a terminal,
the tests) every call here is a no-op returning False, so the daemon needs no mode switch.

The watchdog pings from an asyncio task, not a thread: a thread would keep pinging while the
event loop is stuck, and the point of `WatchdogSec=` is that systemd restarts a daemon whose
loop no longer turns. It pings every half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("scalpd.ops.systemd")


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):  # the abstract namespace: a leading NUL byte, no file
        return "\0" + path[1:]
    return path


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify message; True when it was sent. Never blocks and never raises: a full
    socket buffer or a vanished manager is logged, and the daemon goes on."""
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # called from the event loop
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify_failed", message=message.split("\n")[0], error=str(exc))
        return False


def ready(env: Mapping[str, str] | None = None) -> bool:
    """The service is up: systemd ends `activating` and starts the watchdog clock."""
    return notify("READY=1", env)


def stopping(env: Mapping[str, str] | None = None) -> bool:
    return notify("STOPPING=1", env)


def status(text: str, env: Mapping[str, str] | None = None) -> bool:
    """A one-line status that `systemctl status` shows."""
    return notify("STATUS=" + text.replace("\n", " "), env)


def watchdog(env: Mapping[str, str] | None = None) -> bool:
    return notify("WATCHDOG=1", env)


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of $WATCHDOG_USEC), or None when systemd asks for
    none: no variable, or $WATCHDOG_PID naming another process (the variable was inherited)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("watchdog_usec_invalid", value=usec)
        return None
    return value / 2 / 1e6 if value > 0 else None


class Watchdog:
    """Pings WATCHDOG=1 from the running event loop while the loop turns."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        self.interval_s = watchdog_interval_s(self._env)
        self.pings = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start pinging (no-op without $WATCHDOG_USEC); call from the event loop."""
        if self.interval_s is None or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sd-watchdog")
        log.info("watchdog_started", interval_s=self.interval_s)

    async def _run(self) -> None:
        assert self.interval_s is not None
        while True:
            if watchdog(self._env):
                self.pings += 1
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
