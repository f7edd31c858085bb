"""The sends-per-day chart's geometry: bars scaled to the busiest day, a tick a week."""

from __future__ import annotations

from datetime import date, timedelta

from drip.web.chart import funnel_chart, sends_chart


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


def test_funnel_bars_show_who_reached_each_step_and_who_was_lost_before_it() -> None:
    chart = funnel_chart(
        [("Confirm", "c", 10), ("Welcome", "w", 8), ("Lesson 1", "1", 8)], 300, 100
    )
    assert chart.top == 10
    first, second, third = chart.bars
    assert (first.height, first.lost, first.lost_height) == (100, 0, 0)
    assert (second.y, second.height) == (20, 80)
    assert (second.lost, second.lost_y, second.lost_height) == (2, 0, 20)  # stacked on top
    assert third.lost == 0
    assert [b.tick for b in chart.bars] == ["c", "w", "1"]
    assert funnel_chart([("Imported", "i", 0), ("More later", "m", 3)]).bars[1].lost == 0
    assert funnel_chart([]).bars == []
