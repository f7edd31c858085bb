"""The author edits the course while readers are on it (README: "Changing the course mid-way").

Each test drives `drip tick --now` day by day with a real SMTP recorder: readers on the
course, then an edit of emails/course.toml (or a lesson's text), then the rest of the
course. What each reader got follows the written rule; nobody gets a lesson twice,
and no two lessons reach a reader less than a day apart (no burst). `drip check`
says what the edit will do before the next pass applies it.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope
from sqlalchemy import Engine, select
from starlette.exceptions import StarletteDeprecationWarning
from typer.testing import CliRunner

from drip.cli import app
from drip.clock import utcnow
from drip.db import get_engine, read_scope, session_scope
from drip.models import MessageKind, OutboxMessage, OutboxStatus
from drip.settings import Settings
from drip.subscribers import activate, add_subscriber
from drip.versions import template_version
from tests.conftest import EMAILS, SECRET, SettingsFactory
from tests.factories import tick
from tests.mailserver import MAILBOX_BUSY, MailServer, Recorder
from tests.processes import command_env

#: The templates the test course's lessons use, by slug.
TEMPLATES = {
    "a": "lesson-01-what-trigger-points-are",
    "b": "lesson-02-finding-trigger-points",
    "c": "lesson-03-pressure-release",
    "d": "lesson-04-gluteus-minimus",
    "x": "lesson-05-trigger-point-or-sciatica",
}
#: Passes this far apart: lessons one day apart go out within a quarter of a day.
STEP = timedelta(hours=6)


def write_course(emails: Path, slugs: list[str], skip_if_past: tuple[str, ...] = ()) -> None:
    """A course of these lessons, a day apart, sent at any hour."""
    text = '[course]\ntitle = "Edits"\nsend_window = "00:00-23:59"\n'
    for slug in slugs:
        text += (
            f'\n[[lesson]]\nslug = "{slug}"\ntemplate = "{TEMPLATES[slug]}"\n'
            f'title = "Lesson {slug}"\ndelay_days = 1\n'
        )
        if slug in skip_if_past:
            text += "skip_if_past = true\n"
    (emails / "course.toml").write_text(text)


@pytest.fixture
def emails(tmp_path: Path) -> Path:
    folder = tmp_path / "emails"
    shutil.copytree(EMAILS, folder)
    write_course(folder, ["a", "b", "c", "d"])
    return folder


@pytest.fixture
def settings(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory, emails: Path
) -> Settings:
    return make_settings(
        database_url, mail_server.port, emails_dir=emails, info_pack=emails / "info-pack.pdf"
    )


class Days:
    """The test's clock: passes every STEP from the first signup on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.now = utcnow()

    def signup(self, email: str) -> None:
        """A reader confirms now (on the test's clock): the welcome is queued."""
        with session_scope(get_engine(self.settings.database_url)) as session:
            sub, _ = add_subscriber(
                session, self.settings, email=email, name="Sam", source="test", now=self.now
            )
            activate(session, self.settings, sub, self.now)

    def run(self, days: float) -> None:
        end = self.now + timedelta(days=days)
        while self.now < end:
            self.step()

    def step(self) -> None:
        tick(self.settings, self.now)
        self.now += STEP

    def until(self, what: str, condition: Callable[[], bool], days: float = 4) -> None:
        """Pass after pass until `condition` holds (each send moves the next lesson's
        time on by the pass's own seconds, so lessons drift off the passes' grid)."""
        end = self.now + timedelta(days=days)
        while not condition():
            assert self.now < end, f"no {what} within {days} days"
            self.step()


def lessons_of(engine: Engine, email: str) -> list[tuple[str, datetime, str | None]]:
    """The lessons a reader was sent, in order: (slug, when, version)."""
    with read_scope(engine) as session:
        rows = session.execute(
            select(OutboxMessage)
            .where(OutboxMessage.email == email, OutboxMessage.kind == MessageKind.lesson)
            .where(OutboxMessage.status == OutboxStatus.sent)
        ).scalars()
        sent = [(r.context["slug"], r.sent_at, r.version) for r in rows]
    return sorted(sent, key=lambda item: item[1])  # type: ignore[arg-type,return-value]


def deferred(engine: Engine) -> list[str]:
    with read_scope(engine) as session:
        rows = session.execute(
            select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.deferred)
        ).scalars()
        return [r.context["slug"] for r in rows]


def slugs_of(engine: Engine, email: str) -> list[str]:
    return [slug for slug, _, _ in lessons_of(engine, email)]


def assert_no_repeat_no_burst(engine: Engine, recorder: Recorder, emails: list[str]) -> None:
    """Each reader got each lesson once (in the database and at the SMTP server), and
    never two course emails within a day of each other."""
    for address in emails:
        sent = lessons_of(engine, address)
        slugs = [slug for slug, _, _ in sent]
        assert len(slugs) == len(set(slugs)), f"{address} got a lesson twice: {slugs}"
        times = [at for _, at, _ in sent]
        for earlier, later in zip(times, times[1:], strict=False):
            assert later - earlier >= timedelta(hours=23), f"{address}: a burst at {later}"
        received = [
            m["Subject"].split(":", 1)[1]
            for m in recorder.messages
            if m["To"].addresses[0].addr_spec == address and m["Subject"].startswith("Lesson")
        ]
        assert sorted(Counter(received).values(), reverse=True)[:1] == [1], received
        assert len(received) == len(slugs), (received, slugs)


def check_says(settings: Settings) -> str:
    """`drip check`'s words on the course as it is now; it must exit 0 for them."""
    env = command_env(settings, COLUMNS="300")
    result = CliRunner().invoke(app, ["check"], env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return " ".join(result.stdout.split())


def at_a_b_and_a(settings: Settings, engine: Engine) -> Days:
    """P has had lessons a and b, Q lesson a."""
    days = Days(settings)
    days.signup("p@example.com")
    days.until("lesson a for p", lambda: slugs_of(engine, "p@example.com") == ["a"])
    days.signup("q@example.com")
    days.until("lesson a for q", lambda: slugs_of(engine, "q@example.com") == ["a"])
    days.until("lesson b for p", lambda: slugs_of(engine, "p@example.com") == ["a", "b"])
    assert slugs_of(engine, "q@example.com") == ["a"]
    return days


def test_a_lesson_inserted_before_a_reader_comes_next_for_them_then_the_rest(
    settings: Settings, engine: Engine, recorder: Recorder, emails: Path
) -> None:
    days = at_a_b_and_a(settings, engine)

    write_course(emails, ["a", "x", "b", "c", "d"])
    said = check_says(settings)
    assert "lesson 'x' is new or moved up: 1 reader past it will get it next" in said, said

    days.run(8)
    assert slugs_of(engine, "p@example.com") == ["a", "b", "x", "c", "d"]
    assert slugs_of(engine, "q@example.com") == ["a", "x", "b", "c", "d"]
    assert_no_repeat_no_burst(engine, recorder, ["p@example.com", "q@example.com"])


def test_a_lesson_marked_skip_if_past_goes_only_to_readers_not_yet_past_it(
    settings: Settings, engine: Engine, recorder: Recorder, emails: Path
) -> None:
    days = at_a_b_and_a(settings, engine)

    write_course(emails, ["a", "x", "b", "c", "d"], skip_if_past=("x",))
    said = check_says(settings)
    assert "1 reader past it will skip it (skip_if_past)" in said, said

    days.run(8)
    assert slugs_of(engine, "p@example.com") == ["a", "b", "c", "d"]
    assert slugs_of(engine, "q@example.com") == ["a", "x", "b", "c", "d"]
    assert_no_repeat_no_burst(engine, recorder, ["p@example.com", "q@example.com"])


def test_a_removed_lesson_is_not_sent_and_its_readers_move_on_without_a_burst(
    settings: Settings, engine: Engine, recorder: Recorder, emails: Path
) -> None:
    """R has lesson b queued (its first try deferred) when b is removed; P waits for b."""
    days = Days(settings)
    days.signup("r@example.com")
    days.until("lesson a for r", lambda: slugs_of(engine, "r@example.com") == ["a"])
    days.signup("p@example.com")

    def defer_r(envelope: Envelope) -> str | None:
        return MAILBOX_BUSY if "r@example.com" in envelope.rcpt_tos else None

    recorder.on_data = defer_r
    days.until("lesson b deferred for r", lambda: deferred(engine) == ["b"])
    recorder.on_data = None
    days.until("lesson a for p", lambda: slugs_of(engine, "p@example.com") == ["a"])
    assert slugs_of(engine, "r@example.com") == ["a"]

    write_course(emails, ["a", "c", "d"])
    said = check_says(settings)
    assert "lesson 'b' was removed: 1 reader who had it queued will not get it" in said, said
    assert "move on to 'c'" in said, said
    assert "1 reader still without it will not get it" in said, said

    days.run(6)
    assert slugs_of(engine, "r@example.com") == ["a", "c", "d"]
    assert slugs_of(engine, "p@example.com") == ["a", "c", "d"]
    assert_no_repeat_no_burst(engine, recorder, ["p@example.com", "r@example.com"])
    with read_scope(engine) as session:
        skipped = session.execute(
            select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.skipped)
        ).scalar_one()
    assert skipped.context["slug"] == "b"
    assert skipped.last_smtp_message == "lesson 'b' was removed from the course"


def test_reordered_lessons_come_in_the_new_order_and_none_twice(
    settings: Settings, engine: Engine, recorder: Recorder, emails: Path
) -> None:
    days = at_a_b_and_a(settings, engine)

    write_course(emails, ["b", "a", "d", "c"])
    said = check_says(settings)
    assert (
        "lesson 'b' now comes before lessons some readers already had: "
        "1 reader past it will get it next"
    ) in said, said

    days.run(8)
    assert slugs_of(engine, "p@example.com") == ["a", "b", "d", "c"]
    assert slugs_of(engine, "q@example.com") == ["a", "b", "d", "c"]
    assert_no_repeat_no_burst(engine, recorder, ["p@example.com", "q@example.com"])


def test_a_typo_fix_reaches_readers_not_yet_at_the_lesson_and_nobody_twice(
    settings: Settings, engine: Engine, recorder: Recorder, emails: Path
) -> None:
    days = at_a_b_and_a(settings, engine)
    before = template_version(emails, TEMPLATES["b"])
    assert lessons_of(engine, "p@example.com")[1][::2] == ("b", before)

    for suffix in (".html", ".txt"):
        path = emails / f"{TEMPLATES['b']}{suffix}"
        path.write_text(path.read_text().replace("Where to look", "Where to look first"))
    after = template_version(emails, TEMPLATES["b"])
    assert after != before
    said = check_says(settings)
    assert f"lesson 'b' changed since it was last sent (version {before} → {after})" in said
    assert "1 reader not yet at it will get the new text; nobody gets it again" in said, said

    days.run(8)
    assert [v for s, _, v in lessons_of(engine, "p@example.com") if s == "b"] == [before]
    assert [v for s, _, v in lessons_of(engine, "q@example.com") if s == "b"] == [after]
    assert_no_repeat_no_burst(engine, recorder, ["p@example.com", "q@example.com"])
    fixed = [
        m
        for m in recorder.messages
        if m["To"].addresses[0].addr_spec == "q@example.com"
        and "Finding your trigger points" in m["Subject"]
    ]
    assert len(fixed) == 1
    assert "Where to look first" in fixed[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]

    # The send log says which version each reader got.
    env = {"DRIP_DATABASE_URL": settings.database_url, "DRIP_SECRET_KEY": SECRET}
    result = CliRunner().invoke(app, ["logs", "--json", "--kind", "lesson"], env=env)
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    got = {(e["email"], e["version"]) for e in lines if e["template"] == TEMPLATES["b"]}
    assert got == {("p@example.com", before), ("q@example.com", after)}
    assert all({"at", "email", "message_id", "smtp_code", "version"} <= set(e) for e in lines)


def test_the_admin_timeline_shows_the_version_each_message_carried(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory, emails: Path
) -> None:
    from tests.test_admin import PASSWORD, USER, _basic, admin_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StarletteDeprecationWarning)
        from fastapi.testclient import TestClient

    settings = make_settings(
        database_url,
        mail_server.port,
        emails_dir=emails,
        info_pack=emails / "info-pack.pdf",
        admin_user=USER,
        admin_password=PASSWORD,
    )
    engine = get_engine(settings.database_url)
    days = Days(settings)
    days.signup("p@example.com")
    days.until("lesson a", lambda: slugs_of(engine, "p@example.com") == ["a"])
    client = TestClient(admin_app(settings), headers=_basic(USER, PASSWORD))
    with read_scope(engine) as session:
        sub_id = session.execute(select(OutboxMessage.subscriber_id)).scalars().first()
    page = client.get(f"/admin/subscribers/{sub_id}").text
    for template in ("welcome", TEMPLATES["a"]):
        assert f"version <code>{template_version(emails, template)}</code>" in page
