"""The settings model: every config key, its type, default and unit, defined once.

`config.toml` at the repository root documents the same keys; a test keeps the two equal.
Values come from, highest priority first: environment variables `SCALPD_<SECTION>__<KEY>`,
then the TOML file, then the defaults below. API keys come only from the environment or an
owner-only secrets file and are held as `SecretStr`, so they never print.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

ENV_PREFIX = "SCALPD_"


class ConfigError(Exception):
    """A bad configuration; the message is one line: the key, the value, what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class MarketRules(Section):
    """Exchange filters of one symbol (Binance spot PRICE_FILTER, LOT_SIZE, NOTIONAL)."""

    tick_size: float = Field(0.01, gt=0, description="price step, quote units")
    step_size: float = Field(0.00001, gt=0, description="quantity step, base units")
    min_qty: float = Field(0.00001, gt=0, description="smallest quantity, base units")
    min_notional_usdt: float = Field(5.0, ge=0, description="smallest order value, USDT")


def _default_markets() -> dict[str, MarketRules]:
    # Binance spot filters as of 2024; live trading reads them from the exchange instead.
    return {
        "BTC/USDT": MarketRules(tick_size=0.01, step_size=0.00001, min_qty=0.00001),
        "ETH/USDT": MarketRules(tick_size=0.01, step_size=0.0001, min_qty=0.0001),
        "BNB/USDT": MarketRules(tick_size=0.01, step_size=0.001, min_qty=0.001),
        "SOL/USDT": MarketRules(tick_size=0.01, step_size=0.001, min_qty=0.001),
        "POL/USDT": MarketRules(tick_size=0.0001, step_size=0.1, min_qty=0.1),
    }


class ExchangeSettings(Section):
    name: Literal["binance"] = "binance"
    rest_url: str | None = Field(
        None, description="REST base URL override (testnet, local fake); None = the exchange's"
    )
    ws_url: str | None = Field(None, description="WebSocket base URL override; must hold /stream")
    request_timeout_ms: int = Field(10_000, gt=0)
    reconnect_initial_backoff_s: float = Field(1.0, gt=0)
    reconnect_max_backoff_s: float = Field(30.0, gt=0)
    secrets_file: Path | None = Field(
        None, description="TOML file with api_key and api_secret, readable by its owner only"
    )
    # Secrets: environment (SCALPD_EXCHANGE__API_KEY) or secrets_file only, never config.toml.
    api_key: SecretStr | None = None
    api_secret: SecretStr | None = None


class SymbolsSettings(Section):
    trade: list[str] = Field(default_factory=lambda: ["BTC/USDT"], min_length=1)
    timeframe: Literal["1m"] = "1m"
    stream_trades: bool = Field(True, description="live: also watch every trade print")
    markets: dict[str, MarketRules] = Field(default_factory=_default_markets)

    @model_validator(mode="after")
    def _known_markets(self) -> SymbolsSettings:
        for symbol in self.trade:
            if "/" not in symbol:
                raise ValueError(f"symbol {symbol!r} must look like BASE/QUOTE, e.g. BTC/USDT")
        return self

    def rules(self, symbol: str) -> MarketRules:
        return self.markets.get(symbol, MarketRules())


class DataSettings(Section):
    paths: list[Path] = Field(
        default_factory=list, description="Parquet files to replay; empty = synthetic market"
    )
    market_root: Path = Field(
        Path("state/market"), description="the bar store that `scalpd download` fills"
    )
    record_ticks: bool = Field(
        False, description="while the daemon runs, record trades and the order book's top levels"
    )
    on_bad_rows: Literal["fail", "skip"] = Field(
        "fail", description="fail: quarantine bad rows and stop; skip: quarantine and go on"
    )
    synthetic_days: float = Field(30.0, gt=0, le=3650, description="length of synthetic market")
    synthetic_seed: int = 7
    synthetic_start: str = Field("2024-01-01T00:00:00Z", description="first bar, ISO UTC")


class StrategySettings(Section):
    name: Literal["ema_cross", "model"] = Field(
        "ema_cross", description="ema_cross: the rule baseline; model: a trained model"
    )
    model_path: Path | None = Field(
        None, description="for name = model: models/<name>/<version>/ of a trained model"
    )
    model_backend: Literal["eager", "onnx", "int8"] = Field(
        "onnx", description="model inference; onnx meets the latency targets on a CPU"
    )
    min_confidence: float = Field(
        0.55, ge=0, le=1, description="model: least P(take-profit first) to enter long"
    )
    fast_period_bars: int = Field(12, ge=1)
    slow_period_bars: int = Field(48, ge=2)
    take_profit_bps: float = Field(40.0, gt=0)
    stop_loss_bps: float = Field(25.0, gt=0)
    max_hold_bars: int = Field(60, ge=1, description="time stop: exit at market after this")
    position_fraction: float = Field(
        0.95, gt=0, le=1, description="share of equity per entry (the most any sizing spends)"
    )
    sizing: Literal["fixed_fraction", "fixed_size", "volatility_scaled"] = Field(
        "fixed_fraction", description="position sizing rule (scalpd/strategy/sizing.py)"
    )
    fixed_size_usdt: float = Field(1_000.0, gt=0, description="fixed_size: quote per entry")
    vol_target_bps: float = Field(
        10.0, gt=0, description="volatility_scaled: full size up to this 1m volatility, bps"
    )
    vol_halflife_bars: int = Field(
        60, ge=2, description="volatility_scaled: half-life of the 1m volatility estimate"
    )
    entry_order: Literal["market", "limit"] = Field(
        "market", description="limit: a maker buy at limit_offset_bps below the close"
    )
    limit_offset_bps: float = Field(
        0.0, ge=0, le=500, description="limit entries: price this far below the bar's close"
    )

    @model_validator(mode="after")
    def _consistent(self) -> StrategySettings:
        if self.fast_period_bars >= self.slow_period_bars:
            raise ValueError("fast_period_bars must be below slow_period_bars")
        if self.name == "model" and self.model_path is None:
            raise ValueError("name = 'model' needs model_path (models/<name>/<version>)")
        return self


class RiskSettings(Section):
    max_order_notional_usdt: float = Field(100_000.0, gt=0)
    max_position_notional_usdt: float = Field(100_000.0, gt=0)


class FeesSettings(Section):
    taker_bps: float = Field(10.0, ge=0, description="market and stop fills, per side")
    maker_bps: float = Field(10.0, ge=0, description="resting limit fills, per side")


class SimSettings(Section):
    """The simulated broker of replay and paper trading."""

    starting_cash_usdt: float = Field(10_000.0, gt=0)


class StoreSettings(Section):
    path: Path = Path("state/scalpd.db")
    equity_snapshot_interval_s: int = Field(3600, ge=60, description="equity rows in SQLite")


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a TTY, JSON lines otherwise"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    exchange: ExchangeSettings = ExchangeSettings()
    symbols: SymbolsSettings = SymbolsSettings()
    data: DataSettings = DataSettings()
    strategy: StrategySettings = StrategySettings()
    risk: RiskSettings = RiskSettings()
    fees: FeesSettings = FeesSettings()
    sim: SimSettings = SimSettings()
    store: StoreSettings = StoreSettings()
    logging: LoggingSettings = LoggingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges file < environment < command-line flags itself.
        return (init_settings,)

    def redacted(self) -> dict[str, Any]:
        """The settings as plain JSON-able data, secrets left out: what a run row stores."""
        data = self.model_dump(mode="json")
        for key in ("api_key", "api_secret"):
            data["exchange"].pop(key, None)
        return data


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"config key '{key}' is unknown"
    value = first.get("input")
    shown = "<secret>" if "api_" in key else repr(value)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    msg = first["msg"].removeprefix("Value error, ")
    return f"config key '{key}' has bad value {shown}: {msg}"


def _read_secrets_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ConfigError(f"config key 'exchange.secrets_file': no file at {path}")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"config key 'exchange.secrets_file': {path} is readable by others "
            f"(mode {stat.S_IMODE(mode):o}); allowed: owner only (chmod 600)"
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"secrets file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"api_key", "api_secret"}
    if unknown:
        raise ConfigError(f"secrets file {path}: unknown keys {sorted(unknown)}")
    return {k: str(v) for k, v in data.items()}


def _environment() -> dict[str, Any]:
    """The SCALPD_<SECTION>__<KEY> variables as nested settings data."""
    source = EnvSettingsSource(Settings, env_prefix=ENV_PREFIX, env_nested_delimiter="__")
    try:
        return source()
    except SettingsError as exc:
        # e.g. a list key given as a bare word instead of JSON: ["BTC/USDT"]
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"environment: {exc}{cause}; lists and tables are JSON") from None


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def find_config(explicit: str | None) -> Path | None:
    """The config file to read: --config, else $SCALPD_CONFIG, else ./config.toml if present."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("SCALPD_CONFIG")
    if env:
        return Path(env)
    default = Path("config.toml")
    return default if default.is_file() else None


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Read settings from `path` (TOML), the environment and `overrides` (CLI flags).

    Raises ConfigError with a one-line message on any bad input.
    """
    file_data: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            file_data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    exchange = file_data.get("exchange", {})
    if isinstance(exchange, dict) and ({"api_key", "api_secret"} & set(exchange)):
        raise ConfigError(
            "config key 'exchange.api_key'/'api_secret' is not allowed in a config file; "
            "allowed: SCALPD_EXCHANGE__API_KEY / SCALPD_EXCHANGE__API_SECRET "
            "or exchange.secrets_file"
        )
    # Priority: command-line flags, then the environment (so a unit file can override one
    # key), then the file, then the defaults.
    merged = _merge(_merge(file_data, _environment()), overrides or {})
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    if settings.exchange.secrets_file is not None:
        secrets = _read_secrets_file(settings.exchange.secrets_file)
        exchange_values = settings.exchange.model_dump()
        for key, value in secrets.items():
            if exchange_values.get(key) is None:  # the environment still wins
                exchange_values[key] = value
        settings = settings.model_copy(update={"exchange": ExchangeSettings(**exchange_values)})
    return settings
