"""Small SVG line charts drawn on the server: no chart library, no script, no CDN (the site
has no internet), and they work in any browser and in a saved page."""

from __future__ import annotations

import math
from html import escape

from gateway.ops.status_assess import duration_text
from gateway.ops.status_page.numbers import human

WIDTH, HEIGHT = 300, 64
#: The plot sits inside this margin (room for the line's width).
PAD = 2
#: A chart spans at least this much time (then up to the history's whole window).
MIN_SPAN_MS = 15 * 60 * 1000


def line_chart(
    points: list[tuple[int, float]],
    *,
    start_ms: int,
    end_ms: int,
    label: str,
    unit: str,
    css: str,
) -> str:
    """A <figure> with a caption (label, newest value, range) and an SVG line of `points`
    over [start_ms, end_ms]; a "collecting" note while there are fewer than two."""
    shown = [(t, v) for t, v in points if start_ms <= t <= end_ms and math.isfinite(v)]
    if shown:  # a young series fills the width: from its first point, at least MIN_SPAN_MS
        start_ms = max(start_ms, min(shown[0][0], end_ms - MIN_SPAN_MS))
    caption = escape(label)
    if len(shown) < 2:
        return (
            f'<figure class="chart {css}"><figcaption>{caption}</figcaption>'
            '<p class="nodata">collecting data…</p></figure>'
        )
    values = [v for _, v in shown]
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 1, high + 1
    span_ms = max(1, end_ms - start_ms)

    def x(ts: int) -> float:
        return PAD + (WIDTH - 2 * PAD) * (ts - start_ms) / span_ms

    def y(value: float) -> float:
        return PAD + (HEIGHT - 2 * PAD) * (high - value) / (high - low)

    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in shown)
    area = f"{x(shown[0][0]):.1f},{HEIGHT} {line} {x(shown[-1][0]):.1f},{HEIGHT}"
    span = duration_text(span_ms / 1000)
    summary = (
        f"{label}: now {human(values[-1], unit)}, range {human(min(values), unit)} to "
        f"{human(max(values), unit)} over the last {span}"
    )
    return (
        f'<figure class="chart {css}"><figcaption>{caption} '
        f'<span class="now">{escape(human(values[-1], unit))}</span></figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" role="img" '
        f'aria-label="{escape(summary)}"><title>{escape(summary)}</title>'
        f'<polygon class="area" points="{area}"/>'
        f'<polyline class="line" points="{line}"/></svg>'
        f'<div class="range"><span>{escape(human(max(values), unit))} max</span>'
        f"<span>{escape(span)}</span>"
        f"<span>{escape(human(min(values), unit))} min</span></div></figure>"
    )
