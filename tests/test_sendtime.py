"""When a lesson may go: the send window, the send days and the newsletter's day, in the
reader's time zone, driven by scheduler passes at given times (`drip tick --now`)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, select

from drip import check, newsletter
from drip.clock import utcnow
from drip.course import CourseError, load_course
from drip.db import session_scope
from drip.models import CourseProgress, MessageKind, OutboxMessage, OutboxStatus
from drip.sendtime import send_moment
from drip.settings import Settings
from tests.conftest import EMAILS, SettingsFactory
from tests.factories import course_dir, subscriber, tick
from tests.mailserver import MailServer, Recorder

WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
AUCKLAND = ZoneInfo("Pacific/Auckland")


def test_send_days_are_read_in_any_case_and_default_to_every_day(tmp_path: Path) -> None:
    assert load_course(EMAILS).send_days == frozenset(range(7))
    assert load_course(EMAILS).newsletter_same_day is False
    emails = course_dir(tmp_path / "e", send_days=["Mon", "wed", "FRI"], newsletter_same_day=True)
    course = load_course(emails)
    assert course.send_days == {0, 2, 4}
    assert course.newsletter_same_day is True


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (["mon", "funday"], "send_days: 'funday' is not a day; use mon, tue"),
        ([], "send_days must be a list of days"),
        ("mon", "send_days must be a list of days"),
        ([1, 2], "send_days: 1 is not a day"),
    ],
)
def test_a_wrong_send_day_is_named_plainly(tmp_path: Path, value: object, said: str) -> None:
    emails = course_dir(tmp_path / "e", send_days=value)
    with pytest.raises(CourseError) as caught:
        load_course(emails)
    assert len(caught.value.problems) == 1
    assert said in caught.value.problems[0]
    assert str(emails / "course.toml") in caught.value.problems[0]


def test_drip_check_names_a_wrong_send_day(
    tmp_path: Path, database_url: str, make_settings: SettingsFactory
) -> None:
    emails = course_dir(tmp_path / "e", send_days=["mon", "sat_"])
    found = check.problems(make_settings(database_url, 2525, emails_dir=emails))
    days = "mon, tue, wed, thu, fri, sat, sun"
    assert f"{emails / 'course.toml'}: send_days: 'sat_' is not a day; use {days}" in found


def test_newsletter_same_day_must_be_true_or_false(tmp_path: Path) -> None:
    with pytest.raises(CourseError, match="newsletter_same_day must be true or false"):
        load_course(course_dir(tmp_path / "e", newsletter_same_day="yes"))


def test_the_send_moment_skips_excluded_and_busy_days(tmp_path: Path) -> None:
    course = load_course(course_dir(tmp_path / "e", send_days=WEEKDAYS))
    friday_noon = datetime(2026, 11, 27, 12, 0, tzinfo=AUCKLAND).astimezone(UTC)
    monday_eight = datetime(2026, 11, 30, 8, 0, tzinfo=AUCKLAND)
    assert send_moment(friday_noon, "Pacific/Auckland", course) == monday_eight
    # Friday in the window stays; a newsletter's Monday moves the lesson to Tuesday.
    friday_nine = datetime(2026, 11, 27, 9, 0, tzinfo=AUCKLAND)
    assert send_moment(friday_nine, "Pacific/Auckland", course) == friday_nine
    busy = {date(2026, 11, 30)}
    assert send_moment(friday_noon, "Pacific/Auckland", course, busy) == monday_eight + timedelta(
        days=1
    )


def _next_saturday_noon() -> datetime:
    """A Saturday noon in Auckland, a few days from now (the clock then travels on)."""
    local = (utcnow() + timedelta(days=2)).astimezone(AUCKLAND)
    day = local.date() + timedelta(days=(5 - local.weekday()) % 7)
    return datetime.combine(day, time(12), AUCKLAND).astimezone(UTC)


def _course_mail(engine: Engine) -> list[OutboxMessage]:
    with session_scope(engine) as session:
        return list(
            session.execute(
                select(OutboxMessage)
                .where(OutboxMessage.status == OutboxStatus.sent)
                .order_by(OutboxMessage.sent_at)
            ).scalars()
        )


def test_a_weekday_course_sends_no_lesson_at_the_weekend(
    database_url: str,
    engine: Engine,
    mail_server: MailServer,
    recorder: Recorder,
    make_settings: SettingsFactory,
    tmp_path: Path,
) -> None:
    """Passes every two hours for five weeks: the welcome goes at once on a Saturday, and
    all nine lessons on weekdays, in the reader's time zone (Auckland, a day ahead of UTC
    at times), inside the window."""
    emails = course_dir(tmp_path / "emails", send_days=WEEKDAYS)
    settings = make_settings(database_url, mail_server.port, emails_dir=emails)
    start = _next_saturday_noon()
    subscriber(settings, "kiri@example.com", now=start, timezone="Pacific/Auckland")
    at = start
    while at < start + timedelta(days=35):
        tick(settings, at)
        at += timedelta(hours=2)
    sent = _course_mail(engine)
    welcome, *lessons = sent
    assert welcome.kind == MessageKind.welcome
    assert welcome.sent_at is not None
    assert welcome.sent_at < start + timedelta(minutes=5)
    assert [m.kind for m in lessons] == [MessageKind.lesson] * 9
    for lesson in lessons:
        assert lesson.sent_at is not None
        local = lesson.sent_at.astimezone(AUCKLAND)
        assert local.weekday() < 5, (lesson.template, local)
        assert time(8) <= local.time() <= time(10, 5), (lesson.template, local)
    assert len(recorder.messages) == 10


def _letter(tmp_path: Path) -> newsletter.Letter:
    path = tmp_path / "news.md"
    path.write_text("---\nsubject: News\n---\nHello.\n")
    return newsletter.parse(path)


@pytest.mark.parametrize("same_day", [False, True])
def test_a_lesson_waits_a_day_after_a_newsletter_unless_the_course_allows_it(
    database_url: str,
    engine: Engine,
    mail_server: MailServer,
    make_settings: SettingsFactory,
    tmp_path: Path,
    same_day: bool,
) -> None:
    emails = course_dir(tmp_path / "emails", newsletter_same_day=same_day)
    settings = make_settings(database_url, mail_server.port, emails_dir=emails)
    sub = subscriber(settings, "nel@example.com", newsletter=True)
    tick(settings)  # the welcome
    due = _next_due(settings, sub.id)
    # The newsletter goes the same morning, a minute before the lesson is due.
    newsletter.queue(settings, engine, _letter(tmp_path), due - timedelta(minutes=1))
    tick(settings, due - timedelta(minutes=1))
    tick(settings, due)
    lessons = [m for m in _course_mail(engine) if m.kind == MessageKind.lesson]
    if same_day:
        assert len(lessons) == 1
        return
    assert lessons == []
    moved = _next_due(settings, sub.id)
    assert moved.date() == due.date() + timedelta(days=1)
    assert moved.time() == time(8)
    tick(settings, moved)
    [lesson] = [m for m in _course_mail(engine) if m.kind == MessageKind.lesson]
    assert lesson.sent_at is not None
    assert lesson.sent_at.date() == moved.date()


def _next_due(settings: Settings, subscriber_id: int | None) -> datetime:
    from drip.db import get_engine

    with session_scope(get_engine(settings.database_url)) as session:
        progress = session.get(CourseProgress, subscriber_id)
        assert progress is not None
        assert progress.next_due_at is not None
        return progress.next_due_at
