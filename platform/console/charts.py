"""Small SVG charts drawn on the server: every value is printed, so nothing needs hovering or JavaScript."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

W, H = 440, 230
LEFT, RIGHT, TOP, BOTTOM = 62, 14, 30, 42
COLORS = ("#1f6feb", "#d97706", "#137333")


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]  # one per x label; None = nothing to draw there


def _nice_step(span: float, integer: bool) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about three intervals."""
    raw = span / 3 or 1.0
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return max(step, 1.0) if integer else step


def _range(values: list[float], zero: bool, integer: bool = False) -> tuple[float, float, float]:
    """Axis bounds on whole tick steps around the values (from 0 for bars), and the step."""
    lo, hi = (0.0 if zero else min(values)), max(values)
    if hi == lo:  # a flat line still needs a scale
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = (lo if zero else lo - pad), hi + pad
    step = _nice_step(hi - lo, integer)
    low = math.floor(lo / step) * step
    high = math.ceil(hi / step) * step
    if high - hi < step * 0.15:  # headroom for the printed value above the highest point
        high += step
    return low, high, step


def _frame(title: str, x_title: str, y_title: str, lo: float, hi: float, step: float, fmt: str) -> list[str]:
    plot_h = H - TOP - BOTTOM
    parts = [
        f'<text x="{W / 2}" y="16" text-anchor="middle" font-weight="600">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="#888"/>',
        f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" stroke="#888"/>',
        f'<text x="{W / 2}" y="{H - 6}" text-anchor="middle" class="axis">{escape(x_title)}</text>',
        f'<text x="14" y="{TOP + plot_h / 2}" text-anchor="middle" class="axis" '
        f'transform="rotate(-90 14 {TOP + plot_h / 2})">{escape(y_title)}</text>',
    ]
    ticks = round((hi - lo) / step)
    for i in range(ticks + 1):  # y ticks on round values, each labelled
        v = lo + step * i
        y = TOP + plot_h * (1 - i / ticks)
        parts.append(f'<line x1="{LEFT - 4}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{fmt.format(v)}</text>')
    return parts


def _svg(parts: list[str], label: str) -> SafeString:
    body = "".join(parts)
    return mark_safe(  # noqa: S308 - every text in `parts` went through escape(); the rest are numbers
        f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui,sans-serif" font-size="11">'
        f"<style>.tick{{fill:#555}}.axis{{fill:#333}}.val{{fill:#111;font-weight:600}}</style>{body}</svg>"
    )


def _empty(title: str) -> SafeString:
    return _svg(
        [
            f'<text x="{W / 2}" y="16" text-anchor="middle" font-weight="600">{escape(title)}</text>',
            f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="tick">no rounds recorded yet</text>',
        ],
        title,
    )


def _x(i: int, n: int, band: bool) -> float:
    plot_w = W - LEFT - RIGHT
    if band:  # bars: the middle of each of n bands
        return LEFT + plot_w * (i + 0.5) / n
    return LEFT + 18 + (plot_w - 36) * (i / (n - 1) if n > 1 else 0.5)


def _drawable(series: Sequence[Series]) -> list[Series]:
    """Non-finite values (a diverged loss, or a row stored before reports were bounds-checked) have no place on
    an axis: drawn as gaps, like missing ones, so one inf cannot take the whole page down."""
    return [Series(s.name, [v if v is not None and math.isfinite(v) else None for v in s.values]) for s in series]


def line_chart(
    title: str, labels: Sequence[str], series: Sequence[Series], *, y_title: str, x_title: str = "round",
    fmt: str = "{:.3f}",
) -> SafeString:  # fmt: skip
    series = _drawable(series)
    values = [v for s in series for v in s.values if v is not None]
    if not values:
        return _empty(title)
    lo, hi, step = _range(values, zero=False)
    plot_h = H - TOP - BOTTOM
    n = len(labels)
    parts = _frame(title, x_title, y_title, lo, hi, step, _tick_fmt(fmt, step))
    for i, label in enumerate(labels):
        parts.append(
            f'<text x="{_x(i, n, False):.1f}" y="{H - BOTTOM + 15}" text-anchor="middle" class="tick">'
            f"{escape(label)}</text>"
        )
    for k, s in enumerate(series):
        color = COLORS[k % len(COLORS)]
        points = [
            (_x(i, n, False), TOP + plot_h * (1 - (v - lo) / (hi - lo)), v)
            for i, v in enumerate(s.values)
            if v is not None
        ]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y, v in points:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>')
            parts.append(f'<text x="{x:.1f}" y="{y - 8:.1f}" text-anchor="middle" class="val">{fmt.format(v)}</text>')
    if len(series) > 1:
        parts += _legend(series)
    return _svg(parts, title)


def bar_chart(
    title: str, labels: Sequence[str], series: Sequence[Series], *, y_title: str, x_title: str = "round",
    fmt: str = "{:g}", integer: bool = False,
) -> SafeString:  # fmt: skip
    series = _drawable(series)
    values = [v for s in series for v in s.values if v is not None]
    if not values:
        return _empty(title)
    lo, hi, step = _range(values, zero=True, integer=integer)
    plot_h = H - TOP - BOTTOM
    n, k_all = len(labels), len(series)
    band = (W - LEFT - RIGHT) / n
    bar_w = min(36.0, band * 0.7 / k_all)
    parts = _frame(title, x_title, y_title, lo, hi, step, _tick_fmt(fmt, step))
    for i, label in enumerate(labels):
        cx = _x(i, n, True)
        parts.append(
            f'<text x="{cx:.1f}" y="{H - BOTTOM + 15}" text-anchor="middle" class="tick">{escape(label)}</text>'
        )
        for k, s in enumerate(series):
            v = s.values[i]
            if v is None:
                continue
            x = cx - bar_w * k_all / 2 + bar_w * k
            top = TOP + plot_h * (1 - (v - lo) / (hi - lo))
            parts.append(
                f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar_w - 2:.1f}" height="{H - BOTTOM - top:.1f}" '
                f'fill="{COLORS[k % len(COLORS)]}"/>'
            )
            parts.append(
                f'<text x="{x + bar_w / 2 - 1:.1f}" y="{top - 4:.1f}" text-anchor="middle" class="val">'
                f"{fmt.format(v)}</text>"
            )
    if k_all > 1:
        parts += _legend(series)
    return _svg(parts, title)


def _tick_fmt(fmt: str, step: float) -> str:
    """Tick labels as precise as the step needs: 0.005 steps get 3 decimals, 2.5 steps one, 2 steps none."""
    if step >= 1 and float(step).is_integer():
        return "{:.0f}"
    decimals = max(0, -math.floor(math.log10(step)))
    if abs(round(step, decimals) - step) > step * 1e-9:
        decimals += 1
    return f"{{:.{decimals}f}}"


def _legend(series: Sequence[Series]) -> list[str]:
    """Bottom right, beside the x-axis title: clear of the bars and their printed values."""
    parts = []
    for k, s in enumerate(series):
        x = W - RIGHT - 60 * (len(series) - k)
        color = COLORS[k % len(COLORS)]
        parts.append(f'<rect x="{x}" y="{H - 15}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{x + 14}" y="{H - 6}" class="tick">{escape(s.name)}</text>')
    return parts


def byte_unit(largest: float) -> tuple[float, str]:
    """A unit that keeps the printed numbers short: tiny test adapters are KB, real ones MB.

    Powers of 1024, as Django's filesizeformat in the rounds table, so the chart and the table agree.
    """
    for scale, unit in ((1024.0**3, "GB"), (1024.0**2, "MB"), (1024.0, "KB")):
        if largest >= scale:
            return scale, unit
    return 1.0, "bytes"
