"""Retry, export and erase on both databases, over mail a real pass tried to send."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, select

from drip.clock import utcnow
from drip.dashboard import dashboard
from drip.db import read_scope, session_scope
from drip.models import (
    CourseProgress,
    DeliveryAttempt,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from drip.operator_actions import forget_subscriber, retry_message, subscriber_data
from drip.sending.outbox import claim, record
from drip.settings import Settings
from tests.factories import outbox, subscriber, tick
from tests.mailserver import Recorder
from tests.outcomes import LEASE, OK, bounce, read_log


def test_retry_requeues_failed_or_bounced_but_never_a_row_in_flight(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    sub = subscriber(settings, "gone@example.com")
    bounce(recorder, "gone@example.com")
    tick(settings)
    [bounced] = outbox(engine)
    assert bounced.id is not None
    assert bounced.status == OutboxStatus.bounced
    with session_scope(engine) as session:
        assert session.get(Subscriber, sub.id).status == SubscriberStatus.bounced  # type: ignore[union-attr]
        assert retry_message(session, bounced.id, utcnow()) is True
    with session_scope(engine) as session:
        row = session.get(OutboxMessage, bounced.id)
        assert row is not None
        assert row.status == OutboxStatus.queued
        # The bounce suppressed the subscriber; the retry lets them back in.
        assert session.get(Subscriber, sub.id).status == SubscriberStatus.active  # type: ignore[union-attr]
    [claimed] = claim(engine, "w2", utcnow() + timedelta(seconds=1), 10, LEASE)
    with session_scope(engine) as session:
        assert retry_message(session, bounced.id, utcnow()) is False  # sending: untouched
        assert retry_message(session, 999_999, utcnow()) is False
    with session_scope(engine) as session:
        row = session.get(OutboxMessage, bounced.id)
        assert row is not None
        assert row.status == OutboxStatus.sending
        assert row.leased_by == "w2"
        record(session, [(claimed, OK)], "w2", utcnow())
    with session_scope(engine) as session:
        assert retry_message(session, bounced.id, utcnow()) is False  # sent: untouched
    statuses = [e.status for e in read_log(engine)]
    assert statuses == ["sent", "bounced"]


def test_forget_wipes_personal_data_and_keeps_counts(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    sub = subscriber(settings, "Private.Person@example.com", name="Pat Private")
    recorder.on_data = lambda env: "550 5.1.1 <Private.Person@example.com>: no such user"
    tick(settings)
    assert sub.id is not None
    with read_scope(engine) as session:
        before = dashboard(session, utcnow())
        exported = subscriber_data(session, sub.id)
    assert exported is not None
    assert exported["subscriber"]["email"] == "Private.Person@example.com"
    assert exported["messages"][0]["attempts"][0]["smtp_code"] == 550
    assert "token" not in str(exported)

    with session_scope(engine) as session:
        assert forget_subscriber(session, settings, sub.id, utcnow()) is True
    with read_scope(engine) as session:
        row = session.get(Subscriber, sub.id)
        assert row is not None
        assert row.email == row.email_key == f"deleted-{sub.id}@invalid"
        assert row.name == ""
        assert row.consent_ip is None
        assert row.token_salt != sub.token_salt
        assert row.unsubscribe_token_hash != sub.unsubscribe_token_hash
        texts = [
            str(v)
            for m in session.execute(select(OutboxMessage)).scalars()
            for v in (m.email, m.last_smtp_message)
        ]
        texts += [str(a.smtp_message) for a in session.execute(select(DeliveryAttempt)).scalars()]
        assert texts
        assert not any("private" in t.lower() for t in texts)
        assert session.get(CourseProgress, sub.id) is not None
        after = dashboard(session, utcnow())
    assert after.today == before.today
    assert after.sends_per_day == before.sends_per_day
    assert read_log(engine, email="Private.Person@example.com") == []
    assert [e.status for e in read_log(engine, email=f"deleted-{sub.id}@invalid")] == ["bounced"]
