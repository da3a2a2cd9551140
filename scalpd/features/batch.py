"""Batch features over history (training): the `spec` definitions as whole-array numpy.

`compute(bars)` gives the matrix [bars x features] that `SymbolFeatures` would leave after each
bar; `compute_many` adds the cross-asset features of several symbols on their common minutes.
Every recursion mirrors the incremental arithmetic operation for operation (EMAs through
scipy's lfilter, rolling sums through cumsum of differences), so that most columns agree bit for
bit and the rest to rounding (numpy's vectorised log differs from libm's in the last bit).

Gaps: the bars are cut into segments of consecutive minutes and every segment is computed from
a fresh state, as the incremental engine resets at a gap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from scalpd.data.bars import BarColumns
from scalpd.features import garch
from scalpd.features import ticks as tk
from scalpd.features.spec import (
    DAY_MS,
    DEFAULT_PARAMS,
    MINUTE_MS,
    FeatureParams,
    feature_names,
    layout,
    poc_decay,
)

_NAN = np.nan
# The batch volume profile is rescaled every 8 half-lives (a factor 256): large enough for few
# epochs, small enough that running sums within an epoch keep ~1e-13 relative precision.
_POC_EPOCH_HALFLIVES = 8


@dataclass(frozen=True, slots=True)
class FeatureMatrix:
    """Features of one symbol: row i is the vector after bar i (open_time[i])."""

    symbol: str
    open_time: np.ndarray  # int64 ms
    names: tuple[str, ...]
    values: np.ndarray  # float64 [bars x features], NaN where invalid

    @property
    def valid(self) -> np.ndarray:
        return ~np.isnan(self.values)

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]


def segments(open_time: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of consecutive minutes."""
    cuts = np.flatnonzero(np.diff(open_time) != MINUTE_MS) + 1
    bounds = [0, *cuts.tolist(), len(open_time)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


# --- recursions shared by the features ----------------------------------------------------


def rolling_sum(x: np.ndarray, n: int) -> np.ndarray:
    """S_t = S_{t-1} + (x_t - x_{t-n}), x before the start = 0 (cumsum is sequential)."""
    d = x.copy()
    d[n:] -= x[:-n]
    return np.cumsum(d)


def ema(x: np.ndarray, alpha: float, seed: float) -> np.ndarray:
    """y_t = alpha x_t + (1 - alpha) y_{t-1} for every x, from y_{-1} = seed."""
    if len(x) == 0:
        return np.empty(0)
    keep = 1.0 - alpha
    return lfilter([alpha], [1.0, -keep], x, zi=[keep * seed])[0]


def seeded_mean(x: np.ndarray) -> float:
    """Sequential mean, as a running `total += x` gives it."""
    return float(np.cumsum(x)[-1]) / len(x)


def rolling_max(x: np.ndarray, n: int) -> np.ndarray:
    """max of x[t-n+1..t] for t >= n-1 (length len(x)-n+1), by doubling windows: a few
    contiguous passes instead of a strided reduction over a window view."""
    return _rolling_extreme(x, n, np.maximum)


def rolling_min(x: np.ndarray, n: int) -> np.ndarray:
    return _rolling_extreme(x, n, np.minimum)


def _rolling_extreme(x: np.ndarray, n: int, op: np.ufunc) -> np.ndarray:
    # win[i] = extreme of x[i .. i+w-1]; grow w by doubling, then cover n with two overlapping
    # windows of the largest power of two <= n.
    win = x
    w = 1
    while 2 * w <= n:
        win = op(win[:-w], win[w:])
        w *= 2
    m = len(x) - n + 1
    return op(win[:m], win[n - w : n - w + m]) if w < n else win[:m]


def _ffill_index(flags: np.ndarray) -> np.ndarray:
    """Index of the last True at or before each position, -1 before the first."""
    idx = np.where(flags, np.arange(len(flags)), -1)
    return np.maximum.accumulate(idx) if len(idx) else idx


# --- one timeframe ------------------------------------------------------------------------


def _candles(
    ot: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray, minutes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Complete candles of one segment and the row each completes at."""
    if minutes == 1:
        return h, lo, c, v, np.arange(len(ot))
    period = minutes * MINUTE_MS
    starts = np.flatnonzero(ot % period == 0)
    if len(starts) == 0:
        empty = np.empty(0)
        return empty, empty, empty, empty, np.empty(0, np.int64)
    first = int(starts[0])
    k = (len(ot) - first) // minutes
    sl = slice(first, first + k * minutes)
    hm = h[sl].reshape(k, minutes)
    vm = v[sl].reshape(k, minutes)
    vol = vm[:, 0].copy()
    for q in range(1, minutes):  # column by column: the running sum of the incremental candle
        vol += vm[:, q]
    done = first + (np.arange(k) + 1) * minutes - 1
    return hm.max(axis=1), lo[sl].reshape(k, minutes).min(axis=1), c[done], vol, done


def _poc_bins(
    h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray, bin_bps: float, p: FeatureParams
) -> np.ndarray:
    """Point-of-control bin after each candle (-1 while none), of the decayed volume profile.

    Vectorised within epochs of E candles: inside an epoch every bin's volume is kept in the
    scale of the epoch's start (v * lam^-k), where it only grows, so the POC changes exactly
    where a bin's running total beats the running maximum. Between epochs the totals are
    decayed by lam^E, which keeps their order, hence the POC.
    """
    n = len(c)
    bins = np.floor(1e4 * np.log((h + lo + c) / 3.0) / bin_bps).astype(np.int64)
    if n == 0:
        return bins
    b0 = int(bins.min())
    bb = bins - b0
    n_bins = int(bb.max()) + 1
    lam = poc_decay(p)
    epoch = p.poc_halflife_bars * _POC_EPOCH_HALFLIVES
    grow = lam ** -np.arange(epoch, dtype=np.float64)
    lam_epoch = lam**epoch
    carry = np.zeros(n_bins)
    out = np.empty(n, np.int64)
    poc = -1
    for e0 in range(0, n, epoch):
        be = bb[e0 : e0 + epoch]
        m = len(be)
        w = v[e0 : e0 + m] * grow[:m]
        order = np.argsort(be, kind="stable")
        bs = be[order]
        cs = np.cumsum(w[order])
        first = np.empty(m, bool)
        first[0] = True
        np.not_equal(bs[1:], bs[:-1], out=first[1:])
        group = np.cumsum(first) - 1
        before = np.concatenate(([0.0], cs))[np.flatnonzero(first)]
        running = np.empty(m)
        running[order] = cs - before[group]  # each bin's total so far in this epoch
        cv = carry[be] + running
        top = carry[poc] if poc >= 0 else 0.0
        prev_max = np.maximum.accumulate(np.concatenate(([top], cv)))[:-1]
        last = _ffill_index(cv > prev_max)
        seg = np.where(last >= 0, be[np.maximum(last, 0)], poc)
        out[e0 : e0 + m] = seg
        poc = int(seg[-1])
        carry += np.bincount(be, w, minlength=n_bins)
        carry *= lam_epoch
    return np.where(out >= 0, out + b0, -1)


def timeframe_features(
    h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray, bin_bps: float, p: FeatureParams
) -> np.ndarray:
    """[per-timeframe features x candles] of one segment's complete candles (a row per
    feature: each is written and read contiguously)."""
    n = len(c)
    horizons = p.return_horizons_bars
    out = np.full((layout(p).per_timeframe, n), _NAN)
    if n == 0:
        return out
    col = len(horizons)
    for q, hz in enumerate(horizons):
        if n > hz:
            out[q, hz:] = 1e4 * np.log(c[hz:] / c[:-hz])

    # RSI
    nr = p.rsi_bars
    d = np.diff(c)
    gain = np.where(d > 0.0, d, 0.0)
    loss = np.where(d < 0.0, -d, 0.0)
    rsi = np.full(n, _NAN)
    if n > nr:
        ag0, al0 = seeded_mean(gain[:nr]), seeded_mean(loss[:nr])
        ag = np.concatenate(([ag0], ema(gain[nr:], 1.0 / nr, ag0)))
        al = np.concatenate(([al0], ema(loss[nr:], 1.0 / nr, al0)))
        tot = ag + al
        with np.errstate(invalid="ignore", divide="ignore"):
            rsi[nr:] = np.where(tot > 0.0, 100.0 * ag / tot, 50.0)
    out[col] = rsi

    # RSI divergence
    nd = p.divergence_bars
    if n >= nr + nd:
        r_lo = rolling_min(rsi[nr:], nd)
        r_rng = rolling_max(rsi[nr:], nd) - r_lo
        p_lo = rolling_min(c[nr:], nd)
        p_rng = rolling_max(c[nr:], nd) - p_lo
        r_now, p_now = rsi[nr + nd - 1 :], c[nr + nd - 1 :]
        with np.errstate(invalid="ignore", divide="ignore"):
            pos_r = np.where(r_rng > 1e-6, (r_now - r_lo) / r_rng, 0.5)
            pos_p = np.where(p_rng > 0.0, (p_now - p_lo) / p_rng, 0.5)
        out[col + 1, nr + nd - 1 :] = pos_r - pos_p

    # MACD
    af, asl, asg = (2.0 / (p.macd_fast_bars + 1), 2.0 / (p.macd_slow_bars + 1),
                    2.0 / (p.macd_signal_bars + 1))  # fmt: skip
    ef = np.concatenate(([c[0]], ema(c[1:], af, c[0])))
    es = np.concatenate(([c[0]], ema(c[1:], asl, c[0])))
    m = ef - es
    sig = np.concatenate(([0.0], ema(m[1:], asg, 0.0)))
    hist = 1e4 * (m - sig) / c
    w = p.macd_warmup_bars
    out[col + 2, w - 1 :] = hist[w - 1 :]
    out[col + 3, w:] = hist[w:] - hist[w - 1 : -1]

    # Bollinger bandwidth and squeeze
    nb = p.bb_bars
    if n >= nb:
        s = rolling_sum(c, nb)
        mean = s / nb
        dx = c[:nb] - mean[nb - 1]
        m2_0 = float(np.cumsum(dx * dx)[-1])
        old = c[:-nb]
        new = c[nb:]
        dm2 = (new - old) * ((new - mean[nb:]) + (old - s[nb - 1 : -1] / nb))
        m2 = np.cumsum(np.concatenate(([m2_0], dm2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            width = np.where(m2 > 0.0, 4e4 * np.sqrt(m2 / nb) / mean[nb - 1 :], 0.0)
        out[col + 4, nb - 1 :] = width
        a_sq = 2.0 / (p.bb_squeeze_span_bars + 1)
        sq = np.concatenate(([width[0]], ema(width[1:], a_sq, width[0])))
        with np.errstate(invalid="ignore", divide="ignore"):
            squeeze = np.where(sq > 0.0, width / sq, _NAN)
        first = p.squeeze_warmup_bars - 1
        out[col + 5, first:] = squeeze[first - (nb - 1) :]

    # Volume-profile point of control
    poc = _poc_bins(h, lo, c, v, bin_bps, p)
    ok = poc >= 0
    ok[: p.poc_halflife_bars - 1] = False
    out[col + 6, ok] = 1e4 * np.log(c[ok]) - (poc[ok] + 0.5) * bin_bps

    # Support / resistance: latest confirmed swing high / low
    k = p.swing_half_bars
    if n >= 2 * k + 1:
        conf_hi = np.concatenate((np.zeros(2 * k, bool), h[k : n - k] == rolling_max(h, 2 * k + 1)))
        conf_lo = np.concatenate(
            (np.zeros(2 * k, bool), lo[k : n - k] == rolling_min(lo, 2 * k + 1))
        )
        last_hi = _ffill_index(conf_hi)
        last_lo = _ffill_index(conf_lo)
        has_hi, has_lo = last_hi >= 0, last_lo >= 0
        out[col + 7, has_hi] = 1e4 * np.log(h[last_hi[has_hi] - k] / c[has_hi])
        out[col + 8, has_lo] = 1e4 * np.log(c[has_lo] / lo[last_lo[has_lo] - k])

    # ATR
    na = p.atr_bars
    tr = h - lo
    tr[1:] = np.maximum(np.maximum(tr[1:], np.abs(h[1:] - c[:-1])), np.abs(lo[1:] - c[:-1]))
    if n >= na:
        atr0 = seeded_mean(tr[:na])
        atr = np.concatenate(([atr0], ema(tr[na:], 1.0 / na, atr0)))
        out[col + 9, na - 1 :] = 1e4 * atr / c[na - 1 :]

    # Efficiency ratio
    ne = p.er_bars
    if n > ne:
        a = np.concatenate(([0.0], np.abs(d)))
        r = rolling_sum(a, ne)
        num = np.abs(c[ne:] - c[:-ne])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[col + 10, ne:] = np.where(r[ne:] > 0.0, num / r[ne:], 0.0)
    return out


# --- one segment of 1m bars ---------------------------------------------------------------


def _segment(bars: BarColumns, a: int, b: int, p: FeatureParams, out: np.ndarray) -> None:
    lay = layout(p)
    ot = bars.open_time[a:b]
    o, h, lo, c, v = (bars.open[a:b], bars.high[a:b], bars.low[a:b], bars.close[a:b],
                      bars.volume[a:b])  # fmt: skip
    tb = bars.taker_buy_volume[a:b]
    n = b - a
    rows = np.arange(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Order-flow imbalance
        out[:, 0] = np.where(v > 0.0, (2.0 * tb - v) / v, _NAN)
        nf = p.flow_bars
        tb_nan = np.isnan(tb)
        s_tb = rolling_sum(np.where(tb_nan, 0.0, tb), nf)
        s_vf = rolling_sum(v, nf)
        bad = rolling_sum(tb_nan.astype(np.float64), nf)
        ok = (rows >= nf - 1) & (bad == 0.0) & (s_vf > 0.0)
        out[:, 1] = np.where(ok, (2.0 * s_tb - s_vf) / s_vf, _NAN)

        # VWAP of the UTC day and rolling
        pvol = (h + lo + c) / 3.0 * v
        day = ot // DAY_MS
        starts = np.flatnonzero(np.concatenate(([True], day[1:] != day[:-1])))
        pv_day = np.empty(n)
        v_day = np.empty(n)
        for s0, s1 in zip(starts, [*starts[1:], n], strict=True):
            pv_day[s0:s1] = np.cumsum(pvol[s0:s1])
            v_day[s0:s1] = np.cumsum(v[s0:s1])
        out[:, 2] = np.where(v_day > 0.0, 1e4 * np.log(c / (pv_day / v_day)), _NAN)
        nv = p.vwap_bars
        s_pv = rolling_sum(pvol, nv)
        s_vv = rolling_sum(v, nv)
        ok = (rows >= nv - 1) & (s_vv > 0.0)
        out[:, 3] = np.where(ok, 1e4 * np.log(c / (s_pv / s_vv)), _NAN)

        out[:, 4] = np.where(h > lo, (c - o) / (h - lo), 0.0)

        # Trade size against its rolling mean
        nt = p.trade_size_bars
        trades = bars.trades[a:b].astype(np.float64)
        unknown = trades < 0.0
        s_tq = rolling_sum(np.where(unknown, 0.0, trades), nt)
        s_vt = rolling_sum(v, nt)
        bad = rolling_sum(unknown.astype(np.float64), nt)
        ok = (rows >= nt - 1) & (bad == 0.0) & (trades > 0.0) & (v > 0.0) & (s_vt > 0.0)
        out[:, 5] = np.where(ok, np.log((v / trades) / (s_vt / s_tq)), _NAN)

        # GARCH and the variance ratio
        reg = lay.regime
        r1 = 1e4 * np.log(c[1:] / c[:-1])
        gp = p.garch_for(bars.symbol)
        hvar = np.concatenate(([gp.unconditional_var_bps2], garch.variance_path(r1, gp)))
        wg = p.garch_warmup_bars
        out[wg - 1 :, reg] = np.sqrt(hvar[wg - 1 :])
        nn, kn = p.noise_bars, p.noise_horizon_bars
        if n > kn:
            q1 = rolling_sum(r1 * r1, nn)[kn - 1 :]  # rows kn.. (r1 starts at row 1)
            r5 = 1e4 * np.log(c[kn:] / c[:-kn])
            q5 = rolling_sum(r5 * r5, nn)
            ok = (np.arange(len(r5)) >= nn - 1) & (q1 > 0.0)
            out[kn:, reg + 1] = np.where(ok, q5 / (kn * q1), _NAN)

    for i, minutes in enumerate(p.timeframes_min):
        ch, cl, cc, cv, done = _candles(ot, h, lo, c, v, minutes)
        feats = timeframe_features(ch, cl, cc, cv, p.poc_bin_bps[i], p)
        if len(done) == 0:
            continue
        row_candle = np.full(n, -1)
        row_candle[done] = np.arange(len(done))
        row_candle = np.maximum.accumulate(row_candle)
        start = lay.timeframes[i]
        if minutes == 1:
            out[:, start : start + lay.per_timeframe] = feats.T
            continue
        # Rows before the first completed candle index the NaN column appended at the end.
        feats = np.concatenate((feats, np.full((len(feats), 1), _NAN)), axis=1)
        for q in range(lay.per_timeframe):
            out[:, start + q] = feats[q][row_candle]


def _tick_columns(
    bars: BarColumns, ticks: tk.TickColumns, spans: list[tuple[int, int]], p: FeatureParams,
    out: np.ndarray,
) -> None:  # fmt: skip
    agg = tk.aggregate(ticks, bars.open_time, p)
    t = layout(p).tick
    spread = agg.spread()
    out[:, t] = agg.ofi()
    out[:, t + 1] = agg.large_share()
    out[:, t + 2] = spread
    out[:, t + 4] = agg.depth()
    a_sp = 2.0 / (p.spread_span_bars + 1)
    ratio = np.full(len(spread), _NAN)
    for a, b in spans:  # the spread EMA is bar state: it restarts at a gap
        idx = a + np.flatnonzero(~np.isnan(spread[a:b]))
        if len(idx) == 0:
            continue
        s = spread[idx]
        e = np.concatenate(([s[0]], ema(s[1:], a_sp, s[0])))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(e > 0.0, s / e, _NAN)
        r[: p.spread_warmup_bars - 1] = _NAN
        ratio[idx] = r
    out[:, t + 3] = ratio


def compute(
    bars: BarColumns, params: FeatureParams = DEFAULT_PARAMS, ticks: tk.TickColumns | None = None
) -> FeatureMatrix:
    """Features of validated 1m bars (`scalpd.data.bars.validate`), and of their tick stream
    when given. Cross-asset columns stay NaN: see `compute_many`."""
    ot = bars.open_time
    if len(ot) > 1 and (np.any(np.diff(ot) <= 0) or np.any(ot % MINUTE_MS)):
        raise ValueError("compute needs validated bars: sorted, unique, on minute boundaries")
    names = feature_names(params)
    # Column-major: every feature is computed and written as one contiguous column.
    values = np.full((len(names), len(ot)), _NAN).T
    spans = segments(ot)
    for a, b in spans:
        _segment(bars, a, b, params, values[a:b])
    if ticks is not None:
        _tick_columns(bars, ticks, spans, params, values)
    return FeatureMatrix(bars.symbol, ot, names, values)


def returns_bps(bars: BarColumns) -> np.ndarray:
    """1e4 * ln(c_t / c_(t-1)) where bar t-1 is the minute before t, NaN elsewhere."""
    out = np.full(len(bars), _NAN)
    consecutive = np.diff(bars.open_time) == MINUTE_MS
    r = 1e4 * np.log(bars.close[1:] / bars.close[:-1])
    out[1:] = np.where(consecutive, r, _NAN)
    return out


def pair_correlation(x: np.ndarray, y: np.ndarray, times: np.ndarray, n: int) -> np.ndarray:
    """Rolling correlation over the last n samples of runs of consecutive minutes where both
    returns exist (NaN elsewhere), on a shared time grid."""
    out = np.full(len(times), _NAN)
    both = np.flatnonzero(~np.isnan(x) & ~np.isnan(y))
    if len(both) == 0:
        return out
    cuts = np.flatnonzero(np.diff(times[both]) != MINUTE_MS) + 1
    for run in np.split(both, cuts):
        if len(run) < n:
            continue
        xs, ys = x[run], y[run]
        sx, sy = rolling_sum(xs, n), rolling_sum(ys, n)
        sxx, syy, sxy = rolling_sum(xs * xs, n), rolling_sum(ys * ys, n), rolling_sum(xs * ys, n)
        vx = n * sxx - sx * sx
        vy = n * syy - sy * sy
        ok = (vx > 0.0) & (vy > 0.0)
        ok[: n - 1] = False
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(ok, (n * sxy - sx * sy) / np.sqrt(vx * vy), _NAN)
        out[run] = corr
    return out


def compute_many(
    series: Sequence[BarColumns],
    params: FeatureParams = DEFAULT_PARAMS,
    ticks: Mapping[str, tk.TickColumns] | None = None,
) -> dict[str, FeatureMatrix]:
    """Features of several symbols with the cross-asset columns, in `series` order (the order
    of the engine's symbols: it fixes how pair correlations are summed)."""
    ticks = ticks or {}
    mats = {s.symbol: compute(s, params, ticks.get(s.symbol)) for s in series}
    if len(series) < 2:
        return mats
    times = np.unique(np.concatenate([s.open_time for s in series]))
    rets = []
    for s in series:
        r = np.full(len(times), _NAN)
        r[np.searchsorted(times, s.open_time)] = returns_bps(s)
        rets.append(r)
    k = len(series)
    total = [np.zeros(len(times)) for _ in range(k)]
    count = [np.zeros(len(times)) for _ in range(k)]
    for i in range(k):
        for j in range(i + 1, k):
            corr = pair_correlation(rets[i], rets[j], times, params.corr_bars)
            ok = ~np.isnan(corr)
            for s in (i, j):
                total[s] = total[s] + np.where(ok, corr, 0.0)
                count[s] = count[s] + ok
    cross = layout(params).cross
    for i, s in enumerate(series):
        pos = np.searchsorted(times, s.open_time)
        with np.errstate(invalid="ignore", divide="ignore"):
            mats[s.symbol].values[:, cross] = np.where(
                count[i][pos] > 0, total[i][pos] / count[i][pos], _NAN
            )
    return mats
