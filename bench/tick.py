"""The cost of one scheduler pass as the course list grows.

For each size the database holds that many active subscribers on the course (see
bench/population.py), the list grown in place from one size to the next:
- nothing due: the median of several real passes (`drip.sending.tick.run_pass`: the queue
  step, the delivery claim that finds nothing, the heartbeat). Target < 50 ms at 1M:
  a pass must cost what is due, not what the list holds.
- 1% due: the pass's queue step (`drip.sending.tick.queue_due`, which queues every due
  lesson) and the first delivery claim after it, then the lessons are taken back so
  the next size starts from the same state. Delivering them is bench/send.py's subject.
1M runs on PostgreSQL, the backend for that scale; SQLite up to 100k.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import timedelta
from pathlib import Path

from bench.databases import database
from bench.population import grow, label, make_due, undo_due
from bench.report import Figure, info, under
from drip.clock import utcnow
from drip.course import load_course
from drip.db import get_engine
from drip.sending.outbox import claim, release
from drip.sending.tick import queue_due, run_pass
from drip.settings import Settings, load_settings

BENCH = "tick"
EMAILS = Path(__file__).resolve().parent.parent / "emails"
TARGET_MS = 50.0
TARGET_AT = 1_000_000


def settings_for(url: str) -> Settings:
    return load_settings(
        database_url=url,
        secret_key="bench-secret-key-0123456789abcdef",
        emails_dir=EMAILS,
        info_pack=EMAILS / "info-pack.pdf",
        send_rate=0,
        smtp_port=9,  # nothing is sent: a pass that tried would fail loudly
        _env_file=None,
    )


def idle_pass_ms(settings: Settings, passes: int) -> float:
    """Median wall time of real passes that find nothing to do (after one warm-up)."""

    async def timed() -> list[float]:
        times = []
        for _ in range(passes + 1):
            began = time.perf_counter()
            report = await run_pass(settings)
            times.append((time.perf_counter() - began) * 1000)
            if report.queued or report.delivery.total:
                raise RuntimeError(f"a pass with nothing due did work: {report}")
        return times[1:]

    return statistics.median(asyncio.run(timed()))


def due_pass(settings: Settings, size: int) -> tuple[int, float, float, int]:
    """(lessons queued, queue step ms, first claim ms, rows it claimed) for a pass with 1% due."""
    engine = get_engine(settings.database_url)
    now = utcnow()
    due = make_due(engine, size, now)
    try:
        began = time.perf_counter()
        queued = queue_due(settings, engine, utcnow())
        queue_ms = (time.perf_counter() - began) * 1000
        began = time.perf_counter()
        rows = claim(engine, "bench", utcnow(), settings.smtp_concurrency * 2, timedelta(minutes=5))
        claim_ms = (time.perf_counter() - began) * 1000
        release(engine, "bench", [r.id for r in rows if r.id is not None], utcnow())
    finally:
        undo_due(engine, size, now)
    if queued != due:
        raise RuntimeError(f"{due} lessons were due and {queued} were queued")
    return queued, queue_ms, claim_ms, len(rows)


def measure(kind: str, sizes: list[int], passes: int) -> list[Figure]:
    figures: list[Figure] = []
    course = load_course(EMAILS)
    now = utcnow()
    with database(kind) as url:
        settings = settings_for(url)
        engine = get_engine(url)
        for size in grow(engine, kind, sizes, now, course):
            idle = idle_pass_ms(settings, passes)
            name = f"{kind} {label(size)}: pass, nothing due (median of {passes})"
            if size == TARGET_AT:
                figures.append(under(BENCH, name, idle, "ms", TARGET_MS))
            else:
                figures.append(info(BENCH, name, idle, "ms"))
            queued, queue_ms, claim_ms, claimed = due_pass(settings, size)
            asked = settings.smtp_concurrency * 2
            figures += [
                info(
                    BENCH, f"{kind} {label(size)}: queue step, 1% due ({queued:,})", queue_ms, "ms"
                ),
                info(
                    BENCH,
                    f"{kind} {label(size)}: lessons queued per second, 1% due",
                    queued / (queue_ms / 1000),
                    "/s",
                ),
                info(
                    BENCH,
                    f"{kind} {label(size)}: next claim (asked {asked}, got {claimed:,})",
                    claim_ms,
                    "ms",
                ),
            ]
            print(f"  {kind} {label(size)}: idle {idle:.1f} ms, {queued} due in {queue_ms:.0f} ms")
    return figures


def run(quick: bool) -> list[Figure]:
    if quick:
        return measure("sqlite", [10_000], 5) + measure("postgresql", [10_000, 100_000], 5)
    return measure("sqlite", [10_000, 100_000], 7) + measure(
        "postgresql", [10_000, 100_000, 1_000_000], 7
    )
