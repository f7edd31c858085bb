"""The sends-per-day chart of /admin: bar geometry computed here, so the template only draws."""

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
