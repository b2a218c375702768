"""Small inline SVG line charts for the device page (no JS library, nothing from a CDN)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from html import escape
from typing import Any

from protocol.timefmt import utc_now

WIDTH, HEIGHT, PAD = 360, 90, 4


def sparkline_svg(
    points: Sequence[dict[str, Any]],
    key: str,
    *,
    unit: str,
    label: str,
    hours: float = 24.0,
    now: datetime | None = None,
) -> str:
    """An SVG of ``key`` over the last ``hours`` (x: time; y: 0–100 for percentages, else 0–100 or
    wider when the values are), with the
    latest value, the range in words and a ``<title>`` for screen readers. Empty: a sentence."""
    values = [(p["minute"], float(p[key])) for p in points if p.get(key) is not None]
    if not values:
        return f'<p class="empty">No {escape(label.lower())} reported in the last {hours:.0f} h.</p>'
    now = now or utc_now()
    start = now - timedelta(hours=hours)
    low = min(v for _, v in values)
    high = max(v for _, v in values)
    bottom, top = (0.0, 100.0) if unit == "%" else (min(0.0, low), max(100.0, high))  # a fixed scale
    span = (top - bottom) or 1.0

    def x(moment: datetime) -> float:
        return PAD + (WIDTH - 2 * PAD) * max(0.0, (moment - start).total_seconds()) / (hours * 3600)

    def y(value: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * (value - bottom) / span

    path = " ".join(f"{x(m):.1f},{y(v):.1f}" for m, v in values)
    last = values[-1][1]
    title = f"{label} over the last {hours:.0f} h: {low:.1f} to {high:.1f} {unit}, now {last:.1f} {unit}"
    return (
        f'<figure class="chart" data-metric="{escape(key)}">'
        f"<figcaption>{escape(label)} <b>{last:.1f} {escape(unit)}</b> "
        f'<span class="muted">{low:.1f}–{high:.1f} {escape(unit)}, {len(values)} min</span></figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" class="chart-bg"/>'
        f'<polyline points="{path}" class="chart-line"/></svg></figure>'
    )
