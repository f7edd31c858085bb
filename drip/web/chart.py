"""The charts of /admin (sends per day, the funnel's drop-off): bar geometry computed here,
so the templates only draw."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    count: int


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    top: int
    ticks: list[tuple[float, str]]


def sends_chart(days: list[tuple[date, int]], width: int = 720, height: int = 180) -> Chart:
    """Bar geometry for the sends-per-day SVG, computed here so the template only draws."""
    top = max((n for _, n in days), default=0) or 1
    slot = width / max(len(days), 1)
    bars = [
        Bar(
            x=round(i * slot + slot * 0.1, 2),
            y=round(height - n / top * height, 2),
            width=round(slot * 0.8, 2),
            height=round(n / top * height, 2),
            label=day.isoformat(),
            count=n,
        )
        for i, (day, n) in enumerate(days)
    ]
    ticks = [(b.x + b.width / 2, b.label[5:]) for i, b in enumerate(bars) if i % 7 == 0]
    return Chart(width, height, bars, top, ticks)


@dataclass(frozen=True)
class StepBar:
    """One funnel step: how many reached it, and above that how many the step before lost."""

    x: float
    width: float
    y: float
    height: float
    #: The readers the previous step had and this one did not, drawn on top of the bar.
    lost_y: float
    lost_height: float
    label: str
    tick: str
    reached: int
    lost: int


@dataclass(frozen=True)
class FunnelChart:
    width: int
    height: int
    bars: list[StepBar]
    top: int


def funnel_chart(
    steps: list[tuple[str, str, int]], width: int = 720, height: int = 180
) -> FunnelChart:
    """Bar geometry for the funnel's drop-off SVG: `steps` are (label, tick, reached) in
    course order; each bar is scaled to the largest step, with the drop since the step
    before stacked on it as a lighter part, so the lost readers show where they left."""
    top = max((n for _, _, n in steps), default=0) or 1
    slot = width / max(len(steps), 1)
    bars: list[StepBar] = []
    before: int | None = None
    for i, (label, tick, reached) in enumerate(steps):
        lost = max((before or 0) - reached, 0)
        tall = reached / top * height
        lost_tall = lost / top * height
        bars.append(
            StepBar(
                x=round(i * slot + slot * 0.15, 2),
                width=round(slot * 0.7, 2),
                y=round(height - tall, 2),
                height=round(tall, 2),
                lost_y=round(height - tall - lost_tall, 2),
                lost_height=round(lost_tall, 2),
                label=label,
                tick=tick,
                reached=reached,
                lost=lost,
            )
        )
        before = reached
    return FunnelChart(width, height, bars, top)
