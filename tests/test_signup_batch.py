"""Signups stored in batches by the web app's writer: the same outcome as one at a time."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select
from sqlmodel import SQLModel

from drip import signup
from drip.clock import utcnow
from drip.db import get_engine, session_scope
from drip.models import MessageKind, OutboxMessage, Subscriber, SubscriberStatus
from drip.sending.outbox import enqueue
from drip.settings import Settings
from drip.subscribers import (
    activate,
    add_subscriber,
    confirmation,
    leave,
    queue_confirmation,
)
from drip.tokens import make_token
from drip.web.signup_writer import Writer
from tests.conftest import SettingsFactory


@pytest.fixture
def settings(database_url: str, make_settings: SettingsFactory) -> Settings:
    return make_settings(database_url, 1025)  # nothing is sent here


def _signup(email: str, name: str = "Ann") -> signup.Signup:
    return signup.Signup(email=email, name=name, timezone="Europe/Paris")


def _empty(engine: Engine) -> None:
    with session_scope(engine) as session:
        for table in reversed(SQLModel.metadata.sorted_tables):
            session.execute(delete(table))


def _known_addresses(settings: Settings, engine: Engine) -> None:
    """One subscriber in each state a signup can meet."""
    now = utcnow()
    with session_scope(engine) as session:
        for email, state in [
            ("pending@example.com", "pending"),
            ("active@example.com", "active"),
            ("gone@example.com", "unsubscribed"),
            ("bounced@example.com", "bounced"),
        ]:
            sub, _ = add_subscriber(
                session, settings, email=email, name="Old", source="test", now=utcnow()
            )
            if state == "pending":
                queue_confirmation(session, settings, sub, now)
            elif state == "active":
                activate(session, settings, sub, now)
            else:
                activate(session, settings, sub, now)
                leave(session, settings, sub, SubscriberStatus(state), now, state)


def _state(engine: Engine) -> tuple[list[Any], list[Any]]:
    """Subscribers and outbox rows without their ids, which differ from run to run."""
    with session_scope(engine) as session:
        subs = sorted(
            (s.email, s.email_key, s.name, s.status, s.timezone, s.confirm_sent_at is not None)
            for s in session.execute(select(Subscriber)).scalars()
        )
        rows = sorted(
            (m.email, m.kind, m.template, m.status)
            for m in session.execute(select(OutboxMessage)).scalars()
        )
    return subs, rows


BATCH = [
    _signup("new@example.com"),
    _signup("NEW@example.com", "Ann Again"),  # the same person twice in one batch
    _signup("pending@example.com", "Pat"),
    _signup("active@example.com", "Al"),
    _signup("gone@example.com", "Back"),
    _signup("bounced@example.com", "Bo"),
    _signup("other@example.com", "Olga"),
]


def test_a_batch_ends_as_the_same_signups_one_at_a_time(settings: Settings, engine: Engine) -> None:
    now = utcnow()
    _known_addresses(settings, engine)
    for item in BATCH:
        with session_scope(engine) as session:
            signup.subscribe(session, settings, item, now)
    one_by_one = _state(engine)

    _empty(engine)
    _known_addresses(settings, engine)
    signup.store_many(engine, settings, BATCH, now)
    assert _state(engine) == one_by_one

    subs, rows = one_by_one
    confirmations = sorted(email for email, kind, *_ in rows if kind == MessageKind.confirm)
    # New, back after leaving, and active (its answer: the link applies what it asked
    # for); pending has its first still on its way, which answers for it.
    assert confirmations == [
        "active@example.com",
        "gone@example.com",
        "new@example.com",
        "other@example.com",
        "pending@example.com",
    ]


def test_links_of_a_batched_signup_work(settings: Settings, engine: Engine) -> None:
    now = utcnow()
    signup.store_many(
        engine, settings, [_signup("ann@example.com"), _signup("bo@example.com")], now
    )
    with session_scope(engine) as session:
        sub = session.execute(
            select(Subscriber).where(Subscriber.email == "bo@example.com")
        ).scalar_one()
        assert sub.status == SubscriberStatus.pending
        assert sub.confirm_sent_at == now
        assert sub.consent_source == "web"
        assert sub.timezone == "Europe/Paris"
        secret = settings.require_secret()
        token = make_token(secret, sub.token_salt, "confirm")
        assert signup.confirm(session, settings, token, now, "192.0.2.1") == "confirmed"
        leave_token = make_token(secret, sub.token_salt, "unsubscribe")
        assert signup.unsubscribe(session, settings, leave_token, now)


def test_the_writer_stores_every_signup_posted_at_once(settings: Settings, engine: Engine) -> None:
    writer = Writer(engine, settings, batch=8, idle=0.05)
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(lambda n: writer.submit(_signup(f"p{n}@example.com")).result(30), n)
            for n in range(60)
        ]
        for future in futures:
            future.result(timeout=60)
    subs, rows = _state(engine)
    assert len(subs) == 60
    assert len(rows) == 60
    assert {kind for _, kind, *_ in rows} == {MessageKind.confirm}


def test_the_writer_stops_when_idle_and_starts_again(settings: Settings, engine: Engine) -> None:
    writer = Writer(engine, settings, idle=0.05)
    writer.submit(_signup("a@example.com")).result(30)
    threads = {t for t in threading.enumerate() if t.name == "drip-signup-writer"}
    for thread in threads:
        thread.join(5)
    assert writer._thread is None
    writer.submit(_signup("b@example.com")).result(30)
    assert len(_state(engine)[0]) == 2


def test_the_writer_hands_a_failure_to_every_waiting_signup(
    settings: Settings, tmp_path: Path
) -> None:
    broken = get_engine(f"sqlite:///{tmp_path / 'no-schema.db'}")  # no tables: every write fails
    writer = Writer(broken, settings, idle=0.05)
    futures = [writer.submit(_signup(f"x{n}@example.com")) for n in range(5)]
    for future in futures:
        with pytest.raises(Exception, match="no such table"):
            future.result(30)


def test_two_writers_bringing_the_same_new_address_make_one_subscriber(
    settings: Settings, engine: Engine
) -> None:
    """As two web processes would: each batch inserts, one wins, the other finds it."""
    writers = [Writer(engine, settings, idle=0.05) for _ in range(4)]
    futures = [w.submit(_signup("ann@example.com")) for w in writers]
    for future in futures:
        future.result(timeout=30)
    subs, rows = _state(engine)
    assert len(subs) == 1
    assert [kind for _, kind, *_ in rows] == [MessageKind.confirm]


def test_a_batch_that_cannot_queue_a_confirmation_falls_back_to_one_at_a_time(
    settings: Settings, engine: Engine
) -> None:
    """The next subscriber id's confirmation key is already taken (a stale row)."""
    now = utcnow()
    stale = confirmation(1, "someone@example.com", now)
    with session_scope(engine) as session:
        enqueue(session, replace(stale, subscriber_id=None), "example.com", now)
    signup.store_many(engine, settings, [_signup("ann@example.com")], now)
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber)).scalar_one()
        mine = session.execute(
            select(OutboxMessage).where(OutboxMessage.subscriber_id == sub.id)
        ).scalars()
        # Exactly as `store` would: marked as sent a confirmation only if one was queued.
        assert (sub.confirm_sent_at is not None) == bool(list(mine))
