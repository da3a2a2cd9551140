"""Incremental features for replay and live: O(1) state per symbol, updated bar by bar.

`SymbolFeatures.update(bar)` advances one symbol by one closed 1-minute bar and rewrites its
`values` (a preallocated float64 vector in `spec.feature_specs` order, NaN where invalid) in
place; `FeatureEngine` holds several symbols, the cross-asset state and the tick inputs.

The definitions are those of `spec`; `batch` computes the same numbers over whole arrays and the
parity tests hold the two together. The code is written for speed: plain floats and locals,
`__slots__`, deques as ring buffers, one slice write per block of features.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence

import numpy as np
import structlog

from scalpd.data.bars import BarColumns
from scalpd.data.orderbook import BookLevels
from scalpd.events import Bar, BookTop, Gap, Side, Trade
from scalpd.features import ticks as tk
from scalpd.features.spec import (
    DAY_MS,
    DEFAULT_PARAMS,
    MINUTE_MS,
    FeatureParams,
    layout,
    poc_decay,
)

log = structlog.get_logger(__name__)

_NAN = math.nan
_INF = math.inf
_log = math.log
_sqrt = math.sqrt
_floor = math.floor


class _Timeframe:
    """Technical features of one timeframe: candles built from 1m bars, indicators on them."""

    __slots__ = (
        "minutes", "period_ms", "values", "lo", "hi", "horizons", "n_rsi", "a_rsi", "c_rsi",
        "n_div", "a_fast", "c_fast", "a_slow", "c_slow", "a_sig", "c_sig", "w_macd", "n_bb",
        "a_sq", "c_sq", "w_sq", "poc_h", "poc_lam", "bin_bps", "k_swing", "n_atr", "a_atr",
        "c_atr", "n_er",
        # state
        "n", "c_start", "c_high", "c_low", "c_vol", "closes", "gsum", "lsum", "ag", "al",
        "rsi_win", "px_win", "ema_f", "ema_s", "sig", "hist_prev", "bb_win", "bb_sum", "bb_m2",
        "sq", "pv", "pt", "poc", "hi_win", "lo_win", "swing_hi", "swing_lo", "tr_sum", "atr",
        "absd", "er_sum",
    )  # fmt: skip

    def __init__(
        self, minutes: int, bin_bps: float, p: FeatureParams, values: np.ndarray, start: int
    ) -> None:
        self.minutes = minutes
        self.period_ms = minutes * MINUTE_MS
        self.values = values
        self.lo = start
        self.hi = start + layout(p).per_timeframe
        self.horizons = p.return_horizons_bars
        self.n_rsi = p.rsi_bars
        self.a_rsi = 1.0 / p.rsi_bars
        self.c_rsi = 1.0 - self.a_rsi
        self.n_div = p.divergence_bars
        self.a_fast = 2.0 / (p.macd_fast_bars + 1)
        self.c_fast = 1.0 - self.a_fast
        self.a_slow = 2.0 / (p.macd_slow_bars + 1)
        self.c_slow = 1.0 - self.a_slow
        self.a_sig = 2.0 / (p.macd_signal_bars + 1)
        self.c_sig = 1.0 - self.a_sig
        self.w_macd = p.macd_warmup_bars
        self.n_bb = p.bb_bars
        self.a_sq = 2.0 / (p.bb_squeeze_span_bars + 1)
        self.c_sq = 1.0 - self.a_sq
        self.w_sq = p.squeeze_warmup_bars
        self.poc_h = p.poc_halflife_bars
        self.poc_lam = poc_decay(p)
        self.bin_bps = bin_bps
        self.k_swing = p.swing_half_bars
        self.n_atr = p.atr_bars
        self.a_atr = 1.0 / p.atr_bars
        self.c_atr = 1.0 - self.a_atr
        self.n_er = p.er_bars
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.c_start = -1
        self.c_high = self.c_low = self.c_vol = 0.0
        self.closes: deque[float] = deque(maxlen=max(max(self.horizons), self.n_er) + 1)
        self.gsum = self.lsum = self.ag = self.al = 0.0
        self.rsi_win: deque[float] = deque(maxlen=self.n_div)
        self.px_win: deque[float] = deque(maxlen=self.n_div)
        self.ema_f = self.ema_s = self.sig = 0.0
        self.hist_prev = _NAN
        self.bb_win: deque[float] = deque(maxlen=self.n_bb)
        self.bb_sum = self.bb_m2 = self.sq = 0.0
        self.pv: dict[int, float] = {}  # volume-profile bin -> decayed volume at its last update
        self.pt: dict[int, int] = {}  # bin -> candle index of that update
        self.poc: int | None = None
        self.hi_win: deque[float] = deque(maxlen=2 * self.k_swing + 1)
        self.lo_win: deque[float] = deque(maxlen=2 * self.k_swing + 1)
        self.swing_hi = self.swing_lo = _NAN
        self.tr_sum = self.atr = 0.0
        self.absd: deque[float] = deque(maxlen=self.n_er)
        self.er_sum = 0.0
        self.values[self.lo : self.hi] = _NAN

    def on_minute(self, open_ms: int, high: float, low: float, close: float, vol: float) -> None:
        """Fold one 1m bar into the candle being built; complete it on its last minute."""
        period = self.period_ms
        start = open_ms - open_ms % period
        if open_ms == start:
            self.c_start = start
            self.c_high = high
            self.c_low = low
            self.c_vol = vol
        elif self.c_start == start:
            if high > self.c_high:
                self.c_high = high
            if low < self.c_low:
                self.c_low = low
            self.c_vol += vol
        else:
            return  # its first minute came before the last reset: a partial candle never counts
        if open_ms + MINUTE_MS - start == period:
            self.candle(self.c_high, self.c_low, close, self.c_vol)

    def candle(self, h: float, lo: float, c: float, v: float) -> None:
        nan = _NAN
        j = self.n
        self.n = j + 1
        closes = self.closes
        prev = closes[-1] if j else c
        closes.append(c)

        # Returns over each horizon.
        rets = [1e4 * _log(c / closes[-1 - k]) if j >= k else nan for k in self.horizons]

        # RSI (Wilder, started at the mean of the first n gains and losses).
        n_rsi = self.n_rsi
        rsi = nan
        if j:
            d = c - prev
            g = d if d > 0.0 else 0.0
            ls = -d if d < 0.0 else 0.0
            if j > n_rsi:
                ag = self.a_rsi * g + self.c_rsi * self.ag
                al = self.a_rsi * ls + self.c_rsi * self.al
                self.ag = ag
                self.al = al
            else:
                self.gsum += g
                self.lsum += ls
                ag = self.ag = self.gsum / n_rsi
                al = self.al = self.lsum / n_rsi
            if j >= n_rsi:
                tot = ag + al
                rsi = 100.0 * ag / tot if tot > 0.0 else 50.0

        # RSI divergence: stochastic position of RSI minus that of the close.
        div = nan
        if rsi == rsi:
            rw = self.rsi_win
            pw = self.px_win
            rw.append(rsi)
            pw.append(c)
            if len(rw) == self.n_div:
                r_lo = min(rw)
                r_rng = max(rw) - r_lo
                p_lo = min(pw)
                p_rng = max(pw) - p_lo
                pos_r = (rsi - r_lo) / r_rng if r_rng > 1e-6 else 0.5
                pos_p = (c - p_lo) / p_rng if p_rng > 0.0 else 0.5
                div = pos_r - pos_p

        # MACD histogram (EMAs started at the first close) and its slope.
        if j:
            ef = self.a_fast * c + self.c_fast * self.ema_f
            es = self.a_slow * c + self.c_slow * self.ema_s
            m = ef - es
            sig = self.a_sig * m + self.c_sig * self.sig
        else:
            ef = es = c
            m = sig = 0.0
        self.ema_f = ef
        self.ema_s = es
        self.sig = sig
        hist = 1e4 * (m - sig) / c
        w_macd = self.w_macd
        macd_hist = hist if j >= w_macd - 1 else nan
        macd_slope = hist - self.hist_prev if j >= w_macd else nan
        self.hist_prev = hist

        # Bollinger bandwidth: rolling sum and a sliding Welford sum of squared deviations.
        n_bb = self.n_bb
        bw = self.bb_win
        full = len(bw) == n_bb
        old = bw[0] if full else 0.0
        s_prev = self.bb_sum
        s = self.bb_sum = s_prev + (c - old)
        bw.append(c)
        width = squeeze = nan
        if full:
            mean = s / n_bb
            m2 = self.bb_m2 = self.bb_m2 + (c - old) * ((c - mean) + (old - s_prev / n_bb))
        elif j == n_bb - 1:
            mean = s / n_bb
            m2 = 0.0
            for x in bw:
                dx = x - mean
                m2 += dx * dx
            self.bb_m2 = m2
        if j >= n_bb - 1:
            width = 4e4 * _sqrt(m2 / n_bb) / mean if m2 > 0.0 else 0.0
            sq = self.sq = width if j == n_bb - 1 else self.a_sq * width + self.c_sq * self.sq
            if j >= self.w_sq - 1:
                squeeze = width / sq if sq > 0.0 else nan

        # Volume profile: exponentially decayed volume per ln-price bin; POC = fullest bin.
        # Decay preserves the order of bins, so the POC can only change to the bin just added.
        b = _floor(1e4 * _log((h + lo + c) / 3.0) / self.bin_bps)
        pv = self.pv
        pt = self.pt
        lam = self.poc_lam
        val = pv.get(b)
        val = v if val is None else val * lam ** (j - pt[b]) + v
        pv[b] = val
        pt[b] = j
        poc = self.poc
        if b != poc:
            if poc is None:
                if val > 0.0:
                    poc = self.poc = b
            elif val > pv[poc] * lam ** (j - pt[poc]):
                poc = self.poc = b
        poc_dist = (
            1e4 * _log(c) - (poc + 0.5) * self.bin_bps
            if poc is not None and j >= self.poc_h - 1
            else nan
        )

        # Support / resistance: latest confirmed swing high and low.
        k = self.k_swing
        hw = self.hi_win
        lw = self.lo_win
        hw.append(h)
        lw.append(lo)
        if len(hw) == 2 * k + 1:
            mid = hw[k]
            if mid == max(hw):
                self.swing_hi = mid
            mid = lw[k]
            if mid == min(lw):
                self.swing_lo = mid
        sh = self.swing_hi
        sl = self.swing_lo
        res = 1e4 * _log(sh / c) if sh == sh else nan
        sup = 1e4 * _log(c / sl) if sl == sl else nan

        # ATR (Wilder, started at the mean of the first n true ranges).
        tr = h - lo
        if j:
            up = abs(h - prev)
            if up > tr:
                tr = up
            dn = abs(lo - prev)
            if dn > tr:
                tr = dn
        n_atr = self.n_atr
        atr_bps = nan
        if j >= n_atr:
            atr = self.atr = self.a_atr * tr + self.c_atr * self.atr
            atr_bps = 1e4 * atr / c
        else:
            self.tr_sum += tr
            if j == n_atr - 1:
                atr = self.atr = self.tr_sum / n_atr
                atr_bps = 1e4 * atr / c

        # Efficiency ratio.
        n_er = self.n_er
        er = nan
        if j:
            ad = self.absd
            a = abs(c - prev)
            old = ad[0] if len(ad) == n_er else 0.0
            r = self.er_sum = self.er_sum + (a - old)
            ad.append(a)
            if j >= n_er:
                er = abs(c - closes[-1 - n_er]) / r if r > 0.0 else 0.0

        self.values[self.lo : self.hi] = (
            *rets, rsi, div, macd_hist, macd_slope, width, squeeze, poc_dist, res, sup, atr_bps, er
        )  # fmt: skip


class SymbolFeatures:
    """One symbol's features. `update(bar)` is O(1); `values` is rewritten in place."""

    __slots__ = (
        "symbol", "params", "values", "rejected", "last_refusal", "gaps", "ticks", "_tfs",
        "_tf1", "_garch", "_h0", "_n_flow", "_n_vwap", "_n_ts", "_n_noise", "_k_noise",
        "_w_garch", "_a_sp", "_c_sp", "_w_sp", "_tick", "_regime", "_cross",
        # state
        "last_open_ms", "ret_bps", "n", "_day", "_pv_day", "_v_day", "_vq", "_tbq", "_tb_nan",
        "_s_tb", "_s_vf", "_pvq", "_s_pv", "_s_vv", "_tq", "_tq_unknown", "_s_tq", "_s_vt",
        "_closes", "_r1q", "_r5q", "_q1", "_q5", "_h", "_sp_ema", "_sp_n", "_tick_dirty",
    )  # fmt: skip

    def __init__(self, symbol: str, params: FeatureParams = DEFAULT_PARAMS) -> None:
        lay = layout(params)
        self.symbol = symbol
        self.params = params
        self.values = np.full(lay.n_features, np.nan)
        self.rejected: dict[str, int] = {}
        self.last_refusal: str | None = None
        self.gaps = 0
        self.ticks = tk.TickAccumulator(params)
        self._tick = lay.tick
        self._regime = lay.regime
        self._cross = lay.cross
        self._tfs = [
            _Timeframe(m, params.poc_bin_bps[i], params, self.values, lay.timeframes[i])
            for i, m in enumerate(params.timeframes_min)
        ]
        self._tf1 = self._tfs[0]
        self._tfs = self._tfs[1:]  # the 1m timeframe is fed directly, the others aggregate
        g = params.garch_for(symbol)
        self._garch = (g.omega_bps2, g.alpha, g.beta)
        self._h0 = g.unconditional_var_bps2
        self._n_flow = params.flow_bars
        self._n_vwap = params.vwap_bars
        self._n_ts = params.trade_size_bars
        self._n_noise = params.noise_bars
        self._k_noise = params.noise_horizon_bars
        self._w_garch = params.garch_warmup_bars
        self._a_sp = 2.0 / (params.spread_span_bars + 1)
        self._c_sp = 1.0 - self._a_sp
        self._w_sp = params.spread_warmup_bars
        self.last_open_ms = -1
        self._reset()

    def _reset(self) -> None:
        """Forget everything that spans bars (start, or a gap). `last_open_ms` is kept so that
        an older bar is still refused."""
        p = self.params
        self.n = 0
        self.ret_bps = _NAN
        self._day = -1
        self._pv_day = self._v_day = 0.0
        self._vq: deque[float] = deque(maxlen=max(p.flow_bars, p.vwap_bars, p.trade_size_bars))
        self._tbq: deque[float] = deque(maxlen=p.flow_bars)
        self._tb_nan = 0
        self._s_tb = self._s_vf = 0.0
        self._pvq: deque[float] = deque(maxlen=p.vwap_bars)
        self._s_pv = self._s_vv = 0.0
        self._tq: deque[float] = deque(maxlen=p.trade_size_bars)
        self._tq_unknown = 0
        self._s_tq = self._s_vt = 0.0
        self._closes: deque[float] = deque(maxlen=p.noise_horizon_bars)
        self._r1q: deque[float] = deque(maxlen=p.noise_bars)
        self._r5q: deque[float] = deque(maxlen=p.noise_bars)
        self._q1 = self._q5 = 0.0
        self._h = self._h0
        self._sp_ema = 0.0
        self._sp_n = 0
        # The tick accumulator is left alone: its open minutes may already hold ticks of the
        # first minute after the gap, and the trade-size EMA belongs to the trade stream.
        self._tick_dirty = False
        self.values[:] = np.nan
        self._tf1.reset()
        for tf in self._tfs:
            tf.reset()

    def on_gap(self, gap: Gap | None = None) -> None:
        self.gaps += 1
        self._reset()

    # --- the bar path -------------------------------------------------------------------

    def update(self, bar: Bar) -> bool:
        """Advance by one closed 1m bar. False (and nothing changed) when the bar is refused."""
        ot = bar.open_time_ms
        o = bar.open
        h = bar.high
        lo = bar.low
        c = bar.close
        v = bar.volume
        # One chained comparison accepts every good bar; NaN fails every comparison.
        if not (
            0.0 < lo <= o <= h < _INF
            and lo <= c <= h
            and 0.0 <= v < _INF
            and ot > self.last_open_ms
            and ot % MINUTE_MS == 0
        ):
            self._refuse(bar)
            return False
        if self.n and ot != self.last_open_ms + MINUTE_MS:
            self.gaps += 1  # missing minutes without a Gap event: the same reset
            self._reset()
        self.last_open_ms = ot
        i = self.n
        self.n = i + 1
        nan = _NAN

        # Order-flow imbalance from the bar's taker buy volume.
        tb = bar.taker_buy_volume
        ofi = (2.0 * tb - v) / v if v > 0.0 else nan  # NaN taker volume gives NaN
        n_flow = self._n_flow
        vq = self._vq
        tbq = self._tbq
        if len(tbq) == n_flow:
            old = tbq[0]
            if old != old:
                self._tb_nan -= 1
                old = 0.0
            old_v = vq[-n_flow]
        else:
            old = old_v = 0.0
        if tb != tb:
            self._tb_nan += 1
            s_tb = self._s_tb = self._s_tb + (0.0 - old)
        else:
            s_tb = self._s_tb = self._s_tb + (tb - old)
        tbq.append(tb)
        s_vf = self._s_vf = self._s_vf + (v - old_v)
        ofi_n = (
            (2.0 * s_tb - s_vf) / s_vf
            if i >= n_flow - 1 and self._tb_nan == 0 and s_vf > 0.0
            else nan
        )

        # VWAP of the UTC day and rolling VWAP, on hlc3.
        pvol = (h + lo + c) / 3.0 * v
        day = ot // DAY_MS
        if day != self._day:
            self._day = day
            self._pv_day = self._v_day = 0.0
        pv_day = self._pv_day = self._pv_day + pvol
        v_day = self._v_day = self._v_day + v
        vwap_day = 1e4 * _log(c / (pv_day / v_day)) if v_day > 0.0 else nan
        n_vwap = self._n_vwap
        pvq = self._pvq
        if len(pvq) == n_vwap:
            old = pvq[0]
            old_v = vq[-n_vwap]
        else:
            old = old_v = 0.0
        pvq.append(pvol)
        s_pv = self._s_pv = self._s_pv + (pvol - old)
        s_vv = self._s_vv = self._s_vv + (v - old_v)
        vwap_n = 1e4 * _log(c / (s_pv / s_vv)) if i >= n_vwap - 1 and s_vv > 0.0 else nan

        body = (c - o) / (h - lo) if h > lo else 0.0

        # Average trade size against its rolling mean; unknown counts (-1) poison the window.
        n_ts = self._n_ts
        tq = self._tq
        trades = float(bar.trades)
        if len(tq) == n_ts:
            old = tq[0]
            if old < 0.0:
                self._tq_unknown -= 1
                old = 0.0
            old_v = vq[-n_ts]
        else:
            old = old_v = 0.0
        if trades < 0.0:
            self._tq_unknown += 1
            s_tq = self._s_tq = self._s_tq + (0.0 - old)
        else:
            s_tq = self._s_tq = self._s_tq + (trades - old)
        tq.append(trades)
        s_vt = self._s_vt = self._s_vt + (v - old_v)
        ts_rel = (
            _log((v / trades) / (s_vt / s_tq))
            if i >= n_ts - 1 and self._tq_unknown == 0 and trades > 0.0 and v > 0.0 and s_vt > 0.0
            else nan
        )
        vq.append(v)

        self.values[0:6] = (ofi, ofi_n, vwap_day, vwap_n, body, ts_rel)

        # Returns, GARCH and the variance ratio.
        closes = self._closes
        r1 = nan
        n_noise = self._n_noise
        noise = nan
        if i:
            r1 = 1e4 * _log(c / closes[-1])
            om, al, be = self._garch
            self._h = (om + al * (r1 * r1)) + be * self._h
            r1q = self._r1q
            x = r1 * r1
            old = r1q[0] if len(r1q) == n_noise else 0.0
            q1 = self._q1 = self._q1 + (x - old)
            r1q.append(x)
            k = self._k_noise
            if i >= k:
                r5 = 1e4 * _log(c / closes[-k])  # c_(i-k): c_i is not in yet
                r5q = self._r5q
                x = r5 * r5
                old = r5q[0] if len(r5q) == n_noise else 0.0
                q5 = self._q5 = self._q5 + (x - old)
                r5q.append(x)
                if len(r5q) == n_noise and q1 > 0.0:
                    noise = q5 / (k * q1)
        closes.append(c)
        self.ret_bps = r1
        garch = _sqrt(self._h) if i >= self._w_garch - 1 else nan
        reg = self._regime
        self.values[reg : reg + 2] = (garch, noise)

        # Tick features of this minute, when a tick stream feeds the symbol.
        acc = self.ticks
        if acc.active or self._tick_dirty:
            self._tick_features(acc.take(ot))
        else:
            acc.last_taken_ms = ot

        self._tf1.candle(h, lo, c, v)
        for tf in self._tfs:
            tf.on_minute(ot, h, lo, c, v)
        return True

    def _tick_features(self, mt: tk.MinuteTicks | None) -> None:
        nan = _NAN
        if mt is None:
            ofi = large = spread = depth = ratio = nan
        else:
            ofi = mt.ofi()
            large = mt.large_share()
            spread = mt.spread()
            depth = mt.depth()
            ratio = nan
            if spread == spread:
                n = self._sp_n
                ema = self._sp_ema = (
                    spread if n == 0 else self._a_sp * spread + self._c_sp * self._sp_ema
                )
                self._sp_n = n + 1
                if n + 1 >= self._w_sp:
                    ratio = spread / ema if ema > 0.0 else nan
        t = self._tick
        self.values[t : t + 5] = (ofi, large, spread, ratio, depth)
        self._tick_dirty = mt is not None

    def _refuse(self, bar: Bar) -> None:
        reason = self.last_refusal = refusal_reason(bar, self.last_open_ms)
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        log.warning(
            "feature_bar_rejected",
            symbol=self.symbol,
            reason=reason,
            open_time_ms=bar.open_time_ms,
            last_open_time_ms=self.last_open_ms,
        )

    # --- the tick path ------------------------------------------------------------------

    def on_trade(self, trade: Trade) -> None:
        self.ticks.on_trade(trade.time_ms, trade.qty, trade.taker_side is Side.BUY)

    def on_book(self, book: BookLevels | BookTop) -> None:
        """A book top (spread) or the best levels of the local book (depth imbalance)."""
        if isinstance(book, BookTop):
            self.ticks.on_top(book.time_ms, book.bid, book.ask)
        else:
            self.ticks.on_depth(book.time_ms, tk.depth_imbalance(book))


def refusal_reason(bar: Bar, last_open_ms: int) -> str:
    """Why `bar` cannot be used (the first reason found), in the order `bars.validate` checks."""
    prices = (bar.open, bar.high, bar.low, bar.close)
    if not all(math.isfinite(x) for x in (*prices, bar.volume)):
        return "nan_or_infinite"
    if min(prices) <= 0.0:
        return "non_positive_price"
    if bar.high < bar.low:
        return "high_below_low"
    if not (bar.low <= bar.open <= bar.high and bar.low <= bar.close <= bar.high):
        return "open_or_close_outside_range"
    if bar.volume < 0.0:
        return "negative_volume"
    if bar.open_time_ms % MINUTE_MS:
        return "not_on_minute"
    if bar.open_time_ms == last_open_ms:
        return "duplicate"
    return "out_of_order"


class _Pair:
    """Rolling correlation of two symbols' 1m returns over their last n common minutes."""

    __slots__ = ("a", "b", "n", "last_ms", "xq", "yq", "sx", "sy", "sxx", "syy", "sxy", "corr")

    def __init__(self, a: int, b: int, n: int) -> None:
        self.a = a
        self.b = b
        self.n = n
        self.reset()

    def reset(self) -> None:
        self.last_ms = -1
        self.xq: deque[float] = deque(maxlen=self.n)
        self.yq: deque[float] = deque(maxlen=self.n)
        self.sx = self.sy = self.sxx = self.syy = self.sxy = 0.0
        self.corr = _NAN

    def add(self, t_ms: int, x: float, y: float) -> None:
        if t_ms != self.last_ms + MINUTE_MS:
            self.reset()
        self.last_ms = t_ms
        n = self.n
        xq = self.xq
        yq = self.yq
        if len(xq) == n:
            ox = xq[0]
            oy = yq[0]
        else:
            ox = oy = 0.0
        xq.append(x)
        yq.append(y)
        sx = self.sx = self.sx + (x - ox)
        sy = self.sy = self.sy + (y - oy)
        sxx = self.sxx = self.sxx + (x * x - ox * ox)
        syy = self.syy = self.syy + (y * y - oy * oy)
        sxy = self.sxy = self.sxy + (x * y - ox * oy)
        self.corr = _NAN
        if len(xq) == n:
            vx = n * sxx - sx * sx
            vy = n * syy - sy * sy
            if vx > 0.0 and vy > 0.0:
                self.corr = (n * sxy - sx * sy) / _sqrt(vx * vy)


class FeatureEngine:
    """Features of several symbols in one process: per-symbol state plus cross-asset pairs.

    Cross-asset features of every symbol are refreshed whenever a pair gets its sample for a
    minute, i.e. on the later of the two bars of that minute: read them after the last bar of
    the minute (bars merged in time order, as replay and the live source deliver them).
    """

    def __init__(self, symbols: Sequence[str], params: FeatureParams = DEFAULT_PARAMS) -> None:
        if len(set(symbols)) != len(symbols) or not symbols:
            raise ValueError(f"symbols must be distinct and not empty: {list(symbols)}")
        self.params = params
        self.symbols = list(symbols)
        self.features = {s: SymbolFeatures(s, params) for s in symbols}
        self._order = [self.features[s] for s in symbols]
        self._index = {s: i for i, s in enumerate(symbols)}
        self._pairs: list[_Pair] = [
            _Pair(a, b, params.corr_bars)
            for a in range(len(symbols))
            for b in range(a + 1, len(symbols))
        ]
        self._pairs_of: list[list[_Pair]] = [
            [p for p in self._pairs if i in (p.a, p.b)] for i in range(len(symbols))
        ]
        self._cross = layout(params).cross
        self.rejected: dict[str, int] = {}

    def on_bar(self, bar: Bar) -> bool:
        i = self._index.get(bar.symbol)
        if i is None:
            self._count("unknown_symbol")
            log.warning("feature_bar_rejected", symbol=bar.symbol, reason="unknown_symbol")
            return False
        sf = self._order[i]
        if not sf.update(bar):
            self._count(sf.last_refusal or "unknown")
            return False
        self._on_return(i, sf)
        return True

    def on_bars(self, bars: Iterable[Bar]) -> None:
        for bar in bars:
            self.on_bar(bar)

    def on_gap(self, gap: Gap) -> None:
        i = self._index.get(gap.symbol)
        if i is None:
            return
        self._order[i].on_gap(gap)
        for pair in self._pairs_of[i]:
            pair.reset()
        self._refresh_cross(i)

    def on_trade(self, trade: Trade) -> None:
        sf = self.features.get(trade.symbol)
        if sf is not None:
            sf.on_trade(trade)

    def on_book(self, book: BookLevels | BookTop) -> None:
        sf = self.features.get(book.symbol)
        if sf is not None:
            sf.on_book(book)

    def vector(self, symbol: str) -> np.ndarray:
        """The symbol's current feature vector (the live array: copy it to keep it)."""
        return self.features[symbol].values

    def correlation(self, a: str, b: str) -> float:
        """Current rolling return correlation of two symbols (NaN while invalid)."""
        i, j = sorted((self._index[a], self._index[b]))
        for pair in self._pairs_of[i]:
            if pair.b == j:
                return pair.corr
        return _NAN

    # --- cross-asset --------------------------------------------------------------------

    def _on_return(self, i: int, sf: SymbolFeatures) -> None:
        order = self._order
        t = sf.last_open_ms
        r = sf.ret_bps
        touched = False
        if r == r:
            for pair in self._pairs_of[i]:
                j = pair.b if pair.a == i else pair.a
                other = order[j]
                if other.last_open_ms == t and other.ret_bps == other.ret_bps:
                    if pair.a == i:
                        pair.add(t, r, other.ret_bps)
                    else:
                        pair.add(t, other.ret_bps, r)
                    self._refresh_cross(j)
                    touched = True
        if touched or self._pairs_of[i]:
            self._refresh_cross(i)

    def _refresh_cross(self, i: int) -> None:
        sf = self._order[i]
        t = sf.last_open_ms
        total = 0.0
        count = 0
        for pair in self._pairs_of[i]:
            corr = pair.corr
            if pair.last_ms == t and corr == corr:
                total += corr
                count += 1
        sf.values[self._cross] = total / count if count else _NAN

    def _count(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


def replay(
    series: Sequence[BarColumns], params: FeatureParams = DEFAULT_PARAMS
) -> dict[str, np.ndarray]:
    """Run a `FeatureEngine` over bar series merged in time (gaps announced as `Gap` events),
    and return each symbol's vectors [bars x features] as they stood after the last bar of
    each minute: the rows `batch.compute_many` gives for the same series."""
    from scalpd.replay.source import ReplaySource  # only this helper needs the merge

    engine = FeatureEngine([s.symbol for s in series], params)
    out = {
        s.symbol: np.full((len(s), len(engine.features[s.symbol].values)), np.nan) for s in series
    }
    row = dict.fromkeys(out, 0)
    minute = -1
    pending: list[str] = []

    def snapshot() -> None:
        for symbol in pending:
            out[symbol][row[symbol]] = engine.vector(symbol)
            row[symbol] += 1
        pending.clear()

    for gap, bars in ReplaySource(series).segments():
        if gap is not None:
            if gap.next_open_time_ms != minute:
                snapshot()  # the minute before the gap is complete: keep it before the reset
            engine.on_gap(gap)
        for bar in bars:
            if bar.open_time_ms != minute:
                snapshot()
                minute = bar.open_time_ms
            engine.on_bar(bar)
            pending.append(bar.symbol)
    snapshot()
    return out
