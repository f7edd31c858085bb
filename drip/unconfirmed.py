"""Signups that were never confirmed: one reminder, then their data is deleted.

Each scheduler pass (drip.sending.tick) runs `tend`. A pending signup whose
confirmation went out REMIND_AFTER ago, with its link still valid, gets the
confirmation once more, marked as a reminder: its own outbox row and dedupe key, one
per confirmation asked for. After DRIP_UNCONFIRMED_EXPIRE_DAYS without a confirmation
the signup expires: a person who never confirmed is deleted with every message to them
and its send log, so no row keeps their address, and only an anonymous count remains
(the `meta` row EXPIRED_COUNTER, shown on /admin and in /metrics). Someone who had
confirmed once, left, and asked to come back without confirming goes back to
`unsubscribed`, their history kept, the unconfirmed request dropped.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Engine, Integer, String, and_, cast, delete, exists, func, select, update
from sqlmodel import Session, col

from drip.db import for_update, insert_ignoring, session_scope, table_of
from drip.models import (
    CourseProgress,
    DeliveryAttempt,
    FeedbackEvent,
    MessageKind,
    Meta,
    OutboxMessage,
    Question,
    Subscriber,
    SubscriberStatus,
)
from drip.sending.outbox import NewMessage, dedupe_key, enqueue_many
from drip.settings import Settings

#: How long after the confirmation email its reminder goes.
REMIND_AFTER = timedelta(hours=24)
#: The `meta` row counting the unconfirmed signups deleted, ever.
EXPIRED_COUNTER = "unconfirmed_expired"
#: The same per signup source, under this prefix and a digest of the source (a source
#: is longer than a `meta` name may be); the source itself is kept under SOURCE_NAME.
EXPIRED_BY_SOURCE = "unconfirmed_expired:"
SOURCE_NAME = "source_name:"
#: Signups handled per statement; a pass goes on until none is left.
BATCH = 500


def tend(settings: Settings, engine: Engine, now: datetime) -> tuple[int, int]:
    """Queue due reminders and expire old signups: (reminders queued, signups deleted)."""
    reminded = expired = 0
    while True:
        with session_scope(engine) as session:
            queued = remind(session, settings, now)
        reminded += queued
        if queued < BATCH:
            break
    while True:
        with session_scope(engine) as session:
            handled, deleted = expire(session, settings, now)
        expired += deleted
        if handled < BATCH:
            return reminded, expired


def remind(session: Session, settings: Settings, now: datetime) -> int:
    """Queue the reminder of every confirmation sent REMIND_AFTER ago and not yet answered.

    A confirmation row created after the subscriber's latest request is its reminder
    (the request's own email carries the request's time), so one reminder per request.
    """
    sub, outbox = table_of(Subscriber).c, table_of(OutboxMessage).c
    ttl = timedelta(hours=settings.confirm_ttl_hours)
    keep = timedelta(days=settings.unconfirmed_expire_days)
    reminded_since = exists().where(
        outbox.subscriber_id == sub.id,
        outbox.kind == MessageKind.confirm,
        outbox.created_at > sub.confirm_sent_at,
    )
    due = session.execute(
        select(sub.id, sub.email, sub.confirm_sent_at)
        .where(sub.status == SubscriberStatus.pending)
        .where(sub.confirm_sent_at <= now - REMIND_AFTER)
        # A reminder of a link that no longer works would only annoy.
        .where(sub.confirm_sent_at > now - ttl)
        .where(~reminded_since)
        .limit(BATCH)
    ).all()
    messages = [
        NewMessage(
            kind=MessageKind.confirm,
            template="confirm",
            email=email,
            dedupe_key=dedupe_key(MessageKind.confirm, ident, f"reminder-{asked:%Y%m%d%H%M%S}"),
            due_at=now,
            subscriber_id=ident,
            context={"reminder": True, "expires_on": _day(asked + keep)},
        )
        for ident, email, asked in due
    ]
    return enqueue_many(session, messages, settings.sender_address.domain, now)


def _day(when: datetime) -> str:
    return f"{when.day} {when:%B %Y}"


def expire(session: Session, settings: Settings, now: datetime) -> tuple[int, int]:
    """Expire up to BATCH signups unconfirmed for DRIP_UNCONFIRMED_EXPIRE_DAYS:
    (signups handled, people deleted). Rows another worker is expiring are skipped."""
    cutoff = now - timedelta(days=settings.unconfirmed_expire_days)
    asked = func.coalesce(col(Subscriber.confirm_sent_at), col(Subscriber.created_at))
    stmt = (
        select(
            col(Subscriber.id),
            col(Subscriber.email),
            col(Subscriber.confirmed_at),
            col(Subscriber.source),
        )
        .where(col(Subscriber.status) == SubscriberStatus.pending, asked <= cutoff)
        .limit(BATCH)
    )
    found = session.execute(for_update(session, stmt, skip_locked=True, of=Subscriber)).all()
    returning = [ident for ident, _, confirmed, _ in found if confirmed is not None]
    if returning:
        session.execute(
            update(Subscriber)
            .where(col(Subscriber.id).in_(returning))
            .values(status=SubscriberStatus.unsubscribed, pending_signup=None)
            .execution_options(synchronize_session=False)
        )
    strangers = [(ident, email) for ident, email, confirmed, _ in found if confirmed is None]
    deleted = _delete(session, strangers)
    if deleted:
        sources = {ident: source for ident, _, _, source in found}
        gone = Counter(sources[ident] or "" for ident in deleted)
        _count_expired(session, EXPIRED_COUNTER, len(deleted))
        for source, count in gone.items():
            digest = hashlib.sha256(source.encode()).hexdigest()[:32]
            session.execute(
                insert_ignoring(session, Meta, ["name"]).values(
                    name=SOURCE_NAME + digest, value=source
                )
            )
            _count_expired(session, EXPIRED_BY_SOURCE + digest, count)
    return len(found), len(deleted)


def _delete(session: Session, people: Sequence[tuple[int, str]]) -> list[int]:
    """Delete these subscribers with every message to them and its send log; their ids."""
    if not people:
        return []
    ids = [ident for ident, _ in people]
    addresses = [email for _, email in people]
    outbox = table_of(OutboxMessage).c
    mail = list(
        session.execute(
            select(outbox.id).where((outbox.subscriber_id.in_(ids)) | (outbox.email.in_(addresses)))
        ).scalars()
    )
    if mail:
        session.execute(delete(FeedbackEvent).where(col(FeedbackEvent.outbox_id).in_(mail)))
        session.execute(delete(DeliveryAttempt).where(col(DeliveryAttempt.outbox_id).in_(mail)))
        session.execute(
            update(Question)
            .where(col(Question.outbox_id).in_(mail))
            .values(outbox_id=None)
            .execution_options(synchronize_session=False)
        )
        session.execute(delete(OutboxMessage).where(col(OutboxMessage.id).in_(mail)))
    session.execute(delete(Question).where(col(Question.subscriber_id).in_(ids)))
    session.execute(delete(CourseProgress).where(col(CourseProgress.subscriber_id).in_(ids)))
    gone = session.execute(
        delete(Subscriber)
        .where(
            and_(
                col(Subscriber.id).in_(ids),
                col(Subscriber.status) == SubscriberStatus.pending,
            )
        )
        .returning(col(Subscriber.id))
        .execution_options(synchronize_session=False)
    )
    return [int(ident) for ident in gone.scalars()]


def _count_expired(session: Session, name: str, count: int) -> None:
    """Add to an anonymous count of expired signups, atomically across workers."""
    session.execute(insert_ignoring(session, Meta, ["name"]).values(name=name, value="0"))
    value = table_of(Meta).c.value
    session.execute(
        update(table_of(Meta))
        .where(table_of(Meta).c.name == name)
        .values(value=cast(cast(value, Integer) + count, String))
    )


def expired_count(session: Session) -> int:
    """How many unconfirmed signups were deleted, ever."""
    row = session.get(Meta, EXPIRED_COUNTER)
    return int(row.value) if row is not None else 0


def expired_by_source(session: Session) -> dict[str, int]:
    """How many unconfirmed signups were deleted, ever, per signup source: the funnel
    keeps counting them as signups, so a source's confirmation rate stays true."""
    name = col(Meta.name)
    found = session.execute(
        select(name, col(Meta.value)).where(
            name.startswith(EXPIRED_BY_SOURCE, autoescape=True)
            | name.startswith(SOURCE_NAME, autoescape=True)
        )
    )
    rows = {str(n): str(v) for n, v in found}
    return {
        rows[SOURCE_NAME + n[len(EXPIRED_BY_SOURCE) :]]: int(count)
        for n, count in rows.items()
        if n.startswith(EXPIRED_BY_SOURCE) and n != EXPIRED_COUNTER
    }
