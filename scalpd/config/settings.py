"""The settings model: every config key, its type, default and unit, defined once.

`config.toml` at the repository root documents the same keys; a test keeps the two equal.
Values come from, highest priority first: environment variables `SCALPD_<SECTION>__<KEY>`,
then the TOML file, then the defaults below. API keys come only from the environment or an
owner-only secrets file and are held as `SecretStr`, so they never print.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
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
    max_qty: float = Field(9_000_000.0, gt=0, description="largest quantity, base units")


# A symbol with no entry in `markets` (e.g. the synthetic market) gets these; made once because
# rules are read on every order and a pydantic model is not cheap to build.
_DEFAULT_RULES = MarketRules()


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
    rate_limit_burst_weight: float = Field(
        60.0,
        ge=1,
        description=(
            "REST request weight that may go out at once (a bar's polls and its order); the "
            "average stays at ccxt's pace for the exchange (Binance: 20 weight/s, a fifth of "
            "its 6,000 a minute), so the daemon never hammers it"
        ),
    )
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
        return self.markets.get(symbol, _DEFAULT_RULES)


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
        "eager",
        description="model inference; eager runs the compiled one-bar steps (scalpd bench "
        "models_ensemble: ~3x less than onnx a step, ~2x after an idle minute)",
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
    """Pre-trade limits and circuit breakers (scalpd/risk). Exits are never blocked by them."""

    max_order_notional_usdt: float = Field(
        100_000.0, gt=0, description="USDT, largest single entry (at the limit passes)"
    )
    max_position_notional_usdt: float = Field(
        100_000.0, gt=0, description="USDT, largest position per symbol, held + entries in flight"
    )
    max_total_notional_usdt: float = Field(
        100_000.0, gt=0, description="USDT, all positions and entries in flight together"
    )
    max_open_positions: int = Field(
        5, ge=1, le=1000, description="symbols held or being entered at the same time"
    )
    max_daily_loss_fraction: float = Field(
        0.05, ge=0, le=1,
        description="halt entries when the UTC day's loss (realised + unrealised) reaches this "
        "share of the day's starting equity; 0 = off",
    )  # fmt: skip
    max_daily_loss_usdt: float | None = Field(
        None, gt=0, description="USDT, the same limit as an amount; the tighter of the two applies"
    )
    min_confidence: float = Field(
        0.5, ge=0, le=1, description="least model confidence for an entry; intents without pass"
    )
    correlation_window_bars: int = Field(
        240, ge=10, le=100_000, description="bars (minutes) of 1m returns in each correlation"
    )
    correlation_min_bars: int = Field(
        60, ge=10, description="aligned returns a pair needs before its correlation counts"
    )
    correlation_threshold: float = Field(
        0.7, gt=0, le=1, description="pairs correlated at or above this share one exposure limit"
    )
    max_correlated_notional_usdt: float = Field(
        100_000.0, gt=0, description="USDT, a symbol plus every symbol correlated with it"
    )
    max_consecutive_losses: int = Field(
        5, ge=0, le=1000, description="losing round trips in a row that pause entries; 0 = off"
    )
    loss_cooldown_min: float = Field(
        60.0, gt=0, le=10_080, description="minutes entries stay paused after those losses"
    )
    jump_sigmas: float = Field(
        10.0, ge=0, description="pause a symbol when |1m return| exceeds this many sigmas; 0 = off"
    )
    jump_halflife_bars: int = Field(
        60, ge=2, le=100_000, description="bars, half-life of the sigma the jump test uses"
    )
    vol_z_max: float = Field(
        4.0, ge=0, description="pause a symbol when its log 1m range z-score exceeds this; 0 = off"
    )
    vol_window_bars: int = Field(
        240, ge=10, le=100_000, description="bars in the volatility z-score's mean and std"
    )
    market_min_bars: int = Field(
        60, ge=2, description="bars a symbol needs before the jump and volatility tests judge it"
    )
    spread_multiple: float = Field(
        5.0, ge=0, description="pause a symbol when its spread exceeds this x its median; 0 = off"
    )
    spread_window: int = Field(
        300, ge=10, le=100_000, description="book tops in the spread's rolling median"
    )
    stale_after_s: float = Field(
        180.0, ge=0, description="s without a bar after which a symbol is paused; 0 = off"
    )
    market_cooldown_min: float = Field(
        15.0, ge=0, le=10_080, description="minutes a jump, volatility or spread pause lasts"
    )
    confidence_floor: float = Field(
        0.1, ge=0, le=1, description="pause when the rolling mean model confidence drops below"
    )
    confidence_window: int = Field(
        60, ge=1, le=100_000, description="model outputs in that rolling mean"
    )

    @model_validator(mode="after")
    def _consistent(self) -> RiskSettings:
        if self.correlation_min_bars > self.correlation_window_bars:
            raise ValueError(
                f"correlation_min_bars ({self.correlation_min_bars}) above "
                f"correlation_window_bars ({self.correlation_window_bars})"
            )
        if 0 < self.spread_multiple <= 1:
            raise ValueError(f"spread_multiple {self.spread_multiple}: allowed 0 (off) or > 1")
        if 0 < self.stale_after_s < 60:
            raise ValueError(
                f"stale_after_s {self.stale_after_s}: allowed 0 (off) or >= 60 (bars are 1m)"
            )
        return self


class FeeTier(Section):
    maker_bps: float = Field(ge=0, le=100, description="resting limit fills, bps per side")
    taker_bps: float = Field(ge=0, le=100, description="market and stop fills, bps per side")


def _binance_spot_tiers() -> dict[str, FeeTier]:
    # Binance spot regular-user rates as of 2024 (maker, taker bps); check your own account's.
    rates = {
        "VIP0": (10.0, 10.0), "VIP1": (9.0, 10.0), "VIP2": (8.0, 10.0), "VIP3": (4.2, 6.0),
        "VIP4": (4.2, 5.4), "VIP5": (3.6, 4.5), "VIP6": (3.0, 4.0), "VIP7": (2.4, 3.5),
        "VIP8": (1.8, 3.15), "VIP9": (1.2, 3.0),
    }  # fmt: skip
    return {name: FeeTier(maker_bps=m, taker_bps=t) for name, (m, t) in rates.items()}


class FeesSettings(Section):
    """Trading fees (scalpd/execution/fees.py): the account's tier, paid in BNB or in kind."""

    tiers: dict[str, FeeTier] = Field(
        default_factory=_binance_spot_tiers, description="tier -> maker/taker bps"
    )
    tier: str = Field("VIP0", description="the account's fee tier, a key of tiers")
    pay_in_bnb: bool = Field(
        False, description="fees paid in BNB at a discount; else in the asset received"
    )
    bnb_discount: float = Field(0.25, ge=0, lt=1, description="share off fees paid in BNB")
    bnb_price_usdt: float = Field(
        500.0, gt=0, description="fixed BNB price converting BNB fees, USDT (moves not modelled)"
    )

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, tier: str, info: ValidationInfo) -> str:
        tiers = info.data.get("tiers")
        if tiers is not None and tier not in tiers:
            raise ValueError(f"unknown fee tier; allowed: {', '.join(tiers)}")
        return tier

    @property
    def maker_bps(self) -> float:
        """What a maker fill pays, bps of its value (tier rate less any BNB discount)."""
        discount = self.bnb_discount if self.pay_in_bnb else 0.0
        return self.tiers[self.tier].maker_bps * (1 - discount)

    @property
    def taker_bps(self) -> float:
        """What a taker fill pays, bps of its value (tier rate less any BNB discount)."""
        discount = self.bnb_discount if self.pay_in_bnb else 0.0
        return self.tiers[self.tier].taker_bps * (1 - discount)


class SimSettings(Section):
    """The simulated broker of replay and paper trading (scalpd/execution/sim.py)."""

    starting_cash_usdt: float = Field(10_000.0, gt=0)
    half_spread_bps: float = Field(
        1.0, ge=0, le=1000, description="taker cost where no book is known, bps (>= half a tick)"
    )
    impact_coefficient: float = Field(
        1.0, ge=0, le=100, description="square-root impact: bps = coef * sigma * sqrt(qty/volume)"
    )
    max_impact_bps: float = Field(50.0, ge=0, le=10_000, description="cap of the impact, bps")
    latency_ms: float = Field(
        50.0, ge=0, le=1000, description="ms from a decision at a bar close to the exchange"
    )
    latency_jitter_ms: float = Field(
        0.0, ge=0, le=1000, description="ms, latency drawn uniformly in latency +- this"
    )
    seed: int = Field(0, description="seed of the latency draws")
    limit_queue: Literal["through", "touch"] = Field(
        "through", description="a resting limit fills when the price trades through / touches it"
    )
    max_participation: float = Field(
        0.1, gt=0, le=1, description="most of a bar's volume one resting limit order gets"
    )
    limit_ttl_bars: int = Field(
        5, ge=1, le=10_000, description="bars an unfilled limit entry rests before it expires"
    )
    tick_tape: bool = Field(
        False, description="replay: fill against recorded trades and book tops where they exist"
    )

    @model_validator(mode="after")
    def _latency_range(self) -> SimSettings:
        lo, hi = self.latency_ms - self.latency_jitter_ms, self.latency_ms + self.latency_jitter_ms
        if lo < 0 or hi > 1000:
            raise ValueError(
                f"latency_ms +- latency_jitter_ms spans {lo:g}..{hi:g} ms; allowed: 0..1000"
            )
        return self


class StoreSettings(Section):
    path: Path = Path("state/scalpd.db")
    equity_snapshot_interval_s: int = Field(3600, ge=60, description="equity rows in SQLite")


class WalkForwardSettings(Section):
    """`scalpd walkforward`: retrain on a sliding window, trade the days after it."""

    train_days: float = Field(30.0, gt=0, le=3650, description="days each step trains on")
    test_days: float = Field(7.0, gt=0, le=3650, description="days each step's model trades")
    step_days: float = Field(
        1.0, gt=0, description="days between steps; at most test_days (no day left untested)"
    )
    warmup_days: float = Field(
        1.0, ge=0, le=365, description="days replayed before a test window without trading"
    )
    model: Literal["tcn", "transformer", "lstm", "ensemble"] = Field(
        "tcn", description="network retrained at each step (default architecture)"
    )
    epochs: int = Field(2, ge=1, le=1000, description="training epochs per step")
    seed: int = Field(0, description="training seed (CPU training is bitwise repeatable)")
    threads: int | None = Field(
        None, ge=1, description="CPU threads for training; None = every core"
    )
    # A take-profit below the round trip's fees (2 x fees.taker_bps) could never win.
    take_profit_bps: float = Field(40.0, gt=0, description="label: take-profit barrier, bps")
    stop_loss_bps: float = Field(25.0, gt=0, description="label: stop-loss barrier, bps")
    horizon_bars: int = Field(
        60, ge=1, le=10_000, description="label: time limit, bars (also the purge before a test)"
    )
    model_backend: Literal["eager", "onnx", "int8"] = Field(
        "eager", description="inference in the replays; onnx costs an export at every step"
    )
    models_dir: Path = Field(
        Path("models/walkforward"), description="each run's step models go in <dir>/<run>/"
    )

    @model_validator(mode="after")
    def _steps_cover_every_day(self) -> WalkForwardSettings:
        if self.step_days > self.test_days:
            raise ValueError(
                f"step_days ({self.step_days}) above test_days ({self.test_days}) leaves days "
                "untested"
            )
        return self


class ReportSettings(Section):
    """What a replay's report measures beside the strategy (scalpd/replay/report.py)."""

    random_trials: int = Field(
        20, ge=0, le=100_000,
        description="random-entry baseline runs (0 = none); each costs about one replay",
    )  # fmt: skip
    seed: int = Field(0, description="seed of the random-entry draws (trial i uses seed + i)")
    vol_window_bars: int = Field(
        1440, ge=10, description="regimes: trailing window of the volatility percentile, bars"
    )
    vol_percentile: float = Field(
        80.0, gt=0, lt=100, description="regimes: high volatility above this trailing percentile"
    )
    trend_er_min: float = Field(
        0.3, gt=0, lt=1, description="regimes: trending at or above this efficiency ratio"
    )
    shock_sigmas: float = Field(
        4.0, gt=0, description="regimes: a one-bar return beyond this many GARCH sigmas"
    )
    shock_bars: int = Field(15, ge=1, description="regimes: bars a shock label lasts")
    curve_points: int = Field(
        1000, ge=10, le=100_000, description="points of the stored equity curve (the picture)"
    )


class AlertsSettings(Section):
    """Operator alerts through apprise (scalpd/ops/alerts.py). The URLs hold webhook tokens: they
    are secrets like the API keys (never logged, never stored with a run)."""

    urls: list[SecretStr] = Field(
        default_factory=list,
        description="apprise URLs (discord://, slack://, json://...); empty = alerts only logged",
    )
    min_interval_s: float = Field(
        300.0, ge=0, description="s, the same alert key again within this is dropped and counted"
    )
    timeout_s: float = Field(
        10.0, gt=0, description="s, longest one delivery may take; also the drain at shutdown"
    )
    disconnect_after_s: float = Field(
        60.0, gt=0, description="s, alert when market data stays disconnected longer than this"
    )
    max_queued: int = Field(
        100, ge=1, description="alerts waiting for delivery; more are dropped and counted"
    )

    @field_validator("urls")
    @classmethod
    def _look_like_urls(cls, urls: list[SecretStr]) -> list[SecretStr]:
        for i, url in enumerate(urls):
            if "://" not in url.get_secret_value():
                # The value is a secret: the message names its position, never its text.
                raise ValueError(f"urls[{i}] is not an apprise URL (scheme://...)")
        return urls


class MetricsSettings(Section):
    """The Prometheus endpoint (scalpd/ops/metrics.py): GET http://host:port/metrics."""

    enabled: bool = Field(False, description="serve the metrics endpoint while the daemon runs")
    # Before host: host's validator reads it.
    allow_remote: bool = Field(
        False, description="allow a host other than loopback (the endpoint has no authentication)"
    )
    host: str = Field("127.0.0.1", description="address to listen on; loopback unless allowed")
    port: int = Field(9464, ge=1, le=65535, description="TCP port")

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, host: str, info: ValidationInfo) -> str:
        if info.data.get("allow_remote", False) or host == "localhost":
            return host
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                "not a loopback address (127.0.0.1, ::1, localhost); the endpoint has no "
                "authentication: set metrics.allow_remote = true to listen there anyway"
            )
        return host


class ControlSettings(Section):
    """The control socket (scalpd/ops/control.py) that `scalpd ctl` and the terminal UI use."""

    enabled: bool = Field(True, description="serve the control socket while the daemon runs")
    socket_path: Path = Field(
        Path("state/scalpd.sock"),
        description="Unix socket, owner-only (0600); its directory is created 0700 if missing",
    )

    @field_validator("socket_path")
    @classmethod
    def _fits_sun_path(cls, path: Path) -> Path:
        # sun_path holds 107 bytes; the daemon binds through a private directory beside the
        # socket (<dir>/.ctlXXXXXXXX/s), up to 15 bytes longer than the path itself.
        if len(os.fsencode(path)) > 90:
            raise ValueError("longer than 90 bytes, too long for a Unix socket path")
        return path


class LiveSettings(Section):
    """What the daemon does around its orders when it starts and stops (scalpd/live)."""

    stray_orders: Literal["cancel", "keep"] = Field(
        "cancel",
        description=(
            "open orders found on the exchange at start that this database does not know "
            "(placed by hand or by another bot): cancel them, or keep them (left alone, alerted)"
        ),
    )
    cancel_on_stop: bool = Field(
        False,
        description=(
            "on SIGTERM, cancel our resting orders (limit entries and take-profit/stop-loss) "
            "before exiting; off keeps the exits on the exchange protecting the positions"
        ),
    )
    order_lookup_tries: int = Field(
        3,
        ge=1,
        le=20,
        description="lookups by client id of an order whose placement timed out, before giving up",
    )
    check_resting_every_bars: int = Field(
        10,
        ge=1,
        description=(
            "without the user-data stream, resting orders are asked about when a bar reaches "
            "their price, and also every this many bars of their symbol, after the decision"
        ),
    )
    user_stream: bool = Field(
        True,
        description=(
            "learn fills from the account's user-data stream (no request on the decision "
            "path); false, or while it is down: resting orders a bar reached are polled"
        ),
    )
    prewarm: bool = Field(
        True,
        description=(
            "throwaway model steps from just before each candle is due until it comes (a few "
            "ms of CPU a minute): a model's first step after a pause is ~3x slower cold"
        ),
    )


class OnlineSettings(Section):
    """Online learning of the model strategy (scalpd/strategy/online.py): fine-tuning between
    bars on matured outcomes, each candidate guarded on held-out bars before it serves."""

    enabled: bool = Field(
        False, description="model strategy: keep fine-tuning the model on matured labels"
    )
    update_every: Literal["trade", "hour", "day"] = Field(
        "hour", description="a round after each closed trade, each bar-time hour, or each day"
    )
    max_steps: int = Field(4, ge=1, le=100_000, description="optimiser steps per round")
    budget_ms: float = Field(
        250.0, gt=0, description="ms, live only: a round stops here (replay counts steps only)"
    )
    base_lr: float = Field(5e-4, gt=0, le=1, description="Adam learning rate per step")
    lr_decay: float = Field(
        1.0, gt=0, le=1, description="learning rate multiplied by this after each round"
    )
    lr_vol_power: float = Field(
        1.0, ge=-4, le=4, description="lr x (recent 1m vol / reference) ** power; 0 = constant"
    )
    lr_vol_reference_bps: float = Field(
        8.0, gt=0, description="bps, 1m volatility at which the learning rate is base_lr"
    )
    lr_vol_halflife_bars: int = Field(
        60, ge=2, description="bars, half-life of the recent 1m volatility estimate"
    )
    lr_min_mult: float = Field(0.25, gt=0, description="least volatility multiplier of the lr")
    lr_max_mult: float = Field(4.0, gt=0, description="largest volatility multiplier of the lr")
    seq_len: int = Field(64, ge=1, description="bars per training window (its last one scored)")
    batch_size: int = Field(16, ge=1, le=4096, description="windows per optimiser step")
    recent_bars: int = Field(
        1440, ge=1, description="bars: windows ending in the newest this many are 'recent'"
    )
    replay_share: float = Field(
        0.25, ge=0, lt=1, description="share of each batch drawn from older bars (forgetting)"
    )
    anchor_l2: float = Field(
        1e-2, ge=0, description="L2 pull toward the last approved weights (anchor_l2/2 |dw|^2)"
    )
    holdout_bars: int = Field(
        240, ge=1, description="bars, newest matured ones: judged on, never trained on"
    )
    guard_margin_nats: float = Field(
        0.02, ge=0, description="nats, a candidate this much worse on the holdout is rejected"
    )
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clip per step")
    capacity_bars: int = Field(10_000, ge=2, description="bars kept in the replay buffer")
    seed: int = Field(0, description="seed of the batch draws (round r uses (seed, r))")
    challenger_min_bars: int = Field(
        60, ge=2, le=100_000, description="bars, scored pairs between two tests of a challenger"
    )
    challenger_alpha: float = Field(
        0.05, gt=0, lt=0.5, description="one-sided level of the shadow test (share up / rollback)"
    )
    challenger_shares: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 1.0],
        min_length=1,
        description="share of decisions (fraction) after each significant win; 1.0 = promoted",
    )
    probation_bars: int = Field(
        240, ge=0, le=100_000, description="bars a new champion is watched against the old one"
    )
    replay_weights: bool = Field(
        False,
        description=(
            "a replay stores each version's weights too (lineage and metrics always; paper "
            "and live always keep weights): ~240 KB a TCN version, gigabytes a year hourly"
        ),
    )

    @field_validator("challenger_shares")
    @classmethod
    def _rising_shares(cls, shares: list[float]) -> list[float]:
        if any(not 0.0 < s <= 1.0 for s in shares) or shares != sorted(shares) or shares[-1] != 1:
            raise ValueError(f"must be fractions in (0, 1], rising, ending at 1.0; got {shares}")
        return shares

    @model_validator(mode="after")
    def _consistent(self) -> OnlineSettings:
        if self.lr_min_mult > self.lr_max_mult:
            raise ValueError(
                f"lr_min_mult ({self.lr_min_mult}) above lr_max_mult ({self.lr_max_mult})"
            )
        if self.recent_bars + self.holdout_bars >= self.capacity_bars:
            raise ValueError(
                f"recent_bars + holdout_bars ({self.recent_bars + self.holdout_bars}) must be "
                f"below capacity_bars ({self.capacity_bars})"
            )
        return self


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
    walkforward: WalkForwardSettings = WalkForwardSettings()
    report: ReportSettings = ReportSettings()
    alerts: AlertsSettings = AlertsSettings()
    metrics: MetricsSettings = MetricsSettings()
    control: ControlSettings = ControlSettings()
    live: LiveSettings = LiveSettings()
    online: OnlineSettings = OnlineSettings()
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
        data["alerts"].pop("urls", None)  # webhook tokens
        return data


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"config key '{key}' is unknown"
    value = first.get("input")
    shown = "<secret>" if "api_" in key or key.startswith("alerts.urls") else repr(value)
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
