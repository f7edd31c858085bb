"""Webhooks out: events through the outbox to a real HTTP receiver on loopback."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlmodel import col

from drip import hooks, metrics
from drip.dashboard import dashboard
from drip.db import read_scope, session_scope
from drip.feedback import Event, Kind, record_event
from drip.health import rates_since
from drip.models import DeliveryAttempt, MessageKind, OutboxMessage, OutboxStatus, Subscriber
from drip.operator_actions import forget_subscriber, subscriber_data
from drip.sending.post import judge
from drip.sending.sender import Verdict
from drip.settings import Settings
from drip.signup import unsubscribe
from drip.tokens import make_token
from tests.conftest import EMAILS, SECRET, SettingsFactory
from tests.factories import outbox, subscriber, tick
from tests.mailserver import NO_SUCH_USER, MailServer, Recorder, free_port
from tests.receiver import Receiver, receiving

TWO_LESSONS = """
[course]
title = "Trigger Point Relief"
send_window = "08:00-10:00"

[[lesson]]
slug = "what-trigger-points-are"
template = "lesson-01-what-trigger-points-are"
title = "What trigger points are"
delay_days = 1

[[lesson]]
slug = "finding-trigger-points"
template = "lesson-02-finding-trigger-points"
title = "Finding your trigger points"
delay_days = 2
"""


@pytest.fixture
def short_course(tmp_path: Path) -> Path:
    """The shipped emails with a two-lesson course: a whole course in a few ticks."""
    emails = tmp_path / "emails"
    shutil.copytree(EMAILS, emails)
    (emails / "course.toml").write_text(TWO_LESSONS, encoding="utf-8")
    return emails


def _webhook_attempts(engine: Engine) -> list[tuple[int, OutboxStatus]]:
    with read_scope(engine) as session:
        rows = session.execute(
            select(col(DeliveryAttempt.outbox_id), col(DeliveryAttempt.status))
            .join(OutboxMessage, col(OutboxMessage.id) == col(DeliveryAttempt.outbox_id))
            .where(col(OutboxMessage.kind) == MessageKind.webhook)
        ).all()
    return [(int(i), OutboxStatus(s)) for i, s in rows]


def _welcome_of(engine: Engine, sub: Subscriber) -> OutboxMessage:
    with read_scope(engine) as session:
        return session.execute(
            select(OutboxMessage).where(
                col(OutboxMessage.subscriber_id) == sub.id,
                col(OutboxMessage.kind) == MessageKind.welcome,
            )
        ).scalar_one()


def test_a_receiver_down_for_an_hour_gets_every_event_once_signed(
    database_url: str,
    mail_server: MailServer,
    recorder: Recorder,
    make_settings: SettingsFactory,
    engine: Engine,
    short_course: Path,
) -> None:
    port = free_port()  # nothing listens there yet: the receiver is down
    settings = make_settings(
        database_url,
        mail_server.port,
        emails_dir=short_course,
        minutes_per_day=1,
        webhook_urls=f"http://127.0.0.1:{port}/drip",
    )
    recorder.on_data = lambda e: NO_SUCH_USER if "dan@" in str(e.rcpt_tos) else None
    _, bob, cat, _ = (
        subscriber(settings, f"{n}@example.com") for n in ("ann", "bob", "cat", "dan")
    )
    start = datetime.now().astimezone()  # after the confirmations, so they are due
    tick(settings, start)  # the welcomes; dan's bounces
    with session_scope(engine) as session:
        token = make_token(SECRET, bob.token_salt, "unsubscribe")
        assert unsubscribe(session, settings, token, start)
    complaint = Event(Kind.complaint, "test", message_id=_welcome_of(engine, cat).message_id)
    assert record_event(engine, settings, complaint, start) == "recorded"
    for minute in range(1, 11):  # ann's two lessons, a minute a course day
        tick(settings, start + timedelta(minutes=minute))
    assert len(recorder.raw) == 3 + 2
    deferred = _webhook_attempts(engine)
    assert deferred and all(status == OutboxStatus.deferred for _, status in deferred)

    receiver = Receiver()
    back = start + timedelta(hours=1)
    with receiving(receiver, port):
        tick(settings, back)
        got = receiver.wait_for(10)
        tick(settings, back + timedelta(hours=8))  # every retry time has passed
        tick(settings, back + timedelta(days=2))
    assert len(receiver.requests) == 10

    secret = hooks.signing_secret(settings)
    bodies = []
    for request in got:
        assert request.path == "/drip"
        assert request.headers["Content-Type"] == "application/json"
        signed = request.headers[hooks.SIGNATURE_HEADER]
        assert hooks.verify(secret, signed, request.body, back), signed
        assert not hooks.verify(secret, signed, request.body + b" ", back)
        body = json.loads(request.body)
        assert body["id"] == request.headers[hooks.ID_HEADER]
        assert body["type"] == request.headers[hooks.EVENT_HEADER]
        bodies.append(body)
    assert len({b["id"] for b in bodies}) == 10  # each event exactly once
    seen = Counter((b["type"], b["data"]["subscriber"]["email"]) for b in bodies)
    assert seen == Counter(
        {
            **{
                ("subscriber.confirmed", f"{n}@example.com"): 1
                for n in ("ann", "bob", "cat", "dan")
            },
            ("lesson.sent", "ann@example.com"): 2,
            ("course.completed", "ann@example.com"): 1,
            ("subscriber.unsubscribed", "bob@example.com"): 1,
            ("subscriber.complained", "cat@example.com"): 1,
            ("subscriber.bounced", "dan@example.com"): 1,
        }
    )
    lessons = sorted(b["data"]["lesson"]["number"] for b in bodies if b["type"] == "lesson.sent")
    assert lessons == [1, 2]
    # The send log says it as it was: one `sent` per event, after the deferrals.
    sent = Counter(i for i, status in _webhook_attempts(engine) if status == OutboxStatus.sent)
    assert len(sent) == 10 and set(sent.values()) == {1}
    assert {r.status for r in outbox(engine) if r.kind == MessageKind.webhook} == {"sent"}


def test_a_4xx_fails_for_good_and_408_429_5xx_are_retried(
    database_url: str,
    mail_server: MailServer,
    make_settings: SettingsFactory,
    engine: Engine,
) -> None:
    port = free_port()
    settings = make_settings(
        database_url, mail_server.port, webhook_urls=f"http://127.0.0.1:{port}/"
    )
    receiver = Receiver(status=429)
    with receiving(receiver, port):
        subscriber(settings, "ann@example.com")
        start = datetime.now().astimezone()  # after the events, so they are due
        tick(settings, start)
        assert len(receiver.wait_for(1)) == 1
        receiver.status = 410
        tick(settings, start + timedelta(hours=1))
        assert len(receiver.wait_for(2)) == 2
        tick(settings, start + timedelta(hours=9))  # before the first lesson is due
    assert len(receiver.requests) == 2
    assert [s for _, s in _webhook_attempts(engine)] == [OutboxStatus.deferred, OutboxStatus.failed]
    [row] = [r for r in outbox(engine) if r.kind == MessageKind.webhook]
    assert (row.status, row.last_smtp_code) == (OutboxStatus.failed, 410)
    assert row.last_smtp_message == f"HTTP 410 from 127.0.0.1:{port}"
    # Not mail: the welcome alone counts, for sender health, the dashboard and /metrics.
    with read_scope(engine) as session:
        assert rates_since(session, start - timedelta(days=1)).delivered == 1
        board = dashboard(session, start + timedelta(hours=9))
    assert board.last_30_days == {"sent": 1, "deferred": 0, "failed": 0, "bounced": 0}
    assert board.waiting == 0
    text = metrics.render(engine, lambda: start + timedelta(hours=9)).decode()
    assert 'drip_outbox_messages{status="sent"} 1.0' in text
    assert 'drip_outbox_messages{status="failed"}' not in text
    assert 'drip_webhook_messages{status="failed"} 1.0' in text


def test_webhooks_go_on_while_the_smtp_server_is_down(
    database_url: str, make_settings: SettingsFactory, engine: Engine
) -> None:
    port = free_port()
    settings = make_settings(database_url, free_port(), webhook_urls=f"http://127.0.0.1:{port}/")
    receiver = Receiver()
    with receiving(receiver, port):
        for n in range(5):
            subscriber(settings, f"r{n}@example.com")
        report = tick(settings, datetime.now().astimezone())
        assert len(receiver.wait_for(5)) == 5
    assert report.delivery.halted and "cannot connect" in report.delivery.halted
    rows = outbox(engine)
    assert {r.status for r in rows if r.kind == MessageKind.webhook} == {OutboxStatus.sent}
    welcomes = [r for r in rows if r.kind == MessageKind.welcome]
    # As before: at most one attempt per connection slot, the rest kept for the next pass.
    assert sum(r.status == OutboxStatus.deferred for r in welcomes) <= settings.smtp_concurrency
    assert all(r.status in (OutboxStatus.deferred, OutboxStatus.queued) for r in welcomes)


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (200, Verdict.sent),
        (204, Verdict.sent),
        (400, Verdict.failed),
        (404, Verdict.failed),
        (408, Verdict.deferred),
        (429, Verdict.deferred),
        (500, Verdict.deferred),
        (503, Verdict.deferred),
        (302, Verdict.deferred),
    ],
)
def test_http_answers_are_judged(code: int, verdict: Verdict) -> None:
    assert judge(code, "https://user:pw@hooks.example.com:8443/x").verdict == verdict
    assert "pw" not in judge(code, "https://user:pw@hooks.example.com:8443/x").message


def test_the_signature_scheme() -> None:
    now = datetime.fromisoformat("2026-01-02T03:04:05+00:00")
    body = b'{"id":"evt_1"}'
    header = hooks.signature("whsec_x", int(now.timestamp()), body)
    assert header.startswith(f"t={int(now.timestamp())},v1=")
    assert hooks.verify("whsec_x", header, body, now + timedelta(seconds=60))
    assert not hooks.verify("whsec_y", header, body, now)
    assert not hooks.verify("whsec_x", header, body + b"x", now)
    assert not hooks.verify("whsec_x", header, body, now + timedelta(minutes=10))
    forged = header.replace(f"t={int(now.timestamp())}", f"t={int(now.timestamp()) + 1}")
    assert not hooks.verify("whsec_x", forged, body, now)


def test_the_secret_is_derived_unless_set(
    database_url: str, make_settings: SettingsFactory
) -> None:
    derived = hooks.signing_secret(make_settings(database_url, 25))
    assert derived.startswith("whsec_") and SECRET not in derived
    assert derived == hooks.signing_secret(make_settings(database_url, 25))
    given = make_settings(database_url, 25, webhook_secret="whsec_mine")
    assert hooks.signing_secret(given) == "whsec_mine"


def test_no_urls_no_rows(settings: Settings, engine: Engine) -> None:
    subscriber(settings, "ann@example.com")
    assert [r.kind for r in outbox(engine)] == [MessageKind.welcome]


def test_erasing_a_subscriber_anonymises_their_events(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory, engine: Engine
) -> None:
    settings = make_settings(
        database_url, mail_server.port, webhook_urls="http://127.0.0.1:9/a,http://127.0.0.1:9/b"
    )
    sub = subscriber(settings, "Private.Person@example.com", name="Pat")
    assert sub.id is not None
    with read_scope(engine) as session:
        exported = subscriber_data(session, sub.id)
    assert exported is not None
    assert [(e["type"], e["to"]) for e in exported["webhook_events"]] == [
        ("subscriber.confirmed", "127.0.0.1:9"),
        ("subscriber.confirmed", "127.0.0.1:9"),
    ]
    with session_scope(engine) as session:
        assert forget_subscriber(session, settings, sub.id, datetime.now().astimezone())
    events = [r for r in outbox(engine) if r.kind == MessageKind.webhook]
    # Confirmed and unsubscribed (the erasure), once per URL.
    assert Counter(r.template for r in events) == {
        "subscriber.confirmed": 2,
        "subscriber.unsubscribed": 2,
    }
    for row in events:
        assert "private.person" not in json.dumps(row.context).lower()
        who = json.loads(row.context["body"])["data"]["subscriber"]
        assert (who["email"], who["name"]) == (f"deleted-{sub.id}@invalid", "")


def test_drip_webhooks_secret_prints_the_signing_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from drip.cli import app
    from drip.settings import load_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRIP_SECRET_KEY", SECRET)
    result = CliRunner().invoke(app, ["webhooks", "secret"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == hooks.signing_secret(load_settings())
    monkeypatch.setenv("DRIP_WEBHOOK_SECRET", "whsec_chosen")
    assert CliRunner().invoke(app, ["webhooks", "secret"]).stdout.strip() == "whsec_chosen"
