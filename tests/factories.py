"""Make subscribers and messages the way drip itself does, for tests."""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import datetime
from pathlib import Path

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
    now: datetime | None = None,
    timezone: str | None = None,
) -> Subscriber:
    with session_scope(get_engine(settings.database_url)) as session:
        now = now or utcnow()
        sub, _ = add_subscriber(
            session,
            settings,
            email=email,
            name=name,
            timezone=timezone,
            source="test",
            newsletter=newsletter,
            now=now,
        )
        if active:
            activate(session, settings, sub, now, start=start)
        else:
            queue_confirmation(session, settings, sub, now)
        return sub


def course_dir(target: Path, **course: object) -> Path:
    """A copy of the shipped emails at `target`, with these settings added to `[course]`
    in TOML (`send_days=["mon"]`), for a test to break or bend."""
    shutil.copytree(Path(__file__).resolve().parent.parent / "emails", target)
    toml = target / "course.toml"
    lines = "".join(f"{key} = {_toml(value)}\n" for key, value in course.items())
    toml.write_text(toml.read_text().replace("[course]\n", f"[course]\n{lines}", 1))
    return target


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


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
