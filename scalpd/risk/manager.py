"""The risk manager: pre-trade limits and circuit breakers between the strategy and the broker.

Pure: no I/O and no clock of its own. Time comes in as `now_ms` (the bar close in replay, the
engine's clock live), so replay, paper and live take the same decisions on the same events.

What the engine tells it, and when (each call is constant time):
- `on_bar(bar)` for every closed bar, before the strategy sees it: rolling 1m-return sigma
  (price jumps), the z-score of the bar's log range (volatility), pair correlations of 1m
  returns (correlated exposure), the symbol's last bar time (stale data);
- `on_book(top)` for book tops where the feed has them: the spread's rolling median;
- `on_equity(now_ms, equity)` with equity marked at the last prices (realised + unrealised):
  the UTC day's starting equity and the daily loss limit;
- `on_trade_closed(trade)` for every round trip: consecutive losses;
- `on_confidence(now_ms, p)` for every model output: confidence collapse;
- `tick(now_ms)` whenever time passes without other events (live): cool-downs end, the UTC
  day rolls over, stale data is detected;
- `pause` / `resume` from a person (the control socket).

`check(intent, price, position_qty, ...)` decides: sanity first; an exit (reduce-only) then
always passes, so a paused daemon still manages its open positions; an entry must pass every
breaker, the minimum model confidence and every limit. A value exactly at a limit passes; the
daily loss halts when the loss reaches its limit. Every breaker transition is queued as a
`RiskEvent` (`drain_events`); `take_dirty` says when `state` must be saved.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from scalpd.config.settings import RiskSettings
from scalpd.events import Bar, BookTop, OrderIntent, Side
from scalpd.risk.breakers import (
    CONFIDENCE,
    CONSECUTIVE_LOSSES,
    DAILY_LOSS,
    MANUAL,
    PRICE_JUMP,
    RESET,
    SPREAD,
    STALE_DATA,
    TRIP,
    VOLATILITY,
    Breaker,
    RiskEvent,
    RiskState,
    iso_ms,
    kind_of,
    reset_rule,
    scope_of,
)
from scalpd.risk.gate import ALLOWED, Decision
from scalpd.risk.stats import EwmaVariance, PairCorrelations, RollingMeanStd, RollingMedian

if TYPE_CHECKING:
    from scalpd.engine.portfolio import ClosedTrade, Portfolio
    from scalpd.events import Order

DAY_MS = 86_400_000
_MINUTE_MS = 60_000
# A bar with high == low (a quiet minute on a coarse tick) has no log range; this floor (0.1 bp)
# keeps its log finite without letting such minutes drag the mean far down.
_RANGE_FLOOR = 1e-5
# Book tops the spread median needs before a blow-out is judged.
_SPREAD_MIN_SAMPLES = 30
# How every refusal by a tripped breaker begins (the engine logs those quieter than a limit's).
PAUSED_PREFIX = "paused by "
# Kinds that reset on their own when their cool-down ends.
_COOLDOWN_KINDS = frozenset({CONSECUTIVE_LOSSES, PRICE_JUMP, VOLATILITY, SPREAD})


class _SymbolMarket:
    """One symbol's rolling market estimates (not persisted: they re-warm from bars)."""

    __slots__ = ("prev_open_ms", "prev_close", "sigma", "log_range", "stale_name")

    def __init__(self, settings: RiskSettings, symbol: str) -> None:
        self.stale_name = f"{STALE_DATA}:{symbol}"
        self.prev_open_ms = -1
        self.prev_close = math.nan
        self.sigma = EwmaVariance(settings.jump_halflife_bars)
        self.log_range = RollingMeanStd(settings.vol_window_bars)


class RiskManager:
    def __init__(self, settings: RiskSettings, state: RiskState | None = None) -> None:
        self.settings = settings
        self.state = state if state is not None else RiskState()
        self._events: list[RiskEvent] = []
        self._dirty = False
        self._last_equity: float | None = None
        self._ticked_ms = -1
        self._last_bar_close_ms: dict[str, int] = {}
        self._market: dict[str, _SymbolMarket] = {}
        self._spreads: dict[str, RollingMedian] = {}
        self._corr = PairCorrelations(settings.correlation_window_bars)
        self._confidences: deque[float] = deque()
        self._confidence_sum = 0.0
        s = settings
        self._loss_cooldown_ms = int(s.loss_cooldown_min * _MINUTE_MS)
        self._market_cooldown_ms = int(s.market_cooldown_min * _MINUTE_MS)
        self._stale_ms = int(s.stale_after_s * 1000)
        self._jump_sigmas = s.jump_sigmas
        self._jump_sigmas_sq = s.jump_sigmas * s.jump_sigmas
        self._loss_fraction = s.max_daily_loss_fraction
        self._loss_usdt = math.inf if s.max_daily_loss_usdt is None else s.max_daily_loss_usdt
        self._vol_z_max = s.vol_z_max
        # The daily loss limit (USDT) and the day start equity it was computed for.
        self._limit_start: float | None = None
        self._limit = math.inf
        self._market_min_bars = s.market_min_bars
        # Derived from the breakers (so a restored state needs no more): the earliest cool-down
        # end, and whether a stale-data breaker is tripped; the per-bar path reads only these.
        self._due_ms = 0
        self._stale_tripped = True
        self._refresh()

    # -- outputs -------------------------------------------------------------------------------

    def has_events(self) -> bool:
        """Whether `drain_events` has anything (the engine asks after every event)."""
        return bool(self._events)

    def drain_events(self) -> list[RiskEvent]:
        """Breaker trips and resets since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def take_dirty(self) -> bool:
        """True once after `state` changed: the engine saves `state.to_json()` then."""
        dirty, self._dirty = self._dirty, False
        return dirty

    def entries_paused(self, symbol: str | None = None) -> bool:
        """Whether a breaker pauses all entries (symbol None) or this symbol's."""
        return self._blocking(symbol) is not None

    def daily_pnl(self) -> float | None:
        """The UTC day's P&L so far (USDT, realised + unrealised); None before any equity."""
        if self._last_equity is None or self.state.day_start_equity is None:
            return None
        return self._last_equity - self.state.day_start_equity

    def status(self) -> dict[str, Any]:
        """What the control socket and the metrics show."""
        st = self.state
        return {
            "tripped": {
                name: {
                    "reason": st.breakers[name].reason,
                    "since": iso_ms(st.breakers[name].tripped_ms),
                    "reset": reset_rule(name, st.breakers[name]),
                }
                for name in st.tripped()
            },
            "consecutive_losses": st.consecutive_losses,
            "day_start_equity": st.day_start_equity,
            "daily_pnl": self.daily_pnl(),
        }

    # -- events in -----------------------------------------------------------------------------

    def tick(self, now_ms: int) -> None:
        """Time-based transitions: cool-downs that ended, a new UTC day, stale data."""
        if now_ms <= self._ticked_ms:
            return  # nothing falls due at a time already seen (every symbol's bar of a minute)
        self._ticked_ms = now_ms
        if now_ms // DAY_MS != self.state.day_index:
            self._roll_day(now_ms)
        if now_ms >= self._due_ms:
            breakers = self.state.breakers
            for name in self._cooling():
                if now_ms >= breakers[name].until_ms:  # type: ignore[operator]
                    if kind_of(name) == CONSECUTIVE_LOSSES:
                        self.state.consecutive_losses = 0
                    self._reset(name, "cool-down over", now_ms)
        stale_ms = self._stale_ms
        if stale_ms:
            for symbol, last_ms in self._last_bar_close_ms.items():
                if now_ms - last_ms > stale_ms:
                    self._trip(
                        f"{STALE_DATA}:{symbol}",
                        f"no bar for {(now_ms - last_ms) / 1000:.0f} s "
                        f"(stale_after_s {self.settings.stale_after_s:g})",
                        now_ms,
                    )

    def on_bar(self, bar: Bar, now_ms: int | None = None) -> None:
        """A closed bar; `now_ms` defaults to its close time (replay)."""
        open_ms = bar.open_time_ms
        close_ms = open_ms + _MINUTE_MS
        now = close_ms if now_ms is None else now_ms
        symbol = bar.symbol
        market = self._market.get(symbol)
        if market is None:
            market = self._market[symbol] = _SymbolMarket(self.settings, symbol)
        if close_ms > self._last_bar_close_ms.get(symbol, -1):
            self._last_bar_close_ms[symbol] = close_ms
            if self._stale_tripped:
                stale = self.state.breakers.get(market.stale_name)
                if stale is not None and stale.tripped:
                    self._reset(market.stale_name, "fresh bar", now)
        if now > self._ticked_ms:
            self.tick(now)
        if open_ms <= market.prev_open_ms:
            return  # a duplicate or late bar: its minute is already counted
        close, high, low = bar.close, bar.high, bar.low
        if not (close > 0 and low > 0 and high >= low and math.isfinite(high)):
            return  # a malformed bar says nothing about the market; the feed counts it
        # The tests below compare squares (r^2 > k^2 var) so that a calm bar, nearly every bar,
        # costs no square root: this runs for every bar of every replay.
        if open_ms == market.prev_open_ms + _MINUTE_MS:
            # A return across a gap would mix minutes: none is taken there.
            r = math.log(close / market.prev_close)
            sigma_est = market.sigma
            if self._jump_sigmas and sigma_est.n >= self._market_min_bars:
                var = sigma_est.var
                if var > 0 and r * r > self._jump_sigmas_sq * var:
                    self._trip(
                        f"{PRICE_JUMP}:{symbol}",
                        f"1m return {r * 1e4:+.1f} bps beyond {self._jump_sigmas:g} sigma "
                        f"({math.sqrt(var) * 1e4:.1f} bps)",
                        now,
                        until_ms=now + self._market_cooldown_ms,
                    )
            sigma_est.update(r)
            if len(self._market) > 1:  # a lone symbol has nothing to correlate with
                self._corr.add(symbol, open_ms, r)
        z_max = self._vol_z_max
        if z_max:  # off: the range statistics are not kept at all
            range_ = math.log(high / low)
            log_range = math.log(range_ if range_ > _RANGE_FLOOR else _RANGE_FLOOR)
            ranges = market.log_range
            if ranges.n >= self._market_min_bars:
                z = ranges.z_above(log_range, z_max)
                if z:
                    self._trip(
                        f"{VOLATILITY}:{symbol}",
                        f"1m range z-score {z:.1f} > vol_z_max {z_max:g}",
                        now,
                        until_ms=now + self._market_cooldown_ms,
                    )
            ranges.add(log_range)
        market.prev_open_ms = open_ms
        market.prev_close = close

    def on_book(self, top: BookTop) -> None:
        """A best bid/ask: a spread far above its rolling median pauses the symbol."""
        bid, ask = top.bid, top.ask
        if not (bid > 0 and ask >= bid and math.isfinite(ask)):
            return
        spread_bps = (ask - bid) / (0.5 * (ask + bid)) * 1e4
        spreads = self._spreads.get(top.symbol)
        if spreads is None:
            spreads = self._spreads[top.symbol] = RollingMedian(self.settings.spread_window)
        multiple = self.settings.spread_multiple
        if multiple and len(spreads) >= min(_SPREAD_MIN_SAMPLES, self.settings.spread_window):
            median = spreads.median()
            if median > 0 and spread_bps > multiple * median:
                self._trip(
                    f"{SPREAD}:{top.symbol}",
                    f"spread {spread_bps:.2f} bps > {multiple:g} x median {median:.2f} bps",
                    top.time_ms,
                    until_ms=top.time_ms + self._market_cooldown_ms,
                )
        spreads.add(spread_bps)

    def on_equity(self, now_ms: int, equity: float) -> None:
        """Equity marked at the last prices: the daily loss limit's input."""
        if not math.isfinite(equity):
            return
        if now_ms // DAY_MS != self.state.day_index:
            self._roll_day(now_ms)
        self._last_equity = equity
        st = self.state
        if st.day_start_equity is None:
            # The first equity of a UTC day anchors it (the bar closing at 00:00 included).
            st.day_start_equity = equity
            self._dirty = True
        start = st.day_start_equity
        if start != self._limit_start:
            fraction, cap = self._loss_fraction, self._loss_usdt
            self._limit_start = start
            self._limit = cap if not fraction else min(fraction * start, cap)
        limit = self._limit
        loss = start - equity
        if loss >= limit:  # never, with both limits off (inf)
            self._trip(
                DAILY_LOSS,
                f"UTC day's loss {loss:.2f} USDT reached the limit {limit:.2f} USDT "
                f"(day start equity {st.day_start_equity:.2f})",
                now_ms,
                until_ms=(now_ms // DAY_MS + 1) * DAY_MS,
            )

    def on_trade_closed(self, trade: ClosedTrade) -> None:
        """A round trip ended: a loss (pnl < 0) extends the losing streak, anything else ends it."""
        now = trade.exit_time_ms
        self.tick(now)
        st = self.state
        st.consecutive_losses = st.consecutive_losses + 1 if trade.pnl < 0 else 0
        self._dirty = True
        n = self.settings.max_consecutive_losses
        if n and st.consecutive_losses >= n:
            self._trip(
                CONSECUTIVE_LOSSES,
                f"{st.consecutive_losses} losing round trips in a row (last: {trade.symbol} "
                f"{trade.pnl:.2f} USDT)",
                now,
                until_ms=now + self._loss_cooldown_ms,
                extend=False,
            )

    def on_confidence(self, now_ms: int, confidence: float) -> None:
        """One model output (its probability for the trade it would take); NaN is skipped."""
        if not math.isfinite(confidence):
            return
        window = self._confidences
        window.append(confidence)
        self._confidence_sum += confidence
        if len(window) > self.settings.confidence_window:
            self._confidence_sum -= window.popleft()
        floor = self.settings.confidence_floor
        if not floor or len(window) < self.settings.confidence_window:
            return
        mean = self._confidence_sum / len(window)
        breaker = self.state.breakers.get(CONFIDENCE)
        if mean < floor:
            self._trip(
                CONFIDENCE,
                f"mean model confidence {mean:.3f} over the last {len(window)} outputs < "
                f"confidence_floor {floor:g}",
                now_ms,
            )
        elif breaker is not None and breaker.tripped:
            self._reset(CONFIDENCE, f"mean model confidence {mean:.3f} recovered", now_ms)

    # -- a person ------------------------------------------------------------------------------

    def pause(self, now_ms: int, reason: str = "operator") -> None:
        """Stop entries until `resume` (exits go on)."""
        self._trip(MANUAL, f"paused by {reason}", now_ms)

    def resume(self, now_ms: int, breaker: str | None = None) -> list[str]:
        """Reset one tripped breaker, or every one (None); returns the names reset.

        Resuming the daily loss halt re-anchors the day at the current equity: a further loss
        of the whole limit halts again. A condition still present trips its breaker again at
        its next observation (stale data at the next tick).
        """
        st = self.state
        names = st.tripped() if breaker is None else [breaker]
        done = []
        for name in names:
            b = st.breakers.get(name)
            if b is None or not b.tripped:
                continue
            kind = kind_of(name)
            if kind == DAILY_LOSS and self._last_equity is not None:
                st.day_start_equity = self._last_equity
            elif kind == CONSECUTIVE_LOSSES:
                st.consecutive_losses = 0
            elif kind == CONFIDENCE:
                self._confidences.clear()
                self._confidence_sum = 0.0
            self._reset(name, "manual resume", now_ms)
            done.append(name)
        return done

    # -- the decision --------------------------------------------------------------------------

    def check(
        self,
        intent: OrderIntent,
        price: float,
        position_qty: float,
        *,
        book: Mapping[str, float] | None = None,
        confidence: float | None = None,
        now_ms: int | None = None,
    ) -> Decision:
        """Decide on an intent.

        `price`: the best estimate of the fill (the last close, or the limit price).
        `position_qty`: the symbol's position, base units.
        `book`: symbol -> USDT held or in flight as entries (`holdings_usdt`); None: only this
        symbol's position is known (total, count and correlation limits see nothing else).
        `confidence`: the model's probability behind an entry; None: no model, not checked.
        `now_ms`: the decision time; default the intent's.
        """
        qty = intent.qty
        if not (qty > 0 and math.isfinite(qty)):
            return Decision(False, f"quantity {qty} is not positive")
        if intent.reduce_only:
            if intent.side is Side.BUY or qty > position_qty * (1 + 1e-9):
                return Decision(False, "reduce-only intent would not reduce the position")
            return ALLOWED  # exits pass every breaker and limit
        if not (price > 0 and math.isfinite(price)):
            return Decision(False, f"price {price} is not positive")
        symbol = intent.symbol
        self.tick(intent.time_ms if now_ms is None else now_ms)
        blocked = self._blocking(symbol)
        if blocked is not None:
            return Decision(False, blocked)
        s = self.settings
        if confidence is not None and not confidence >= s.min_confidence:
            return Decision(
                False, f"model confidence {confidence:.4f} < min_confidence {s.min_confidence:g}"
            )
        notional = qty * price
        if notional > s.max_order_notional_usdt:
            return Decision(
                False,
                f"order notional {notional:.2f} > max_order_notional_usdt "
                f"{s.max_order_notional_usdt:g}",
            )
        held = position_qty * price
        if book is not None:
            held = book.get(symbol, held)
        after = held + notional
        if after > s.max_position_notional_usdt:
            return Decision(
                False,
                f"{symbol} notional {after:.2f} > max_position_notional_usdt "
                f"{s.max_position_notional_usdt:g}",
            )
        others = {k: v for k, v in book.items() if k != symbol and v > 0} if book else {}
        total = after + sum(others.values())
        if total > s.max_total_notional_usdt:
            return Decision(
                False,
                f"total notional {total:.2f} > max_total_notional_usdt "
                f"{s.max_total_notional_usdt:g}",
            )
        if held <= 0 and len(others) >= s.max_open_positions:
            return Decision(
                False,
                f"{len(others)} positions open or entering = max_open_positions "
                f"{s.max_open_positions}",
            )
        group = self.correlated(symbol, others, intent.time_ms if now_ms is None else now_ms)
        exposure = after + sum(others[k] for k in group)
        if exposure > s.max_correlated_notional_usdt:
            members = ", ".join(f"{k} (rho {rho:.2f})" for k, rho in group.items())
            return Decision(
                False,
                f"correlated notional {exposure:.2f} ({symbol}"
                f"{' with ' + members if members else ''}) > max_correlated_notional_usdt "
                f"{s.max_correlated_notional_usdt:g}",
            )
        return ALLOWED

    def correlation(self, a: str, b: str, now_ms: int) -> tuple[float, int]:
        """(rho, aligned samples) of two symbols' 1m returns over the window ending at now_ms."""
        return self._corr.corr(a, b, now_ms)

    def correlated(self, symbol: str, others: Iterable[str], now_ms: int) -> dict[str, float]:
        """The symbols among `others` whose 1m returns correlate with `symbol`'s at or above the
        threshold over the window ending at `now_ms` (with enough aligned samples): rho each."""
        s = self.settings
        out = {}
        for other in others:
            rho, n = self._corr.corr(symbol, other, now_ms)
            if n >= s.correlation_min_bars and rho >= s.correlation_threshold:
                out[other] = rho
        return out

    # -- internals -----------------------------------------------------------------------------

    def _roll_day(self, now_ms: int) -> None:
        st = self.state
        day = now_ms // DAY_MS
        if st.day_index is not None and day <= st.day_index:
            return
        st.day_index = day
        st.day_start_equity = None  # anchored by the day's first equity
        self._dirty = True
        breaker = st.breakers.get(DAILY_LOSS)
        if breaker is not None and breaker.tripped:
            self._reset(DAILY_LOSS, "new UTC day", now_ms)

    def _blocking(self, symbol: str | None) -> str | None:
        """Why entries (in `symbol`, or in general when None) are paused; None if they are not."""
        st = self.state
        for name in st.tripped():
            scope = scope_of(name)
            if scope is None or scope == symbol:
                b = st.breakers[name]
                return (
                    f"{PAUSED_PREFIX}{name} since {iso_ms(b.tripped_ms)}: {b.reason}; "
                    f"{reset_rule(name, b)}"
                )
        return None

    def _trip(
        self,
        name: str,
        reason: str,
        now_ms: int,
        *,
        until_ms: int | None = None,
        extend: bool = True,
    ) -> None:
        breakers = self.state.breakers
        breaker = breakers.get(name)
        if breaker is None:
            breaker = breakers[name] = Breaker()
        if breaker.tripped:
            # Abnormal again while paused: the cool-down runs from the latest observation.
            if extend and until_ms is not None and (breaker.until_ms or 0) < until_ms:
                breaker.until_ms = until_ms
                self._dirty = True
                self._refresh()
            return
        breaker.tripped = True
        breaker.reason = reason
        breaker.tripped_ms = now_ms
        breaker.until_ms = until_ms
        breaker.trips += 1
        self._dirty = True
        self._events.append(RiskEvent(name, TRIP, reason, now_ms))
        self._refresh()

    def _reset(self, name: str, reason: str, now_ms: int) -> None:
        breaker = self.state.breakers[name]
        breaker.tripped = False
        breaker.until_ms = None
        self._dirty = True
        self._events.append(RiskEvent(name, RESET, reason, now_ms))
        self._refresh()

    def _cooling(self) -> list[str]:
        """Tripped breakers that reset when their cool-down ends."""
        return [
            n
            for n, b in self.state.breakers.items()
            if b.tripped and b.until_ms is not None and kind_of(n) in _COOLDOWN_KINDS
        ]

    def _refresh(self) -> None:
        breakers = self.state.breakers
        ends = [breakers[n].until_ms for n in self._cooling()]
        self._due_ms = min(ends) if ends else 2**62  # type: ignore[type-var]
        self._stale_tripped = any(
            b.tripped and kind_of(n) == STALE_DATA for n, b in breakers.items()
        )


def holdings_usdt(portfolio: Portfolio, open_orders: Iterable[Order]) -> dict[str, float]:
    """Symbol -> USDT held (at the last price) plus entries in flight (at their limit price or
    the last price): the `book` of `RiskManager.check`. A partly filled entry counts both its
    fills and its whole quantity: an over-count, on the safe side, until its update."""
    out: dict[str, float] = {}
    last = portfolio.last_price
    for symbol, pos in portfolio.positions.items():
        out[symbol] = pos.qty * last.get(symbol, pos.avg_price)
    for order in open_orders:
        if order.reduce_only or order.parent_id is not None or order.side is not Side.BUY:
            continue
        price = order.price if order.price is not None else last.get(order.symbol, 0.0)
        out[order.symbol] = out.get(order.symbol, 0.0) + order.qty * price
    return out
