"""A scheduler pass: its queue step walks every due lesson in batches, and nothing else."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select

from drip.clock import utcnow
from drip.db import session_scope
from drip.models import CourseProgress, DeliveryAttempt, MessageKind, OutboxMessage
from drip.sending import tick
from drip.settings import Settings
from tests.factories import many_active, subscriber
from tests.factories import tick as run_pass_at
from tests.mailserver import Recorder


def _due(engine: Engine, count: int, minutes_ago: int = 1) -> None:
    subs = many_active(engine, count, prefix="t")
    now = utcnow()
    with session_scope(engine) as session:
        session.add_all(
            CourseProgress(
                subscriber_id=s.id,  # type: ignore[arg-type]
                started_at=now,
                next_due_at=now - timedelta(minutes=minutes_ago),
            )
            for s in subs
        )


def _lessons(engine: Engine) -> list[int | None]:
    with session_scope(engine) as session:
        return list(
            session.execute(
                select(OutboxMessage.subscriber_id).where(OutboxMessage.kind == MessageKind.lesson)
            ).scalars()
        )


def test_the_queue_step_takes_every_due_lesson_batch_after_batch(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tick, "QUEUE_BATCH", 7)
    _due(engine, 30)
    assert tick.queue_due(settings, engine, utcnow()) == 30
    lessons = _lessons(engine)
    assert len(lessons) == 30
    assert len(set(lessons)) == 30
    assert tick.queue_due(settings, engine, utcnow()) == 0


def test_the_queue_step_leaves_what_is_not_due_yet(settings: Settings, engine: Engine) -> None:
    _due(engine, 12)
    with session_scope(engine) as session:
        later = utcnow() + timedelta(hours=2)
        for progress in list(session.execute(select(CourseProgress)).scalars())[:5]:
            progress.next_due_at = later
    assert tick.queue_due(settings, engine, utcnow()) == 7
    with session_scope(engine) as session:
        waiting = session.execute(
            select(func.count())
            .select_from(CourseProgress)
            .where(CourseProgress.next_due_at.is_not(None))  # type: ignore[union-attr]
        ).scalar_one()
    assert waiting == 5


def test_a_pass_at_a_given_time_writes_that_time_everywhere(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    """`drip tick --now`: every column the pass writes, and the Date header, are in the
    travelled time, not partly in real time."""
    sub = subscriber(settings, "traveller@example.com")
    future = utcnow() + timedelta(days=40)
    report = run_pass_at(settings, future)
    assert report.delivery.counts == {"sent": 1}
    with session_scope(engine) as session:
        row = session.execute(select(OutboxMessage)).scalar_one()
        attempt = session.execute(select(DeliveryAttempt)).scalar_one()
        progress = session.get(CourseProgress, sub.id)
    assert progress is not None
    assert progress.next_due_at is not None
    for written in (row.updated_at, row.sent_at, attempt.at, progress.last_sent_at):
        assert written is not None
        assert future <= written < future + timedelta(minutes=5)
    assert progress.next_due_at > future
    [message] = recorder.messages
    assert future - timedelta(seconds=1) <= message["Date"].datetime < future + timedelta(minutes=5)
