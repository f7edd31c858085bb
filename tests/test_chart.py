"""The sends-per-day chart's geometry: bars scaled to the busiest day, a tick a week."""

from __future__ import annotations

from datetime import date, timedelta

from drip.web.chart import sends_chart


def test_bars_are_scaled_to_the_busiest_day() -> None:
    start = date(2026, 3, 1)
    chart = sends_chart([(start + timedelta(days=n), n * 10) for n in range(14)], 700, 100)
    assert chart.top == 130
    busiest = chart.bars[-1]
    assert busiest.height == 100
    assert busiest.y == 0
    assert chart.bars[0].height == 0
    assert [label for _, label in chart.ticks] == ["03-01", "03-08"]


def test_a_chart_of_no_sends_has_flat_bars() -> None:
    chart = sends_chart([(date(2026, 3, 1), 0)])
    assert chart.top == 1
    assert chart.bars[0].height == 0
    assert sends_chart([]).bars == []
