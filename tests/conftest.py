"""Shared fixtures. Real market data lives in ../shared/data beside the repository.

Where it is absent the tests that need it skip with the reason; with SCALPD_REQUIRE_SHARED_DATA=1
(set by .ci/run) its absence is a failure instead, so CI never skips them silently.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import structlog

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


_CONTROL_SOCKETS = itertools.count()


@pytest.fixture(autouse=True)
def _control_socket_per_test(monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> None:
    """A daemon a test starts (in process or as `scalpd run`) serves its control socket in this
    session's temporary directory, not at state/scalpd.sock of the working directory, where
    another test run at the same time would find it taken. A test's own setting still wins."""
    path = tmp_path_factory.getbasetemp() / f"ctl{next(_CONTROL_SOCKETS)}.sock"
    monkeypatch.setenv("SCALPD_CONTROL__SOCKET_PATH", str(path))


@pytest.fixture(autouse=True)
def _logging_back_to_defaults():
    """A test that calls `scalpd.cli.main` points logging at its captured stderr, which pytest
    closes afterwards: later tests must not write there."""
    yield
    structlog.reset_defaults()


def shared_file(relative: str) -> Path:
    """Path of a file under ../shared/data, or skip (fail in CI) when it is missing."""
    path = SHARED_DATA / relative
    if not path.is_file():
        message = f"real market data not found at {path} (see ../shared/data/README.md)"
        if os.environ.get("SCALPD_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message + "; CI requires it")
        pytest.skip(message)
    return path


@pytest.fixture
def btc_2024() -> Path:
    return shared_file("binance-spot/BTCUSDT-1m-2024.parquet")


@pytest.fixture
def btc_2020() -> Path:
    return shared_file("binance-spot/BTCUSDT-1m-2020.parquet")


# -- a local alert target (apprise's json:// posts here) -----------------------------------------

ENDPOINT_GATE_S = 20  # the longest a held reply waits for its gate: a bound on a hang only


class Endpoint:
    """An HTTP server in a thread that records each POSTed JSON body; `gate` holds replies."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.paths: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.request_started = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                outer.request_started.set()
                outer.gate.wait(ENDPOINT_GATE_S)
                outer.received.append(body)
                outer.paths.append(self.path)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "alerts") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    ep = Endpoint()
    yield ep
    ep.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Float sums depend on how work is split between threads: one thread, one answer (for
    the tests that compare torch results)."""
    import torch  # here: most tests never load it

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
