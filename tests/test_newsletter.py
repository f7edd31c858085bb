"""Newsletters: queued once per active subscriber, resumable, delivered once."""

from __future__ import annotations

import re
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from drip import newsletter
from drip.clock import utcnow
from drip.db import session_scope
from drip.models import MessageKind, Newsletter, OutboxMessage, Subscriber, SubscriberStatus
from drip.settings import Settings
from tests.factories import many_active, tick
from tests.mailserver import Recorder
from tests.processes import command_env

LETTER = """---
subject: Spring update: hips & knees
---
Hello! This month: **three** quick releases for the hips.
"""


@pytest.fixture
def letter_file(tmp_path: Path) -> Path:
    path = tmp_path / "spring.md"
    path.write_text(LETTER)
    return path


def _queued(engine: Engine) -> int:
    with session_scope(engine) as session:
        return int(
            session.execute(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.kind == MessageKind.newsletter)
            ).scalar_one()
        )


def test_a_newsletter_sent_twice_reaches_each_subscriber_once(
    settings: Settings, engine: Engine, recorder: Recorder, letter_file: Path
) -> None:
    many_active(engine, 5000)
    letter = newsletter.parse(letter_file)
    assert newsletter.queue(settings, engine, letter, utcnow())[0] == 5000
    tick(settings)
    assert newsletter.queue(settings, engine, letter, utcnow())[0] == 0
    tick(settings)
    ids = recorder.message_ids()
    assert len(ids) == 5000
    assert len(set(ids)) == 5000
    first = recorder.messages[0]
    assert str(first["Subject"]) == "Spring update: hips & knees"
    html = first.get_body(("html",))
    assert html is not None
    assert "three</strong>" in html.get_content()
    assert first["List-Unsubscribe"] is not None


def test_queuing_resumes_after_a_crash(
    settings: Settings, engine: Engine, letter_file: Path
) -> None:
    subs = many_active(engine, 2500)
    letter = newsletter.parse(letter_file)
    # A run that died after its first batch: its record says how far it got.
    with session_scope(engine) as session:
        row = Newsletter(digest=letter.digest, subject=letter.subject, body_markdown=letter.body)
        session.add(row)
    newsletter.BATCH, saved = 1000, newsletter.BATCH
    try:
        calls: list[int] = []
        queued, remaining = newsletter.queue(
            settings, engine, letter, utcnow(), progress=calls.append
        )
    finally:
        newsletter.BATCH = saved
    assert queued == 2500
    assert remaining == 2500
    assert calls == [1000, 1000, 500]
    with session_scope(engine) as session:
        done = session.execute(select(Newsletter)).scalar_one()
        assert done.queued_through == subs[-1].id
        assert done.finished_at is not None
    assert newsletter.queue(settings, engine, letter, utcnow()) == (0, 0)
    assert _queued(engine) == 2500


def test_only_active_subscribers_get_it(
    settings: Settings, engine: Engine, letter_file: Path
) -> None:
    subs = many_active(engine, 10)
    with session_scope(engine) as session:
        for sub in subs[:3]:
            row = session.get(Subscriber, sub.id)
            assert row is not None
            row.status = SubscriberStatus.unsubscribed
    assert newsletter.queue(settings, engine, newsletter.parse(letter_file), utcnow())[0] == 7


def test_only_those_who_agreed_to_newsletters_get_it(
    settings: Settings, engine: Engine, letter_file: Path, recorder: Recorder
) -> None:
    """Course consent is not newsletter consent: the queue, the dry-run count and the
    delivery all leave out those who did not tick the box, or withdrew since."""
    agreed = many_active(engine, 4, prefix="y")
    many_active(engine, 3, prefix="n", newsletter=False)
    with session_scope(engine) as session:
        assert newsletter.count_recipients(session) == 4
    assert newsletter.queue(settings, engine, newsletter.parse(letter_file), utcnow())[0] == 4
    with session_scope(engine) as session:
        queued = set(
            session.execute(
                select(OutboxMessage.email).where(OutboxMessage.kind == MessageKind.newsletter)
            ).scalars()
        )
        assert queued == {s.email for s in agreed}
        changed = session.get(Subscriber, agreed[0].id)
        assert changed is not None
        changed.newsletter = False  # a later signup, confirmed, without the box ticked
    tick(settings)
    assert sorted(m["To"] for m in recorder.wait_for(3)) == sorted(s.email for s in agreed[1:])
    with session_scope(engine) as session:
        skipped = session.execute(
            select(OutboxMessage).where(OutboxMessage.email == agreed[0].email)
        ).scalar_one()
        assert skipped.status == "skipped"
        assert skipped.last_smtp_message == "the subscriber did not agree to newsletters"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("no front matter\n", "front-matter"),
        ("---\ntitle: x\n---\nbody\n", "subject"),
        ("---\nsubject: Hi\n---\n\n", "no text"),
    ],
)
def test_a_bad_file_is_refused_in_plain_words(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.md"
    path.write_text(text)
    with pytest.raises(newsletter.NewsletterError, match=problem):
        newsletter.parse(path)


def test_cli_dry_run_counts_and_queues_nothing(
    settings: Settings, engine: Engine, letter_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from drip.cli import app

    many_active(engine, 12)
    env = _cli_env(settings)
    result = CliRunner().invoke(app, ["newsletter", "send", str(letter_file), "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert "12 active subscribers who agreed to newsletters" in result.output
    assert _queued(engine) == 0
    result = CliRunner().invoke(app, ["newsletter", "send", str(letter_file)], env=env)
    assert result.exit_code == 0, result.output
    assert "for 12 subscribers" in result.output
    assert _queued(engine) == 12


def test_queued_rows_are_the_outbox_rows_enqueue_would_write(
    settings: Settings, engine: Engine, letter_file: Path
) -> None:
    from drip.sending.outbox import NewMessage, dedupe_key, enqueue_many

    subs = many_active(engine, 30)
    letter = newsletter.parse(letter_file)
    with session_scope(engine) as session:
        row = Newsletter(digest=letter.digest, subject=letter.subject, body_markdown=letter.body)
        session.add(row)
        session.flush()
        letter_id = row.id
        assert letter_id is not None
        # One subscriber already has it (queued by an earlier run): skipped, not counted.
        first = subs[0]
        assert first.id is not None
        enqueue_many(
            session,
            [
                NewMessage(
                    kind=MessageKind.newsletter,
                    template="newsletter",
                    email=first.email,
                    dedupe_key=dedupe_key(MessageKind.newsletter, first.id, letter_id),
                    due_at=row.created_at,
                    subscriber_id=first.id,
                    newsletter_id=letter_id,
                )
            ],
            settings.sender_address.domain,
            utcnow(),
        )
    assert newsletter.queue(settings, engine, letter, utcnow()) == (29, 30)
    with session_scope(engine) as session:
        rows = list(
            session.execute(
                select(OutboxMessage)
                .where(OutboxMessage.kind == MessageKind.newsletter)
                .order_by(OutboxMessage.subscriber_id)
            ).scalars()
        )
    assert [r.subscriber_id for r in rows] == [s.id for s in subs]
    for sub, out in zip(subs, rows, strict=True):
        assert sub.id is not None
        assert out.dedupe_key == dedupe_key(MessageKind.newsletter, sub.id, letter_id)
        assert out.email == sub.email
        assert out.newsletter_id == letter_id
        assert out.template == "newsletter"
        assert out.context == {}
        assert out.status == "queued"
        assert out.attempts == 0
        assert out.next_attempt_at == out.due_at
        assert out.due_at.tzinfo is not None
        assert out.message_id.startswith("<")
        assert out.message_id.endswith(f"@{settings.sender_address.domain}>")
    assert len({r.message_id for r in rows}) == 30


# -- newsletters worth writing: a template per reader, real text, preview, --again, --at --

PERSONAL = """---
subject: Spring news for {{ name }}
preheader: Three quick releases, {{ name }}, and a video.
---
Hi {{ name }},

This month: **three** quick releases for the hips. Watch the [video of the release](VIDEO)
first, then try them in order, one each day, for a whole week.

## What to try

- Press the **side** of the hip for ninety seconds, breathing slowly all the while, then let go.
- Walk, then [write to me](mailto:ann@example.com).
""".replace(
    "VIDEO",
    "https://example.com/videos/2026/spring/the-pressure-release-step-by-step-for-hips?utm=news",
)


def _cli_env(settings: Settings) -> dict[str, str]:
    return command_env(settings, DRIP_SEND_RATE="0")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _parts(message: EmailMessage) -> tuple[str, str]:
    html, text = message.get_body(("html",)), message.get_body(("plain",))
    assert html is not None and text is not None
    return html.get_content(), text.get_content()


def test_name_greets_each_reader_and_the_text_part_is_text(
    settings: Settings, engine: Engine, recorder: Recorder, tmp_path: Path
) -> None:
    from tests.factories import subscriber

    subscriber(settings, "ann@example.com", name="Ann Lee", newsletter=True, start=False)
    subscriber(settings, "bob@example.com", name="Bob", newsletter=True, start=False)
    subscriber(settings, "nameless@example.com", name="", newsletter=True, start=False)
    # A reader's own words are text, never markup: no bold, no link of theirs.
    subscriber(
        settings,
        "eve@example.com",
        name="[Eve](https://evil.example)",
        newsletter=True,
        start=False,
    )
    letter = newsletter.parse(_write(tmp_path, "spring.md", PERSONAL))
    assert newsletter.queue(settings, engine, letter, utcnow())[0] == 4
    tick(settings)
    by_reader = {m["To"].addresses[0].addr_spec: m for m in recorder.wait_for(4)}
    for email, greeting in [
        ("ann@example.com", "Ann"),
        ("bob@example.com", "Bob"),
        ("nameless@example.com", "there"),
    ]:
        message = by_reader[email]
        assert message["Subject"] == f"Spring news for {greeting}"
        html, text = _parts(message)
        assert f"Hi {greeting}," in text
        assert re.search(f"<p[^>]*>Hi {greeting},</p>", html)
        assert f">Three quick releases, {greeting}, and a video.</div>" in html  # preheader
        assert "{{" not in html + text
        assert "**" not in text and "](" not in text and "##" not in text
        assert "three quick releases" in text
        assert "video of the release (https://example.com/videos/" in " ".join(text.split())
        assert "WHAT TO TRY" in text
        assert "- Walk, then write to me (ann@example.com)." in text
        for line in text.splitlines():
            assert len(line) <= 78 or "://" in line, line
    html, text = _parts(by_reader["eve@example.com"])
    assert "evil.example" not in html.replace("[Eve](https://evil.example)", "")
    assert 'href="https://evil.example"' not in html
    assert "Hi [Eve](https://evil.example)," in text


def test_a_broken_template_is_refused_at_send_naming_the_line(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    from drip.cli import app

    many_active(engine, 3)
    env = _cli_env(settings)
    for body, problem in [
        ("Hello {{ nmae }}\n", "broken.md, line 6: 'nmae' is undefined"),
        ("Hello {% if name %}\n", "broken.md, line 6:"),
        ("Hello {{ name.__class__ }}\n", "broken.md, line 6:"),
    ]:
        path = _write(tmp_path, "broken.md", f"---\nsubject: Hi\n---\n\nFirst line.\n{body}")
        result = CliRunner().invoke(app, ["newsletter", "send", str(path)], env=env)
        assert result.exit_code == 2, result.output
        assert problem in result.stderr
        assert "Traceback" not in result.output
    assert _queued(engine) == 0


def test_preview_shows_the_authors_own_file(tmp_path: Path) -> None:
    from drip.cli import app
    from tests.conftest import EMAILS

    path = _write(tmp_path, "spring.md", PERSONAL)
    env = {"DRIP_EMAILS_DIR": str(EMAILS)}
    result = CliRunner().invoke(app, ["newsletter", "preview", str(path), "--text"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Subject: Spring news for Sam\n")
    assert "Hi Sam," in result.stdout
    assert "WHAT TO TRY" in result.stdout and "**" not in result.stdout
    result = CliRunner().invoke(app, ["newsletter", "preview", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert re.search("<strong[^>]*>three</strong> quick releases", result.stdout)
    assert "Three quick releases, Sam, and a video." in result.stdout


def test_the_same_subject_within_a_week_asks_for_again(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    from drip.cli import app

    many_active(engine, 5)
    env = _cli_env(settings)
    first = _write(tmp_path, "first.md", "---\nsubject: Spring news\n---\nHelo all.\n")
    fixed = _write(tmp_path, "fixed.md", "---\nsubject: Spring news\n---\nHello all.\n")
    result = CliRunner().invoke(app, ["newsletter", "send", str(first)], env=env)
    assert result.exit_code == 0, result.output
    # The same file again resumes: nothing asked, nothing queued twice.
    result = CliRunner().invoke(app, ["newsletter", "send", str(first)], env=env)
    assert result.exit_code == 0, result.output
    assert "for 0 subscribers" in result.stdout
    result = CliRunner().invoke(app, ["newsletter", "send", str(fixed)], env=env)
    assert result.exit_code == 1, result.output
    assert "'Spring news' went out" in result.stderr
    assert "--again" in result.stderr
    assert _queued(engine) == 5
    result = CliRunner().invoke(app, ["newsletter", "send", str(fixed), "--again"], env=env)
    assert result.exit_code == 0, result.output
    assert _queued(engine) == 10


def test_at_schedules_the_newsletter_and_refuses_the_past(
    settings: Settings, engine: Engine, recorder: Recorder, letter_file: Path
) -> None:
    from drip.cli import app

    many_active(engine, 3)
    env = _cli_env(settings)
    result = CliRunner().invoke(
        app, ["newsletter", "send", str(letter_file), "--at", "2020-01-01T08:00:00Z"], env=env
    )
    assert result.exit_code == 2, result.output
    assert "--at 2020-01-01T08:00:00Z: that time has passed" in result.stderr
    assert _queued(engine) == 0
    at = (utcnow() + timedelta(days=2)).replace(microsecond=0)
    result = CliRunner().invoke(
        app, ["newsletter", "send", str(letter_file), "--at", at.isoformat()], env=env
    )
    assert result.exit_code == 0, result.output
    assert f"for {at:%Y-%m-%d %H:%M} UTC for 3 subscribers" in result.stdout
    with session_scope(engine) as session:
        rows = list(
            session.execute(
                select(OutboxMessage).where(OutboxMessage.kind == MessageKind.newsletter)
            ).scalars()
        )
    assert [r.due_at for r in rows] == [at] * 3
    tick(settings, at - timedelta(minutes=1))
    assert recorder.raw == []
    tick(settings, at + timedelta(minutes=1))
    assert len(recorder.wait_for(3)) == 3
