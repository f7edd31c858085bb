"""Make subscribers and messages the way drip itself does, for tests."""

from __future__ import annotations

import asyncio
from datetime import datetime

from sqlalchemy import Engine, select
from sqlmodel import Session

from drip.clock import utcnow
from drip.db import get_engine, session_scope
from drip.models import (
    CourseProgress,
    DeliveryAttempt,
    MessageKind,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from drip.sending.tick import PassReport, run_pass
from drip.settings import Settings
from drip.subscribers import activate, add_subscriber, queue_confirmation


def subscriber(
    settings: Settings,
    email: str,
    *,
    active: bool = True,
    name: str = "Sam",
    start: bool = True,
    newsletter: bool = False,
) -> Subscriber:
    with session_scope(get_engine(settings.database_url)) as session:
        now = utcnow()
        sub, _ = add_subscriber(
            session,
            settings,
            email=email,
            name=name,
            source="test",
            newsletter=newsletter,
            now=now,
        )
        if active:
            activate(session, settings, sub, now, start=start)
        else:
            queue_confirmation(session, settings, sub, now)
        return sub


def tick(settings: Settings, now: datetime | None = None) -> PassReport:
    return asyncio.run(run_pass(settings, now))


def outbox(engine: Engine) -> list[OutboxMessage]:
    with session_scope(engine) as session:
        return list(session.execute(select(OutboxMessage).order_by(OutboxMessage.id)).scalars())


def attempts(engine: Engine) -> list[DeliveryAttempt]:
    with session_scope(engine) as session:
        return list(session.execute(select(DeliveryAttempt).order_by(DeliveryAttempt.id)).scalars())


def reload(session: Session, row: Subscriber) -> Subscriber:
    found = session.get(Subscriber, row.id)
    assert found is not None
    return found


def many_active(
    engine: Engine, count: int, prefix: str = "r", *, newsletter: bool = True
) -> list[Subscriber]:
    """Insert `count` active subscribers at once (fast: no course, no emails queued), who
    agreed to newsletters unless `newsletter` is False."""
    with session_scope(engine) as session:
        subs = [
            Subscriber(
                email=f"{prefix}{n}@example.com",
                email_key=f"{prefix}{n}@example.com",
                status=SubscriberStatus.active,
                newsletter=newsletter,
                token_salt=f"{n:032x}",
                confirm_token_hash=f"c{prefix}{n:062x}",
                unsubscribe_token_hash=f"u{prefix}{n:062x}",
            )
            for n in range(count)
        ]
        session.add_all(subs)
        session.flush()
        return subs


def lesson_sent(settings: Settings, email: str) -> tuple[OutboxMessage, datetime]:
    """A subscriber who got the welcome and the first lesson: (the lesson's row, when sent)."""
    engine = get_engine(settings.database_url)
    sub = subscriber(settings, email)
    tick(settings)  # the welcome
    with session_scope(engine) as session:
        progress = session.get(CourseProgress, sub.id)
        assert progress is not None
        assert progress.next_due_at is not None
        due = progress.next_due_at
    tick(settings, due)
    with session_scope(engine) as session:
        row = session.execute(
            select(OutboxMessage).where(
                OutboxMessage.subscriber_id == sub.id, OutboxMessage.kind == MessageKind.lesson
            )
        ).scalar_one()
    assert row.status == OutboxStatus.sent, row.last_smtp_message
    return row, due
