"""The same strategy at several account sizes, side by side, and the check that an account can
trade at all.

Exchange rules make a $100 account different from a $100,000 one: quantities are floored to
the lot step (a larger share of a small order), an order below the minimum notional is never
sent, and fixed-size sizing cannot spend more than the account holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scalpd.config.settings import ConfigError, Settings

DEFAULT_LEVELS_USDT = (100.0, 1_000.0, 10_000.0, 100_000.0)


def largest_entry_usdt(settings: Settings, cash_usdt: float) -> float:
    """The most the sizing rule may spend on one entry from a fresh account of `cash_usdt`."""
    strategy = settings.strategy
    share = cash_usdt * strategy.position_fraction
    if strategy.sizing == "fixed_size":
        return min(strategy.fixed_size_usdt, share)
    return share


def check_capital(settings: Settings, symbols: Sequence[str], cash_usdt: float) -> None:
    """Refuse an account that could never place an order the exchange accepts."""
    entry = largest_entry_usdt(settings, cash_usdt)
    for symbol in symbols:
        minimum = settings.symbols.rules(symbol).min_notional_usdt
        if entry < minimum:
            raise ConfigError(
                f"capital {cash_usdt:g} USDT is too small for {symbol}: an entry may spend "
                f"{entry:.2f} USDT (sizing {settings.strategy.sizing}, position_fraction "
                f"{settings.strategy.position_fraction:g}) but the exchange's minimum order is "
                f"{minimum:g} USDT"
            )


def parse_levels(text: str) -> list[float]:
    """'100,1000,1e4' -> [100.0, 1000.0, 10000.0]; 'default' -> the four standard levels."""
    if text.strip() == "default":
        return list(DEFAULT_LEVELS_USDT)
    levels: list[float] = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"--capital: {part.strip()!r} is not a number of USDT") from None
        if not value > 0:
            raise ConfigError(f"--capital: {value:g} USDT is not a positive amount")
        levels.append(value)
    if len(set(levels)) != len(levels):
        raise ConfigError("--capital: a level is given twice")
    return levels


COLUMNS: tuple[tuple[str, str], ...] = (
    ("capital_usdt", "capital USDT"),
    ("final_equity_usdt", "final USDT"),
    ("total_return_pct", "return %"),
    ("max_drawdown_pct", "max DD %"),
    ("trades", "trades"),
    ("win_rate_pct", "win %"),
    ("fees_usdt", "fees USDT"),
    ("slippage_usdt", "slippage USDT"),
    ("rejected_orders", "rejected"),
)


def capital_row(capital_usdt: float, run_id: int, summary: dict[str, Any]) -> dict[str, Any]:
    """One level's line of the side-by-side table, from its replay summary."""
    row = {key: summary.get(key) for key, _ in COLUMNS}
    row["capital_usdt"] = capital_usdt
    row["run_id"] = run_id
    return row


def format_levels(rows: Sequence[dict[str, Any]]) -> str:
    head = [label for _, label in COLUMNS] + ["run"]
    body = [[_cell(row.get(key)) for key, _ in COLUMNS] + [str(row["run_id"])] for row in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *body]]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def run_levels(
    settings: Settings, inp: Any, store: Any, levels: Sequence[float], *, baselines: bool = True
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Replay `inp` once per capital level, each its own run in the store, and give every run's
    stored report the side-by-side table. All levels are checked before the first one runs, so
    a bad one fails fast. Returns the results and the table's rows."""
    # Imported here: the runner imports this module's check.
    from scalpd.replay.report import with_capital_levels
    from scalpd.replay.runner import run_replay

    symbols = [s.symbol for s in inp.series]
    for level in levels:
        check_capital(settings, symbols, level)
    results = []
    for level in levels:
        sim = settings.sim.model_copy(update={"starting_cash_usdt": level})
        run_settings = settings.model_copy(update={"sim": sim})
        results.append(run_replay(run_settings, inp, store, baselines=baselines))
    rows = [capital_row(lv, r.run_id, r.summary) for lv, r in zip(levels, results, strict=True)]
    for result in results:
        result.report = with_capital_levels(result.report, rows)
        store.save_report(result.run_id, result.report)
    return results, rows
