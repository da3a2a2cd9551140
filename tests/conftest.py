"""Shared fixtures. Real market data lives in ../shared/data beside the repository.

Where it is absent the tests that need it skip with the reason; with SCALPD_REQUIRE_SHARED_DATA=1
(set by .ci/run) its absence is a failure instead, so CI never skips them silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


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
