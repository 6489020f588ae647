"""The server-side line chart (api.web.chart.line_chart): accessible, escaped, bounded."""

from __future__ import annotations

import re

from api.web.chart import MAX_DRAWN, Line, line_chart


def test_one_series_is_an_image_with_title_and_description() -> None:
    svg = str(
        line_chart([Line("loss", [(0, 1.0), (1, 0.5), (2, 0.25)])], title="loss", chart_id="c1")
    )
    assert 'role="img"' in svg and 'aria-labelledby="c1-title c1-desc"' in svg
    assert '<title id="c1-title">loss</title>' in svg
    assert "3 points from step 0 to 2, first 1, last 0.25, lowest 0.25, highest 1" in svg
    assert svg.count('class="chart-line"') == 1 and "<text" in svg
    assert "stroke-dasharray" not in svg.split('class="chart-line"')[1].split(">")[0]


def test_overlaid_series_differ_by_dash_and_get_a_legend() -> None:
    lines = [Line(f"job{i}", [(0, i), (5, i + 1)]) for i in range(3)]
    svg = str(line_chart(lines, title="t", chart_id="c"))
    assert svg.count('class="chart-line"') == 3
    assert len(set(re.findall(r'class="chart-line"[^>]*stroke="([^"]+)"', svg))) == 3
    assert svg.count("stroke-dasharray") >= 4  # two dashed lines and their legend keys
    assert all(f">job{i}</text>" in svg for i in range(3))


def test_labels_are_escaped_and_long_series_thinned() -> None:
    evil = '<script>alert("x")</script>'
    points = [(float(i), float(i % 7)) for i in range(5000)]
    svg = str(line_chart([Line(evil, points)], title=evil, chart_id='"x'))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    drawn = re.search(r'class="chart-line"[^>]*points="([^"]+)"', svg)
    assert drawn is not None and len(drawn.group(1).split()) == MAX_DRAWN
    assert "5000 points" in svg  # the description still counts them all


def test_nothing_to_draw_is_empty() -> None:
    assert str(line_chart([], title="t", chart_id="c")) == ""
    assert str(line_chart([Line("a", [])], title="t", chart_id="c")) == ""
    flat = str(line_chart([Line("a", [(3, 2.0)])], title="t", chart_id="c"))
    assert "<circle" in flat  # a single point is still visible
