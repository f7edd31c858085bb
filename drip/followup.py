"""What a recorded attempt sets off in a subscriber's life.

A sent course email (welcome or lesson), or a queued lesson the author has since
removed from the course, schedules the next lesson or closes the course; a bounce
suppresses the address, so nothing more is sent to it. Each of these facts is told to
the webhooks (drip.hooks): `lesson.sent`, `course.completed`, `subscriber.bounced`.
Delivery calls this in the transaction that records the attempts, for the rows it
still held, so the events exist exactly when the facts do.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection
from sqlmodel import Session

from drip import hooks
from drip.course import Course
from drip.feedback import bounced_at_send
from drip.models import MessageKind, OutboxMessage, OutboxStatus
from drip.pace import Pace
from drip.progress import after_send, courses_completed
from drip.sending.outbox import Result
from drip.settings import Settings

#: Kinds whose sending moves a subscriber through the course.
COURSE_KINDS = (MessageKind.welcome, MessageKind.lesson)


def follow_up(
    conn: Connection,
    settings: Settings,
    attempts: Sequence[tuple[OutboxMessage, Result]],
    now: datetime,
    course: Course | None,
    pace: Pace,
) -> None:
    """Schedule next lessons for sent course emails and suppress bounced addresses.

    On the caller's connection and in its transaction. The course's progress is Core
    statements on it; the rarer facts (webhook events, finished courses, bounces) go
    through an ORM session joined to the same transaction, opened only when there are any.
    """
    mine = [(row, result) for row, result in attempts if row.subscriber_id is not None]
    lessons = [
        row
        for row, result in mine
        if result.status == OutboxStatus.sent and row.kind == MessageKind.lesson
    ]
    course_sent = [
        row.subscriber_id
        for row, result in mine
        if (result.status == OutboxStatus.sent or result.moves_on) and row.kind in COURSE_KINDS
    ]
    finished: list[int] = []
    if course_sent and course is not None:
        finished = after_send(conn, course_sent, now, course, pace)  # type: ignore[arg-type]
    bounced = [(row, result) for row, result in mine if result.status == OutboxStatus.bounced]
    # A session only for what needs the ORM: webhook events, and bounces.
    if not (((lessons or finished) and settings.webhook_url_list) or bounced):
        return
    # Joined to the connection's transaction: flushed here, committed with the attempts.
    with Session(conn) as session:
        _lessons_sent(session, settings, lessons, now)
        if finished and course is not None:
            courses_completed(session, settings, finished, now, course)
        for row, result in bounced:
            # The same event and policy as a hard bounce reported later (drip.feedback).
            bounced_at_send(session, settings, row, result.smtp_code, result.smtp_message, now)
        session.flush()


def _lessons_sent(
    session: Session, settings: Settings, rows: Sequence[OutboxMessage], now: datetime
) -> None:
    facts = {
        row.subscriber_id: {
            "lesson": {
                "slug": row.context.get("slug"),
                "template": row.template,
                "number": row.context.get("lesson_number"),
                "total": row.context.get("lesson_total"),
            },
            "message_id": row.message_id,
            "sent_at": now.isoformat(),
        }
        for row in rows
        if row.subscriber_id is not None
    }
    hooks.emit_by_id(session, settings, hooks.Event.lesson_sent, facts, now)
