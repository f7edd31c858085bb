"""A benchmark's figures, each beside its target, and the table `make bench` prints."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Figure:
    bench: str
    name: str
    value: float
    unit: str
    #: The target in words (">= 0.9", "< 50 ms"); empty when the figure is for information.
    target: str = ""
    #: Whether the target was met; None when there is no target.
    met: bool | None = None

    def shown(self) -> str:
        value = f"{self.value:,.0f}" if abs(self.value) >= 100 else f"{self.value:,.2f}"
        return f"{value} {self.unit}".strip()


def at_least(bench: str, name: str, value: float, unit: str, goal: float) -> Figure:
    return Figure(bench, name, value, unit, f">= {goal:g} {unit}".strip(), value >= goal)


def under(bench: str, name: str, value: float, unit: str, goal: float) -> Figure:
    return Figure(bench, name, value, unit, f"< {goal:g} {unit}".strip(), value < goal)


def info(bench: str, name: str, value: float, unit: str) -> Figure:
    return Figure(bench, name, value, unit)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()}"


def table(figures: list[Figure], title: str) -> Table:
    grid = Table(title=title)
    for column in ("bench", "figure", "value", "target", "met"):
        grid.add_column(column, justify="right" if column == "value" else "left")
    for f in figures:
        met = "" if f.met is None else ("yes" if f.met else "NO")
        grid.add_row(f.bench, f.name, f.shown(), f.target, met)
    return grid


def markdown(figures: list[Figure]) -> str:
    """The same table as Markdown, for pasting into BENCHMARKS.md."""
    lines = ["| bench | figure | value | target | met |", "|---|---|---:|---|---|"]
    for f in figures:
        met = "" if f.met is None else ("yes" if f.met else "**no**")
        lines.append(f"| {f.bench} | {f.name} | {f.shown()} | {f.target} | {met} |")
    return "\n".join(lines)


def save(figures: list[Figure], path: Path, title: str) -> None:
    payload = {"title": title, "machine": machine(), "figures": [asdict(f) for f in figures]}
    path.write_text(json.dumps(payload, indent=2) + "\n")


def show(figures: list[Figure], title: str) -> None:
    Console().print(table(figures, title))
