"""Each subscriber's way through the course.

Confirmation queues the welcome email at once. When a course email is sent, the
next lesson's due time is set (its delay after the previous send, the first
counted from confirmation, moved into the send window in the subscriber's time
zone, on a send day: drip.sendtime). A pass then queues lessons whose due time has
come, unless today is no send day or a newsletter's day for that reader: then the
lesson waits for the next allowed day. So a lesson is never queued before the previous
one went out, and the pass only reads rows that are due (and not paused: drip.steering).

A restart begins a new round: the lessons' dedupe keys and the history read here are
the round's own, so a reader gets a lesson again only because the author asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Integer,
    Select,
    and_,
    bindparam,
    case,
    func,
    select,
    update,
)
from sqlmodel import Session, col

from drip import hooks
from drip.course import Course, Lesson
from drip.db import Sized, for_update, table_of
from drip.models import (
    CourseProgress,
    MessageKind,
    OutboxMessage,
    Subscriber,
    SubscriberStatus,
)
from drip.pace import REAL_DAYS, Pace
from drip.sending.outbox import NewMessage, dedupe_key, enqueue, enqueue_many
from drip.sendtime import blocked_today, newsletter_days, send_moment, zone
from drip.settings import Settings


def lesson_key(subscriber_id: int, slug: str, course_round: int = 1) -> str:
    """A lesson's dedupe key: the first round's is `lesson:SLUG:subscriber:ID` as ever, a
    restart's names its round (`SLUG.r2`; a slug has no dot), so it may go again."""
    item = slug if course_round <= 1 else f"{slug}.r{course_round}"
    return dedupe_key(MessageKind.lesson, subscriber_id, item)


def lesson_message(
    course: Course,
    lesson: Lesson,
    subscriber_id: int,
    email: str,
    course_round: int,
    due_at: datetime,
) -> NewMessage:
    """The outbox row of one lesson of one round to one reader."""
    context: dict[str, object] = {"slug": lesson.slug, **lesson_context(course, lesson)}
    if course_round > 1:
        context["round"] = course_round
    return NewMessage(
        kind=MessageKind.lesson,
        template=lesson.template,
        email=email,
        dedupe_key=lesson_key(subscriber_id, lesson.slug, course_round),
        due_at=due_at,
        subscriber_id=subscriber_id,
        context=context,
    )


def lesson_context(course: Course, lesson: Lesson) -> dict[str, object]:
    return {"lesson_number": course.number_of(lesson.slug), "lesson_total": course.total}


def start_course(
    session: Session, subscriber: Subscriber, course: Course, msgid_domain: str, now: datetime
) -> None:
    """Queue the welcome email and open the subscriber's progress; safe to call twice."""
    assert subscriber.id is not None
    progress = session.get(CourseProgress, subscriber.id)
    if progress is None:
        session.add(CourseProgress(subscriber_id=subscriber.id, started_at=now))
        session.flush()
    elif progress.finished_at is None and progress.next_due_at is None:
        # Back after unsubscribing: carry on with the next lesson, no repeats.
        progress.next_due_at = now
        session.add(progress)
    enqueue(
        session,
        NewMessage(
            kind=MessageKind.welcome,
            template="welcome",
            email=subscriber.email,
            dedupe_key=dedupe_key(MessageKind.welcome, subscriber.id),
            due_at=now,
            subscriber_id=subscriber.id,
            context={"lessons": course.schedule(), "lesson_total": course.total},
        ),
        msgid_domain,
        now,
    )


_PROGRESS = table_of(CourseProgress)
_LESSONS = table_of(OutboxMessage)
#: Built once, as a pass runs them: only values are bound. The delivery's every group
#: commit runs after_send's on the driver's cursor (drip.db.DriverStatement).
_QUEUED_SLUGS = (
    select(table_of(OutboxMessage).c.subscriber_id, table_of(OutboxMessage).c.context)
    .where(table_of(OutboxMessage).c.subscriber_id.in_(bindparam("s_ids", expanding=True)))
    .where(table_of(OutboxMessage).c.kind == MessageKind.lesson)
)


def _progress_and_history(n: int) -> Select[Any]:
    """Each of n subscribers' progress with the slugs of the lessons queued in its current
    round, one row per lesson (one with no slug when none is): a sent batch's reads in one
    query."""
    ids = [bindparam(f"id_{i}", type_=Integer) for i in range(n)]
    return (
        select(
            _PROGRESS.c.subscriber_id,
            _PROGRESS.c.started_at,
            _PROGRESS.c.finished_at,
            table_of(Subscriber).c.status,
            table_of(Subscriber).c.timezone,
            _LESSONS.c.context["slug"].as_string().label("slug"),
        )
        .join(table_of(Subscriber), table_of(Subscriber).c.id == _PROGRESS.c.subscriber_id)
        .outerjoin(
            _LESSONS,
            and_(
                _LESSONS.c.subscriber_id == _PROGRESS.c.subscriber_id,
                # Said again of the outbox, so its (subscriber_id, kind) index leads even
                # where the planner's statistics lag behind a freshly filled outbox.
                _LESSONS.c.subscriber_id.in_(ids),
                _LESSONS.c.kind == MessageKind.lesson,
                func.coalesce(_LESSONS.c.context["round"].as_integer(), 1)
                == _PROGRESS.c.course_round,
            ),
        )
        .where(_PROGRESS.c.subscriber_id.in_(ids))
    )


_PROGRESS_AND_HISTORY = Sized(_progress_and_history, pad=True)
_PROGRESS_DUE = (
    update(_PROGRESS)
    .where(_PROGRESS.c.subscriber_id == bindparam("p_id"))
    .values(next_due_at=bindparam("p_due"))
)


def _after_send(n: int) -> Any:
    """The progress of n subscribers written back in one UPDATE: each column a CASE on the
    subscriber (one statement, not the driver's executemany of n)."""
    subscriber = _PROGRESS.c.subscriber_id
    ids: list[BindParameter[int]] = [
        bindparam(f"p_id_{i}", type_=subscriber.type) for i in range(n)
    ]

    def each(name: str, column: Any) -> Any:
        return case(
            {ids[i]: bindparam(f"{name}_{i}", type_=column.type) for i in range(n)},
            value=subscriber,
        )

    return (
        update(_PROGRESS)
        .where(subscriber.in_(ids))
        .values(
            lessons_sent=each("p_lessons", _PROGRESS.c.lessons_sent),
            last_sent_at=bindparam("p_last", type_=_PROGRESS.c.last_sent_at.type),
            next_due_at=each("p_due", _PROGRESS.c.next_due_at),
            finished_at=each("p_finished", _PROGRESS.c.finished_at),
        )
    )


_PROGRESS_AFTER_SEND = Sized(_after_send, pad=True)


def _queued_slugs_of(bind: Session | Connection, rounds: dict[int, int]) -> dict[int, set[str]]:
    """The lessons already queued (sent, skipped, on their way) in each of these
    subscribers' current round (`rounds`: subscriber id to round), in one query."""
    found: dict[int, set[str]] = {}
    if not rounds:
        return found
    for subscriber_id, context in bind.execute(_QUEUED_SLUGS, {"s_ids": list(rounds)}):
        # As _PROGRESS_AND_HISTORY reads it in SQL: no round is round 1, no slug no lesson.
        slug = context.get("slug")
        if (context.get("round") or 1) == rounds[subscriber_id] and slug is not None:
            found.setdefault(subscriber_id, set()).add(str(slug))
    return found


def next_lesson(course: Course, queued: set[str]) -> Lesson | None:
    """The first lesson in course order not yet queued: in order, no gaps, no repeats.

    Progress is the set of slugs a reader has had, never a position, so an edit to the
    course file moves nobody back or forth: a lesson inserted (or moved) before where
    a reader is comes next for them, unless it is marked `skip_if_past`; a removed
    one is simply no longer there to wait for.
    """
    for i, lesson in enumerate(course.lessons):
        if lesson.slug in queued:
            continue
        if lesson.skip_if_past and any(later.slug in queued for later in course.lessons[i + 1 :]):
            continue
        return lesson
    return None


def after_send(
    bind: Session | Connection,
    subscriber_ids: Sequence[int],
    sent_at: datetime,
    course: Course,
    pace: Pace,
) -> list[int]:
    """Welcomes or lessons went out: schedule each one's next lesson, or finish the course.
    Returns the subscribers whose course this finished.

    Delivery records a whole batch of sends in one transaction, so this reads the
    batch's progress and history in one query and writes it back in one statement.
    """
    found: dict[int, tuple[Any, ...]] = {}
    history: dict[int, set[str]] = {}
    for subscriber_id, *progress, slug in _PROGRESS_AND_HISTORY.rows(
        bind, {}, [{"id": i} for i in subscriber_ids]
    ):
        found[subscriber_id] = tuple(progress)
        queued = history.setdefault(subscriber_id, set())
        if slug is not None:
            queued.add(slug)
    changes = []
    finishing = []
    for subscriber_id, (started_at, finished_at, status, timezone) in found.items():
        queued = history[subscriber_id]
        lesson = next_lesson(course, queued)
        due, finished = None, finished_at
        if lesson is None:
            if finished_at is None:
                finishing.append(subscriber_id)
            finished = sent_at
        elif status == SubscriberStatus.active:
            base = started_at if not queued else sent_at
            due = max(base + pace.delay(lesson.delay_days), sent_at)
            if pace.uses_window:
                due = send_moment(due, timezone, course)
        changes.append(
            {
                "p_id": subscriber_id,
                "p_lessons": len(queued),
                "p_due": due,
                "p_finished": finished,
            }
        )
    if changes:
        _PROGRESS_AFTER_SEND.rows(bind, {"p_last": sent_at}, changes)
    return finishing


def lesson_due(now: datetime) -> ColumnElement[bool]:
    """A course whose next lesson is due at `now` and not paused: what a pass queues."""
    return and_(
        col(CourseProgress.next_due_at) <= now,
        col(CourseProgress.paused_at).is_(None),
    )


def queue_due_lessons(
    session: Session,
    now: datetime,
    course: Course,
    msgid_domain: str,
    limit: int = 500,
    pace: Pace = REAL_DAYS,
    *,
    settings: Settings | None = None,
) -> int:
    """Queue the next lesson of every subscriber whose lesson is due at `now`, up to `limit`.

    A subscriber with no lesson left (the course file lost lessons since) finishes here;
    with `settings`, the webhooks hear of it.

    A batch costs a fixed number of statements whatever its size: read the due rows,
    clear their due time, read their lesson history (and newsletter days), queue the
    lessons, move those that must wait for another day, close the courses that are
    done. A pass with 10k lessons due is 20 batches, not 20k round trips.
    """
    stmt = (
        select(
            col(CourseProgress.subscriber_id),
            col(Subscriber.email),
            col(Subscriber.status),
            col(Subscriber.timezone),
            col(CourseProgress.course_round),
        )
        .join(Subscriber, col(Subscriber.id) == col(CourseProgress.subscriber_id))
        .where(lesson_due(now))
        .order_by(col(CourseProgress.next_due_at))
        .limit(limit)
    )
    # Workers queuing side by side each take rows the others are not holding.
    due = session.execute(for_update(session, stmt, skip_locked=True, of=CourseProgress)).all()
    if not due:
        return 0
    # The next due time is set when this lesson is sent.
    _set_progress(session, [row.subscriber_id for row in due], next_due_at=None)
    active = [row for row in due if row.status == SubscriberStatus.active]
    history = _queued_slugs_of(session, {row.subscriber_id: row.course_round for row in active})
    busy: dict[int, set[date]] = {}
    if pace.uses_window and not course.newsletter_same_day:
        busy = newsletter_days(session, {row.subscriber_id: row.timezone for row in active}, now)
    messages: list[NewMessage] = []
    done: list[int] = []
    later: list[dict[str, Any]] = []
    for row in active:
        lesson = next_lesson(course, history.get(row.subscriber_id, set()))
        if lesson is None:
            done.append(row.subscriber_id)
            continue
        taken = busy.get(row.subscriber_id, set())
        if pace.uses_window and blocked_today(now, row.timezone, course, taken):
            today = now.astimezone(zone(row.timezone)).date()
            at = send_moment(now, row.timezone, course, taken | {today})
            later.append({"p_id": row.subscriber_id, "p_due": at})
            continue
        messages.append(
            lesson_message(course, lesson, row.subscriber_id, row.email, row.course_round, now)
        )
    if done:
        finishing = _set_progress(session, done, finished_at=now, only_unfinished=True)
        if settings is not None:
            courses_completed(session, settings, finishing, now, course)
    if later:
        session.execute(_PROGRESS_DUE, later)
    return enqueue_many(session, messages, msgid_domain, now)


def _set_progress(
    session: Session, subscriber_ids: Sequence[int], *, only_unfinished: bool = False, **values: Any
) -> list[int]:
    """Update these subscribers' progress; the ids it changed."""
    table = table_of(CourseProgress)
    stmt = update(table).where(table.c.subscriber_id.in_(subscriber_ids))
    if only_unfinished:
        stmt = stmt.where(table.c.finished_at.is_(None))
    return list(session.execute(stmt.values(**values).returning(table.c.subscriber_id)).scalars())


def courses_completed(
    session: Session,
    settings: Settings,
    subscriber_ids: Sequence[int],
    now: datetime,
    course: Course,
) -> int:
    """Tell the webhooks these subscribers finished the course (drip.hooks)."""
    facts = {"course": {"title": course.title, "lessons": course.total}}
    each = dict.fromkeys(subscriber_ids, facts)
    return hooks.emit_by_id(session, settings, hooks.Event.course_completed, each, now)


def stop_course(session: Session, subscriber_id: int) -> None:
    session.execute(
        update(CourseProgress)
        .where(col(CourseProgress.subscriber_id) == subscriber_id)
        .values(next_due_at=None)
        .execution_options(synchronize_session=False)
    )
