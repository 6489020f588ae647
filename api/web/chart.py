"""A horizontal bar chart as inline SVG, laid out on the server (no chart library, no JS)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

ROW = 26
BAR = 16
LABEL_W = 140
VALUE_W = 84  # room for "99 h 59 min"
WIDTH = 640


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: float  # in the unit `show` writes out (e.g. seconds for api.format.duration)


def _short(text: str, limit: int = 18) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bar_chart(bars: Sequence[Bar], *, title: str, show: Callable[[float], str]) -> Markup:
    """An accessible SVG (`role="img"`, a title and a description listing every value);
    `show` writes a value for people."""
    if not bars:
        return Markup("")
    top = max(b.value for b in bars) or 1.0
    plot_w = WIDTH - LABEL_W - VALUE_W
    height = ROW * len(bars) + 8
    described = "; ".join(f"{b.label}: {show(b.value)}" for b in bars)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" width="100%" '
        f'role="img" aria-labelledby="chart-title chart-desc" '
        f'preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<desc id="chart-desc">{escape(described)}</desc>',
    ]
    for i, b in enumerate(bars):
        shown = escape(show(b.value))
        y = 4 + i * ROW
        w = max(1.0, plot_w * b.value / top) if b.value > 0 else 0.0
        parts.append(
            f'<text class="chart-label" x="{LABEL_W - 8}" y="{y + BAR - 3}" '
            f'text-anchor="end">{escape(_short(b.label))}</text>'
        )
        parts.append(
            f'<rect class="chart-bar" x="{LABEL_W}" y="{y}" width="{w:.1f}" '
            f'height="{BAR}" rx="3"><title>{escape(b.label)}: {shown}</title></rect>'
        )
        parts.append(
            f'<text class="chart-value" x="{LABEL_W + w + 6:.1f}" y="{y + BAR - 3}">{shown}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  (every interpolated text is escaped above)
