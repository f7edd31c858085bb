"""The one recording step for bounces and complaints, and its policy, on both databases."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, select

from drip.db import session_scope
from drip.feedback import Event, Kind, Recorded, record_event
from drip.models import (
    CourseProgress,
    FeedbackEvent,
    MessageKind,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from drip.operator_actions import retry_message
from drip.sendlog import LogEntry, LogFilter, entries
from drip.settings import Settings
from drip.verp import make_tag
from tests.conftest import SECRET
from tests.factories import attempts, lesson_sent, outbox, tick
from tests.mailserver import Recorder


def _tag(row: OutboxMessage) -> str:
    assert row.id is not None
    return make_tag(SECRET, row.id, row.message_id)


def _status(engine: Engine, subscriber_id: int | None) -> SubscriberStatus:
    with session_scope(engine) as session:
        sub = session.get(Subscriber, subscriber_id)
        assert sub is not None
        return sub.status


def _log(engine: Engine, email: str, status: str | None = None) -> list[LogEntry]:
    with session_scope(engine) as session:
        return entries(session, LogFilter(email=email, status=status))


def _row(engine: Engine, outbox_id: int | None) -> OutboxMessage:
    with session_scope(engine) as session:
        row = session.get(OutboxMessage, outbox_id)
        assert row is not None
        return row


def test_a_hard_bounce_stops_all_mail_and_shows_on_its_message(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    row, sent_at = lesson_sent(settings, "gone@example.com")
    event = Event(
        Kind.hard, "inbound", tag=_tag(row), smtp_code=550, diagnostic="5.1.1 user unknown"
    )
    assert record_event(engine, settings, event, sent_at) == Recorded.recorded
    assert _status(engine, row.subscriber_id) == SubscriberStatus.bounced
    assert _row(engine, row.id).status == OutboxStatus.bounced
    [line] = _log(engine, "gone@example.com", "bounced")
    assert line.outbox_id == row.id
    assert line.smtp_code == 550
    assert line.kind == "lesson"
    assert line.attempts == 1  # the report is shown on the message, not counted as a try
    assert line.smtp_message == "hard bounce (inbound): 5.1.1 user unknown"
    # The next lesson is never queued nor sent.
    sent = len(recorder.messages)
    tick(settings, sent_at + timedelta(days=30))
    assert len(recorder.messages) == sent
    assert [r.kind for r in outbox(engine)] == [MessageKind.welcome, MessageKind.lesson]


def test_a_forged_or_unsigned_tag_changes_nothing(settings: Settings, engine: Engine) -> None:
    row, sent_at = lesson_sent(settings, "kept@example.com")
    assert row.id is not None
    good = _tag(row)
    forged = [
        f"{row.id}-{'a' * 12}",  # a signature of the right shape, made up
        str(row.id),  # unsigned
        make_tag("another-secret-0123456789", row.id, row.message_id),
        make_tag(SECRET, row.id, "<another@message>"),  # a real-looking tag for another message
        good[:-1] + ("b" if good[-1] != "b" else "c"),
        "",
        f"9999999999-{'a' * 12}",  # past PostgreSQL's integer: no row, and no error
        f"0-{'a' * 12}",
    ]
    before = len(attempts(engine))
    for tag in forged:
        event = Event(Kind.complaint, "inbound", tag=tag)
        assert record_event(engine, settings, event, sent_at) == Recorded.unknown, tag
    assert record_event(engine, settings, Event(Kind.hard, "x"), sent_at) == Recorded.unknown
    assert _status(engine, row.subscriber_id) == SubscriberStatus.active
    assert _row(engine, row.id).status == OutboxStatus.sent
    assert len(attempts(engine)) == before


def test_a_complaint_is_final_and_survives_bounces_and_retries(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    row, sent_at = lesson_sent(settings, "angry@example.com")
    complaint = Event(Kind.complaint, "mailbox", tag=_tag(row), diagnostic="abuse")
    assert record_event(engine, settings, complaint, sent_at) == Recorded.recorded
    assert _status(engine, row.subscriber_id) == SubscriberStatus.complained
    assert _row(engine, row.id).status == OutboxStatus.complained
    # A bounce after the complaint neither downgrades the subscriber nor the message.
    assert record_event(engine, settings, Event(Kind.hard, "x", tag=_tag(row)), sent_at) == (
        Recorded.recorded
    )
    assert _status(engine, row.subscriber_id) == SubscriberStatus.complained
    assert _row(engine, row.id).status == OutboxStatus.complained
    # The operator can retry nothing of theirs: not the complained message, nor another.
    with session_scope(engine) as session:
        assert not retry_message(session, row.id, sent_at)  # type: ignore[arg-type]
        welcome = session.execute(
            select(OutboxMessage).where(OutboxMessage.kind == MessageKind.welcome)
        ).scalar_one()
        welcome.status = OutboxStatus.failed
        session.add(welcome)
    with session_scope(engine) as session:
        assert not retry_message(session, welcome.id, sent_at)  # type: ignore[arg-type]
    assert _status(engine, row.subscriber_id) == SubscriberStatus.complained
    assert _row(engine, welcome.id).status == OutboxStatus.failed
    sent = len(recorder.messages)
    tick(settings, sent_at + timedelta(days=30))
    assert len(recorder.messages) == sent
    statuses = [e.status for e in _log(engine, "angry@example.com")]
    assert "complained" in statuses


def test_the_same_report_twice_counts_once(settings: Settings, engine: Engine) -> None:
    row, sent_at = lesson_sent(settings, "twice@example.com")
    event = Event(Kind.soft, "mailbox", tag=_tag(row), smtp_code=452, diagnostic="4.2.2 full")
    assert record_event(engine, settings, event, sent_at) == Recorded.recorded
    before = len(attempts(engine))
    assert record_event(engine, settings, event, sent_at) == Recorded.duplicate
    assert len(attempts(engine)) == before
    with session_scope(engine) as session:
        assert len(session.execute(select(FeedbackEvent)).all()) == 1


def _soft(settings: Settings, engine: Engine, row: OutboxMessage, at: datetime) -> None:
    event = Event(Kind.soft, "inbound", tag=_tag(row), smtp_code=452, diagnostic="mailbox full")
    assert record_event(engine, settings, event, at) == Recorded.recorded


def _next_lesson(settings: Settings, engine: Engine, subscriber_id: int | None) -> OutboxMessage:
    with session_scope(engine) as session:
        progress = session.get(CourseProgress, subscriber_id)
        assert progress is not None
        assert progress.next_due_at is not None
        due = progress.next_due_at
    tick(settings, due)
    return [r for r in outbox(engine) if r.kind == MessageKind.lesson][-1]


def test_soft_bounces_within_the_window_count_as_hard(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    assert settings.soft_bounce_limit == 3
    assert settings.soft_bounce_days == 30
    first, sent_at = lesson_sent(settings, "full@example.com")
    welcome = next(r for r in outbox(engine) if r.kind == MessageKind.welcome)
    # One long before, outside the window: it does not count.
    _soft(settings, engine, welcome, sent_at - timedelta(days=40))
    _soft(settings, engine, first, sent_at)
    assert _status(engine, first.subscriber_id) == SubscriberStatus.active
    assert _row(engine, first.id).status == OutboxStatus.failed
    second = _next_lesson(settings, engine, first.subscriber_id)
    _soft(settings, engine, second, second.due_at)
    assert _status(engine, first.subscriber_id) == SubscriberStatus.active
    third = _next_lesson(settings, engine, first.subscriber_id)
    assert len({first.id, second.id, third.id}) == 3
    _soft(settings, engine, third, third.due_at)
    assert _status(engine, first.subscriber_id) == SubscriberStatus.bounced
    sent = len(recorder.messages)
    tick(settings, sent_at + timedelta(days=60))
    assert len(recorder.messages) == sent


def test_a_message_id_finds_its_message_for_a_checked_source(
    settings: Settings, engine: Engine
) -> None:
    row, sent_at = lesson_sent(settings, "hook@example.com")
    bare = row.message_id.strip("<>")
    event = Event(Kind.complaint, "postmark", message_id=bare)
    assert record_event(engine, settings, event, sent_at) == Recorded.recorded
    assert _status(engine, row.subscriber_id) == SubscriberStatus.complained
    unknown = Event(Kind.hard, "postmark", message_id="<nobody@nowhere>")
    assert record_event(engine, settings, unknown, sent_at) == Recorded.unknown


def test_a_bounce_at_send_time_is_the_same_event(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    from tests.factories import subscriber
    from tests.mailserver import NO_SUCH_USER

    recorder.replies = [NO_SUCH_USER]
    subscriber(settings, "refused@example.com")
    tick(settings)
    with session_scope(engine) as session:
        [event] = session.execute(select(FeedbackEvent)).scalars().all()
    assert (event.kind, event.source, event.smtp_code) == ("hard", "smtp", 550)
