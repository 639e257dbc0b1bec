"""Small inline SVG plots for the run report: every plot has labelled axes with ticks, a title
and a legend where it draws more than one series. No script, no external resource."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

FONT = 'font-family="sans-serif" font-size="11"'


def _e(x: object) -> str:
    return html.escape(str(x))


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of 10)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return out


def _tick_label(v: float, ticks: Sequence[float]) -> str:
    """``v`` with as many decimals as the tick step needs (0.25 -> 2, 5 -> 0)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    d = 0
    while d < 6 and abs(round(step, d) - step) > step * 1e-6:
        d += 1
    return f"{v:.{d}f}"


def _finite(xs: Sequence[float | None]) -> list[float]:
    return [float(v) for v in xs if v is not None and not (isinstance(v, float) and math.isnan(v))]


def histogram_svg(a: list[float], b: list[float] | None = None,
                  labels: tuple[str, str] = ("chosen", "rejected"), bins: int = 20,
                  width: int = 560, height: int = 200, xlabel: str = "document score",
                  ylabel: str = "count", title: str = "", elem_id: str = "scores_svg",
                  marker: float | None = None, marker_label: str = "") -> str:
    """One or two overlaid histograms on shared bins, with x and y axes (ticks, labels) and a
    legend; ``marker`` draws a dashed vertical line (a threshold) labelled ``marker_label``."""
    series = [(list(a), labels[0], "#2a9d2a")]
    if b is not None:
        series.append((list(b), labels[1], "#c83232"))
    vals = _finite([v for s, _, _ in series for v in s])
    if not vals:
        return '<p class="note">no scores</p>'
    lo, hi = min(vals), max(vals)
    if marker is not None and math.isfinite(marker):
        lo, hi = min(lo, marker), max(hi, marker)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    step = (hi - lo) / bins
    counts = []
    for xs, _, _ in series:
        c = [0] * bins
        for v in _finite(xs):
            c[min(bins - 1, int((v - lo) / step))] += 1
        counts.append(c)
    top = max(max(c) for c in counts) or 1
    left, right, top_pad, bottom = 52, 16, 30, 46
    pw, ph = width - left - right, height - top_pad - bottom

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    def y(n: float) -> float:
        return top_pad + ph - n / top * ph

    out = [f'<svg id="{_e(elem_id)}" class="plot" width="{width}" height="{height}" '
           f'xmlns="http://www.w3.org/2000/svg" {FONT}>']
    if title:
        out.append(f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="12">'
                   f"{_e(title)}</text>")
    for c, (_, _, color) in zip(counts, series, strict=True):
        for i, n in enumerate(c):
            if n:
                x0 = x(lo + i * step)
                out.append(f'<rect x="{x0:.1f}" y="{y(n):.1f}" width="{max(pw / bins - 1, 1):.1f}"'
                           f' height="{ph - (y(n) - top_pad):.1f}" fill="{color}" '
                           'fill-opacity="0.5"/>')
    out += _axes(left, top_pad, pw, ph, nice_ticks(lo, hi, 6), x, nice_ticks(0, top, 5), y,
                 xlabel, ylabel, integer_y=True)
    if marker is not None and math.isfinite(marker):
        out.append(f'<line x1="{x(marker):.1f}" x2="{x(marker):.1f}" y1="{top_pad}" '
                   f'y2="{top_pad + ph}" stroke="#333" stroke-dasharray="4,3"/>'
                   f'<text x="{x(marker) + 3:.1f}" y="{top_pad + 10}">{_e(marker_label)}</text>')
    for i, (xs, label, color) in enumerate(series):
        lx = left + pw - 150
        ly = top_pad + 4 + 14 * i
        out.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{color}" '
                   f'fill-opacity="0.6"/><text x="{lx + 14}" y="{ly + 9}">{_e(label)} '
                   f"(n={len(_finite(xs))})</text>")
    out.append("</svg>")
    return "".join(out)


def _axes(left: float, top: float, pw: float, ph: float, xticks: list[float],
          x: Callable[[float], float], yticks: list[float], y: Callable[[float], float],
          xlabel: str, ylabel: str, integer_y: bool = False) -> list[str]:
    """The x axis (bottom) and y axis (left) lines, their ticks and labels."""
    base = top + ph
    out = [f'<line class="axis" x1="{left}" x2="{left + pw}" y1="{base}" y2="{base}" '
           'stroke="#333"/>',
           f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{base}" stroke="#333"/>']
    for t in xticks:
        px = x(t)
        if left - 0.5 <= px <= left + pw + 0.5:
            out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{base}" y2="{base + 4}" '
                       f'stroke="#333"/><text x="{px:.1f}" y="{base + 15}" text-anchor="middle">'
                       f"{_tick_label(t, xticks)}</text>")
    ys = [t for t in yticks if not integer_y or float(t).is_integer()]
    for t in ys:
        py = y(t)
        out.append(f'<line x1="{left - 4}" x2="{left}" y1="{py:.1f}" y2="{py:.1f}" stroke="#333"/>'
                   f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">'
                   f"{_tick_label(t, ys) if not integer_y else f'{t:.0f}'}</text>")
    out.append(f'<text class="xlabel" x="{left + pw / 2:.1f}" y="{base + 34}" '
               f'text-anchor="middle">{_e(xlabel)}</text>')
    cy = top + ph / 2
    if ylabel:
        out.append(f'<text class="ylabel" x="14" y="{cy:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 14 {cy:.1f})">{_e(ylabel)}</text>')
    return out


def interval_svg(rows: Sequence[tuple[str, float | None, float | None, float | None]],
                 xlabel: str, reference: float | None = None, reference_label: str = "",
                 title: str = "", elem_id: str = "", width: int = 620) -> str:
    """A forest plot: one row per (label, value, ci_low, ci_high): a dot at the value and a bar
    over its confidence interval, on a shared x axis with ticks and a label; ``reference``
    draws a dashed vertical line (0 for a difference, 0.5 for an AUC)."""
    rows = [r for r in rows if r[1] is not None and math.isfinite(r[1])]
    if not rows:
        return '<p class="note">nothing to plot</p>'
    vals = _finite([v for r in rows for v in r[1:]])
    if reference is not None:
        vals.append(reference)
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.08 or 0.05
    lo, hi = lo - pad, hi + pad
    left = min(260, 12 + 6.4 * max(len(r[0]) for r in rows))
    right, top_pad, row_h, bottom = 20, 24 if title else 10, 22, 46
    pw = width - left - right
    ph = row_h * len(rows)
    height = top_pad + ph + bottom

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    ident = f' id="{_e(elem_id)}"' if elem_id else ""
    out = [f'<svg{ident} class="plot" width="{width}" height="{height}" '
           f'xmlns="http://www.w3.org/2000/svg" {FONT}>']
    if title:
        out.append(f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="12">'
                   f"{_e(title)}</text>")
    if reference is not None:
        out.append(f'<line x1="{x(reference):.1f}" x2="{x(reference):.1f}" y1="{top_pad}" '
                   f'y2="{top_pad + ph}" stroke="#888" stroke-dasharray="4,3"/>')
        if reference_label:
            out.append(f'<text x="{x(reference) + 3:.1f}" y="{top_pad + ph - 3}" fill="#666">'
                       f"{_e(reference_label)}</text>")
    for i, (label, v, a, b) in enumerate(rows):
        cy = top_pad + row_h * i + row_h / 2
        out.append(f'<text x="{left - 8}" y="{cy + 4:.1f}" text-anchor="end">{_e(label)}</text>')
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            out.append(f'<line x1="{x(a):.1f}" x2="{x(b):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" '
                       'stroke="#1f77b4" stroke-width="2"/>')
        out.append(f'<circle cx="{x(v):.1f}" cy="{cy:.1f}" r="4" fill="#1f77b4"/>')
    out += _axes(left, top_pad, pw, ph, nice_ticks(lo, hi, 7), x, [], lambda t: t, xlabel, "")
    out.append("</svg>")
    return "".join(out)
