"""Fill a benchmark database fast with realistic rows: COPY on PostgreSQL, executemany
in one big transaction on SQLite.

Subscriber `n` (ids 1..N, added in growing ranges) is active and, with `course=True`,
somewhere in the course: 10% have finished it, the rest have had `n % 8` lessons and
wait for the next one at a moment spread over the coming 30 days. Every subscriber's
welcome is a sent outbox row; those in `due_set` (every 100th) also have each lesson
they had as a sent row, so queuing their next lesson reads a real history. No row is
due until `make_due` says so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text

from drip.course import Course

TIMEZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney")
SUBSCRIBER_COLUMNS = (
    "id, email, email_key, name, status, timezone, created_at, consent_at, consent_source, "
    "consent_ip, confirmed_at, unsubscribed_at, confirm_sent_at, token_salt, "
    "confirm_token_hash, unsubscribe_token_hash, newsletter"
)
PROGRESS_COLUMNS = "subscriber_id, started_at, lessons_sent, last_sent_at, next_due_at, finished_at"
OUTBOX_COLUMNS = (
    "dedupe_key, kind, template, subscriber_id, email, newsletter_id, context, status, due_at, "
    "next_attempt_at, attempts, lease_until, leased_by, last_smtp_code, last_smtp_message, "
    "message_id, created_at, updated_at, sent_at"
)
#: Every DUE_EVERY-th subscriber is in the due set: 1%.
DUE_EVERY = 100
SPREAD = timedelta(days=30)


def naive(moment: datetime) -> datetime:
    """drip stores naive UTC (drip.models.UTCDateTime); raw inserts must do the same."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def email(n: int) -> str:
    return f"reader{n}@example.com"


def in_due_set(n: int) -> bool:
    return n % DUE_EVERY == 0


def lessons_had(n: int, course: Course) -> int:
    return n % course.total


def finished(n: int) -> bool:
    return n % 10 == 3  # never in the due set (n % 100 == 0)


def subscriber_rows(start: int, stop: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    joined = naive(now - timedelta(days=60))
    for n in range(start, stop):
        address = email(n)
        yield (
            n,
            address,
            address,
            f"Reader {n}",
            "active",
            TIMEZONES[n % len(TIMEZONES)],
            joined,
            joined,
            "bench",
            "192.0.2.1",
            joined,
            None,
            joined,
            f"{n:032x}",
            f"c{n:063x}",
            f"u{n:063x}",
            True,  # every reader agreed to newsletters: bench/newsletter sends to them all
        )


def progress_rows(
    start: int, stop: int, now: datetime, course: Course
) -> Iterator[tuple[Any, ...]]:
    began = naive(now - timedelta(days=60))
    last = naive(now - timedelta(days=1))
    spread = int(SPREAD.total_seconds())
    for n in range(start, stop):
        if finished(n):
            yield (n, began, course.total, last, None, last)
            continue
        # A future moment, scattered over the next 30 days (an hour from now at the soonest).
        due = naive(now + timedelta(hours=1, seconds=(n * 7919) % spread))
        yield (n, began, lessons_had(n, course), last, due, None)


def outbox_rows(start: int, stop: int, now: datetime, course: Course) -> Iterator[tuple[Any, ...]]:
    sent = naive(now - timedelta(days=2))
    total = json.dumps({"lesson_total": course.total})
    for n in range(start, stop):
        address = email(n)
        yield (
            f"welcome:subscriber:{n}",
            "welcome",
            "welcome",
            n,
            address,
            None,
            total,
            "sent",
            sent,
            None,
            1,
            None,
            None,
            250,
            "OK",
            f"<welcome.{n}@example.com>",
            sent,
            sent,
            sent,
        )
        if not in_due_set(n):
            continue
        for number, lesson in enumerate(course.lessons[: lessons_had(n, course)], start=1):
            context = {"slug": lesson.slug, "lesson_number": number, "lesson_total": course.total}
            yield (
                f"lesson:{lesson.slug}:subscriber:{n}",
                "lesson",
                lesson.template,
                n,
                address,
                None,
                json.dumps(context),
                "sent",
                sent,
                None,
                1,
                None,
                None,
                250,
                "OK",
                f"<{lesson.slug}.{n}@example.com>",
                sent,
                sent,
                sent,
            )


def _drop_secondary_indexes(conn: Connection) -> list[str]:
    """Drop every index and unique constraint but the primary keys of the filled tables;
    returns the statements that put them back exactly as they were."""
    found = conn.execute(
        text(
            """SELECT i.indexrelid::regclass::text, c.conname, i.indrelid::regclass::text,
                CASE WHEN c.oid IS NULL THEN pg_get_indexdef(i.indexrelid)
                    ELSE pg_get_constraintdef(c.oid) END
            FROM pg_index i
            LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.contype = 'u'
            WHERE i.indrelid::regclass::text IN ('subscriber', 'course_progress', 'outbox')
                AND NOT i.indisprimary"""
        )
    ).all()
    rebuild = []
    for index, constraint, table, definition in found:
        if constraint:
            conn.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{constraint}"'))
            rebuild.append(f'ALTER TABLE {table} ADD CONSTRAINT "{constraint}" {definition}')
        else:
            conn.execute(text(f'DROP INDEX "{index}"'))
            rebuild.append(definition)
    return rebuild


def _pg_fill(engine: Engine, start: int, stop: int, now: datetime, course: Course | None) -> None:
    """The same rows as the generators above, made by the server itself (generate_series):
    far faster than sending a million rows from Python."""
    params: dict[str, Any] = {
        "start": start,
        "stop": stop - 1,
        "joined": naive(now - timedelta(days=60)),
        "last": naive(now - timedelta(days=1)),
        "sent": naive(now - timedelta(days=2)),
        "soonest": naive(now + timedelta(hours=1)),
        "spread": int(SPREAD.total_seconds()),
        "total": course.total if course else 0,
        "zones": list(TIMEZONES),
        "zone_count": len(TIMEZONES),
        "slugs": [lesson.slug for lesson in course.lessons] if course else [],
        "templates": [lesson.template for lesson in course.lessons] if course else [],
        "every": DUE_EVERY,
    }
    statements = [
        f"""INSERT INTO subscriber ({SUBSCRIBER_COLUMNS})
        SELECT n, 'reader' || n || '@example.com', 'reader' || n || '@example.com',
            'Reader ' || n, 'active', (CAST(:zones AS text[]))[1 + n % :zone_count],
            :joined, :joined, 'bench', '192.0.2.1', :joined, NULL, :joined,
            lpad(to_hex(n), 32, '0'), 'c' || lpad(to_hex(n), 63, '0'),
            'u' || lpad(to_hex(n), 63, '0'), true
        FROM generate_series(CAST(:start AS integer), CAST(:stop AS integer)) AS n""",
        "SELECT setval('subscriber_id_seq', (SELECT max(id) FROM subscriber))",
    ]
    if course is not None:
        statements += [
            f"""INSERT INTO course_progress ({PROGRESS_COLUMNS})
            SELECT n, :joined,
                CASE WHEN n % 10 = 3 THEN :total ELSE n % :total END, :last,
                CASE WHEN n % 10 = 3 THEN NULL
                    ELSE :soonest + make_interval(secs => (n::bigint * 7919) % :spread) END,
                CASE WHEN n % 10 = 3 THEN :last END
            FROM generate_series(CAST(:start AS integer), CAST(:stop AS integer)) AS n""",
            f"""INSERT INTO outbox ({OUTBOX_COLUMNS})
            SELECT 'welcome:subscriber:' || n, 'welcome', 'welcome', n,
                'reader' || n || '@example.com', NULL,
                json_build_object('lesson_total', :total), 'sent', :sent, NULL, 1, NULL, NULL,
                250, 'OK', '<welcome.' || n || '@example.com>', :sent, :sent, :sent
            FROM generate_series(CAST(:start AS integer), CAST(:stop AS integer)) AS n""",
            f"""INSERT INTO outbox ({OUTBOX_COLUMNS})
            SELECT 'lesson:' || (CAST(:slugs AS text[]))[k] || ':subscriber:' || n, 'lesson',
                (CAST(:templates AS text[]))[k], n, 'reader' || n || '@example.com', NULL,
                json_build_object(
                    'slug', (CAST(:slugs AS text[]))[k], 'lesson_number', k,
                    'lesson_total', :total
                ),
                'sent', :sent, NULL, 1, NULL, NULL, 250, 'OK',
                '<' || (CAST(:slugs AS text[]))[k] || '.' || n || '@example.com>',
                :sent, :sent, :sent
            FROM generate_series(CAST(:start AS integer), CAST(:stop AS integer)) AS n,
                generate_series(1, CAST(:total AS integer)) AS k
            WHERE n % :every = 0 AND n % 10 <> 3 AND k <= n % :total""",
        ]
    with engine.begin() as conn:
        # Foreign keys hold by construction: skip their per-row checks (superuser only).
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        # A bulk load builds each index once, sorted, rather than row by row.
        rebuild = _drop_secondary_indexes(conn)
        for sql in statements:
            conn.execute(text(sql), params)
        conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        for sql in rebuild:
            conn.execute(text(sql))
    # Fresh planner statistics, as autovacuum would gather on a live database.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE subscriber, course_progress, outbox"))


def _sqlite_insert(engine: Engine, table: str, columns: str, rows: Iterable[Sequence[Any]]) -> int:
    """Raw executemany, with datetimes in the exact text form SQLAlchemy stores on SQLite."""
    marks = ", ".join("?" for _ in columns.split(","))
    sql = f"INSERT INTO {table} ({columns}) VALUES ({marks})"
    prepared = (tuple(_sqlite_value(v) for v in row) for row in rows)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        cursor.executemany(sql, prepared)
        count = cursor.rowcount
        cursor.execute("COMMIT")
        cursor.close()
    finally:
        raw.close()
    return count


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def add_subscribers(
    engine: Engine, start: int, stop: int, now: datetime, course: Course | None
) -> None:
    """Add subscribers `start..stop-1`; with a course, their progress and sent history too."""
    if engine.dialect.name != "sqlite":
        _pg_fill(engine, start, stop, now, course)
        return
    tables: list[tuple[str, str, Iterable[Sequence[Any]]]] = [
        ("subscriber", SUBSCRIBER_COLUMNS, subscriber_rows(start, stop, now))
    ]
    if course is not None:
        tables.append(
            ("course_progress", PROGRESS_COLUMNS, progress_rows(start, stop, now, course))
        )
        tables.append(("outbox", OUTBOX_COLUMNS, outbox_rows(start, stop, now, course)))
    for table, columns, rows in tables:
        _sqlite_insert(engine, table, columns, rows)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))


def make_due(engine: Engine, upto: int, now: datetime) -> int:
    """Bring the due set's next lesson to a moment in the last hour: 1% of subscribers."""
    with engine.begin() as conn:
        due = (
            conn.execute(
                text(
                    "SELECT subscriber_id FROM course_progress "
                    "WHERE subscriber_id % :every = 0 AND subscriber_id <= :upto "
                    "AND finished_at IS NULL"
                ),
                {"every": DUE_EVERY, "upto": upto},
            )
            .scalars()
            .all()
        )
        conn.execute(
            text("UPDATE course_progress SET next_due_at = :at WHERE subscriber_id = :id"),
            [
                {"id": n, "at": naive(now - timedelta(minutes=1 + n % 59))}
                if engine.dialect.name != "sqlite"
                else {"id": n, "at": _sqlite_value(naive(now - timedelta(minutes=1 + n % 59)))}
                for n in due
            ],
        )
    return len(due)


def undo_due(engine: Engine, upto: int, now: datetime) -> None:
    """Put the state back as before `make_due`: drop the lessons it queued, due again later."""
    at = naive(now + timedelta(days=1))
    value: Any = _sqlite_value(at) if engine.dialect.name == "sqlite" else at
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM outbox WHERE status IN ('queued', 'sending')"))
        conn.execute(
            text(
                "UPDATE course_progress SET next_due_at = :at "
                "WHERE subscriber_id % :every = 0 AND subscriber_id <= :upto "
                "AND finished_at IS NULL"
            ),
            {"at": value, "every": DUE_EVERY, "upto": upto},
        )


def label(size: int) -> str:
    """A population size as the figures name it: 10k, 1M."""
    return f"{size // 1_000_000}M" if size >= 1_000_000 else f"{size // 1000}k"


#: More rows for subscribers `start..stop-1`, added after `add_subscribers` (a bench's own).
Extra = Callable[[Engine, int, int, datetime, Course], None]


def grow(
    engine: Engine,
    kind: str,
    sizes: Iterable[int],
    now: datetime,
    course: Course | None,
    extra: Extra | None = None,
) -> Iterator[int]:
    """Fill the database up to each of `sizes` in turn, yielding each size once it is there;
    `extra` (with a course) adds a bench's own rows for each new range."""
    have = 0
    for size in sizes:
        began = time.perf_counter()
        add_subscribers(engine, have + 1, size + 1, now, course)
        if extra is not None and course is not None:
            extra(engine, have + 1, size + 1, now, course)
        have = size
        print(f"  {kind} {label(size)}: filled in {time.perf_counter() - began:.1f} s")
        yield size
