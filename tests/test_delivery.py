"""Delivery against real aiosmtpd servers on loopback: content, outcomes, retries, workers."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from drip.clock import utcnow
from drip.db import get_engine, session_scope
from drip.models import OutboxStatus, SendBudget, Subscriber, SubscriberStatus
from drip.sending.delivery import Delivery
from drip.sending.outbox import Result, claim
from drip.sending.tick import run_pass
from drip.settings import Settings
from tests.conftest import EMAILS, PG_ADMIN, SettingsFactory, truncate_pg
from tests.factories import attempts, outbox, subscriber, tick
from tests.mailserver import (
    MAILBOX_BUSY,
    MAILBOX_FULL,
    NO_SUCH_USER,
    SERVICE_NOT_AVAILABLE,
    MailServer,
    Recorder,
    serve,
)
from tests.processes import queue_lessons


def _parts(message: EmailMessage) -> dict[str, EmailMessage]:
    return {part.get_content_type(): part for part in message.walk() if not part.is_multipart()}


def test_welcome_email_arrives_whole(
    settings: Settings, recorder: Recorder, engine: Engine
) -> None:
    subscriber(settings, "ann@example.com", name="Ann")
    report = tick(settings)
    assert report.delivery.counts == {"sent": 1}
    [message] = recorder.wait_for(1)
    parts = _parts(message)
    assert "Ann" in parts["text/plain"].get_content()
    assert "<html" in parts["text/html"].get_content().lower()
    pdf = parts["application/pdf"]
    assert pdf.get_filename() == "trigger-point-information-pack.pdf"
    assert pdf.get_content() == Path(settings.info_pack).read_bytes()
    unsubscribe = str(message["List-Unsubscribe"])
    assert unsubscribe.startswith(f"<{settings.base_url}/unsubscribe/")
    assert unsubscribe.endswith(">")
    assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    assert str(message["To"]) == "Ann <ann@example.com>"
    [row] = outbox(engine)
    assert row.status == OutboxStatus.sent
    assert str(message["Message-ID"]) == row.message_id
    [attempt] = attempts(engine)
    assert attempt.status == OutboxStatus.sent
    assert attempt.smtp_code == 250


def test_confirmation_has_no_unsubscribe_header(settings: Settings, recorder: Recorder) -> None:
    subscriber(settings, "pending@example.com", active=False)
    tick(settings)
    [message] = recorder.wait_for(1)
    assert message["List-Unsubscribe"] is None
    assert f"{settings.base_url}/confirm/" in _parts(message)["text/plain"].get_content()


@pytest.mark.parametrize(
    ("minutes_per_day", "confirm_says", "welcome_says"),
    [
        (None, "follows a day later", "lesson one arrives tomorrow morning"),
        (2.0, "follows about 2 minutes later", "lesson one arrives in about 2 minutes"),
    ],
)
def test_the_emails_say_when_the_first_lesson_comes_at_the_pace_set(
    minutes_per_day: float | None,
    confirm_says: str,
    welcome_says: str,
    database_url: str,
    mail_server: MailServer,
    recorder: Recorder,
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(database_url, mail_server.port, minutes_per_day=minutes_per_day)
    subscriber(settings, "pending@example.com", active=False)
    subscriber(settings, "ann@example.com")
    tick(settings)
    by_address = {m["To"].addresses[0].addr_spec: m for m in recorder.wait_for(2)}
    confirmation, welcome = by_address["pending@example.com"], by_address["ann@example.com"]
    assert confirm_says in " ".join(_parts(confirmation)["text/plain"].get_content().split())
    assert welcome_says in _parts(welcome)["text/html"].get_content()


def test_the_confirmation_carries_none_of_the_visitors_words(
    settings: Settings, recorder: Recorder
) -> None:
    """The confirmation goes to an address nobody has vouched for: a name with a link in
    it went into its greeting and To:, so the form sent anyone's words to any inbox."""
    spam = "Win 1000 EUR at spam.example"
    subscriber(settings, "victim@example.com", active=False, name=spam)
    tick(settings)
    recorder.wait_for(1)
    [raw] = recorder.raw
    assert b"spam" not in raw.lower()
    assert b"1000" not in raw
    [message] = recorder.messages
    assert message["To"] == "victim@example.com"
    text = message.get_body(preferencelist=("plain",))
    assert text is not None
    assert "Hi," in text.get_content()


def test_temporary_failures_are_retried_then_sent(
    settings: Settings, recorder: Recorder, engine: Engine
) -> None:
    recorder.replies = [MAILBOX_BUSY, MAILBOX_BUSY]
    subscriber(settings, "ann@example.com")
    now = utcnow()
    for hours in (0, 1, 3):
        tick(settings, now + timedelta(hours=hours))
    assert len(recorder.wait_for(1)) == 1
    log = [(a.status, a.smtp_code) for a in attempts(engine)]
    assert log == [("deferred", 451), ("deferred", 451), ("sent", 250)]
    [row] = outbox(engine)
    assert row.status == OutboxStatus.sent
    assert row.attempts == 3


def test_a_recipient_refused_bounces_and_suppresses(
    settings: Settings, recorder: Recorder, engine: Engine
) -> None:
    recorder.replies = [NO_SUCH_USER]
    subscriber(settings, "gone@example.com")
    tick(settings)
    [row] = outbox(engine)
    assert row.status == OutboxStatus.bounced
    assert row.last_smtp_code == 550
    with session_scope(engine) as session:
        sub = session.get(Subscriber, row.subscriber_id)
        assert sub is not None
        assert sub.status == SubscriberStatus.bounced
    # Nothing more is ever queued or sent to them.
    for days in (2, 10, 30):
        tick(settings, utcnow() + timedelta(days=days))
    assert recorder.messages == []
    assert len(outbox(engine)) == 1


@pytest.mark.parametrize("reply", [NO_SUCH_USER, MAILBOX_FULL])
def test_permanent_codes_bounce(
    settings: Settings, recorder: Recorder, engine: Engine, reply: str
) -> None:
    recorder.replies = [reply]
    subscriber(settings, "full@example.com")
    tick(settings)
    assert [a.status for a in attempts(engine)] == ["bounced"]


def test_throttling_slows_every_worker(
    settings: Settings, recorder: Recorder, engine: Engine
) -> None:
    recorder.replies = [SERVICE_NOT_AVAILABLE]
    subscriber(settings, "ann@example.com")
    tick(settings)
    [row] = outbox(engine)
    assert row.status == OutboxStatus.deferred
    assert row.last_smtp_code == 421
    with session_scope(engine) as session:
        budget = session.get(SendBudget, "smtp")
        assert budget is not None
        assert budget.paused_until is not None
        assert budget.paused_until > utcnow()


def test_dropped_connection_mid_data_is_retried_once(
    database_url: str, engine: Engine, make_settings: SettingsFactory
) -> None:
    drops = {"left": 1}
    recorder = Recorder()

    def drop(envelope: object) -> str | None:
        if drops["left"]:
            drops["left"] -= 1
            raise ConnectionResetError("dropped mid-DATA")
        return None

    recorder.on_data = drop
    with serve(recorder) as server:
        settings = make_settings(database_url, server.port)
        subscriber(settings, "ann@example.com")
        tick(settings)
        assert [a.status for a in attempts(engine)] == ["deferred"]
        tick(settings, utcnow() + timedelta(hours=1))
        assert len(recorder.wait_for(1)) == 1
    assert [a.status for a in attempts(engine)] == ["deferred", "sent"]


def test_refused_connection_defers_and_stops_the_pass(
    database_url: str, engine: Engine, make_settings: SettingsFactory
) -> None:
    from tests.mailserver import free_port

    settings = make_settings(database_url, free_port())
    for n in range(5):
        subscriber(settings, f"r{n}@example.com")
    report = tick(settings)
    assert report.delivery.halted
    assert "cannot connect" in report.delivery.halted
    rows = outbox(engine)
    assert len(rows) == 5
    # At most one attempt per connection slot; the rest wait untouched for the next pass.
    assert sum(r.status == OutboxStatus.deferred for r in rows) <= settings.smtp_concurrency
    assert all(r.status in (OutboxStatus.deferred, OutboxStatus.queued) for r in rows)


def test_broken_template_fails_the_message_with_its_line(
    database_url: str,
    tmp_path: Path,
    engine: Engine,
    mail_server: MailServer,
    recorder: Recorder,
    make_settings: SettingsFactory,
) -> None:
    import shutil

    emails = tmp_path / "emails"
    shutil.copytree(EMAILS, emails)
    (emails / "welcome.txt").write_text("Hi {{ name }}\n{{ no_such_variable }}\n")
    settings = make_settings(database_url, mail_server.port, emails_dir=emails)
    subscriber(settings, "ann@example.com")
    tick(settings)
    [row] = outbox(engine)
    assert row.status == OutboxStatus.failed
    assert row.last_smtp_message is not None
    assert "welcome.txt, line 2" in row.last_smtp_message
    assert recorder.messages == []


def test_an_address_smtp_cannot_carry_fails_alone_and_the_rest_go_out(
    settings: Settings, recorder: Recorder, engine: Engine
) -> None:
    """A non-ASCII mailbox name would need SMTPUTF8: that one message fails, saying so."""
    subscriber(settings, "jörg@example.com", name="Jörg")
    subscriber(settings, "ann@bücher.example", name="Ann")
    report = tick(settings)
    assert report.delivery.counts == {"failed": 1, "sent": 1}
    failed = next(r for r in outbox(engine) if r.status == OutboxStatus.failed)
    assert failed.email == "jörg@example.com"
    assert failed.last_smtp_message
    assert "SMTPUTF8" in failed.last_smtp_message
    [message] = recorder.wait_for(1)
    assert str(message["To"]) == "Ann <ann@xn--bcher-kva.example>"


def test_two_workers_deliver_each_message_exactly_once(
    settings: Settings, recorder: Recorder, engine: Engine
) -> None:
    count = 2000
    expected = queue_lessons(engine, count)

    def worker(name: str) -> None:
        asyncio.run(run_pass(settings, worker=name))

    threads = [threading.Thread(target=worker, args=(f"worker-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    ids = recorder.message_ids()
    assert len(ids) == count
    assert set(ids) == expected
    log = attempts(engine)
    assert len(log) == count
    assert {a.worker for a in log} == {"worker-0", "worker-1"}


def test_a_send_that_outlasts_the_lease_is_never_taken_by_another_worker(
    database_url: str, engine: Engine, make_settings: SettingsFactory
) -> None:
    sending = threading.Event()

    def slow(_: object) -> None:
        sending.set()
        time.sleep(2.5)  # the server takes its time over DATA: over twice the lease

    with serve(Recorder(on_data=slow)) as server:
        settings = make_settings(database_url, server.port, lease_seconds=1.0)
        [expected] = queue_lessons(engine, 1)
        first = threading.Thread(target=lambda: asyncio.run(run_pass(settings, worker="w1")))
        first.start()
        assert sending.wait(10)
        taken = []
        while first.is_alive():  # a second worker asks for due rows all along
            taken += claim(engine, "w2", utcnow(), 10, timedelta(seconds=1))
            time.sleep(0.05)
        first.join()
        assert server.handler.message_ids() == [expected]
    assert taken == []
    [row] = outbox(engine)
    assert row.status == OutboxStatus.sent
    assert [a.worker for a in attempts(engine)] == ["w1"]


def test_a_server_that_never_answers_times_out_and_keeps_the_mail(
    database_url: str, engine: Engine, make_settings: SettingsFactory
) -> None:
    from tests.mailserver import silent_server

    with silent_server() as server:
        settings = make_settings(database_url, server.port, smtp_timeout=0.5)
        subscriber(settings, "ann@example.com")
        report = tick(settings)
    [row] = outbox(engine)
    assert row.status == OutboxStatus.deferred
    assert row.next_attempt_at is not None
    assert report.delivery.halted
    assert "timed out" in (row.last_smtp_message or "")


def test_starttls_required_but_not_offered_defers_with_a_reason(
    database_url: str,
    engine: Engine,
    mail_server: MailServer,
    recorder: Recorder,
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(database_url, mail_server.port, smtp_security="starttls")
    subscriber(settings, "ann@example.com")
    tick(settings)
    [row] = outbox(engine)
    assert row.status == OutboxStatus.deferred
    assert "STARTTLS" in (row.last_smtp_message or "").upper()
    assert recorder.raw == []


def test_smtp_login_uses_the_password_and_never_logs_it(
    database_url: str, engine: Engine, make_settings: SettingsFactory
) -> None:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    logins: list[tuple[bytes, bytes]] = []

    def authenticator(
        server: object, session: object, envelope: object, mechanism: str, data: object
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret-pass")

    recorder = Recorder()
    with serve(recorder, authenticator=authenticator, auth_require_tls=False) as server:
        good = make_settings(
            database_url, server.port, smtp_username="course", smtp_password="s3cret-pass"
        )
        subscriber(good, "ann@example.com")
        tick(good)
        assert len(recorder.wait_for(1)) == 1
        bad = make_settings(
            database_url,
            server.port,
            smtp_username="course",
            smtp_password="wrong-pass",
            smtp_timeout=2,
        )
        subscriber(bad, "bob@example.com")
        tick(bad)
    assert logins[0] == (b"course", b"s3cret-pass")
    rows = outbox(engine)
    assert [r.status for r in rows] == [OutboxStatus.sent, OutboxStatus.deferred]
    for attempt in attempts(engine):
        assert "pass" not in (attempt.smtp_message or "").lower().replace("password", "")
        assert "s3cret" not in (attempt.smtp_message or "")
        assert "wrong-pass" not in (attempt.smtp_message or "")


def test_a_message_deferred_past_its_lifetime_fails_with_the_reason(
    settings: Settings, recorder: Recorder, engine: Engine
) -> None:
    recorder.on_data = lambda envelope: MAILBOX_BUSY
    subscriber(settings, "ann@example.com")
    tick(settings)
    tick(settings, utcnow() + timedelta(days=settings.retry_lifetime_days, hours=1))
    [row] = outbox(engine)
    assert row.status == OutboxStatus.failed
    assert row.last_smtp_message is not None
    assert row.last_smtp_message.startswith("gave up after 2")
    assert [a.status for a in attempts(engine)] == ["deferred", "failed"]


def test_a_commit_outlives_a_database_restart_between_two_commits(
    pg_url: str, make_settings: SettingsFactory
) -> None:
    """Group commits hold one connection for the run. Found dead (the server restarted
    since the last commit), it had written nothing: the commit goes through on a fresh
    one, as the pool's ping at checkout would have had it, and nothing is recorded twice."""
    engine = get_engine(pg_url)
    truncate_pg(engine)
    settings = make_settings(pg_url, 1)
    queue_lessons(engine, 2)
    delivery = Delivery(settings, engine, worker="w1", clock=utcnow)
    first, second = claim(engine, "w1", utcnow(), 2, timedelta(minutes=5))
    sent = Result(OutboxStatus.sent, 250, "OK")
    delivery._finish([(first, sent)])
    held = delivery._recorder
    assert held is not None
    backend = held.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    held.rollback()
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 10000)", (backend,))
    delivery._finish([(second, sent)])
    assert delivery._recorder is not held
    assert sorted(r.status for r in outbox(engine)) == [OutboxStatus.sent] * 2
    assert sorted(a.outbox_id for a in attempts(engine)) == sorted([first.id, second.id])
    delivery._recorder.close()


def test_a_commit_refused_at_commit_leaves_the_next_commit_a_working_connection(
    pg_url: str, make_settings: SettingsFactory
) -> None:
    """A group commit that PostgreSQL refuses at COMMIT (here a deferred check) is that
    commit's error; the held connection is let go, so the next commit goes through."""
    engine = get_engine(pg_url)
    truncate_pg(engine)
    delivery = Delivery(make_settings(pg_url, 1), engine, worker="w1", clock=utcnow)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            """CREATE OR REPLACE FUNCTION refuse_at_commit() RETURNS trigger AS $$
            BEGIN
                IF NEW.smtp_message = 'refuse at commit' THEN
                    RAISE EXCEPTION 'refused at commit';
                END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql"""
        )
        conn.exec_driver_sql(
            "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON delivery_attempt "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()"
        )
    try:
        queue_lessons(engine, 2)
        first, second = claim(engine, "w1", utcnow(), 2, timedelta(minutes=5))
        with pytest.raises(DBAPIError, match="refused at commit"):
            delivery._finish([(first, Result(OutboxStatus.sent, 250, "refuse at commit"))])
        delivery._finish([(second, Result(OutboxStatus.sent, 250, "OK"))])
        statuses = {r.id: r.status for r in outbox(engine)}
        assert statuses[second.id] == OutboxStatus.sent
        assert statuses[first.id] != OutboxStatus.sent  # nothing of the refused commit stayed
        assert [a.outbox_id for a in attempts(engine)] == [second.id]
    finally:
        if delivery._recorder is not None:
            delivery._recorder.close()
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS refuse_at_commit ON delivery_attempt")
            conn.exec_driver_sql("DROP FUNCTION IF EXISTS refuse_at_commit()")
