"""What a recorded attempt sets off in a subscriber's life.

A sent course email (welcome or lesson), or a queued lesson the author has since
removed from the course, schedules the next lesson or closes the course; a bounce
suppresses the address, so nothing more is sent to it. Delivery calls this in the
transaction that records the attempts, for the rows it still held.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session

from drip.course import Course
from drip.feedback import bounced_at_send
from drip.models import MessageKind, OutboxMessage, OutboxStatus
from drip.progress import Pace, after_send
from drip.sending.outbox import Result

#: Kinds whose sending moves a subscriber through the course.
COURSE_KINDS = (MessageKind.welcome, MessageKind.lesson)


def follow_up(
    session: Session,
    attempts: Sequence[tuple[OutboxMessage, Result]],
    now: datetime,
    course: Course | None,
    pace: Pace,
) -> None:
    """Schedule next lessons for sent course emails and suppress bounced addresses."""
    mine = [(row, result) for row, result in attempts if row.subscriber_id is not None]
    course_sent = [
        row.subscriber_id
        for row, result in mine
        if (result.status == OutboxStatus.sent or result.moves_on) and row.kind in COURSE_KINDS
    ]
    if course_sent and course is not None:
        after_send(session, course_sent, now, course, pace)  # type: ignore[arg-type]
    for row, result in mine:
        if result.status == OutboxStatus.bounced:
            suppress(session, row, result, now)


def suppress(session: Session, row: OutboxMessage, result: Result, now: datetime) -> None:
    """The address bounced: the same event and policy as a hard bounce reported later
    (drip.feedback): the subscriber leaves as `bounced`, queued mail is skipped."""
    bounced_at_send(session, row, result.smtp_code, result.smtp_message, now)
