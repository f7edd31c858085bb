"""Sender health: rates on the dashboard, newsletters paused over the limits, and resumed."""

from __future__ import annotations

import base64
import logging
import re
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from drip import health, newsletter
from drip.clock import utcnow
from drip.db import read_scope, session_scope
from drip.feedback import Event, Kind, Recorded, record_event
from drip.models import MessageKind, OutboxMessage, OutboxStatus
from drip.settings import Settings
from drip.web.app import create_app
from tests.conftest import SettingsFactory
from tests.factories import many_active, outbox, subscriber, tick
from tests.mailserver import NO_SUCH_USER, MailServer, Recorder
from tests.test_cli import _env, drip

USER, PASSWORD = "admin", "correct horse battery"


def letter(tmp_path: Path, subject: str) -> newsletter.Letter:
    path = tmp_path / f"{subject}.md"
    path.write_text(f"---\nsubject: {subject}\n---\nHello {{{{ name }}}}.\n")
    return newsletter.parse(path)


def sent_newsletters(engine: Engine, status: OutboxStatus = OutboxStatus.sent) -> int:
    with read_scope(engine) as session:
        return int(
            session.execute(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.kind == MessageKind.newsletter)
                .where(OutboxMessage.status == status)
            ).scalar_one()
        )


def test_bounces_over_the_limit_pause_newsletters_until_the_operator_resumes(
    database_url: str,
    mail_server: MailServer,
    recorder: Recorder,
    engine: Engine,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(
        database_url, mail_server.port, admin_user=USER, admin_password=PASSWORD
    )
    many_active(engine, 200)
    # 6 of 200 refused: 3% hard bounces, over the 2% limit.
    recorder.replies = [NO_SUCH_USER] * 6
    newsletter.queue(settings, engine, letter(tmp_path, "First"), utcnow())
    with caplog.at_level(logging.WARNING, logger="drip.health"):
        tick(settings)
    assert "newsletter sending paused: hard bounces at 3.00%" in caplog.text
    assert sent_newsletters(engine, OutboxStatus.bounced) == 6
    with read_scope(engine) as session:
        hold = health.hold(session)
        assert hold is not None
        assert hold.paused_at is not None
        assert hold.reason is not None
        assert "hard bounces at 3.00% (6 of 200" in hold.reason

    # Paused: a second newsletter stays queued; course mail still goes.
    newsletter.queue(settings, engine, letter(tmp_path, "Second"), utcnow())
    subscriber(settings, "new@example.com")
    before = sent_newsletters(engine)
    report = tick(settings)
    assert report.delivery.counts == {"sent": 1}  # the welcome
    assert sent_newsletters(engine) == before

    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    client = TestClient(create_app(settings), headers={"Authorization": f"Basic {token}"})
    page = client.get("/admin")
    assert page.status_code == 200
    assert "Newsletter sending is paused" in page.text
    assert "hard bounces at 3.00%" in page.text
    assert "Last 7 days" in page.text
    # The rates over a limit are marked, by the same rule that paused the newsletters.
    assert '<td class="num over">6 (3.00%)</td>' in page.text
    assert '<td class="num">0 (0.00%)</td>' in page.text
    assert "First" in page.text
    # The resume button needs the CSRF token.
    assert client.post("/admin/newsletters/resume", data={"csrf": "0" * 64}).status_code == 403
    with read_scope(engine) as session:
        assert health.held_kinds(session) == {MessageKind.newsletter}
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert csrf
    done = client.post(
        "/admin/newsletters/resume", data={"csrf": csrf.group(1)}, follow_redirects=False
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/admin?done=resumed"
    assert "Newsletter sending is paused" not in client.get("/admin").text

    # Resumed: the rest goes, and the old bounces do not pause it again.
    tick(settings)
    assert sent_newsletters(engine) == before + 194  # the 6 bounced are suppressed
    with read_scope(engine) as session:
        assert health.held_kinds(session) == frozenset()


def test_one_bounce_in_ten_is_too_few_to_judge(
    settings: Settings, engine: Engine, recorder: Recorder, tmp_path: Path
) -> None:
    many_active(engine, 10)
    recorder.replies = [NO_SUCH_USER]
    newsletter.queue(settings, engine, letter(tmp_path, "Small"), utcnow())
    tick(settings)
    assert sent_newsletters(engine, OutboxStatus.bounced) == 1  # 10%, but only 10 messages
    with read_scope(engine) as session:
        assert health.held_kinds(session) == frozenset()
        rates = health.rates_since(session, utcnow() - timedelta(days=7))
    assert (rates.delivered, rates.bounced, rates.complained) == (10, 1, 0)


def test_complaints_reported_later_count_and_pause(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    many_active(engine, 200)
    newsletter.queue(settings, engine, letter(tmp_path, "Loud"), utcnow())
    tick(settings)
    rows = [r for r in outbox(engine) if r.kind == MessageKind.newsletter]
    now = utcnow()
    # 1 of 200: 0.5%, over the 0.1% limit.
    complaint = Event(Kind.complaint, "sendgrid", message_id=rows[0].message_id)
    assert record_event(engine, settings, complaint, now) == Recorded.recorded
    with read_scope(engine) as session:
        board = health.health(settings, session, now)
    assert board.last_7_days.complained == 1
    assert board.last_7_days.delivered == 200
    [(subject, rates)] = board.newsletters
    assert subject == "Loud"
    assert rates.complaint_percent == 0.5
    reason = health.judge(settings, engine, now)
    assert reason is not None
    assert reason.startswith("complaints at 0.50%")


def test_drip_newsletter_resume(settings: Settings, engine: Engine) -> None:
    with session_scope(engine) as session:
        session.add(health.SendingHold(name="newsletter", paused_at=utcnow(), reason="test"))
    result = drip("newsletter", "resume", env=_env(settings))
    assert result.returncode == 0, result.stderr
    assert "resumed" in result.stdout, result.stderr
    again = drip("newsletter", "resume", env=_env(settings))
    assert again.returncode == 0
    assert "was not paused" in again.stdout
