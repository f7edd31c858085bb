"""Signups never confirmed: one reminder after a day, then deleted, counted anonymously."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import Engine, select
from sqlmodel import SQLModel

from drip.clock import utcnow
from drip.db import read_scope, session_scope
from drip.metrics import render
from drip.models import MessageKind, OutboxMessage, Subscriber, SubscriberStatus
from drip.settings import Settings
from drip.signup import Signup, subscribe
from drip.subscribers import leave
from drip.unconfirmed import expired_count
from tests.conftest import SettingsFactory
from tests.factories import subscriber, tick
from tests.mailserver import MailServer, Recorder

LINK = re.compile(r"https?://\S+/confirm/[A-Za-z0-9_.-]+")


def _to(recorder: Recorder, address: str) -> list[str]:
    return [m["Subject"] for m in recorder.messages if m["To"].addresses[0].addr_spec == address]


def test_one_reminder_goes_a_day_after_the_confirmation_with_the_same_link(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    start = utcnow()
    subscriber(settings, "late@example.com", active=False)
    tick(settings, start)
    assert _to(recorder, "late@example.com") == ["Please confirm your free trigger point course"]
    tick(settings, start + timedelta(hours=23))
    assert len(_to(recorder, "late@example.com")) == 1

    for hours in (24.1, 25, 30, 48, 70):
        tick(settings, start + timedelta(hours=hours))
    assert _to(recorder, "late@example.com") == [
        "Please confirm your free trigger point course",
        "Reminder: please confirm your free trigger point course",
    ]
    first, reminder = recorder.messages
    text = reminder.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "This is the one reminder" in text
    old_link = LINK.findall(first.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert LINK.findall(text)[:1] == old_link[:1] != []
    with read_scope(engine) as session:
        confirms = session.execute(
            select(OutboxMessage).where(OutboxMessage.kind == MessageKind.confirm)
        ).scalars()
        assert [row.context.get("reminder", False) for row in confirms] == [False, True]


def test_no_reminder_once_the_link_has_run_out(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory, recorder: Recorder
) -> None:
    settings = make_settings(database_url, mail_server.port, confirm_ttl_hours=20)
    start = utcnow()
    subscriber(settings, "late@example.com", active=False)
    for hours in (0, 24.1, 48):
        tick(settings, start + timedelta(hours=hours))
    assert len(_to(recorder, "late@example.com")) == 1


def test_an_unconfirmed_signup_expires_its_data_deleted_and_counted(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    start = utcnow()
    subscriber(settings, "gone@example.com", active=False)
    subscriber(settings, "stays@example.com")
    tick(settings, start)
    tick(settings, start + timedelta(days=1, minutes=1))  # the reminder
    tick(settings, start + timedelta(days=6, hours=23))
    with read_scope(engine) as session:
        assert len(list(session.execute(select(Subscriber)).scalars())) == 2
        assert expired_count(session) == 0

    tick(settings, start + timedelta(days=7, minutes=1))
    with read_scope(engine) as session:
        left = list(session.execute(select(Subscriber)).scalars())
        assert [(s.email, s.status) for s in left] == [
            ("stays@example.com", SubscriberStatus.active)
        ]
        assert expired_count(session) == 1
        # No row of any table holds the address any more.
        for table in SQLModel.metadata.sorted_tables:
            for row in session.execute(select(table)).all():
                assert "gone@example.com" not in repr(row), (table.name, row)
    assert b"drip_unconfirmed_expired 1.0" in render(engine, utcnow)
    tick(settings, start + timedelta(days=9))
    with read_scope(engine) as session:
        assert expired_count(session) == 1


def test_a_returning_reader_who_never_confirms_goes_back_to_unsubscribed_with_history_kept(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    start = utcnow()
    sub = subscriber(settings, "back@example.com")
    tick(settings, start)  # the welcome
    with session_scope(engine) as session:
        row = session.get(Subscriber, sub.id)
        assert row is not None
        leave(session, settings, row, SubscriberStatus.unsubscribed, start, "unsubscribed")
    with session_scope(engine) as session:
        subscribe(session, settings, Signup("back@example.com", "Sam", "UTC"), start)
    tick(settings, start + timedelta(days=7, minutes=1))
    with read_scope(engine) as session:
        row = session.get(Subscriber, sub.id)
        assert row is not None
        assert (row.status, row.pending_signup) == (SubscriberStatus.unsubscribed, None)
        kinds = session.execute(select(OutboxMessage.kind)).scalars().all()
        assert MessageKind.welcome in kinds
        assert expired_count(session) == 0
