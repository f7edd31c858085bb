"""The course over time, driven by scheduler passes at chosen moments (`drip tick --now`)."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select

from drip.clock import utcnow
from drip.course import load_course
from drip.db import session_scope
from drip.models import CourseProgress, MessageKind, OutboxStatus, Subscriber, SubscriberStatus
from drip.settings import Settings
from drip.subscribers import leave
from tests.conftest import EMAILS, SettingsFactory
from tests.factories import outbox, subscriber, tick
from tests.mailserver import MailServer, Recorder


def _next_due(engine: Engine, subscriber_id: int) -> datetime | None:
    with session_scope(engine) as session:
        progress = session.get(CourseProgress, subscriber_id)
        assert progress is not None
        return progress.next_due_at


def _set_timezone(engine: Engine, subscriber_id: int, tz: str) -> None:
    with session_scope(engine) as session:
        sub = session.get(Subscriber, subscriber_id)
        assert sub is not None
        sub.timezone = tz
        session.add(sub)


def test_a_subscriber_walks_through_the_whole_course(
    settings: Settings, recorder: Recorder, engine: Engine
) -> None:
    course = load_course(settings.emails_dir)
    sub = subscriber(settings, "walker@example.com")
    assert sub.id is not None
    _set_timezone(engine, sub.id, "America/New_York")
    tick(settings)
    assert [str(m["Subject"]) for m in recorder.wait_for(1)][0]  # the welcome, at once
    tz = ZoneInfo("America/New_York")
    for number in range(1, course.total + 1):
        due = _next_due(engine, sub.id)
        assert due is not None, f"lesson {number} was never scheduled"
        local = due.astimezone(tz)
        assert course.window_start <= local.time() < course.window_end
        # A minute early: nothing. On time: the lesson.
        tick(settings, due - timedelta(minutes=1))
        assert len(recorder.messages) == number
        tick(settings, due)
        assert len(recorder.wait_for(number + 1)) == number + 1
    assert _next_due(engine, sub.id) is None
    tick(settings, utcnow() + timedelta(days=120))
    assert len(recorder.messages) == course.total + 1
    rows = outbox(engine)
    lessons = [r for r in rows if r.kind == MessageKind.lesson]
    assert [r.context["slug"] for r in lessons] == [lesson.slug for lesson in course.lessons]
    assert all(r.status == OutboxStatus.sent for r in rows)
    subjects = [str(m["Subject"]) for m in recorder.messages[1:]]
    assert len(set(subjects)) == course.total
    with session_scope(engine) as session:
        progress = session.get(CourseProgress, sub.id)
        assert progress is not None
        assert progress.finished_at is not None
        assert progress.lessons_sent == course.total


def test_unsubscribing_mid_course_stops_everything(
    settings: Settings, recorder: Recorder, engine: Engine
) -> None:
    sub = subscriber(settings, "leaver@example.com")
    assert sub.id is not None
    tick(settings)
    due = _next_due(engine, sub.id)
    assert due is not None
    tick(settings, due)
    assert len(recorder.wait_for(2)) == 2
    with session_scope(engine) as session:
        row = session.get(Subscriber, sub.id)
        assert row is not None
        leave(session, settings, row, SubscriberStatus.unsubscribed, utcnow(), "unsubscribed")
    for days in range(1, 40, 3):
        tick(settings, due + timedelta(days=days))
    assert len(recorder.messages) == 2


def test_unsubscribe_turns_a_queued_lesson_into_skipped(
    settings: Settings, recorder: Recorder, engine: Engine
) -> None:
    from drip.progress import queue_due_lessons

    sub = subscriber(settings, "late@example.com")
    assert sub.id is not None
    tick(settings)
    due = _next_due(engine, sub.id)
    assert due is not None
    course = load_course(settings.emails_dir)
    with session_scope(engine) as session:
        assert queue_due_lessons(session, due, course, "localhost") == 1
    with session_scope(engine) as session:
        row = session.get(Subscriber, sub.id)
        assert row is not None
        assert (
            leave(session, settings, row, SubscriberStatus.unsubscribed, utcnow(), "unsubscribed")
            == 1
        )
    tick(settings, due)
    statuses = [r.status for r in outbox(engine) if r.kind == MessageKind.lesson]
    assert statuses == [OutboxStatus.skipped]
    assert len(recorder.messages) == 1


def _copy_emails(tmp_path: Path) -> Path:
    target = tmp_path / "emails"
    shutil.copytree(EMAILS, target)
    return target


def test_a_lesson_added_to_the_end_reaches_those_still_on_the_course(
    database_url: str,
    tmp_path: Path,
    engine: Engine,
    recorder: Recorder,
    mail_server: MailServer,
    make_settings: SettingsFactory,
) -> None:
    emails = _copy_emails(tmp_path)
    port = mail_server.port
    settings = make_settings(database_url, port, emails_dir=emails)
    course = load_course(emails)
    finisher = subscriber(settings, "done@example.com")
    assert finisher.id
    tick(settings)
    now = utcnow()
    while (due := _next_due(engine, finisher.id)) is not None:
        tick(settings, due)
        now = due
    # A second reader joins after the first finished, and is still on the course when it grows.
    subscriber(settings, "midway@example.com")
    extra = emails / "lesson-99-bonus"
    extra.with_suffix(".html").write_text(
        '{% extends "base.html" %}{% block subject %}Bonus{% endblock %}'
        "{% block content %}<p>Bonus</p>{% endblock %}"
    )
    extra.with_suffix(".txt").write_text(
        '{% extends "base.txt" %}{% block content %}Bonus{% endblock %}'
    )
    with (emails / "course.toml").open("a") as toml:
        toml.write(
            '\n[[lesson]]\nslug = "bonus"\ntemplate = "lesson-99-bonus"\n'
            'title = "Bonus"\ndelay_days = 2\n'
        )
    later = now + timedelta(days=1)
    for days in range(0, 60, 1):
        tick(settings, later + timedelta(days=days))
    rows = outbox(engine)
    bonus = {r.email for r in rows if r.context.get("slug") == "bonus"}
    assert bonus == {"midway@example.com"}
    midway = [
        r.context.get("slug")
        for r in rows
        if r.email == "midway@example.com" and r.kind == "lesson"
    ]
    assert midway == [lesson.slug for lesson in course.lessons] + ["bonus"]
    # Editing the course never resends a lesson.
    keys = [r.dedupe_key for r in rows]
    assert len(keys) == len(set(keys))
    assert len(recorder.message_ids()) == len(set(recorder.message_ids()))


def test_pass_touches_only_what_is_due(settings: Settings, engine: Engine) -> None:
    for n in range(30):
        subscriber(settings, f"r{n}@example.com")
    tick(settings)
    with session_scope(engine) as session:
        due = session.execute(
            select(CourseProgress).where(CourseProgress.next_due_at <= utcnow())
        ).all()
    assert due == []
    report = tick(settings)
    assert report.queued == 0
    assert report.delivery.total == 0


def test_two_workers_deliver_the_course_without_a_duplicate(
    settings: Settings, recorder: Recorder, engine: Engine
) -> None:
    import asyncio
    import threading

    from drip.sending.tick import run_pass

    course = load_course(settings.emails_dir)
    readers = 30
    for n in range(readers):
        subscriber(settings, f"pair{n}@example.com")
    # Passes at 08:30 and 17:30 UTC: the first inside the course's send window, so each
    # lesson goes out on the day it is due, whatever the time of day the test runs.
    start = utcnow().replace(hour=8, minute=30, second=0, microsecond=0)
    moments = [start + timedelta(days=d, hours=h) for d in range(0, 30) for h in (0, 9)]

    # Both workers run each pass at the same moment, as workers sharing one clock do.
    step = threading.Barrier(2)

    def worker(name: str) -> None:
        for moment in moments:
            step.wait(timeout=60)
            asyncio.run(run_pass(settings, moment, worker=name))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    expected = readers * (course.total + 1)
    ids = recorder.message_ids()
    assert len(ids) == expected
    assert len(set(ids)) == expected
    rows = outbox(engine)
    assert len(rows) == expected
    assert all(r.status == OutboxStatus.sent for r in rows)
