"""Courses held by an email that failed for good (a broken template, an address SMTP
cannot carry): the reader gets nothing more until the author fixes the cause and
retries it (drip.operator_actions.retry_message), or skips that lesson (drip.steering).

The dashboard shows them, so a course never stops without anyone being told.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, exists, func, select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from drip.followup import COURSE_KINDS
from drip.models import (
    UNSENT_STATUSES,
    CourseProgress,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)


@dataclass(frozen=True)
class HeldCourse:
    subscriber_id: int
    email: str
    #: The failed message: what the retry button retries.
    outbox_id: int
    template: str
    reason: str
    failed_at: datetime


def _held() -> ColumnElement[bool]:
    """A course email failed, and the reader's course waits on nothing else: active, not
    finished, no lesson due, none on its way."""
    other = aliased(OutboxMessage)
    on_its_way = exists().where(
        col(other.subscriber_id) == col(OutboxMessage.subscriber_id),
        col(other.kind).in_(COURSE_KINDS),
        col(other.status).in_(UNSENT_STATUSES),
    )
    return and_(
        col(OutboxMessage.kind).in_(COURSE_KINDS),
        col(OutboxMessage.status) == OutboxStatus.failed,
        col(Subscriber.status) == SubscriberStatus.active,
        col(CourseProgress.finished_at).is_(None),
        col(CourseProgress.next_due_at).is_(None),
        ~on_its_way,
    )


def held_courses(session: Session, limit: int = 20) -> tuple[int, list[HeldCourse]]:
    """How many readers' courses are held, and the latest `limit` of them."""
    base = (
        select(OutboxMessage)
        .join(Subscriber, col(Subscriber.id) == col(OutboxMessage.subscriber_id))
        .join(CourseProgress, col(CourseProgress.subscriber_id) == col(OutboxMessage.subscriber_id))
        .where(_held())
    )
    found = base.subquery()
    count = session.execute(select(func.count(func.distinct(found.c.subscriber_id)))).scalar_one()
    rows = session.execute(
        base.order_by(col(OutboxMessage.updated_at).desc()).limit(limit)
    ).scalars()
    return int(count), [
        HeldCourse(
            subscriber_id=r.subscriber_id or 0,
            email=r.email,
            outbox_id=r.id or 0,
            template=r.template,
            reason=r.last_smtp_message or "",
            failed_at=r.updated_at,
        )
        for r in rows
    ]
