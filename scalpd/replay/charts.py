"""Small inline SVG charts for the report: lines over time and histograms. Pure: text out.

No plotting library and nothing external: the report must open offline, as one file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

WIDTH, HEIGHT = 860, 260
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 70, 16, 28, 34
COLORS = ("#1f5fbf", "#d1822a", "#3a9a4a", "#8a4fbf", "#c23b3b", "#6b6b6b")


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round values spanning [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def _frame(title: str) -> list[str]:
    return [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<text x="{PAD_LEFT}" y="18" class="t">{escape(title)}</text>',
    ]


def _empty(title: str) -> str:
    parts = _frame(title)
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _date(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def line_chart(
    title: str,
    x: Sequence[float],
    lines: Sequence[tuple[str, Sequence[float | None]]],
    y_format: str = "{:,.0f}",
    fill_to_zero: bool = False,
) -> str:
    """Lines over time (x in epoch ms), one colour each, with a legend."""
    ys = [v for _, vals in lines for v in _finite(vals)]
    if len(x) < 2 or not ys:
        return _empty(title)
    x0, x1 = float(x[0]), float(x[-1])
    lo, hi = min(ys), max(ys)
    if fill_to_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    pw, ph = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def px(v: float) -> float:
        return PAD_LEFT + (v - x0) / (x1 - x0) * pw if x1 > x0 else PAD_LEFT

    def py(v: float) -> float:
        return PAD_TOP + (hi - v) / (hi - lo) * ph

    parts = _frame(title)
    for t in _ticks(lo, hi):
        parts.append(
            f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
            'class="g"/>'
            f'<text x="{PAD_LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end">'
            f"{escape(y_format.format(t))}</text>"
        )
    for i in range(5):
        xv = x0 + (x1 - x0) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(
            f'<text x="{px(xv):.1f}" y="{HEIGHT - 12}" text-anchor="{anchor}">{_date(xv)}</text>'
        )
    for k, (name, vals) in enumerate(lines):
        color = COLORS[k % len(COLORS)]
        pts = [
            f"{px(float(xv)):.1f},{py(v):.1f}"
            for xv, v in zip(x, vals, strict=True)
            if v is not None and math.isfinite(v)
        ]
        if not pts:
            continue
        if fill_to_zero:
            first_x, last_x = pts[0].split(",")[0], pts[-1].split(",")[0]
            poly = f"{first_x},{py(0):.1f} " + " ".join(pts) + f" {last_x},{py(0):.1f}"
            parts.append(f'<polygon points="{poly}" fill="{color}" fill-opacity="0.25"/>')
        parts.append(
            f'<polyline points="{" ".join(pts)}" fill="none" stroke="{color}" stroke-width="1.4"/>'
        )
        lx = PAD_LEFT + 8 + 190 * k
        parts.append(
            f'<rect x="{lx}" y="{PAD_TOP + 4}" width="10" height="10" fill="{color}"/>'
            f'<text x="{lx + 14}" y="{PAD_TOP + 13}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def bin_counts(values: Sequence[float | None], bins: int = 30) -> tuple[list[float], list[int]]:
    """Histogram of the finite values: (bins + 1 edges, counts); empty lists with none."""
    vals = _finite(values)
    if not vals:
        return [], []
    lo, hi = min(vals), max(vals)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in vals:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return [lo + width * i for i in range(bins + 1)], counts


def histogram(
    title: str,
    edges: Sequence[float],
    counts: Sequence[int],
    x_format: str = "{:,.0f}",
    markers: Sequence[tuple[str, float | None]] = (),
) -> str:
    """Bars of `counts` between `edges`; `markers`: labelled vertical lines (e.g. the
    strategy's value among random runs)."""
    if not counts or max(counts) == 0:
        return _empty(title)
    lo, hi = float(edges[0]), float(edges[-1])
    for _, m in markers:
        if m is not None and math.isfinite(m):
            lo, hi = min(lo, m), max(hi, m)
    top = max(counts)
    pw, ph = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def px(v: float) -> float:
        return PAD_LEFT + (v - lo) / (hi - lo) * pw if hi > lo else PAD_LEFT + pw / 2

    def py(c: float) -> float:
        return PAD_TOP + (1 - c / top) * ph

    parts = _frame(title)
    for t in _ticks(0, top, 4):
        parts.append(
            f'<line x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
            f'class="g"/><text x="{PAD_LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end">'
            f"{t:g}</text>"
        )
    for t in _ticks(lo, hi, 6):
        parts.append(
            f'<text x="{px(t):.1f}" y="{HEIGHT - 12}" text-anchor="middle">'
            f"{escape(x_format.format(t))}</text>"
        )
    for i, c in enumerate(counts):
        if c == 0:
            continue
        a, b = px(float(edges[i])), px(float(edges[i + 1]))
        parts.append(
            f'<rect x="{a:.1f}" y="{py(c):.1f}" width="{max(b - a - 1, 0.5):.1f}" '
            f'height="{PAD_TOP + ph - py(c):.1f}" fill="{COLORS[0]}" fill-opacity="0.7"/>'
        )
    for k, (name, m) in enumerate(markers):
        if m is None or not math.isfinite(m):
            continue
        color = COLORS[4 - k % 3]
        parts.append(
            f'<line x1="{px(m):.1f}" x2="{px(m):.1f}" y1="{PAD_TOP}" y2="{PAD_TOP + ph}" '
            f'stroke="{color}" stroke-width="2"/>'
            f'<text x="{px(m) + 4:.1f}" y="{PAD_TOP + 12 + 14 * k}" fill="{color}">'
            f"{escape(name)}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)
