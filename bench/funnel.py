"""The cost of the course funnel (`drip stats`, /admin/funnel) as the course list grows.

The database holds bench/population.py's readers (all active, each welcomed, 10%
finished, the rest somewhere in the course), grown with the rest of what a course
leaves behind, so every step has its real weight: each reader's confirmation, every
lesson each one has had as a sent row (about 5.5 outbox rows a reader in all), a
dozen signup sources, and one reader in 20 unsubscribed through the link of their
last lesson. Each figure is the median wall time of `drip.funnel.funnel` (every count
of the page, read from the database) after one warm-up. Target < 1 s at 1M on
PostgreSQL, the funnel page answering within a second.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timedelta

from sqlalchemy import Engine, text

from bench.databases import database
from bench.population import _drop_secondary_indexes, grow, label, naive
from bench.report import Figure, info, under
from bench.tick import EMAILS
from drip.clock import utcnow
from drip.course import Course, load_course
from drip.db import get_engine, read_scope
from drip.funnel import funnel

BENCH = "funnel"
TARGET_S = 1.0
TARGET_AT = 1_000_000
SOURCES = 12
#: One reader in UNSUBSCRIBED_EVERY left through the link of their last lesson.
UNSUBSCRIBED_EVERY = 20


def _grow(engine: Engine, start: int, stop: int, now: datetime, course: Course) -> None:
    """Confirmations, the lessons population.py leaves out (it writes them for its due set
    only), sources and unsubscribes for readers `start..stop-1`, in one bulk load."""
    params = {
        "start": start,
        "stop": stop - 1,
        "sent": naive(now - timedelta(days=2)),
        "total": course.total,
        "every": 100,  # population.DUE_EVERY: those already have their lessons
        "sources": SOURCES,
        "gone": UNSUBSCRIBED_EVERY,
        "slugs": [lesson.slug for lesson in course.lessons],
        "templates": [lesson.template for lesson in course.lessons],
    }
    statements = [
        """INSERT INTO outbox (dedupe_key, kind, template, subscriber_id, email, context, status,
            due_at, attempts, message_id, created_at, updated_at, sent_at)
        SELECT 'confirm:subscriber:' || n || '-bench', 'confirm', 'confirm', n,
            'reader' || n || '@example.com', '{}', 'sent', :sent, 1,
            '<confirm.' || n || '@example.com>', :sent, :sent, :sent
        FROM generate_series(CAST(:start AS integer), CAST(:stop AS integer)) AS n""",
        """INSERT INTO outbox (dedupe_key, kind, template, subscriber_id, email, context, status,
            due_at, attempts, message_id, created_at, updated_at, sent_at)
        SELECT 'lesson:' || (CAST(:slugs AS text[]))[k] || ':subscriber:' || n, 'lesson',
            (CAST(:templates AS text[]))[k], n, 'reader' || n || '@example.com', '{}',
            CASE WHEN (n + k) % 97 = 0 THEN 'bounced' ELSE 'sent' END, :sent, 1,
            '<' || (CAST(:slugs AS text[]))[k] || '.' || n || '@example.com>',
            :sent, :sent, :sent
        FROM generate_series(CAST(:start AS integer), CAST(:stop AS integer)) AS n,
            generate_series(1, CAST(:total AS integer)) AS k
        WHERE n % :every <> 0
            AND k <= CASE WHEN n % 10 = 3 THEN :total ELSE n % :total END""",
        """UPDATE subscriber SET source = 'page-' || (id % :sources)
        WHERE id BETWEEN :start AND :stop""",
        """UPDATE subscriber AS s SET status = 'unsubscribed', unsubscribed_at = :sent,
            unsubscribed_via = o.id, unsubscribed_step = (CAST(:slugs AS text[]))[s.id % :total]
        FROM outbox AS o
        WHERE s.id BETWEEN :start AND :stop AND s.id % :gone = 1
            AND o.dedupe_key = 'lesson:' || (CAST(:slugs AS text[]))[s.id % :total]
                || ':subscriber:' || s.id""",
    ]
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        rebuild = _drop_secondary_indexes(conn)
        # The unsubscribe step finds each last lesson by its dedupe key: index it meanwhile.
        conn.execute(text("CREATE UNIQUE INDEX bench_dedupe ON outbox (dedupe_key)"))
        for sql in statements:
            conn.execute(text(sql), params)
        conn.execute(text("DROP INDEX bench_dedupe"))
        conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        for sql in rebuild:
            conn.execute(text(sql))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE subscriber, course_progress, outbox"))


def funnel_s(url: str, course: Course, runs: int) -> float:
    """Median seconds of `runs` funnel reads, after a warm-up one."""
    engine = get_engine(url)
    times = []
    for _ in range(runs + 1):
        began = time.perf_counter()
        with read_scope(engine) as session:
            found = funnel(session, course, pack_link=True)
        times.append(time.perf_counter() - began)
        if not found.steps[1].reached:
            raise RuntimeError("the funnel counted no welcome")
    return statistics.median(times[1:])


def measure(sizes: list[int], runs: int) -> list[Figure]:
    figures: list[Figure] = []
    course = load_course(EMAILS)
    now = utcnow()
    with database("postgresql") as url:
        engine = get_engine(url)
        for size in grow(engine, "postgresql", sizes, now, course, extra=_grow):
            took = funnel_s(url, course, runs)
            name = f"postgresql {label(size)}: funnel, every count (median of {runs})"
            if size == TARGET_AT:
                figures.append(under(BENCH, name, took, "s", TARGET_S))
            else:
                figures.append(info(BENCH, name, took, "s"))
            print(f"  postgresql {label(size)}: funnel in {took * 1000:.0f} ms")
    return figures


def run(quick: bool) -> list[Figure]:
    if quick:
        return measure([10_000, 100_000], 3)
    return measure([10_000, 100_000, 1_000_000], 3)
