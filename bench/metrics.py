"""The cost of one GET /metrics render as the course list grows.

The database holds that many subscribers on the course with their progress and sent
history (bench/population.py, as bench/tick.py builds it, grown in place from one size
to the next); each figure is the median wall time of `drip.metrics.render`, every value
read from the database, after one warm-up render. Target < 1 s at 1M on PostgreSQL: a
Prometheus scrape every 15-60 s must stay cheap.
"""

from __future__ import annotations

import statistics
import time

from bench.databases import database
from bench.population import grow, label
from bench.report import Figure, info, under
from bench.tick import EMAILS
from drip import metrics
from drip.clock import utcnow
from drip.course import load_course
from drip.db import get_engine

BENCH = "metrics"
TARGET_S = 1.0
TARGET_AT = 1_000_000


def render_s(url: str, renders: int) -> float:
    """Median seconds of `renders` renders, after a warm-up one."""
    engine = get_engine(url)
    times = []
    for _ in range(renders + 1):
        began = time.perf_counter()
        body = metrics.render(engine, utcnow)
        times.append(time.perf_counter() - began)
        if b"drip_outbox_messages" not in body:
            raise RuntimeError("the render holds no drip metric")
    return statistics.median(times[1:])


def measure(sizes: list[int], renders: int) -> list[Figure]:
    figures: list[Figure] = []
    course = load_course(EMAILS)
    now = utcnow()
    with database("postgresql") as url:
        engine = get_engine(url)
        for size in grow(engine, "postgresql", sizes, now, course):
            took = render_s(url, renders)
            name = f"postgresql {label(size)}: /metrics render (median of {renders})"
            if size == TARGET_AT:
                figures.append(under(BENCH, name, took, "s", TARGET_S))
            else:
                figures.append(info(BENCH, name, took, "s"))
            print(f"  postgresql {label(size)}: /metrics in {took * 1000:.0f} ms")
    return figures


def run(quick: bool) -> list[Figure]:
    if quick:
        return measure([10_000, 100_000], 3)
    return measure([10_000, 100_000, 1_000_000], 3)
