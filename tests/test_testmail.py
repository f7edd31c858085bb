"""`drip send-test`: one email to one address now, marked as a test, outside the course."""

from __future__ import annotations

import re
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from drip import health
from drip.clock import utcnow
from drip.dashboard import dashboard
from drip.db import read_scope, session_scope
from drip.models import CourseProgress, MessageKind, OutboxMessage
from drip.settings import Settings
from tests.factories import subscriber, tick
from tests.mailserver import Recorder
from tests.processes import command_env

LESSON = "lesson-03-pressure-release"


def _send_test(settings: Settings, *args: str) -> tuple[int, str, str]:
    from drip.cli import app

    env = command_env(settings, DRIP_SEND_RATE="0")
    result = CliRunner().invoke(app, ["send-test", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def _progress(engine: Engine, subscriber_id: int | None) -> tuple[object, ...]:
    with session_scope(engine) as session:
        row = session.get(CourseProgress, subscriber_id)
        assert row is not None
        return (row.lessons_sent, row.last_sent_at, row.next_due_at, row.finished_at)


def _course_rows(engine: Engine) -> list[tuple[str, str]]:
    with session_scope(engine) as session:
        return [
            (str(kind), template)
            for kind, template in session.execute(
                select(OutboxMessage.kind, OutboxMessage.template)
                .where(OutboxMessage.kind != MessageKind.test)
                .order_by(OutboxMessage.id)
            )
        ]


def _text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_a_lesson_sent_as_a_test_to_a_subscriber_leaves_their_course_as_it_was(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    ann = subscriber(settings, "ann@example.com", name="Ann Lee")
    tick(settings)  # the welcome: the course is under way, lesson one due in a day
    recorder.wait_for(1)
    before, rows_before = _progress(engine, ann.id), _course_rows(engine)

    code, out, err = _send_test(settings, LESSON, "--to", "ANN@example.com")
    assert code == 0, err
    assert "sent a test of lesson-03-pressure-release to ann@example.com" in out
    assert "their subscriber data" in out
    [_, message] = recorder.wait_for(2)
    assert message["To"] == "Ann Lee <ann@example.com>"
    assert message["Subject"].startswith("[Test] ")
    assert "Lesson 3 of 9" in message["Subject"]
    assert message["X-Drip-Test"] == "yes"
    assert message["List-Unsubscribe"] is not None  # their own, working link
    assert "Hi Ann," in _text(message)

    # Nothing of the course moved: no lesson queued or counted, the next one as due.
    assert _progress(engine, ann.id) == before
    assert _course_rows(engine) == rows_before
    tick(settings)
    assert _progress(engine, ann.id) == before
    assert len(recorder.raw) == 2
    # In the send log as a test; out of the dashboard's and sender health's counts.
    with read_scope(engine) as session:
        [test_row] = session.execute(
            select(OutboxMessage).where(OutboxMessage.kind == MessageKind.test)
        ).scalars()
        assert test_row.status == "sent"
        assert test_row.email == "ann@example.com"
        now = utcnow()
        assert dashboard(session, now).today["sent"] == 1
        assert health.rates_since(session, now - timedelta(days=1)).delivered == 1


def test_the_welcome_with_its_pack_to_an_address_that_is_no_subscriber(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    code, out, err = _send_test(settings, "welcome", "--to", "me@example.org")
    assert code == 0, err
    assert "sample data (not a subscriber)" in out
    [message] = recorder.wait_for(1)
    assert message["To"] == "me@example.org"
    assert message["Subject"].startswith("[Test] ")
    assert message["X-Drip-Test"] == "yes"
    assert message["List-Unsubscribe"] is None  # nobody to unsubscribe
    [pack] = list(message.iter_attachments())
    assert pack.get_content_type() == "application/pdf"
    assert "Hi Sam," in _text(message)
    assert _course_rows(engine) == []
    with session_scope(engine) as session:
        assert session.execute(select(func.count()).select_from(CourseProgress)).scalar_one() == 0


def test_a_newsletter_file_as_a_test_greets_the_subscriber(
    settings: Settings, engine: Engine, recorder: Recorder, tmp_path: Path
) -> None:
    subscriber(settings, "bob@example.com", name="Bob", start=False)
    path = tmp_path / "spring.md"
    path.write_text("---\nsubject: Spring news for {{ name }}\n---\nHi **{{ name }}**!\n")
    code, _, err = _send_test(settings, str(path), "--to", "bob@example.com")
    assert code == 0, err
    [message] = recorder.wait_for(1)
    assert message["Subject"] == "[Test] Spring news for Bob"
    assert _text(message).startswith("Hi Bob!")
    with session_scope(engine) as session:
        kinds = set(session.execute(select(OutboxMessage.kind)).scalars())
    assert kinds == {MessageKind.test}  # no newsletter queued, and none recorded
    code, _, err = _send_test(settings, str(path), "--to", "bob@example.com")
    assert code == 0, err  # a test can be sent again: each is its own message
    assert len(recorder.wait_for(2)) == 2


def test_a_confirmation_test_carries_no_name(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    subscriber(settings, "cat@example.com", name="Cat Stevens", active=False)
    recorder_before = len(recorder.raw)
    code, _, err = _send_test(settings, "confirm", "--to", "cat@example.com")
    assert code == 0, err
    message = recorder.wait_for(recorder_before + 1)[-1]
    assert message["Subject"].startswith("[Test] ")
    assert message["To"] == "cat@example.com"
    assert "Cat" not in _text(message)
    assert re.search(r"/confirm/\S+", _text(message))


def test_unknown_names_and_bad_addresses_are_refused_before_anything_is_queued(
    settings: Settings, engine: Engine, recorder: Recorder, tmp_path: Path
) -> None:
    code, _, err = _send_test(settings, "lesson-99", "--to", "me@example.org")
    assert code == 2
    assert "drip: no email named 'lesson-99'" in err
    code, _, err = _send_test(settings, LESSON, "--to", "not-an-address")
    assert code == 2
    assert "drip: --to 'not-an-address':" in err
    broken = tmp_path / "broken.md"
    broken.write_text("---\nsubject: Hi\n---\n{{ nmae }}\n")
    code, _, err = _send_test(settings, str(broken), "--to", "me@example.org")
    assert code == 2
    assert "broken.md, line 4: 'nmae' is undefined" in err
    with session_scope(engine) as session:
        assert session.execute(select(func.count()).select_from(OutboxMessage)).scalar_one() == 0
    assert recorder.raw == []


def test_no_test_goes_to_an_address_that_bounced(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    from drip.models import Subscriber, SubscriberStatus

    gone = subscriber(settings, "gone@example.com", start=False)
    with session_scope(engine) as session:
        row = session.get(Subscriber, gone.id)
        assert row is not None
        row.status = SubscriberStatus.bounced
    code, _, err = _send_test(settings, "welcome", "--to", "gone@example.com")
    assert code == 1
    assert "not sent (skipped): the subscriber is bounced" in err
    assert recorder.raw == []
