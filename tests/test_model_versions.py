"""Model versions born online (issue 8) in the store: their lineage and events round trip through
SQLite (and a v4 database is migrated to hold them), a replay with online learning journals
exactly the records its strategy made, and a paper daemon lists them (`scalpd ctl models`) and
restores one (`scalpd ctl restore-model`) between bars, with an alert."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from scalpd.cli import main
from scalpd.config.settings import load_settings
from scalpd.data.synthetic import generate
from scalpd.fakex import FakeExchange
from scalpd.fakex.testing import exchange_section
from scalpd.live.daemon import Daemon
from scalpd.models.versions import ModelVersion, VersionEvent
from scalpd.ops.control import ControlError, request
from scalpd.store.sqlite import SCHEMA_VERSION, Store, StoreError
from tests.test_daemon_services import on_fake
from tests.tiny_models import tiny_daemon_model

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
HOUR_MS = 3_600_000
M = "tcn/v1"


def _lineage() -> list[ModelVersion | VersionEvent]:
    """v1 approved and promoted; a rejected candidate (v2, no weights); v3 from v1, promoted,
    then rolled back: v1 serves again."""
    return [
        ModelVersion("BTC/USDT", M, 1, 0, T0 + HOUR_MS, b"w1", {"holdout_loss": 0.61}),
        VersionEvent("BTC/USDT", M, 1, "challenger", T0 + HOUR_MS),
        VersionEvent("BTC/USDT", M, 1, "promoted", T0 + 2 * HOUR_MS, "better: p=0.01"),
        ModelVersion("BTC/USDT", M, 2, 1, T0 + 3 * HOUR_MS, None, {"holdout_loss": 0.9}),
        VersionEvent("BTC/USDT", M, 2, "rejected", T0 + 3 * HOUR_MS, "holdout worse"),
        ModelVersion("BTC/USDT", M, 3, 1, T0 + 4 * HOUR_MS, b"w3", {"holdout_loss": 0.6}),
        VersionEvent("BTC/USDT", M, 3, "challenger", T0 + 4 * HOUR_MS),
        VersionEvent("BTC/USDT", M, 3, "promoted", T0 + 5 * HOUR_MS),
        VersionEvent("BTC/USDT", M, 3, "rolled_back", T0 + 6 * HOUR_MS, "loss degraded"),
        ModelVersion("ETH/USDT", M, 1, 0, T0 + HOUR_MS, b"e1", {}),
        VersionEvent("ETH/USDT", M, 1, "challenger", T0 + HOUR_MS),
        # A challenger rolled back in shadow: the trained model (v0) never stopped serving.
        VersionEvent("ETH/USDT", M, 1, "rolled_back", T0 + 2 * HOUR_MS, "worse in shadow"),
    ]


def test_versions_and_events_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = Store(db)
    run = store.start_run("replay", {}, "test")
    other = store.start_run("replay", {}, "test")
    journal = store.journal(run, durable=False)
    for record in _lineage():
        journal.record_model(record)
    journal.flush()
    # Another run counts from the artifact again: its version 1 is another network.
    store.journal(other, durable=False).record_model(
        ModelVersion("BTC/USDT", M, 1, 0, T0, b"other", {})
    )
    store.conn.commit()
    store.close()

    store = Store(db)  # what was committed, read back
    rows = store.model_versions(run, "BTC/USDT")
    got = [(r["version"], r["parent"], r["state"], r["champion"], r["has_weights"]) for r in rows]
    assert got == [
        (1, 0, "promoted", True, True),  # serving again after v3's rollback
        (2, 1, "rejected", False, False),
        (3, 1, "rolled_back", False, True),
    ]
    assert rows[0]["metrics"] == {"holdout_loss": 0.61}
    assert rows[0]["created_ms"] == T0 + HOUR_MS and rows[0]["state_ms"] == T0 + 2 * HOUR_MS
    assert rows[2]["reason"] == "loss degraded" and rows[2]["model"] == M
    assert [r["symbol"] for r in store.model_versions(run)] == ["BTC/USDT"] * 3 + ["ETH/USDT"]
    (eth,) = store.model_versions(run, "ETH/USDT")
    assert (eth["state"], eth["champion"]) == ("rolled_back", False)
    assert [(r["run_id"], r["version"]) for r in store.model_versions(symbol="BTC/USDT")] == [
        (run, 1), (run, 2), (run, 3), (other, 1)
    ]  # fmt: skip
    events = store.model_events(run, "BTC/USDT")
    assert [(e["version"], e["kind"]) for e in events] == [
        (1, "challenger"), (1, "promoted"), (2, "rejected"), (3, "challenger"),
        (3, "promoted"), (3, "rolled_back"),
    ]  # fmt: skip
    assert store.model_weights(run, "BTC/USDT", M, 3) == b"w3"
    assert store.model_weights(other, "BTC/USDT", M, 1) == b"other"
    with pytest.raises(StoreError, match="was rejected by the guard"):
        store.model_weights(run, "BTC/USDT", M, 2)
    with pytest.raises(StoreError, match="has no version 7 of BTC/USDT .* with weights: 1, 3"):
        store.model_weights(run, "BTC/USDT", M, 7)
    with pytest.raises(StoreError, match="has no version 1"):
        store.model_weights(run, "BTC/USDT", "lstm/v9", 1)
    store.close()


def test_a_version_4_store_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "v4.db"
    # A v4 database: today's schema less what v5 added.
    Store(db).close()
    with sqlite3.connect(db) as conn:
        conn.executescript(
            "DROP TABLE model_versions; DROP TABLE model_events;"
            "UPDATE meta SET value = '4' WHERE key = 'schema_version';"
            "INSERT INTO runs(id, mode, status, started_at_ms, config_json, account)"
            " VALUES (1, 'paper', 'stopped', 0, '{}', 'paper:x');"
        )
    store = Store(db)
    assert store.schema_version == SCHEMA_VERSION == 5
    assert store.run(1)["account"] == "paper:x"
    assert store.model_versions() == []
    journal = store.journal(1, durable=True)
    journal.record_model(ModelVersion("BTC/USDT", M, 1, 0, T0, b"w", {"steps": 5}))
    journal.record_model(VersionEvent("BTC/USDT", M, 1, "challenger", T0))
    journal.flush()
    (row,) = store.model_versions(1)
    assert row["state"] == "challenger" and row["metrics"] == {"steps": 5}
    store.close()


# -- a tiny model, online -------------------------------------------------------------------------

API_KEY, API_SECRET = "mv-key-7Qp2", "mv-secret-Zr84kT"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_daemon_model(tmp_path_factory.mktemp("models"), horizon_bars=15)


# Hourly rounds of a few steps on short windows: versions within a few hours of bars.
ONLINE = {
    "enabled": True, "update_every": "hour", "max_steps": 3, "base_lr": 2e-3,
    "lr_vol_power": 0.0, "seq_len": 16, "batch_size": 8, "recent_bars": 60,
    "holdout_bars": 30, "seed": 0, "replay_weights": True,
}  # fmt: skip


def test_a_replay_journals_the_versions_its_strategy_made(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scalpd.replay.runner import ReplayInput, run_replay
    from scalpd.strategy.online import OnlineModel

    if not hasattr(OnlineModel, "take_records"):
        pytest.skip("OnlineModel.take_records is not there yet (the online strategy's records)")
    made: list[ModelVersion | VersionEvent] = []
    take = OnlineModel.take_records

    def spied(self: OnlineModel) -> list[ModelVersion | VersionEvent]:
        records = take(self)
        made.extend(records)
        return records

    monkeypatch.setattr(OnlineModel, "take_records", spied)
    settings = load_settings(
        None,
        {
            "strategy": {"name": "model", "model_path": str(tiny_model), "model_backend": "eager"},
            "online": ONLINE,
            "store": {"path": str(tmp_path / "r.db")},
        },
    )
    bars = generate(days=1.0, seed=5, start="2024-01-01T00:00:00Z")  # 24 hourly rounds
    store = Store(tmp_path / "r.db")
    result = run_replay(settings, ReplayInput([bars], "test"), store)
    versions = [r for r in made if isinstance(r, ModelVersion)]
    events = [r for r in made if isinstance(r, VersionEvent)]
    assert versions and events, "online learning made no version: nothing was compared"
    rows = store.model_versions(result.run_id)
    assert [
        (r["symbol"], r["model"], r["version"], r["parent"], r["created_ms"], r["metrics"])
        for r in rows
    ] == [
        (v.symbol, v.model, v.version, v.parent, v.created_ms, _json_floats(v.metrics))
        for v in sorted(versions, key=lambda v: (v.symbol, v.model, v.version))
    ]
    for v in versions:
        if v.weights is None:
            with pytest.raises(StoreError, match="rejected"):
                store.model_weights(result.run_id, v.symbol, v.model, v.version)
        else:
            assert store.model_weights(result.run_id, v.symbol, v.model, v.version) == v.weights
    assert store.model_events(result.run_id) == [
        {"run_id": result.run_id, "symbol": e.symbol, "model": e.model, "version": e.version,
         "kind": e.kind, "time_ms": e.time_ms, "reason": e.reason}
        for e in events
    ]  # fmt: skip
    # The champion the stored events name is the one the strategy serves.
    online = result.engine.strategy.online
    for symbol in online.counts():
        champions = [r["version"] for r in rows if r["symbol"] == symbol and r["champion"]]
        assert champions == [v for v in [online.serving(symbol)["champion"]] if v != 0]
    store.close()


def test_a_replay_keeps_no_weights_unless_asked(tiny_model: Path, tmp_path: Path) -> None:
    """By default a replay stores each version's lineage and metrics, not its weights."""
    from scalpd.replay.runner import ReplayInput, run_replay

    settings = load_settings(
        None,
        {
            "strategy": {"name": "model", "model_path": str(tiny_model), "model_backend": "eager"},
            "online": {**ONLINE, "replay_weights": False},
            "store": {"path": str(tmp_path / "w.db")},
        },
    )
    bars = generate(days=1.0, seed=5, start="2024-01-01T00:00:00Z")
    store = Store(tmp_path / "w.db")
    result = run_replay(settings, ReplayInput([bars], "test"), store)
    rows = store.model_versions(result.run_id)
    store.close()
    assert rows and not any(r["has_weights"] for r in rows)
    assert any(r["state"] != "rejected" for r in rows)  # kept versions too: lineage only


def _json_floats(metrics: Any) -> dict[str, Any]:
    """Metrics as JSON keeps them: a NaN or an infinity is null."""
    return {
        k: None if isinstance(x, float) and not math.isfinite(x) else x
        for k, x in dict(metrics).items()
    }


# -- a paper daemon: `scalpd ctl models` and `restore-model` ---------------------------------------

BARS = generate(days=0.1, seed=3, start="2024-01-01T00:00:00Z")
SYMBOL = BARS.symbol


def _weights(model: Path, scale: float) -> tuple[str, bytes]:
    """The artifact's name/version and its weights scaled: a network a fine-tune could make."""
    from scalpd.models.artifact import load_artifact
    from scalpd.strategy.model import MODEL_INPUTS, MODEL_INPUTS_ID

    artifact = load_artifact(model, list(MODEL_INPUTS), MODEL_INPUTS_ID)
    state = {
        k: v * scale if v.is_floating_point() else v for k, v in artifact.net.state_dict().items()
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return f"{artifact.name}/{artifact.version}", buffer.getvalue()


@contextlib.asynccontextmanager
async def _paper_daemon(
    settings: Any, bars: Any = BARS
) -> AsyncIterator[tuple[Daemon, FakeExchange, Any]]:
    async with on_fake(settings, paper=True, bars=bars, keys=(API_KEY, API_SECRET)) as h:
        yield h.daemon, h.fx, h.step


def model_daemon_settings(
    fx: FakeExchange, model: Path, db: Path, online: dict[str, Any], **sections: Any
) -> Any:
    """A paper daemon's settings trading SYMBOL on `fx` with the model strategy (eager) and
    `online` as its [online] section; `sections` adds or replaces sections."""
    return load_settings(
        None,
        {
            "exchange": exchange_section(fx, API_KEY, API_SECRET),
            "symbols": {"trade": [SYMBOL]},
            "strategy": {"name": "model", "model_path": str(model), "model_backend": "eager"},
            "online": online,
            "store": {"path": str(db)},
            "logging": {"level": "warning"},
            **sections,
        },
    )


def test_ctl_restores_a_stored_version_between_bars_and_alerts(
    tiny_model: Path, tmp_path: Path, endpoint: Any, capsys: pytest.CaptureFixture
) -> None:
    db = tmp_path / "d.db"
    model, weights = _weights(tiny_model, 0.5)
    # An earlier run's lineage: v1 kept, v2 rejected (no weights).
    store = Store(db)
    old = store.start_run("paper", {}, "earlier")
    journal = store.journal(old, durable=True)
    for record in (
        ModelVersion(SYMBOL, model, 1, 0, T0, weights, {"holdout_loss": 0.6}),
        VersionEvent(SYMBOL, model, 1, "promoted", T0, "better"),
        ModelVersion(SYMBOL, model, 2, 1, T0 + HOUR_MS, None, {"holdout_loss": 0.9}),
        VersionEvent(SYMBOL, model, 2, "rejected", T0 + HOUR_MS, "holdout worse"),
    ):
        journal.record_model(record)
    journal.flush()
    store.close()

    def settings(fx: FakeExchange) -> Any:
        # No round in the few bars stepped: only the restore changes the weights.
        online = {**ONLINE, "update_every": "day"}
        return model_daemon_settings(fx, tiny_model, db, online, alerts={"urls": [endpoint.url()]})

    async def scenario() -> tuple[int, list[Any]]:
        async with _paper_daemon(settings) as (daemon, _fx, step):
            await step(3)
            socket = daemon.settings.control.socket_path
            listed = await request(socket, "models", run=old)
            assert listed["run_id"] == old and listed["online"] is True
            assert listed["model"] == model
            assert listed["serving"][SYMBOL]["champion"] == 0  # this run: the trained model
            assert [(v["version"], v["parent"], v["state"], v["champion"], v["has_weights"])
                    for v in listed["versions"]] == [
                (1, 0, "promoted", True, True), (2, 1, "rejected", False, False)
            ]  # fmt: skip
            assert (await request(socket, "models"))["versions"] == []  # this run: none yet
            # The CLI (synchronous: from a thread), as an operator types it.
            cli = ["ctl", "models", "--run", str(old), "--socket", str(socket)]
            assert await asyncio.to_thread(main, cli) == 0
            answers = [await request(socket, "restore-model", symbol=SYMBOL, version=1, run=old)]
            with pytest.raises(ControlError, match="was rejected by the guard"):
                await request(socket, "restore-model", symbol=SYMBOL, version=2, run=old)
            with pytest.raises(ControlError, match="has no version 4 .*ctl models"):
                await request(socket, "restore-model", symbol=SYMBOL, version=4, run=old)
            with pytest.raises(ControlError, match="unknown symbol 'DOGE/USDT'"):
                await request(socket, "restore-model", symbol="DOGE/USDT", version=1, run=old)
            # Version 0: the trained model itself, from its artifact.
            serving = (await request(socket, "models"))["serving"][SYMBOL]
            assert (serving["champion"], serving["challenger"]) == (1, None)
            answers.append(await request(socket, "restore-model", symbol=SYMBOL, version=0))
            await step(2)  # the restored weights serve on
            assert daemon.bars_processed == 5
            assert daemon.run_id is not None
            return daemon.run_id, answers

    run_id, answers = asyncio.run(scenario())
    assert [(a["symbol"], a["model"], a["version"], a["from_run"]) for a in answers] == [
        (SYMBOL, model, 1, old), (SYMBOL, model, 0, run_id)
    ]  # fmt: skip
    table = capsys.readouterr().out
    assert f"run {old}: 2 model version(s)" in table
    assert "SYMBOL" in table and "rejected" in table and "holdout_loss=0.6" in table
    store = Store(db)
    restored = [(e["version"], e["kind"]) for e in store.model_events(run_id)]
    store.close()
    assert restored == [(1, "restored"), (0, "restored")]
    titles = [a["title"] for a in endpoint.received]
    assert titles.count(f"model version restored (paper): {SYMBOL} v1") == 1
    assert titles.count(f"model version restored (paper): {SYMBOL} v0") == 1


def test_ctl_restore_model_needs_online_learning(tmp_path: Path) -> None:
    def settings(fx: FakeExchange) -> Any:
        return load_settings(
            None,
            {
                "exchange": exchange_section(fx, API_KEY, API_SECRET),
                "symbols": {"trade": [SYMBOL]},
                "store": {"path": str(tmp_path / "e.db")},
                "logging": {"level": "warning"},
            },
        )

    async def scenario() -> None:
        async with _paper_daemon(settings) as (daemon, _fx, step):
            await step(1)
            socket = daemon.settings.control.socket_path
            listed = await request(socket, "models")
            assert listed == {"run_id": daemon.run_id, "online": False, "model": None,
                              "serving": None, "versions": []}  # fmt: skip
            with pytest.raises(ControlError, match="needs online learning"):
                await request(socket, "restore-model", symbol=SYMBOL, version=1)

    asyncio.run(scenario())


def test_cli_ctl_model_arguments(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    sock = ["--socket", str(tmp_path / "none.sock")]
    assert main(["ctl", "restore-model", SYMBOL, *sock]) == 2
    assert "takes SYMBOL VERSION" in capsys.readouterr().err
    assert main(["ctl", "restore-model", SYMBOL, "v3", *sock]) == 2
    assert "allowed an integer" in capsys.readouterr().err
    assert main(["ctl", "models", "extra", *sock]) == 2
    assert main(["ctl", "status", "--run", "3", *sock]) == 2
    assert "takes no --run" in capsys.readouterr().err
    assert main(["ctl", "models", "--run", "3", *sock]) == 1  # well formed: no daemon there
    assert "no daemon listening" in capsys.readouterr().err


def test_a_paper_daemon_trains_its_rounds_off_the_event_loop(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Hourly rounds in a paper daemon: they are only noted at the bar they fall due, trained
    in the worker process (scalpd/live/learning.py) while bars go on, handed back between
    bars, and their versions and events journaled in the store."""
    db = tmp_path / "r.db"

    def settings(fx: FakeExchange) -> Any:
        return model_daemon_settings(fx, tiny_model, db, ONLINE)

    # The features' longest warm-up is ~1,064 bars: the learner trains on finite rows only.
    bars = generate(days=0.85, seed=3, start="2024-01-01T00:00:00Z")

    async def scenario() -> tuple[int, int]:
        async with _paper_daemon(settings, bars) as (daemon, _fx, step):
            online = daemon.engine.strategy.online  # type: ignore[union-attr]
            assert daemon.rounds is not None and online._deferred
            await step(len(bars) - 1)
            async with asyncio.timeout(120):  # a bound on a hang only
                while sum(a + r for a, r in online.counts().values()) < 1:
                    await asyncio.sleep(0.05)
            assert daemon.rounds.failures == 0
            return daemon.run_id, sum(a + r for a, r in online.counts().values())

    run_id, rounds = asyncio.run(scenario())
    store = Store(db)
    versions, events = store.model_versions(run_id), store.model_events(run_id)
    store.close()
    # Each round handed back made a version (kept, or rejected with no weights) and an event.
    assert len(versions) >= rounds >= 1
    assert {e["kind"] for e in events} <= {"challenger", "rejected", "promoted", "rolled_back"}
    assert all((v["has_weights"]) == (v["state"] != "rejected") for v in versions)
