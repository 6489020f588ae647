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


# ------------------------------------------------------------------ line charts

LINE_W = 640
LINE_H = 260
PAD_L, PAD_R, PAD_T, PAD_B = 64, 16, 14, 36
MAX_DRAWN = 400  # points drawn per line; longer series are thinned evenly (last kept)
# Colours distinguishable by most colour-blind readers (Okabe-Ito), each with its own
# dash pattern so the lines differ without colour too.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
DASHES = ("", "6 3", "2 3", "8 3 2 3", "1 2", "10 4", "4 4")


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    points: Sequence[tuple[float, float]]  # (step, value), by step


def _thin(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_DRAWN:
        return list(points)
    every = len(points) / MAX_DRAWN
    kept = [points[int(i * every)] for i in range(MAX_DRAWN - 1)]
    return [*kept, points[-1]]


def _num(value: float) -> str:
    return f"{value:.4g}"


def line_chart(lines: Sequence[Line], *, title: str, chart_id: str) -> Markup:
    """Values over steps, one line per series (several: overlaid, with a legend), as an
    accessible SVG: `role="img"`, a title, and a description giving each line's first,
    last and best values. `chart_id` keeps the ids unique when a page has several."""
    lines = [ln for ln in lines if ln.points]
    if not lines:
        return Markup("")
    xs = [x for ln in lines for x, _ in ln.points]
    ys = [y for ln in lines for _, y in ln.points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    if y0 == y1:
        y0, y1 = y0 - abs(y0 or 1) * 0.1, y1 + abs(y1 or 1) * 0.1
    legend_h = 18 * len(lines) if len(lines) > 1 else 0
    height = LINE_H + legend_h
    plot_w, plot_h = LINE_W - PAD_L - PAD_R, LINE_H - PAD_T - PAD_B

    def px(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return PAD_T + (1 - (y - y0) / (y1 - y0)) * plot_h

    described = "; ".join(
        f"{ln.label}: {len(ln.points)} points from step {_num(ln.points[0][0])} to "
        f"{_num(ln.points[-1][0])}, first {_num(ln.points[0][1])}, last "
        f"{_num(ln.points[-1][1])}, lowest {_num(min(y for _, y in ln.points))}, highest "
        f"{_num(max(y for _, y in ln.points))}"
        for ln in lines
    )
    cid = escape(chart_id)
    parts = [
        f'<svg class="chart line-chart" id="{cid}" viewBox="0 0 {LINE_W} {height}" '
        f'width="100%" role="img" aria-labelledby="{cid}-title {cid}-desc" '
        f'preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{cid}-title">{escape(title)}</title>',
        f'<desc id="{cid}-desc">{escape(described)}</desc>',
    ]
    # Axes, four value ticks with grid lines, three step ticks.
    for i in range(5):
        value = y0 + (y1 - y0) * i / 4
        y = py(value)
        parts.append(
            f'<line class="chart-grid" x1="{PAD_L}" x2="{LINE_W - PAD_R}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="#e3e7ee" stroke-width="1"/>'
        )
        parts.append(
            f'<text class="chart-label" x="{PAD_L - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{escape(_num(value))}</text>'
        )
    # Steps are whole numbers: the middle tick sits on one.
    for i, step in enumerate((x0, float(round((x0 + x1) / 2)), x1)):
        anchor = ("start", "middle", "end")[i]
        parts.append(
            f'<text class="chart-label" x="{px(step):.1f}" y="{LINE_H - PAD_B + 16}" '
            f'text-anchor="{anchor}">{escape(_num(step))}</text>'
        )
    parts.append(
        f'<text class="chart-label" x="{PAD_L + plot_w / 2:.1f}" y="{LINE_H - 4}" '
        f'text-anchor="middle">step</text>'
    )
    parts.append(
        f'<polyline fill="none" stroke="#8a93a3" stroke-width="1" points="{PAD_L},{PAD_T} '
        f'{PAD_L},{PAD_T + plot_h} {LINE_W - PAD_R},{PAD_T + plot_h}"/>'
    )
    for i, ln in enumerate(lines):
        colour, dash = PALETTE[i % len(PALETTE)], DASHES[i % len(DASHES)]
        drawn = _thin(ln.points)
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in drawn)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<polyline class="chart-line" data-series="{escape(ln.label)}" fill="none" '
            f'stroke="{colour}" stroke-width="2"{dash_attr} points="{coords}">'
            f"<title>{escape(ln.label)}</title></polyline>"
        )
        if len(drawn) == 1:
            x, y = drawn[0]
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        if legend_h:
            y = LINE_H + 18 * i + 4
            parts.append(
                f'<line x1="{PAD_L}" x2="{PAD_L + 28}" y1="{y + 6}" y2="{y + 6}" '
                f'stroke="{colour}" stroke-width="3"{dash_attr}/>'
            )
            parts.append(
                f'<text class="chart-label" x="{PAD_L + 36}" y="{y + 10}">'
                f"{escape(_short(ln.label, 60))}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  (every interpolated text is escaped above)
