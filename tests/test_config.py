"""Settings: config.toml documents the defaults, the environment overrides, secrets stay secret."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from scalpd.config import ConfigError, Settings, load_settings
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "config.toml"
KEY, SECRET = "k-9fQ2-not-a-real-key", "s-Zx81-not-a-real-secret"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SCALPD_") and key != "SCALPD_REQUIRE_SHARED_DATA":
            monkeypatch.delenv(key)


def test_config_toml_equals_the_defaults() -> None:
    assert load_settings(CONFIG) == Settings()
    assert load_settings(None) == Settings()


def test_config_toml_lists_every_key() -> None:
    """Every key of the model is in config.toml: set, or shown commented out (optional paths);
    the secrets are never in it."""
    text = CONFIG.read_text()
    data = tomllib.loads(text)
    defaults = Settings().model_dump()
    for section, values in defaults.items():
        assert section in data, section
        for key in values:
            if key in ("api_key", "api_secret"):
                assert key not in data[section]
            elif values[key] is None:  # optional (a URL or path): shown commented out
                assert f"# {key} = " in text, key
            else:
                assert key in data[section], f"{section}.{key}"
        assert set(data[section]) <= set(values), section


def test_env_overrides_one_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALPD_RISK__MAX_ORDER_NOTIONAL_USDT", "500")
    settings = load_settings(CONFIG)
    assert settings.risk.max_order_notional_usdt == 500.0
    # The rest of the section still comes from the file.
    assert settings.risk.max_position_notional_usdt == 100_000.0
    assert settings.fees == Settings().fees


def test_env_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "[risk]\nmax_order_notional_usdt = 123.0\nmax_position_notional_usdt = 456.0\n"
        '[strategy]\nfast_period_bars = 5\n[logging]\nlevel = "debug"\n'
    )
    monkeypatch.setenv("SCALPD_RISK__MAX_ORDER_NOTIONAL_USDT", "500")
    settings = load_settings(path)
    assert settings.risk.max_order_notional_usdt == 500.0
    assert settings.risk.max_position_notional_usdt == 456.0
    assert settings.strategy.fast_period_bars == 5
    assert settings.logging.level == "debug"


def test_file_values_and_overrides() -> None:
    settings = load_settings(
        None, {"strategy": {"max_hold_bars": 7}, "sim": {"starting_cash_usdt": 5}}
    )
    assert settings.strategy.max_hold_bars == 7
    assert settings.sim.starting_cash_usdt == 5.0
    assert settings.strategy.fast_period_bars == 12


def _assert_secrets_hidden(settings: Settings) -> None:
    shown = [
        repr(settings),
        str(settings),
        orjson.dumps(settings.redacted()).decode(),
        settings.model_dump_json(),
        repr(settings.exchange),
    ]
    for text in shown:
        assert KEY not in text and SECRET not in text
    redacted = settings.redacted()
    assert "api_key" not in redacted["exchange"] and "api_secret" not in redacted["exchange"]


def test_secrets_from_env_are_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALPD_EXCHANGE__API_KEY", KEY)
    monkeypatch.setenv("SCALPD_EXCHANGE__API_SECRET", SECRET)
    settings = load_settings(CONFIG)
    assert isinstance(settings.exchange.api_key, SecretStr)
    assert isinstance(settings.exchange.api_secret, SecretStr)
    assert settings.exchange.api_key.get_secret_value() == KEY
    assert settings.exchange.api_secret.get_secret_value() == SECRET
    _assert_secrets_hidden(settings)


def _secrets_file(tmp_path: Path, mode: int, body: str | None = None) -> Path:
    path = tmp_path / "secrets.toml"
    path.write_text(body if body is not None else f'api_key = "{KEY}"\napi_secret = "{SECRET}"\n')
    path.chmod(mode)
    return path


def test_owner_only_secrets_file_is_read(tmp_path: Path) -> None:
    path = _secrets_file(tmp_path, 0o600)
    settings = load_settings(None, {"exchange": {"secrets_file": str(path)}})
    assert isinstance(settings.exchange.api_key, SecretStr)
    assert settings.exchange.api_key.get_secret_value() == KEY
    assert settings.exchange.api_secret.get_secret_value() == SECRET
    _assert_secrets_hidden(settings)
    assert settings.redacted()["exchange"]["secrets_file"] == str(path)


def test_secrets_file_from_config_file(tmp_path: Path) -> None:
    path = _secrets_file(tmp_path, 0o400)
    config = tmp_path / "config.toml"
    config.write_text(f'[exchange]\nsecrets_file = "{path}"\n')
    settings = load_settings(config)
    assert settings.exchange.api_secret.get_secret_value() == SECRET


def test_env_secret_wins_over_secrets_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _secrets_file(tmp_path, 0o600)
    monkeypatch.setenv("SCALPD_EXCHANGE__API_KEY", "from-env")
    settings = load_settings(None, {"exchange": {"secrets_file": str(path)}})
    assert settings.exchange.api_key.get_secret_value() == "from-env"
    assert settings.exchange.api_secret.get_secret_value() == SECRET


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610])
def test_secrets_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = _secrets_file(tmp_path, mode)
    with pytest.raises(ConfigError, match="owner only") as info:
        load_settings(None, {"exchange": {"secrets_file": str(path)}})
    assert KEY not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [('api_key = "x"\npassword = "y"\n', "unknown keys"), ("api_key = \n", "not valid TOML")],
)
def test_bad_secrets_file(tmp_path: Path, body: str, fragment: str) -> None:
    path = _secrets_file(tmp_path, 0o600, body)
    with pytest.raises(ConfigError, match=fragment):
        load_settings(None, {"exchange": {"secrets_file": str(path)}})


def test_missing_secrets_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no file"):
        load_settings(None, {"exchange": {"secrets_file": str(tmp_path / "nope.toml")}})


@pytest.mark.parametrize("key", ["api_key", "api_secret"])
def test_secret_in_config_file_is_refused(tmp_path: Path, key: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[exchange]\n{key} = "{KEY}"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "not allowed in a config file" in str(info.value)
    assert KEY not in str(info.value)


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        (
            '[strategy]\nfast_period_bars = "abc"\n',
            "'strategy.fast_period_bars' has bad value 'abc'",
        ),
        ("[strategy]\nfast_period_bars = 50\n", "fast_period_bars must be below slow_period_bars"),
        ("[strategy]\nposition_fraction = 1.5\n", "'strategy.position_fraction' has bad value 1.5"),
        ("[strategy]\nfoo = 1\n", "config key 'strategy.foo' is unknown"),
        ("[nosuch]\nx = 1\n", "config key 'nosuch' is unknown"),
        ('[data]\non_bad_rows = "ignore"\n', "'data.on_bad_rows' has bad value 'ignore'"),
        ('[fees]\ntier = "VIP11"\n', "'fees.tier' has bad value 'VIP11'"),
        ('[symbols]\ntrade = ["BTCUSDT"]\n', "must look like BASE/QUOTE"),
        ("[store]\nequity_snapshot_interval_s = 5\n", "equity_snapshot_interval_s"),
        ("[strategy\n", "is not valid TOML"),
    ],
)
def test_bad_config_file_is_one_line(tmp_path: Path, toml: str, fragment: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")


def test_bad_env_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALPD_RISK__MAX_ORDER_NOTIONAL_USDT", "lots")
    with pytest.raises(ConfigError, match="'risk.max_order_notional_usdt' has bad value 'lots'"):
        load_settings(None)


def test_bad_env_value_for_a_list_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALPD_SYMBOLS__TRADE", "BTC/USDT")
    with pytest.raises(ConfigError, match="symbols"):
        load_settings(None)


def test_env_list_value_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALPD_SYMBOLS__TRADE", '["BTC/USDT", "ETH/USDT"]')
    assert load_settings(None).symbols.trade == ["BTC/USDT", "ETH/USDT"]


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.risk.max_order_notional_usdt = 1.0  # type: ignore[misc]
