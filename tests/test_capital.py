"""Capital levels: the same strategy at several account sizes, and accounts too small to trade."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from scalpd.cli import main
from scalpd.config.settings import ConfigError, Settings
from scalpd.replay.capital import check_capital, largest_entry_usdt, parse_levels


def test_parse_levels() -> None:
    assert parse_levels("default") == [100.0, 1_000.0, 10_000.0, 100_000.0]
    assert parse_levels("250, 1e3") == [250.0, 1_000.0]
    with pytest.raises(ConfigError, match="'abc' is not a number"):
        parse_levels("100,abc")
    with pytest.raises(ConfigError, match="not a positive amount"):
        parse_levels("-5")
    with pytest.raises(ConfigError, match="given twice"):
        parse_levels("100,100")


def test_largest_entry_follows_the_sizing_rule() -> None:
    settings = Settings()
    assert largest_entry_usdt(settings, 100.0) == pytest.approx(95.0)
    fixed = Settings(strategy={"sizing": "fixed_size", "fixed_size_usdt": 50.0})
    assert largest_entry_usdt(fixed, 10_000.0) == 50.0
    assert largest_entry_usdt(fixed, 20.0) == pytest.approx(19.0)


def test_capital_below_the_minimum_notional_is_refused_with_the_numbers() -> None:
    settings = Settings()  # BTC/USDT min notional 5 USDT, position_fraction 0.95
    check_capital(settings, ["BTC/USDT"], 5.3)  # 5.035 USDT entry: allowed
    with pytest.raises(ConfigError) as err:
        check_capital(settings, ["BTC/USDT"], 5.0)
    assert str(err.value) == (
        "capital 5 USDT is too small for BTC/USDT: an entry may spend 4.75 USDT "
        "(sizing fixed_fraction, position_fraction 0.95) but the exchange's minimum order is 5 USDT"
    )


def test_replay_at_capital_levels_side_by_side(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCALPD_DATA__SYNTHETIC_DAYS", "2")
    # Market impact and the participation cap grow with size: with them a $100k account fills
    # worse and its exits differ. Without them, only the lot step tells the levels apart.
    monkeypatch.setenv("SCALPD_SIM__IMPACT_COEFFICIENT", "0")
    monkeypatch.setenv("SCALPD_SIM__MAX_PARTICIPATION", "1")
    db = tmp_path / "r.db"
    args = ["replay", "--db", str(db), "--capital", "100,100000", "--json", "--no-baselines"]
    assert main(args) == 0
    rows = orjson.loads(capsys.readouterr().out)["capital_levels"]
    assert [r["capital_usdt"] for r in rows] == [100.0, 100_000.0]
    assert rows[0]["run_id"] != rows[1]["run_id"]
    small, large = rows
    assert small["trades"] == large["trades"] > 0
    # Lot-step flooring costs the small account a larger share: its fees scale with capital
    # only roughly, and its return is not the large account's exactly.
    assert small["fees_usdt"] < large["fees_usdt"] / 500
    assert small["total_return_pct"] != large["total_return_pct"]
    # Each level's stored report carries the side-by-side table, for `scalpd report RUN`.
    assert main(["report", str(small["run_id"]), "--db", str(db), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in report["capital_levels"]] == [small["run_id"], large["run_id"]]


def test_replay_refuses_a_capital_level_below_the_minimum(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCALPD_DATA__SYNTHETIC_DAYS", "1")
    assert main(["replay", "--db", str(tmp_path / "r.db"), "--capital", "1000,3"]) == 2
    err = capsys.readouterr().err
    assert "capital 3 USDT is too small for SYNBTC/USDT" in err
