"""The terminal UI's panels: each a small widget that redraws itself from a `Snapshot`.

Every panel renders with Rich from the snapshot alone (no I/O, no clock), so the same snapshot
draws the same screen: what the snapshot tests rely on. A state is always written as a word
("OK", "PAUSED", "TRIPPED", "DISCONNECTED"); its colour only repeats it.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Sparkline, Static

from scalpd.ui.data import Snapshot, drawdown, pnl_total, state_word, unrealized_usdt

NA = "n/a"
STATE_STYLE = {
    "OK": "bold green",
    "PAUSED": "bold yellow",
    "HALTED": "bold red",
    "NO DATA": "bold red",
    "STOPPING": "bold yellow",
    "DISCONNECTED": "bold white on red",
}


def money(value: Any, signed: bool = False) -> str:
    if value is None:
        return NA
    return f"{float(value):+,.2f}" if signed else f"{float(value):,.2f}"


def signed_text(value: Any) -> Text:
    """A P&L: green when up, red when down; the sign says it without colour."""
    if value is None:
        return Text(NA)
    v = float(value)
    return Text(money(v, signed=True), style="green" if v > 0 else "red" if v < 0 else "")


def qty(value: Any) -> str:
    return NA if value is None else f"{float(value):.6g}"


def price(value: Any) -> str:
    return NA if value is None else f"{float(value):,.2f}"


def hhmm(ms: Any) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%m-%d %H:%M")


def _table(title: str, *columns: str, right: tuple[str, ...] = (), expand: bool = True) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        expand=expand,
        box=None,
        pad_edge=False,
        header_style="bold dim",
    )
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", no_wrap=True)
    return table


def _not_attached(title: str, snap: Snapshot) -> RenderableType:
    return Group(Text(title, style="bold"), Text(f"{NA}: not attached to a daemon", style="dim"))


class Panel(Static):
    """A panel: `show(snapshot)` redraws it; `plain()` is what it shows, as text."""

    drawn: RenderableType = ""

    def show(self, snap: Snapshot) -> None:
        try:
            self.drawn = self.draw(snap)
        except Exception as exc:  # an answer of an unexpected shape must not end the UI
            name = type(self).__name__.removesuffix("Panel").lower()
            self.drawn = Text(f"{name}: cannot show this answer ({type(exc).__name__}: {exc})")
        self.update(self.drawn)

    def plain(self, width: int = 200) -> str:
        return plain(self.drawn, width)

    def draw(self, snap: Snapshot) -> RenderableType:  # pragma: no cover - overridden
        raise NotImplementedError


class Banner(Panel):
    """The line above every screen: not attached (and why), or the store's trouble."""

    def draw(self, snap: Snapshot) -> RenderableType:
        lines = []
        if snap.status is None:
            lines.append(
                Text.assemble(
                    ("DISCONNECTED ", "bold white on red"),
                    f"{snap.error or 'not attached'}; retrying",
                )
            )
        if snap.db_error:
            lines.append(Text.assemble(("STORE ", "bold yellow"), snap.db_error))
        self.display = bool(lines)
        return Group(*lines)


class PnlPanel(Panel):
    def draw(self, snap: Snapshot) -> RenderableType:
        status = snap.status
        table = _table("P&L (USDT, net of fees)", "what", "USDT", right=("USDT",))
        table.show_header = False
        current_dd, max_dd = drawdown(snap.equity)
        if status is None:
            today = total = equity = unreal = None
        else:
            today = (status.get("risk") or {}).get("daily_pnl")
            total = pnl_total(status, snap.equity)
            equity = status.get("equity_usdt")
            unreal = unrealized_usdt(status)
        table.add_row("today", signed_text(today))
        table.add_row("total (run)", signed_text(total))
        table.add_row("unrealised", signed_text(unreal))
        table.add_row("equity", money(equity))
        dd = f"{current_dd * 100:.2f} % (max {max_dd * 100:.2f} %)" if snap.equity else NA
        table.add_row("drawdown", dd)
        return table


class EquityChart(Sparkline):
    """The run's equity curve from the store (its last EQUITY_POINTS records)."""

    def show(self, snap: Snapshot) -> None:
        self.data = list(snap.equity)
        if snap.equity:
            low, high = min(snap.equity), max(snap.equity)
            self.border_title = f"equity {low:,.0f}-{high:,.0f}, {len(snap.equity)} bars"
        else:
            self.border_title = f"equity: {NA}"


class PositionsPanel(Panel):
    def draw(self, snap: Snapshot) -> RenderableType:
        if snap.status is None:
            return _not_attached("Open positions", snap)
        positions = snap.status.get("positions") or {}
        table = _table(
            f"Open positions ({len(positions)})",
            "symbol", "qty", "avg", "last", "unrealised", "opened",
            right=("qty", "avg", "last", "unrealised"),
        )  # fmt: skip
        for symbol, p in sorted(positions.items()):
            table.add_row(
                symbol,
                qty(p.get("qty")),
                price(p.get("avg_price")),
                price(p.get("last_price")),
                signed_text(p.get("unrealized_pnl_usdt")),
                str(p.get("opened") or "-"),
            )
        if not positions:
            table.add_row("none", "", "", "", "", "")
        return table


class OrdersPanel(Panel):
    def draw(self, snap: Snapshot) -> RenderableType:
        if snap.status is None:
            return _not_attached("Open orders", snap)
        orders = snap.status.get("open_orders") or []
        table = _table(
            f"Open orders ({len(orders)})",
            "symbol", "side", "type", "qty", "price", "reason",
            right=("qty", "price"),
        )  # fmt: skip
        for o in orders:
            table.add_row(
                o.get("symbol", "-"),
                str(o.get("side", "-")).upper(),
                o.get("type", "-"),
                qty(o.get("qty")),
                price(o.get("price")) if o.get("price") is not None else "market",
                o.get("reason") or "-",
            )
        if not orders:
            table.add_row("none", "", "", "", "", "")
        return table


class TradesPanel(Panel):
    def draw(self, snap: Snapshot) -> RenderableType:
        table = _table(
            "Latest trades",
            "exit", "symbol", "pnl", "entry px", "exit px", "entry reason", "exit reason",
            right=("pnl", "entry px", "exit px"),
        )  # fmt: skip
        for t in snap.trades:
            table.add_row(
                hhmm(t.get("exit_time_ms")),
                t.get("symbol", "-"),
                signed_text(t.get("pnl")),
                price(t.get("entry_price")),
                price(t.get("exit_price")),
                t.get("entry_reason") or "-",
                t.get("exit_reason") or "-",
            )
        if not snap.trades:
            table.add_row("none", "", "", "", "", "", "")
        return table


class LimitsPanel(Panel):
    """Each limit the status reports with its use: daily loss, losing streak, pause."""

    def draw(self, snap: Snapshot) -> RenderableType:
        if snap.status is None:
            return _not_attached("Limits", snap)
        status = snap.status
        risk = status.get("risk") or {}
        table = _table("Limits and use", "limit", "now", "detail", right=("now",))
        day_start = risk.get("day_start_equity")
        daily = risk.get("daily_pnl")
        pct = (
            f"{float(daily) / float(day_start) * 100:+.2f} % of day-start equity"
            if daily is not None and day_start
            else NA
        )
        table.add_row("daily P&L", signed_text(daily), pct)
        table.add_row("day-start equity", money(day_start), "USDT, the daily loss limit's base")
        table.add_row(
            "losing streak", str(risk.get("consecutive_losses", NA)), "consecutive losing trades"
        )
        paused = status.get("paused")
        table.add_row(
            "entries",
            Text("PAUSED", style="bold yellow") if paused else Text("ALLOWED", style="green"),
            "exits always run",
        )
        # Limits the daemon may add to its risk status later: shown as they come.
        for key, value in sorted(risk.items()):
            if key in ("tripped", "consecutive_losses", "day_start_equity", "daily_pnl"):
                continue
            if not isinstance(value, dict | list):
                table.add_row(key.replace("_", " "), str(value), "")
        return table


class BreakersPanel(Panel):
    def draw(self, snap: Snapshot) -> RenderableType:
        if snap.status is None:
            return _not_attached("Breakers", snap)
        tripped = (snap.status.get("risk") or {}).get("tripped") or {}
        # One block per breaker: its reason and reset rule are sentences, too long for columns
        # at 80 characters.
        lines: list[RenderableType] = [Text(f"Breakers ({len(tripped)} tripped)", style="bold")]
        for name, b in sorted(tripped.items()):
            lines.append(Text.assemble(("TRIPPED ", "bold red"), (name, "bold")))
            for key in ("reason", "since", "reset"):
                lines.append(Text(f"  {key:<7} {b.get(key) or '-'}"))
        if not tripped:
            lines.append(Text.assemble(("OK ", "bold green"), "no breaker tripped"))
        return Group(*lines)


class HealthPanel(Panel):
    def draw(self, snap: Snapshot) -> RenderableType:
        table = _table("Health", "what", "now", "detail", expand=False)
        table.show_header = False
        status = snap.status
        if status is None:
            table.add_row("daemon", Text("DISCONNECTED", style="bold red"), snap.error or "")
            return table
        conn = status.get("connection") or {}
        state = str(conn.get("state", NA)).upper()
        down_for = conn.get("disconnected_for_s")
        table.add_row(
            "market data",
            Text(state, style="green" if state == "CONNECTED" else "bold red"),
            f"down for {down_for:.1f} s" if down_for is not None else "",
        )
        table.add_row("reconnects", str(conn.get("reconnects", NA)), "since the start")
        for symbol, last in sorted((status.get("last_bar") or {}).items()):
            age = last.get("age_s")
            table.add_row(
                f"last bar {symbol}",
                f"{age:.1f} s ago" if age is not None else NA,
                f"opened {last.get('open_time', '-')}",
            )
        lat = status.get("decision_latency_ms") or {}
        p50, p99 = lat.get("p50"), lat.get("p99")
        table.add_row(
            "decision latency",
            f"p50 {p50:.2f} ms" if p50 is not None else NA,
            f"p99 {p99:.2f} ms over {lat.get('bars', 0)} bars" if p99 is not None else "",
        )
        lag = status.get("loop_lag_ms")
        if isinstance(lag, dict):
            p50, p99, worst = lag.get("p50"), lag.get("p99"), lag.get("max")
            table.add_row(
                "event-loop lag",
                f"p50 {p50:.2f} ms" if p50 is not None else NA,
                f"p99 {p99:.2f} ms, max {worst:.2f} ms over {lag.get('samples', 0)} wake-ups"
                if p99 is not None and worst is not None
                else "",
            )
        else:  # a daemon that gives one number, or none
            table.add_row("event-loop lag", f"{lag:.2f} ms" if lag is not None else NA, "")
        table.add_row("bars processed", str(status.get("bars_processed", NA)), "")
        recovery = status.get("recovery")
        if recovery:
            table.add_row("recovery", "", _flat(recovery))
        return table


class LogTailPanel(Panel):
    """The daemon's latest log lines (its status keeps the last 50; the newest last)."""

    lines = 12

    def draw(self, snap: Snapshot) -> RenderableType:
        table = _table(
            "Log tail (daemon; all of it: journalctl -u scalpd)", "time", "level", "line"
        )
        time_col, level_col, line_col = table.columns
        time_col.min_width = time_col.max_width = 8
        level_col.min_width = level_col.max_width = 7
        line_col.ratio, line_col.overflow = 1, "ellipsis"
        status = snap.status
        tail = status.get("log_tail") if status is not None else None
        if not isinstance(tail, list) or not tail:
            table.add_row(NA, "", "not attached" if status is None else "no lines")
            return table
        for line in tail[-self.lines :]:
            level = str(line.get("level", "-"))
            fields = " ".join(
                f"{k}={v}" for k, v in line.items() if k not in ("time", "level", "event")
            )
            table.add_row(
                str(line.get("time", "-"))[11:19],
                Text(level.upper(), style=_LEVEL_STYLE.get(level, "")),
                f"{line.get('event', '')} {fields}".strip(),
            )
        return table


_LEVEL_STYLE = {"warning": "yellow", "error": "bold red", "critical": "bold red"}


class DecisionsPanel(Panel):
    """The decision log from the store: the daemon's text log goes to journald, not here."""

    def draw(self, snap: Snapshot) -> RenderableType:
        table = _table(
            "Decision log (store; text log: journalctl -u scalpd)",
            "time", "symbol", "side", "allowed", "decision",
        )  # fmt: skip
        for d in snap.decisions:
            allowed = bool(d.get("allowed"))
            table.add_row(
                hhmm(d.get("time_ms")),
                d.get("symbol", "-"),
                str(d.get("side", "-")).upper(),
                Text("yes", style="green") if allowed else Text("NO", style="bold red"),
                str(d.get("decision") or d.get("reason") or "-"),
            )
        if not snap.decisions:
            table.add_row("none", "", "", "", "")
        return table


class RunsPanel(Panel):
    def draw(self, snap: Snapshot) -> RenderableType:
        table = _table(
            f"Runs in the store ({len(snap.runs)} latest)",
            "run", "mode", "status", "started", "finished", "trades", "return", "max DD",
            "report", "data",
            right=("run", "trades", "return", "max DD"),
        )  # fmt: skip
        table.padding = (0, 1, 0, 0)
        data = table.columns[-1]
        data.ratio, data.min_width, data.overflow = 1, 6, "ellipsis"
        for r in snap.runs:
            s = r.get("summary") or {}
            ret = s.get("total_return_pct")
            dd = s.get("max_drawdown_pct")
            table.add_row(
                str(r["id"]),
                r.get("mode", "-"),
                _status_text(str(r.get("status", "-"))),
                hhmm(r.get("started_at_ms")),
                hhmm(r.get("finished_at_ms")),
                str(s.get("trades", "-")),
                f"{ret:+.2f}%" if isinstance(ret, int | float) else "-",
                f"{dd:.2f}%" if isinstance(dd, int | float) else "-",
                "stored" if r.get("has_report") else "-",
                str(r.get("data_label") or s.get("data") or "-"),
            )
        if not snap.runs:
            table.add_row("none", *[""] * 9)
        note = Text(
            "report stored: `scalpd report RUN --out FILE` writes its HTML (and JSON)",
            style="dim",
        )
        return Group(table, note)


class ModelPanel(Panel):
    """The model serving now, from the status and (while shown) the daemon's `models`."""

    def draw(self, snap: Snapshot) -> RenderableType:
        table = _table("Model", "what", "now", expand=False)
        table.show_header = False
        status = snap.status
        if status is None:
            table.add_row("daemon", Text("DISCONNECTED", style="bold red"))
            return table
        models = snap.models or {}
        table.add_row("strategy", str(status.get("strategy") or NA))
        table.add_row("model", str(status.get("model") or models.get("model") or NA))
        table.add_row("online learning", "yes" if models.get("online") else NA)
        serving = models.get("serving") or {}
        for symbol, who in sorted(serving.items()):
            challenger = who.get("challenger")
            share = who.get("share")
            table.add_row(
                f"serving {symbol}",
                f"champion v{who.get('champion')}"
                + (
                    f", challenger v{challenger} ({float(share or 0):.0%} of decisions)"
                    if challenger is not None
                    else ", no challenger"
                ),
            )
        if not serving:  # a frozen model, or the versions not fetched yet
            table.add_row("champion", NA)
            table.add_row("challenger", NA)
        what, now = table.columns
        what.min_width = 20  # the longest label ("calibration BTC/USDT"): never cut
        now.overflow = "ellipsis"
        quality = status.get("model_quality")
        symbols = quality.get("symbols") if isinstance(quality, dict) else None
        if isinstance(symbols, dict) and symbols:
            for symbol, q in sorted(symbols.items()):
                _quality_rows(table, symbol, q, (quality or {}).get("label") or {})
        else:
            for key in ("confidence", "accuracy", "calibration", "feature importance"):
                table.add_row(key, NA)
        versions = models.get("versions") or []
        if not versions:
            return table
        recent = _table(
            f"Model versions (latest {min(len(versions), 8)} of {len(versions)}; * champion)",
            "symbol", "ver", "parent", "state", "created", "holdout",
            right=("ver", "parent"),
        )  # fmt: skip
        recent.padding = (0, 1, 0, 0)
        holdout = recent.columns[-1]
        holdout.ratio, holdout.min_width, holdout.overflow = 1, 8, "ellipsis"
        for v in versions[-8:]:
            recent.add_row(
                str(v.get("symbol", "-")),
                f"{v.get('version')}{'*' if v.get('champion') else ''}",
                str(v.get("parent", "-")),
                str(v.get("state") or "-"),
                str(v.get("created") or "-")[:16].replace("T", " "),
                " ".join(
                    f"{k} {x:.3g}" if isinstance(x, float) else f"{k} {x}"
                    for k, x in (v.get("metrics") or {}).items()
                )
                or "-",
            )
        return Group(table, Text(""), recent)


class StateLine(Static):
    """The top line: daemon state as a word, mode, run, equity, and the screens' keys."""

    text = Text()

    def show(self, snap: Snapshot, screen_names: list[str], active: int) -> None:
        try:
            word = state_word(snap)
        except Exception:  # a status of an unexpected shape
            word = "UNKNOWN"
        parts: list[Any] = [(f" {word} ", STATE_STYLE.get(word, "bold")), " "]
        status = snap.status
        if status is not None:
            parts.append(f"{status.get('mode', '?')} run {status.get('run_id', '?')} ")
        elif snap.run_id is not None:
            parts.append(f"store run {snap.run_id} ")
        tabs: list[Any] = []
        for i, name in enumerate(screen_names):
            label = f"{i + 1} {name}"
            # Brackets mark the active screen for those who do not see the highlight.
            tabs.append((f"[{label}]", "bold reverse") if i == active else (f" {label} ", "dim"))
        self.text = Text.assemble(*parts, "| ", *tabs)
        self.update(self.text)


def plain(renderable: RenderableType, width: int = 200) -> str:
    """A renderable as plain text (what a panel says, without its colours)."""
    console = Console(width=width, file=io.StringIO(), color_system=None, record=True)
    console.print(renderable)
    return console.export_text()


def _status_text(status: str) -> Text:
    style = {"completed": "green", "running": "cyan", "failed": "bold red"}.get(status, "yellow")
    return Text(status, style=style)


def _quality_rows(table: Table, symbol: str, q: dict[str, Any], label: dict[str, Any]) -> None:
    """One symbol's served-model quality: confidence now, then what its matured labels say."""
    p = q.get("confidence")
    table.add_row(f"confidence {symbol}", f"P(take-profit first) {p:.3f}" if p is not None else NA)
    n = q.get("samples") or 0
    horizon = label.get("horizon_bars")
    if not n:
        matured = f"after {horizon} bars" if horizon else "later"
        table.add_row(f"accuracy {symbol}", f"{NA}: no matured prediction yet (labels {matured})")
    else:
        table.add_row(
            f"accuracy {symbol}",
            f"{q['accuracy']:.1%} right side of 0.5 over {n} matured bars "
            f"(take-profit first in {q['base_rate']:.1%})",
        )
        table.add_row(
            f"calibration {symbol}",
            f"Brier {q['brier']:.3f}, ECE {q['ece']:.3f}; predicted -> seen (bars): "
            + ", ".join(
                f"{b['mean_p']:.2f}->{b['freq']:.2f} ({b['n']})" for b in q.get("calibration") or []
            ),
        )
    found = q.get("feature_importance")
    ranked = found.get("importance") if isinstance(found, dict) else None
    if ranked:
        top = list(ranked.items())[:5]
        table.add_row(
            f"importance {symbol}",
            ", ".join(f"{k} {float(v):+.3f}" for k, v in top)
            + f" (log-loss up, nats, {found.get('samples')} bars)",
        )
    else:
        table.add_row(f"importance {symbol}", f"{NA}: not computed yet")


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_flat(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(_flat(v) for v in value) or "-"
    return str(value)
