"""`scalpd bench decision_latency`: its machinery on a handful of bars (shape only, no timing).

The benchmark's figures are never asserted: a test checks that the measurement runs end to end
(fake exchange in a child process, the live daemon with an ensemble model, three symbols) and
that what it reports has the promised names, units and counts.
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson

from scalpd.bench.decision_latency import (
    DAEMON_MEASURE,
    SYMBOL_FILES,
    load_windows,
    measure_decision_latency,
    results,
    train_bench_model,
)
from tests.conftest import shared_file

# Small members: the shape of the results does not depend on the model's size.
SMALL_ENSEMBLE = {
    "window_bars": 96,
    "stride_bars": 48,
    "member_net": {
        "tcn": {"hidden": 16, "levels": 2},
        "transformer": {"d_model": 16, "layers": 1, "window_bars": 32},
        "lstm": {"hidden": 16},
    },
}


def _log(*entries: dict) -> list[bytes]:
    return [b"not json: a third-party line"] + [orjson.dumps(e) for e in entries]


def test_bars_from_log_marks_orders_and_positions() -> None:
    from scalpd.bench.decision_latency import bars_from_log

    lines = _log(
        {"event": "bar", "symbol": "A"},
        {"event": "order", "symbol": "B"},
        {"event": "fill", "symbol": "B", "side": "buy"},
        {"event": "bar", "symbol": "B"},  # sent an entry, filled at once
        {"event": "bar", "symbol": "A"},
        {"event": "order", "symbol": "B"},
        {"event": "fill", "symbol": "B", "side": "sell"},
        {"event": "bar", "symbol": "B"},  # sent the exit
        {"event": "bar", "symbol": "B"},  # flat again
    )
    bars = bars_from_log(lines)
    assert [(b.symbol, b.sent_order, b.positions_open) for b in bars] == [
        ("A", False, False),
        ("B", True, False),
        ("A", False, True),
        ("B", True, True),
        ("B", False, False),
    ]


def test_decision_latency_bench_reports_its_shape(tmp_path: Path) -> None:
    for relative in SYMBOL_FILES.values():
        shared_file(relative)
    model_path, threshold = train_bench_model(tmp_path, train_days=2, train=SMALL_ENSEMBLE)
    assert 0 < threshold < 1
    warmup_steps, measure_steps = 3, 4
    bars = load_windows(warmup_steps + measure_steps + 1)
    assert sorted(bars) == sorted(SYMBOL_FILES)
    # Eager: the ONNX export (seconds per member and symbol) is the benchmark's business.
    run = measure_decision_latency(
        bars, model_path, threshold, model_backend="eager",
        warmup_steps=warmup_steps, measure_steps=measure_steps,
    )  # fmt: skip
    samples = measure_steps * len(bars)
    assert run.mode == "live" and run.warmup_bars == warmup_steps * len(bars)
    assert run.measured_by == DAEMON_MEASURE
    assert len(run.latency_s) == len(run.sent_order) == len(run.positions_open) == samples
    assert sorted(set(run.symbols)) == sorted(SYMBOL_FILES)
    lines = results(run)
    assert [r["bench"] for r in lines] == [
        "decision_latency_us_p50",
        "decision_latency_us_p99",
        "decision_latency_order_us_p99",
    ]
    for line in lines:
        assert line["unit"] == "us" and line["samples"] == samples
        assert 0 <= line["bars_with_order"] <= samples
        assert line["symbols"] == sorted(SYMBOL_FILES)
    p50, p99 = lines[0]["value"], lines[1]["value"]
    assert math.isfinite(p50) and 0 < p50 <= p99 <= lines[1]["max_us"]
