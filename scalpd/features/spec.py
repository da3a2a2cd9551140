"""The feature registry: every feature's name, formula, unit and warm-up, and the parameters.

One definition serves both implementations (`incremental` for replay and live, `batch` for
training); this module is their shared contract. The vector layout is fixed: the features of
`feature_specs(params)` in that order, `FEATURE_NAMES` for the default parameters. A model
stores `feature_set_id(params)` (a hash of the names and every parameter, GARCH ones
included) and refuses a feature vector whose id differs.

Conventions for every feature:
- Bar t means the 1-minute bar that has just closed; a feature at t uses bars <= t only.
- A reset (start, or a gap: missing minutes) restarts every per-symbol state. A feature is
  NaN ("invalid") until it has seen its warm-up since the last reset, and whenever its inputs
  are missing (no taker volume, no tick data, zero volume): NaN is the only invalid mark.
- Timeframe `m` (5m, 15m) features are computed on m-minute candles built from 1m bars and
  aligned to UTC multiples of m. A candle completes at the 1m bar whose close time is a
  multiple of m; only complete candles (every minute inside the same segment) count, and
  between completions the row carries the values of the last completed candle. Warm-up is
  counted in candles of the timeframe: W candles take up to W*m + m - 1 minutes.
- EMA(n) is y_t = a x_t + (1 - a) y_{t-1} with a = 2/(n+1), started at the first value;
  Wilder(n) is the same with a = 1/n, started at the mean of the first n values.
- Rolling sums are kept as S_t = S_{t-1} + (x_t - x_{t-n}): identical arithmetic in both
  implementations (numpy's cumsum is sequential), so batch and incremental agree bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import orjson

from scalpd.features.garch import BTC_2023, GarchParams

MINUTE_MS = 60_000
DAY_MS = 86_400_000


@dataclass(frozen=True)
class FeatureParams:
    """Every number a feature depends on; part of the feature set id. Windows are in bars of
    the feature's own timeframe unless the name says otherwise."""

    timeframes_min: tuple[int, ...] = (1, 5, 15)
    return_horizons_bars: tuple[int, ...] = (1, 3, 12)
    rsi_bars: int = 14
    divergence_bars: int = 14
    macd_fast_bars: int = 12
    macd_slow_bars: int = 26
    macd_signal_bars: int = 9
    bb_bars: int = 20
    bb_squeeze_span_bars: int = 50
    atr_bars: int = 14
    swing_half_bars: int = 2  # a swing high is the highest of 2k+1 bars, known k bars later
    er_bars: int = 20
    poc_halflife_bars: int = 60
    poc_bin_bps: tuple[float, ...] = (5.0, 10.0, 20.0)  # one per timeframe
    flow_bars: int = 15
    vwap_bars: int = 60
    trade_size_bars: int = 60
    noise_bars: int = 60
    noise_horizon_bars: int = 5
    garch_warmup_bars: int = 120
    garch_default: GarchParams = BTC_2023
    garch_by_symbol: tuple[tuple[str, GarchParams], ...] = ()
    corr_bars: int = 60
    spread_span_bars: int = 30
    spread_warmup_bars: int = 5
    large_trade_mult: float = 5.0
    trade_size_span_trades: int = 500
    trade_size_warmup_trades: int = 200
    norm_halflife_bars: int = 1440
    norm_warmup_bars: int = 1440
    norm_clip: float = 8.0

    def __post_init__(self) -> None:
        if len(self.poc_bin_bps) != len(self.timeframes_min):
            raise ValueError("poc_bin_bps needs one bin width per timeframe")
        if self.timeframes_min[0] != 1 or any(1440 % m for m in self.timeframes_min):
            raise ValueError("timeframes start with 1 and divide a day")
        if self.macd_fast_bars >= self.macd_slow_bars:
            raise ValueError("macd_fast_bars must be below macd_slow_bars")
        self.garch_default.validate()
        for _, p in self.garch_by_symbol:
            p.validate()

    def garch_for(self, symbol: str) -> GarchParams:
        return dict(self.garch_by_symbol).get(symbol, self.garch_default)

    @property
    def macd_warmup_bars(self) -> int:
        return self.macd_slow_bars + self.macd_signal_bars

    @property
    def squeeze_warmup_bars(self) -> int:
        return self.bb_bars + self.bb_squeeze_span_bars

    @property
    def noise_warmup_bars(self) -> int:
        return self.noise_bars + self.noise_horizon_bars

    @property
    def max_horizon_bars(self) -> int:
        return max(self.return_horizons_bars)

    @property
    def divergence_warmup_bars(self) -> int:
        return self.rsi_bars + self.divergence_bars


DEFAULT_PARAMS = FeatureParams()


class FeatureSpec(NamedTuple):
    name: str
    group: str  # micro, tick, regime, cross, technical
    timeframe_min: int
    unit: str
    warmup_bars: int  # bars of the timeframe since the last reset; 0: no fixed warm-up
    formula: str

    @property
    def warmup_1m_bars(self) -> int:
        """Worst-case minutes since a reset before the feature can be valid."""
        m = self.timeframe_min
        return self.warmup_bars * m + (m - 1 if m > 1 else 0)


def tf_label(minutes: int) -> str:
    return f"{minutes}m"


def _micro(p: FeatureParams) -> list[FeatureSpec]:
    def spec(name: str, group: str, unit: str, warmup: int, formula: str) -> FeatureSpec:
        return FeatureSpec(name, group, 1, unit, warmup, formula)

    return [
        spec("ofi_1m", "micro", "ratio", 1,
             "(2*taker_buy - volume)/volume of the bar, in [-1, 1]; NaN without taker volume"),
        spec(f"ofi_{p.flow_bars}_1m", "micro", "ratio", p.flow_bars,
             f"(2*sum taker_buy - sum volume)/sum volume over {p.flow_bars} bars"),
        spec("vwap_dist_day_1m", "micro", "bps", 1,
             "1e4*ln(close/VWAP), VWAP = sum hlc3*volume / sum volume since 00:00 UTC "
             "(or since the last reset), hlc3 = (high+low+close)/3"),
        spec(f"vwap_dist_{p.vwap_bars}_1m", "micro", "bps", p.vwap_bars,
             f"1e4*ln(close/VWAP) with VWAP over the last {p.vwap_bars} bars"),
        spec("bar_body_1m", "micro", "ratio", 1,
             "bar momentum (close-open)/(high-low), 0 when high == low"),
        spec(f"trade_size_rel_{p.trade_size_bars}_1m", "micro", "log ratio", p.trade_size_bars,
             f"ln((volume/trades) / (sum volume/sum trades over {p.trade_size_bars} bars)); "
             "NaN without trade counts"),
        spec("ofi_tick_1m", "tick", "ratio", 1,
             "(buy qty - sell qty)/(buy qty + sell qty) of the trades in the minute "
             "(taker side from the trade stream)"),
        spec("large_trade_share_1m", "tick", "ratio", 1,
             f"share of the minute's traded qty in trades with qty > {p.large_trade_mult} x "
             f"EMA({p.trade_size_span_trades} trades) of trade qty before it; valid when "
             f"{p.trade_size_warmup_trades} trades preceded the minute's first"),
        spec("spread_bps_1m", "tick", "bps", 1,
             "mean over the minute's book tops of 1e4*(ask-bid)/mid"),
        spec("spread_ratio_1m", "tick", "ratio", p.spread_warmup_bars,
             f"spread_bps_1m / EMA({p.spread_span_bars}) of spread_bps_1m over minutes that "
             f"have one; valid after {p.spread_warmup_bars} such minutes"),
        spec("depth_imb5_1m", "tick", "ratio", 1,
             "mean over the minute's book updates of (bid qty - ask qty)/(bid qty + ask qty) "
             "over the best 5 levels of each side"),
        spec("garch_vol_1m", "regime", "bps", p.garch_warmup_bars,
             "sqrt(h_t), h_t = omega + alpha r_t^2 + beta h_{t-1}, r_t = 1e4*ln(c_t/c_{t-1}), "
             "h = omega/(1-alpha-beta) at a reset; parameters fitted offline (garch.fit)"),
        spec(f"noise_ratio_{p.noise_bars}_1m", "regime", "ratio", p.noise_warmup_bars,
             f"variance ratio sum r{p.noise_horizon_bars}^2 / ({p.noise_horizon_bars} sum r1^2) "
             f"over {p.noise_bars} bars, r_k = ln(c_t/c_(t-k)) (overlapping); < 1: noise, "
             "mean reversion; > 1: trending"),
        spec(f"xcorr_mean_{p.corr_bars}_1m", "cross", "correlation", p.corr_bars + 1,
             f"mean over the other symbols of the Pearson correlation of 1m log returns over "
             f"the last {p.corr_bars} minutes both have (consecutive); pairs without a return "
             "at t are left out; NaN with one symbol"),
    ]  # fmt: skip


def _technical(p: FeatureParams, minutes: int) -> list[FeatureSpec]:
    tf = tf_label(minutes)

    def spec(
        name: str, unit: str, warmup: int, formula: str, group: str = "technical"
    ) -> FeatureSpec:
        return FeatureSpec(f"{name}_{tf}", group, minutes, unit, warmup, formula)

    k = p.swing_half_bars
    out = [spec(f"ret_{h}", "bps", h + 1, f"1e4*ln(c_t/c_(t-{h}))") for h in p.return_horizons_bars]
    out += [
        spec(f"rsi_{p.rsi_bars}", "0-100", p.rsi_bars + 1,
             f"Wilder RSI: 100*G/(G+L), G, L = Wilder({p.rsi_bars}) of gains, losses of close; "
             "50 when both are 0"),
        spec(f"rsi_div_{p.divergence_bars}", "[-1, 1]", p.divergence_warmup_bars,
             f"stoch(RSI) - stoch(close) over {p.divergence_bars} bars, stoch(x) = "
             "(x - min)/(max - min) (0.5 for a flat window); < 0: price at highs that RSI does "
             "not confirm (bearish divergence), > 0: bullish"),
        spec("macd_hist", "bps", p.macd_warmup_bars,
             f"1e4*(M - EMA({p.macd_signal_bars}) of M)/close, M = EMA({p.macd_fast_bars}) - "
             f"EMA({p.macd_slow_bars}) of close"),
        spec("macd_slope", "bps/bar", p.macd_warmup_bars + 1, "macd_hist_t - macd_hist_(t-1)"),
        spec(f"bb_width_{p.bb_bars}", "bps", p.bb_bars,
             f"Bollinger bandwidth 1e4*4*sd/mean of the last {p.bb_bars} closes (population sd)"),
        spec(f"bb_squeeze_{p.bb_bars}", "ratio", p.squeeze_warmup_bars,
             f"bb_width / EMA({p.bb_squeeze_span_bars}) of bb_width; < 1: squeeze"),
        spec("poc_dist", "bps", p.poc_halflife_bars,
             "1e4*ln(close) - centre of the point-of-control bin, in bps; profile = volume by "
             f"ln(hlc3) bins of {p.poc_bin_bps[p.timeframes_min.index(minutes)]} bps, "
             f"decayed with a half-life of {p.poc_halflife_bars} bars; POC = fullest bin"),
        spec("res_dist", "bps", 2 * k + 1,
             f"1e4*ln(R/close), R = high of the latest swing high (highest of {2 * k + 1} bars, "
             f"confirmed {k} bars later); NaN before the first; < 0 once broken"),
        spec("sup_dist", "bps", 2 * k + 1,
             "1e4*ln(close/S), S = low of the latest swing low (mirror of res_dist)"),
        spec(f"atr_{p.atr_bars}", "bps", p.atr_bars,
             f"1e4*Wilder({p.atr_bars}) of true range / close; first true range = high - low"),
        spec(f"er_{p.er_bars}", "[0, 1]", p.er_bars + 1,
             f"trend strength: efficiency ratio |c_t - c_(t-{p.er_bars})| / sum |c_i - c_(i-1)| "
             f"over {p.er_bars} bars (0 for a flat window)", "regime"),
    ]  # fmt: skip
    return out


def feature_specs(params: FeatureParams = DEFAULT_PARAMS) -> tuple[FeatureSpec, ...]:
    specs = _micro(params)
    for minutes in params.timeframes_min:
        specs += _technical(params, minutes)
    return tuple(specs)


@dataclass(frozen=True)
class Layout:
    """Column offsets of the feature vector; the order of `feature_specs`."""

    n_features: int
    micro: int  # 6 bar microstructure features
    tick: int  # 5 tick features
    regime: int  # garch, noise ratio
    cross: int  # xcorr_mean
    timeframes: tuple[int, ...] = field(default=())  # start of each timeframe's block
    per_timeframe: int = 0


def layout(params: FeatureParams = DEFAULT_PARAMS) -> Layout:
    specs = feature_specs(params)
    names = [s.name for s in specs]
    per_tf = len(_technical(params, 1))
    starts = tuple(names.index(f"ret_{params.return_horizons_bars[0]}_{tf_label(m)}")
                   for m in params.timeframes_min)  # fmt: skip
    return Layout(
        n_features=len(specs),
        micro=0,
        tick=names.index("ofi_tick_1m"),
        regime=names.index("garch_vol_1m"),
        cross=names.index(f"xcorr_mean_{params.corr_bars}_1m"),
        timeframes=starts,
        per_timeframe=per_tf,
    )


def feature_names(params: FeatureParams = DEFAULT_PARAMS) -> tuple[str, ...]:
    return tuple(s.name for s in feature_specs(params))


def feature_set_id(params: FeatureParams = DEFAULT_PARAMS) -> str:
    """'fs-' + 16 hex digits of sha256 over the names and every parameter."""
    payload = orjson.dumps(
        {"names": feature_names(params), "params": asdict(params)},
        default=_named_tuple,
        option=orjson.OPT_SORT_KEYS,
    )
    return "fs-" + hashlib.sha256(payload).hexdigest()[:16]


def _named_tuple(obj: object) -> object:
    # GarchParams is a NamedTuple, which orjson leaves to its caller.
    if hasattr(obj, "_asdict"):
        return obj._asdict()
    raise TypeError(f"not serialisable: {obj!r}")


def poc_decay(params: FeatureParams) -> float:
    """Per-bar decay factor of the volume profile: half-life `poc_halflife_bars`."""
    return math.pow(2.0, -1.0 / params.poc_halflife_bars)


FEATURE_NAMES: tuple[str, ...] = feature_names(DEFAULT_PARAMS)
FEATURE_SET_ID: str = feature_set_id(DEFAULT_PARAMS)
