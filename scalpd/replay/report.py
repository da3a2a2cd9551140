"""A replay's report: one JSON object (every number) and one self-contained HTML page drawn from
it alone.

`build_report` runs at the end of `run_replay`; the JSON goes into the store's `reports` table
with the run, so `scalpd report RUN` rebuilds the same HTML without replaying (`render_html`
reads nothing but the JSON). What is stored for the pictures: the equity curve and its
drawdown reduced to `report.curve_points` points (the last equity and the deepest drawdown of
each stretch), buy-and-hold on the same points, the P&L of every UTC day, a histogram of trade
P&L and each random-entry run's result. The metrics are those computed at replay time from the
full per-minute curve.

Every number covers the replayed bars only, from the first bar closing at or after the run's
`trade_from_ms`: the baselines trade the same bars, the regime features use bars up to each
labelled bar, and nothing is read from outside the replayed period.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

import numpy as np

from scalpd.config.settings import Settings
from scalpd.data.bars import BarColumns
from scalpd.engine.engine import Engine
from scalpd.engine.ports import Broker
from scalpd.events import BAR_INTERVAL_MS
from scalpd.replay import baselines as bl
from scalpd.replay import charts
from scalpd.replay import metrics as mx
from scalpd.replay import regimes as rg
from scalpd.replay.summary import equity_arrays, iso, target_rule_text, target_value_text
from scalpd.strategy.long_only import LongOnly

REPORT_VERSION = 1
TRADE_PNL_BINS = 40


# --- building ------------------------------------------------------------------------------------


def traded_bars(bars: BarColumns, trade_from_ms: int) -> BarColumns:
    """The bars closing at or after trade_from_ms: the ones the strategy could trade."""
    first = int(np.searchsorted(bars.open_time + BAR_INTERVAL_MS, trade_from_ms, "left"))
    return bars if first == 0 else bars.take(slice(first, len(bars)))


def position_rule_of(engine: Engine) -> LongOnly | None:
    """The position rule of the strategy the engine ran, when it uses the shared one."""
    strategy = getattr(engine, "_strategy", None)
    rule = getattr(strategy, "_position", None)
    return rule if isinstance(rule, LongOnly) else None


def reduce_curve(
    time_ms: np.ndarray, equity: np.ndarray, start_equity: float, points: int
) -> dict[str, list[float]]:
    """At most `points` samples: each stretch's last time and equity and its deepest
    drawdown (so the picture keeps the worst point)."""
    n = len(time_ms)
    if n == 0:
        return {"time_ms": [], "equity": [], "drawdown": []}
    peak = np.maximum.accumulate(np.concatenate(([start_equity], equity)))[1:]
    drawdown = 1.0 - equity / peak
    ends = np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(np.int64))
    starts = np.concatenate(([0], ends[:-1] + 1))
    return {
        "time_ms": time_ms[ends].tolist(),
        "equity": equity[ends].tolist(),
        "drawdown": np.maximum.reduceat(drawdown, starts).tolist(),
    }


def _on_times(
    src_time_ms: np.ndarray, values: np.ndarray, time_ms: Sequence[int]
) -> list[float | None]:
    """`values` sampled at `time_ms` (the last one at or before each; None before the first)."""
    idx = np.searchsorted(src_time_ms, np.asarray(time_ms, dtype=np.int64), "right") - 1
    return [float(values[i]) if i >= 0 else None for i in idx.tolist()]


def build_report(
    settings: Settings,
    *,
    run_id: int,
    label: str,
    series: Sequence[BarColumns],
    engine: Engine,
    summary: dict[str, Any],
    broker: Broker | None,
    trade_from_ms: int = 0,
    baselines: bool = True,
    capital_levels: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every number of a run's report, JSON-ready.

    `broker`: a pristine copy of the run's broker (never shown a bar) that the random-entry
    and rule baselines copy, so they pay exactly the run's costs; `baselines`: False leaves
    those two out (buy-and-hold and regimes are always in: they cost next to nothing)."""
    cfg = settings.report
    cash = engine.start_equity
    traded = [traded_bars(s, trade_from_ms) for s in series]
    traded = [s for s in traded if len(s)]
    time_ms, equity = equity_arrays(engine, trade_from_ms)
    metrics = summary.get("metrics") or mx.compute_metrics(equity, time_ms, engine.trades, cash)
    curve = reduce_curve(time_ms, equity, cash, cfg.curve_points)
    bh_stats: dict[str, Any] = {}
    curve["buy_and_hold"] = {}
    for bars in traded:
        bt, be = bl.buy_and_hold_curve(bars, cash, settings.fees.taker_bps)
        bh_stats[bars.symbol] = bl.buy_and_hold(bars, cash, settings.fees.taker_bps)
        curve["buy_and_hold"][bars.symbol] = _on_times(bt, be, curve["time_ms"])
    days, day_pnl, day_ret = mx.daily_pnl(equity, time_ms, cash)
    edges, counts = charts.bin_counts([t.pnl for t in engine.trades], TRADE_PNL_BINS)

    random_part: dict[str, Any] | None = None
    rule_part: dict[str, Any] | None = None
    notes: list[str] = []
    if not baselines:
        notes.append("random-entry and rule baselines not run for this replay (--no-baselines)")
    elif broker is None:
        notes.append("random-entry and rule baselines skipped: no simulated broker")
    else:
        rule = position_rule_of(engine)
        if rule is None:
            notes.append("random entries skipped: the strategy has no shared position rule")
        elif cfg.random_trials == 0:
            notes.append("random entries skipped: report.random_trials = 0")
        else:
            random_part = bl.random_entries(
                settings,
                series,
                broker,
                rule,
                engine.trades,
                metrics,
                cash=cash,
                trials=cfg.random_trials,
                seed=cfg.seed,
                trade_from_ms=trade_from_ms,
            )
        if settings.strategy.name != "ema_cross":
            rule_part = bl.rule_baseline(
                settings, series, broker, cash=cash, trade_from_ms=trade_from_ms
            )

    params = rg.RegimeParams.from_settings(cfg)
    labels = {s.symbol: rg.label_bars(s, params) for s in series}
    regime_rows = rg.regime_table(series, labels, engine.trades, trade_from_ms)

    first_ms = int(time_ms[0]) - BAR_INTERVAL_MS if len(time_ms) else None
    last_ms = int(time_ms[-1]) if len(time_ms) else None
    report = {
        "report_version": REPORT_VERSION,
        "run_id": run_id,
        "data": label,
        "strategy": settings.strategy.name,
        "symbols": [s.symbol for s in series],
        "period": {
            "from_ms": first_ms,
            "to_ms": last_ms,
            "from": iso(first_ms) if first_ms is not None else None,
            "to": iso(last_ms) if last_ms is not None else None,
            "days": metrics.get("days"),
            "trade_from_ms": trade_from_ms,
        },
        "start_equity": cash,
        "summary": {k: v for k, v in summary.items() if k not in ("metrics", "targets")},
        "metrics": metrics,
        "targets": summary.get("targets") or mx.targets(metrics),
        "curve": curve,
        "daily": {
            "date": [
                datetime.fromtimestamp(int(d) * 86_400, UTC).strftime("%Y-%m-%d") for d in days
            ],
            "pnl": day_pnl.tolist(),
            "return": day_ret.tolist(),
        },
        "trade_pnl_histogram": {"edges": edges, "counts": counts},
        "baselines": {
            "buy_and_hold": bh_stats,
            "buy_and_hold_fee_bps": settings.fees.taker_bps,
            "random_entries": random_part,
            "rule": rule_part,
            "notes": notes,
        },
        "regimes": {"rule": params.rule(), "params": dict(params.__dict__), "rows": regime_rows},
        "capital_levels": capital_levels,
        "settings": settings.redacted(),
    }
    return mx.clean(report)


def with_capital_levels(report: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report with a per-capital-level table (rows of `replay.capital.capital_row`)."""
    out = copy.copy(report)
    out["capital_levels"] = mx.clean(rows)
    return out


def format_baselines(report: dict[str, Any]) -> str:
    """The baselines in a few console lines (the HTML has them all)."""
    b = report["baselines"]
    lines = []
    bh = ", ".join(
        f"{sym} {_pct(x['total_return'])} (Sharpe {_num(x['sharpe_daily'])})"
        for sym, x in b["buy_and_hold"].items()
    )
    lines.append(f"  buy and hold  {bh}, {b['buy_and_hold_fee_bps']:g} bps a side")
    r = b.get("random_entries")
    if r:
        p = r["p_value"]
        lines.append(
            f"  random entry  {r['trials']} runs, {_num(r['mean_trades'], ',.1f')} trades each: "
            f"p = {_num(p['total_return'], '.3f')} (return), "
            f"{_num(p['sharpe_daily'], '.3f')} (daily Sharpe): share doing at least as well"
        )
    rule = b.get("rule")
    if rule:
        rm = rule["metrics"]
        lines.append(
            f"  ema_cross     {_pct(rm.get('total_return'))} on the same bars and costs "
            f"(Sharpe {_num(rm.get('sharpe_daily'))})"
        )
    lines += [f"  note          {n}" for n in b.get("notes", [])]
    return "\n".join(lines)


# --- rendering -----------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:900px;padding:0 12px;
color:#1b1b1b}h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0 12px}
td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.pass{color:#1d7a2e;font-weight:600}.fail{color:#b3261e;font-weight:600}
.warn{background:#fff4d6;border:1px solid #e8c66a;padding:6px 10px;margin:8px 0}
.muted{color:#666}svg{display:block;margin:8px 0;font-size:11px;fill:#333}
svg .t{font-size:13px;font-weight:600}svg .g{stroke:#e6e6e6}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}
"""


def _pct(v: Any, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v * 100:+.{digits}f}%"


def _share(v: Any, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v * 100:.{digits}f}%"


def _num(v: Any, fmt: str = ",.2f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    h = "".join(f"<th>{escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _metrics_table(m: dict[str, Any]) -> str:
    rows = [
        ("total return", _pct(m.get("total_return"), 3)),
        ("annualised return", _pct(m.get("annualised_return"))),
        ("mean daily return", _pct(m.get("mean_daily_return"), 3)),
        ("max drawdown", _share(m.get("max_drawdown"))),
        ("longest drawdown", f"{_num((m.get('max_drawdown_minutes') or 0) / 1440)} days"),
        ("Sharpe (1m returns, annualised)", _num(m.get("sharpe_minute"))),
        ("Sharpe (daily returns, annualised)", _num(m.get("sharpe_daily"))),
        ("Sortino (daily)", _num(m.get("sortino_daily"))),
        ("Calmar", _num(m.get("calmar"))),
        ("trades", _num(m.get("trades"), ",d")),
        ("trades per day", _num(m.get("trades_per_day"))),
        ("win rate", _share(m.get("win_rate"))),
        ("profit factor", _num(m.get("profit_factor"))),
        ("average trade", f"{_num(m.get('avg_trade_minutes'), '.1f')} min"),
        ("exposure", _share(m.get("exposure"), 1)),
        ("turnover", f"{_num(m.get('turnover'), '.1f')}x average equity"),
        ("fees paid (closed trades)", f"{_num(m.get('fees'))} USDT"),
        ("slippage paid", f"{_num(m.get('slippage') or 0.0)} USDT"),
        ("positive days", _num(m.get("positive_days"), ",d")),
    ]
    daily = m.get("daily_pnl") or {}
    for key in ("p5", "p25", "p50", "p75", "p95"):
        rows.append((f"daily P&L {key}", f"{_num(daily.get(key))} USDT"))
    return _table(("metric", "value"), [(escape(a), escape(b)) for a, b in rows])


def _targets_table(rows: Sequence[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        rules = target_rule_text(r["metric"])
        cells = [escape(r["label"]), escape(target_value_text(r["metric"], r["value"]))]
        for tier in mx.TIERS:
            ok = r[tier]["pass"]
            cells.append(
                f'<span class="{"pass" if ok else "fail"}">{"pass" if ok else "fail"}</span> '
                f'<span class="muted">{escape(rules[tier])}</span>'
            )
        body.append(cells)
    return _table(("metric", "value", *mx.TIERS), body)


def _baselines_html(report: dict[str, Any]) -> str:
    b = report["baselines"]
    m = report["metrics"]
    parts = ["<h3>Buy and hold</h3>"]
    rows = [
        (
            escape(sym),
            _pct(s["total_return"]),
            _share(s["max_drawdown"]),
            _num(s["sharpe_daily"]),
            _num(s["sharpe_minute"]),
        )
        for sym, s in b["buy_and_hold"].items()
    ]
    rows.insert(
        0,
        (
            "<b>strategy</b>",
            _pct(m.get("total_return")),
            _share(m.get("max_drawdown")),
            _num(m.get("sharpe_daily")),
            _num(m.get("sharpe_minute")),
        ),
    )
    parts.append(
        _table(("", "return", "max drawdown", "Sharpe (daily)", "Sharpe (1m)"), rows)
        + f'<p class="muted">Buy at the first traded bar\'s open, sell at the last close, '
        f"{b['buy_and_hold_fee_bps']:g} bps fee each side.</p>"
    )
    r = b.get("random_entries")
    if r:
        parts.append(
            f"<h3>Random entries ({r['trials']} runs, seed {r['seed']})</h3>"
            f"<p>The strategy's own sizing, bracket and time stop, entered at random bar closes "
            f"({_num(r['mean_trades'], ',.1f')} trades a run on average, the strategy made "
            f"{_num(m.get('trades'), ',d')}), through the same engine and simulated broker. "
            "p-value: share of random runs doing at least as well.</p>"
        )
        rows = []
        for key, name in (
            ("total_return", "total return"),
            ("sharpe_daily", "Sharpe (daily)"),
            ("sharpe_minute", "Sharpe (1m)"),
        ):
            vals = [v for v in r["runs"][key] if v is not None]
            fmt = _pct if key == "total_return" else _num
            pct = mx.percentiles(np.array(vals)) if vals else {}
            rows.append(
                (
                    escape(name),
                    fmt(r["strategy"][key]),
                    fmt(_none(pct.get("p5"))),
                    fmt(_none(pct.get("p50"))),
                    fmt(_none(pct.get("p95"))),
                    _num(r["p_value"][key], ".3f"),
                )
            )
        parts.append(
            _table(("", "strategy", "random p5", "random median", "random p95", "p-value"), rows)
        )
    rule = b.get("rule")
    if rule:
        rm = rule["metrics"]
        parts.append(
            "<h3>Rule baseline (ema_cross, same bars and costs)</h3>"
            + _table(
                ("", "return", "max drawdown", "Sharpe (daily)", "trades", "win rate"),
                [
                    (
                        escape(name),
                        _pct(x.get("total_return")),
                        _share(x.get("max_drawdown")),
                        _num(x.get("sharpe_daily")),
                        _num(x.get("trades"), ",d"),
                        _share(x.get("win_rate")),
                    )
                    for name, x in (("strategy", m), ("ema_cross", rm))
                ],
            )
        )
    for note in b.get("notes", []):
        parts.append(f'<p class="muted">{escape(note)}</p>')
    return "\n".join(parts)


def _none(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _regimes_html(report: dict[str, Any]) -> str:
    rg_ = report["regimes"]
    symbols = report["symbols"]
    rows = [
        (
            escape(r["regime"]),
            _num(r["trades"], ",d"),
            _share(r["win_rate"], 1),
            _num(r["pnl"]),
            _num(r["avg_trade_pnl"]),
            _share(r["time_share"], 1),
            *(_pct(r["buy_and_hold_return"].get(s)) for s in symbols),
        )
        for r in rg_["rows"]
    ]
    head = (
        "regime",
        "trades",
        "win rate",
        "P&L USDT",
        "avg trade USDT",
        "time",
        *(f"buy & hold {s}" for s in symbols),
    )
    return f'<p class="muted">{escape(rg_["rule"])}</p>' + _table(head, rows)


def _capital_html(rows: Sequence[dict[str, Any]]) -> str:
    from scalpd.replay.capital import COLUMNS

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.2f}"
        return escape(f"{v:,}" if isinstance(v, int) else str(v))

    head = [label for _, label in COLUMNS] + ["run"]
    body = [[cell(r.get(k)) for k, _ in COLUMNS] + [cell(r.get("run_id"))] for r in rows]
    return _table(head, body)


def render_html(report: dict[str, Any]) -> str:
    """The report page, from the report JSON alone: inline CSS and SVG, no external resource."""
    m = report["metrics"]
    period = report["period"]
    curve = report["curve"]
    title = f"scalpd replay run {report['run_id']}"
    warn = ""
    if "SYNTHETIC" in report["data"].upper():
        warn = '<p class="warn">SYNTHETIC market: these numbers say nothing about real markets.</p>'
    lines = [("strategy", curve["equity"])] + [
        (f"buy & hold {s}", v) for s, v in curve["buy_and_hold"].items()
    ]
    equity_svg = charts.line_chart("Equity (USDT) vs buy and hold", curve["time_ms"], lines)
    dd_svg = charts.line_chart(
        "Drawdown (%)",
        curve["time_ms"],
        [("drawdown", [None if d is None else -100 * d for d in curve["drawdown"]])],
        "{:,.1f}",
        fill_to_zero=True,
    )
    edges, counts = charts.bin_counts(report["daily"]["pnl"], 30)
    daily_svg = charts.histogram("Daily P&L (USDT): days per bin", edges, counts)
    th = report["trade_pnl_histogram"]
    trade_svg = charts.histogram(
        "Trade P&L (USDT, net of fees): trades per bin", th["edges"], th["counts"], "{:,.1f}"
    )
    random_svgs = ""
    r = report["baselines"].get("random_entries")
    if r:
        re_, rc = charts.bin_counts(
            [None if v is None else 100 * v for v in r["runs"]["total_return"]], 25
        )
        strat = r["strategy"]["total_return"]
        random_svgs = charts.histogram(
            f"Random entries: total return (%) of {r['trials']} runs; the strategy marked",
            re_,
            rc,
            "{:,.1f}",
            [(f"strategy (p = {_num(r['p_value']['total_return'], '.3f')})",
              None if strat is None else 100 * strat)],
        )  # fmt: skip
        se, sc = charts.bin_counts(r["runs"]["sharpe_daily"], 25)
        random_svgs += charts.histogram(
            "Random entries: Sharpe (daily) of each run; the strategy marked",
            se,
            sc,
            "{:,.1f}",
            [(f"strategy (p = {_num(r['p_value']['sharpe_daily'], '.3f')})",
              r["strategy"]["sharpe_daily"])],
        )  # fmt: skip
    capital = ""
    if report.get("capital_levels"):
        capital = "<h2>Capital levels</h2>" + _capital_html(report["capital_levels"])
    settings_json = json.dumps(report["settings"], indent=1, sort_keys=True)
    body = f"""<h1>{escape(title)}</h1>
<p>{escape(report["data"])}<br>strategy <b>{escape(report["strategy"])}</b> on
{escape(", ".join(report["symbols"]))}, {escape(str(period["from"]))} to
{escape(str(period["to"]))} UTC ({_num(period["days"])} days), starting equity
{_num(report["start_equity"])} USDT. Net of fees and slippage.</p>
{warn}
<h2>Equity and drawdown</h2>
{equity_svg}
{dd_svg}
<h2>Metrics</h2>
{_metrics_table(m)}
<h2>Seed targets</h2>
{_targets_table(report["targets"])}
<h2>Distributions</h2>
{daily_svg}
{trade_svg}
<h2>Baselines</h2>
{random_svgs}
{_baselines_html(report)}
<h2>Regimes (entry bar)</h2>
{_regimes_html(report)}
{capital}
<h2>Settings</h2>
<details><summary>settings used</summary><pre>{escape(settings_json)}</pre></details>
"""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"{body}</body></html>\n"
    )
