"""Chart geometry computed server-side and drawn as inline SVG by the templates.

No chart library and nothing fetched: a chart is a list of rectangles and tick labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

STAGE_COLORS = ("#6366f1", "#0ea5e9", "#10b981", "#f59e0b", "#ec4899")


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    color: str
    title: str  # tooltip (autoescaped by Jinja)


@dataclass(frozen=True)
class Tick:
    pos: float
    text: str


@dataclass
class BarChart:
    width: int
    height: int
    plot_left: float
    plot_top: float
    plot_bottom: float
    plot_right: float
    rects: list[Rect] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_labels: list[Tick] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)
    empty: bool = False


def nice_max(value: float) -> float:
    """Round an axis maximum up to 1, 2, 2.5 or 5 times a power of ten."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    base = 10**exp
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * base + 1e-12:
            return m * base
    return 10 * base


def _frame(width: int, height: int) -> BarChart:
    return BarChart(width, height, plot_left=48, plot_top=10, plot_bottom=height - 24,
                    plot_right=width - 8)


def _y_axis(chart: BarChart, top: float, fmt: Callable[[float], str], n: int = 4) -> None:
    """`n` evenly spaced ticks from 0 to `top`."""
    span = chart.plot_bottom - chart.plot_top
    chart.y_ticks = [
        Tick(chart.plot_bottom - span * i / n, fmt(top * i / n)) for i in range(n + 1)
    ]


def bar_chart(
    points: Sequence[tuple[str, float]],
    *,
    fmt: Callable[[float], str],
    color: str = "#6366f1",
    width: int = 560,
    height: int = 180,
    max_labels: int = 8,
    integer: bool = False,
) -> BarChart:
    """One bar per point; x labels thinned to at most `max_labels`.

    `integer` keeps ticks on whole numbers (counts).
    """
    chart = _frame(width, height)
    if not points:
        chart.empty = True
        return chart
    top = nice_max(max(v for _, v in points))
    chart.empty = all(v == 0 for _, v in points)
    n = 4
    if integer:
        top = max(1.0, math.ceil(top))
        n = next(k for k in (4, 5, 3, 2, 1) if k <= top and top % k == 0)
    _y_axis(chart, top, fmt, n)
    span_x = chart.plot_right - chart.plot_left
    slot = span_x / len(points)
    bar_w = max(2.0, slot * 0.62)
    step = max(1, math.ceil(len(points) / max_labels))
    span_y = chart.plot_bottom - chart.plot_top
    for i, (label, value) in enumerate(points):
        h = span_y * value / top
        x = chart.plot_left + i * slot + (slot - bar_w) / 2
        chart.rects.append(Rect(x, chart.plot_bottom - h, bar_w, h, color, f"{label}: {fmt(value)}"))
        if i % step == 0 or (i == len(points) - 1 and len(points) <= max_labels):
            chart.x_labels.append(Tick(x + bar_w / 2, label))
    return chart


def stacked_chart(
    columns: Sequence[tuple[str, Sequence[float | None]]],
    *,
    series: Sequence[str],
    fmt: Callable[[float], str],
    width: int = 560,
    height: int = 200,
    max_labels: int = 12,
) -> BarChart:
    """Stacked bars (one column per turn, one segment per stage)."""
    chart = _frame(width, height)
    chart.legend = [(name, STAGE_COLORS[i % len(STAGE_COLORS)]) for i, name in enumerate(series)]
    if not columns:
        chart.empty = True
        return chart
    totals = [sum(v or 0.0 for v in values) for _, values in columns]
    top = nice_max(max(totals))
    chart.empty = all(t == 0 for t in totals)
    _y_axis(chart, top, fmt)
    span_x = chart.plot_right - chart.plot_left
    span_y = chart.plot_bottom - chart.plot_top
    slot = span_x / max(len(columns), 4)
    bar_w = max(3.0, min(40.0, slot * 0.6))
    step = max(1, math.ceil(len(columns) / max_labels))
    for i, (label, values) in enumerate(columns):
        x = chart.plot_left + i * slot + (slot - bar_w) / 2
        y = chart.plot_bottom
        for j, v in enumerate(values):
            if not v:
                continue
            h = span_y * v / top
            y -= h
            chart.rects.append(
                Rect(x, y, bar_w, h, STAGE_COLORS[j % len(STAGE_COLORS)],
                     f"{label} · {series[j]}: {fmt(v)}")
            )
        if i % step == 0:
            chart.x_labels.append(Tick(x + bar_w / 2, label))
    return chart


def fmt_money(v: float) -> str:
    if v == 0:
        return "$0"
    if v < 0.01:
        return f"${v:.4f}"
    return f"${v:,.2f}"


def fmt_count(v: float) -> str:
    return f"{v:,.0f}" if v >= 1 or v == 0 else f"{v:.2f}"


def fmt_seconds(v: float) -> str:
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"
