"""Queuing due lessons in batches: each subscriber gets their own next lesson, once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, select, text

from drip.clock import utcnow
from drip.course import load_course
from drip.db import get_engine, session_scope
from drip.models import CourseProgress, MessageKind, OutboxMessage, Subscriber, SubscriberStatus
from drip.progress import _PROGRESS_AND_HISTORY, queue_due_lessons
from drip.sending.outbox import NewMessage, dedupe_key, enqueue_many
from drip.settings import Settings
from tests.conftest import EMAILS, truncate_pg
from tests.factories import many_active, outbox


def _on_course(engine: Engine, count: int, lessons_had: list[int]) -> list[int]:
    """`count` active subscribers, the n-th with its first `lessons_had[n]` lessons queued,
    every one due a minute ago."""
    course = load_course(EMAILS)
    subs = many_active(engine, count, prefix="p")
    now = utcnow()
    ids = [s.id for s in subs if s.id is not None]
    with session_scope(engine) as session:
        session.add_all(
            CourseProgress(subscriber_id=i, started_at=now, next_due_at=now - timedelta(minutes=1))
            for i in ids
        )
        history = [
            NewMessage(
                kind=MessageKind.lesson,
                template=lesson.template,
                email=f"p{n}@example.com",
                dedupe_key=dedupe_key(MessageKind.lesson, sub_id, lesson.slug),
                due_at=now,
                subscriber_id=sub_id,
                context={"slug": lesson.slug},
            )
            for n, (sub_id, had) in enumerate(zip(ids, lessons_had, strict=True))
            for lesson in course.lessons[:had]
        ]
        enqueue_many(session, history, "localhost", utcnow())
    return ids


def _queued_by_the_pass(engine: Engine) -> dict[int | None, OutboxMessage]:
    """Lessons queued by queue_due_lessons (the history rows carry no lesson number)."""
    found: dict[int | None, OutboxMessage] = {}
    for row in outbox(engine):
        if row.kind == MessageKind.lesson and "lesson_number" in row.context:
            assert row.subscriber_id not in found, "two lessons queued for one subscriber"
            found[row.subscriber_id] = row
    return found


def test_a_batch_queues_each_subscriber_their_own_next_lesson(
    settings: Settings, engine: Engine
) -> None:
    course = load_course(settings.emails_dir)
    had = [n % course.total for n in range(40)]
    ids = _on_course(engine, 40, had)
    with session_scope(engine) as session:
        assert queue_due_lessons(session, utcnow(), course, "localhost", limit=500) == 40
    new = _queued_by_the_pass(engine)
    assert sorted(new) == sorted(ids)
    for n, (sub_id, count) in enumerate(zip(ids, had, strict=True)):
        expected = course.lessons[count]
        row = new[sub_id]
        assert row.context == {
            "slug": expected.slug,
            "lesson_number": count + 1,
            "lesson_total": course.total,
        }
        assert row.template == expected.template
        assert row.email == f"p{n}@example.com"
    with session_scope(engine) as session:
        due = session.execute(select(CourseProgress.next_due_at)).scalars().all()
        assert due == [None] * 40
        # Queued again at the same moment: nothing is due any more, nothing doubles.
        assert queue_due_lessons(session, utcnow(), course, "localhost") == 0


def test_the_limit_bounds_a_batch_and_the_rest_waits(settings: Settings, engine: Engine) -> None:
    course = load_course(settings.emails_dir)
    _on_course(engine, 25, [0] * 25)
    with session_scope(engine) as session:
        assert queue_due_lessons(session, utcnow(), course, "localhost", limit=10) == 10
    with session_scope(engine) as session:
        assert queue_due_lessons(session, utcnow(), course, "localhost", limit=10) == 10
    with session_scope(engine) as session:
        assert queue_due_lessons(session, utcnow(), course, "localhost", limit=10) == 5
    assert len(_queued_by_the_pass(engine)) == 25


def test_inactive_and_finished_subscribers_in_a_batch(settings: Settings, engine: Engine) -> None:
    course = load_course(settings.emails_dir)
    ids = _on_course(engine, 6, [0, course.total, 2, course.total, 1, 0])
    earlier = utcnow() - timedelta(days=3)
    with session_scope(engine) as session:
        left = session.get(Subscriber, ids[0])
        assert left is not None
        left.status = SubscriberStatus.unsubscribed
        already = session.get(CourseProgress, ids[3])
        assert already is not None
        already.finished_at = earlier
    now = utcnow()
    with session_scope(engine) as session:
        # Only ids[2] and ids[4] (and ids[5]) still have a lesson to get.
        assert queue_due_lessons(session, now, course, "localhost") == 3
        progress = {p.subscriber_id: p for p in session.execute(select(CourseProgress)).scalars()}
    assert all(p.next_due_at is None for p in progress.values())
    assert progress[ids[0]].finished_at is None  # left, not finished
    assert progress[ids[1]].finished_at is not None
    assert abs((progress[ids[1]].finished_at - now).total_seconds()) < 1
    assert progress[ids[3]].finished_at == earlier  # kept, not moved
    new = _queued_by_the_pass(engine)
    assert sorted(new) == [ids[2], ids[4], ids[5]]
    assert [new[i].context["slug"] for i in (ids[2], ids[4], ids[5])] == [
        course.lessons[2].slug,
        course.lessons[1].slug,
        course.lessons[0].slug,
    ]


def _outbox_rows_read(plan: dict[str, Any]) -> int:
    """Rows a plan's nodes read from the outbox table, each loop counted."""
    own = plan["Actual Rows"] * plan["Actual Loops"] if plan.get("Relation Name") == "outbox" else 0
    return own + sum(_outbox_rows_read(child) for child in plan.get("Plans", []))


def test_a_sent_batchs_history_reads_only_its_readers_lessons(pg_url: str) -> None:
    """The group commit reads its readers' lesson history through the outbox's
    (subscriber_id, kind) index, even when PostgreSQL's statistics were taken before the
    outbox filled with lessons (a newly loaded course, before autovacuum analyses it):
    the planner then believes lessons rare and, unless told whose, reads every one."""
    engine = get_engine(pg_url)
    truncate_pg(engine)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE outbox"))  # empty: no lesson in the statistics
    ids = _on_course(engine, 600, [5] * 600)
    batch = _PROGRESS_AND_HISTORY._sized(4).statement.params(
        {f"id_{n}": subscriber_id for n, subscriber_id in enumerate(ids[:4])}
    )
    sql = str(batch.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        explained = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + sql.replace("%%", "%")
        ).scalar_one()
    assert _outbox_rows_read(explained[0]["Plan"]) == 4 * 5  # their lessons, not all 3,000
