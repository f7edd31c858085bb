"""The operator's view of subscribers, for `drip subscribers list` and /admin.

The list (newest first, by status or address prefix) and one subscriber's timeline of
every message and attempt, and of the author's actions on their course (drip.steering).
It only reads; drip.subscribers and drip.steering are where subscribers change.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, select
from sqlmodel import Session, col

from drip.models import (
    MAX_ID,
    CourseAction,
    DeliveryAttempt,
    OutboxMessage,
    Subscriber,
    SubscriberStatus,
)
from drip.sendlog import MAX_LIMIT
from drip.steering import actions
from drip.subscribers import email_key


@dataclass(frozen=True)
class TimelineItem:
    message: OutboxMessage
    attempts: list[DeliveryAttempt]


def timeline(session: Session, subscriber_id: int, limit: int = 500) -> list[TimelineItem]:
    """Every message to a subscriber, newest first, each with all its attempts."""
    messages = list(
        session.execute(
            select(OutboxMessage)
            .where(col(OutboxMessage.subscriber_id) == subscriber_id)
            .order_by(col(OutboxMessage.created_at).desc(), col(OutboxMessage.id).desc())
            .limit(limit)
        ).scalars()
    )
    by_message: dict[int, list[DeliveryAttempt]] = {m.id: [] for m in messages if m.id}
    if by_message:
        attempts = session.execute(
            select(DeliveryAttempt)
            .where(col(DeliveryAttempt.outbox_id).in_(list(by_message)))
            .order_by(col(DeliveryAttempt.id))
        ).scalars()
        for attempt in attempts:
            by_message[attempt.outbox_id].append(attempt)
    return [TimelineItem(m, by_message.get(m.id or 0, [])) for m in messages]


def with_actions(
    session: Session, subscriber_id: int, items: list[TimelineItem]
) -> list[TimelineItem | CourseAction]:
    """The timeline's messages with the author's course actions (pause, skip...) among
    them, newest first: a message by when it was queued, an action by when it was taken."""
    merged: list[TimelineItem | CourseAction] = [*items, *actions(session, subscriber_id)]

    def when(entry: TimelineItem | CourseAction) -> tuple[object, int]:
        if isinstance(entry, CourseAction):
            return entry.at, 1
        return entry.message.created_at, 0

    return sorted(merged, key=when, reverse=True)


@dataclass(frozen=True)
class SubscriberFilter:
    status: str | None = None
    #: Matches the start of the address, whatever its case.
    email_prefix: str | None = None
    limit: int = 50
    before_id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", self.status or None)
        object.__setattr__(self, "email_prefix", (self.email_prefix or "").strip() or None)
        statuses = tuple(s.value for s in SubscriberStatus)
        if self.status is not None and self.status not in statuses:
            raise ValueError(f"status must be one of {', '.join(statuses)}")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
        if self.email_prefix is not None and "\x00" in self.email_prefix:
            raise ValueError("the address must not contain a NUL character")
        if self.before_id is not None and not -MAX_ID <= self.before_id <= MAX_ID + 1:
            raise ValueError(f"before must be a subscriber id, at most {MAX_ID}")


def _prefix_clauses(prefix: str) -> list[ColumnElement[bool]]:
    """A range on the unique email_key index, then an exact prefix test."""
    key = email_key(prefix)
    column = col(Subscriber.email_key)
    clauses = [column >= key, column.startswith(key, autoescape=True)]
    following = ord(key[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates are no characters: skip past them
        following = 0xE000
    if following <= 0x10FFFF:  # past the last code point there is no upper bound
        clauses.append(column < key[:-1] + chr(following))
    return clauses


def list_subscribers(session: Session, wanted: SubscriberFilter) -> list[Subscriber]:
    """Newest first; pass the last id as `before_id` for the next page."""
    stmt = select(Subscriber)
    if wanted.status:
        stmt = stmt.where(col(Subscriber.status) == wanted.status)
    if wanted.email_prefix:
        stmt = stmt.where(*_prefix_clauses(wanted.email_prefix))
    if wanted.before_id is not None and wanted.before_id <= MAX_ID:  # above it: every id is below
        stmt = stmt.where(col(Subscriber.id) < wanted.before_id)
    stmt = stmt.order_by(col(Subscriber.id).desc()).limit(wanted.limit)
    return list(session.execute(stmt).scalars())
