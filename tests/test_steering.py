"""The author steers one reader's course: pause, resume, skip, restart, driven by
scheduler passes at given times (`drip tick --now`), on both databases."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from drip import steering
from drip.course import load_course
from drip.db import read_scope, session_scope
from drip.models import (
    CourseAction,
    CourseProgress,
    MessageKind,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
)
from drip.operator_actions import subscriber_data
from drip.sending.tick import queue_due
from drip.settings import Settings
from drip.subscriber_view import timeline, with_actions
from tests.factories import subscriber, tick
from tests.mailserver import Recorder
from tests.processes import command_env


def _progress(engine: Engine, sub_id: int | None) -> CourseProgress:
    with read_scope(engine) as session:
        found = session.get(CourseProgress, sub_id)
        assert found is not None
        return found


def _lessons(engine: Engine, sub_id: int | None) -> list[OutboxMessage]:
    with read_scope(engine) as session:
        return list(
            session.execute(
                select(OutboxMessage)
                .where(OutboxMessage.subscriber_id == sub_id)
                .where(OutboxMessage.kind == MessageKind.lesson)
                .order_by(OutboxMessage.id)
            ).scalars()
        )


def _sent(engine: Engine, sub_id: int | None) -> list[OutboxMessage]:
    rows = [r for r in _lessons(engine, sub_id) if r.status == OutboxStatus.sent]
    return sorted(rows, key=lambda r: r.sent_at or r.created_at)


def _run(settings: Settings, start: datetime, end: datetime, step: timedelta) -> None:
    """Scheduler passes from `start` up to `end`, every `step`."""
    at = start
    while at < end:
        tick(settings, at)
        at += step


def _act(
    settings: Settings,
    engine: Engine,
    what: steering.Action,
    sub: Subscriber,
    now: datetime,
    to: str | None = None,
) -> steering.Steered:
    course = load_course(settings.emails_dir)
    with session_scope(engine) as session:
        found = session.get(Subscriber, sub.id)
        assert found is not None
        return steering.apply(session, found, what, course, settings, now, "test", to)


def _first_lesson(settings: Settings, engine: Engine, email: str) -> tuple[Subscriber, datetime]:
    """A reader who had the welcome and lesson 1: (them, when lesson 1 went)."""
    sub = subscriber(settings, email)
    tick(settings)
    due = _progress(engine, sub.id).next_due_at
    assert due is not None
    tick(settings, due)
    [first] = _sent(engine, sub.id)
    assert first.context["slug"] == "what-trigger-points-are"
    return sub, due


def test_a_paused_reader_gets_nothing_for_two_weeks_then_the_next_lesson_not_a_burst(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    sub, first_sent = _first_lesson(settings, engine, "pia@example.com")
    paused = first_sent + timedelta(hours=1)
    assert _act(settings, engine, "pause", sub, paused).changed
    _run(settings, paused, paused + timedelta(days=14), timedelta(hours=6))
    assert len(recorder.messages) == 2  # the welcome and lesson 1, nothing since
    assert [r.context["slug"] for r in _lessons(engine, sub.id)] == ["what-trigger-points-are"]

    resumed = paused + timedelta(days=14)
    assert _act(settings, engine, "resume", sub, resumed).changed
    _run(settings, resumed, resumed + timedelta(days=2), timedelta(hours=2))
    # One lesson, the next one; the one after keeps its normal gap of three days.
    sent = _sent(engine, sub.id)
    assert [r.context["slug"] for r in sent] == [
        "what-trigger-points-are",
        "finding-trigger-points",
    ]
    second = sent[1].sent_at
    assert second is not None
    assert second < resumed + timedelta(days=1)
    _run(settings, resumed + timedelta(days=2), resumed + timedelta(days=5), timedelta(hours=2))
    sent = _sent(engine, sub.id)
    assert [r.context["slug"] for r in sent][2:] == ["pressure-release"]
    third = sent[2].sent_at
    assert third is not None
    assert third - second >= timedelta(days=3)


def test_a_lesson_queued_when_paused_is_held_and_sent_once_after_resume(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    sub = subscriber(settings, "hal@example.com")
    tick(settings)
    due = _progress(engine, sub.id).next_due_at
    assert due is not None
    assert queue_due(settings, engine, due) == 1  # lesson 1 queued, not yet sent
    assert "held, not lost" in _act(settings, engine, "pause", sub, due).detail
    _run(settings, due, due + timedelta(days=3), timedelta(hours=4))
    [held] = _lessons(engine, sub.id)
    assert held.status == OutboxStatus.queued
    assert held.next_attempt_at is None
    assert held.attempts == 0
    assert len(recorder.messages) == 1

    _act(settings, engine, "resume", sub, due + timedelta(days=3))
    _run(settings, due + timedelta(days=3), due + timedelta(days=4), timedelta(hours=2))
    [lesson] = _lessons(engine, sub.id)
    assert lesson.id == held.id
    assert lesson.status == OutboxStatus.sent
    assert recorder.message_ids().count(lesson.message_id) == 1


def test_skip_goes_past_the_next_lesson_or_to_a_named_one(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    sub, first_sent = _first_lesson(settings, engine, "sky@example.com")
    steered = _act(settings, engine, "skip", sub, first_sent)
    assert "skipped lesson 2 (finding-trigger-points)" in steered.detail
    due = _progress(engine, sub.id).next_due_at
    assert due is not None
    tick(settings, due)
    assert [r.context["slug"] for r in _sent(engine, sub.id)] == [
        "what-trigger-points-are",
        "pressure-release",
    ]
    now = due + timedelta(hours=1)
    steered = _act(settings, engine, "skip", sub, now, to="trigger-point-or-sciatica")
    assert "skipped lesson 4 (gluteus-minimus); next lesson 5" in steered.detail
    due = _progress(engine, sub.id).next_due_at
    assert due is not None
    tick(settings, due)
    lessons = {r.context["slug"]: r.status for r in _lessons(engine, sub.id)}
    assert lessons == {
        "what-trigger-points-are": OutboxStatus.sent,
        "finding-trigger-points": OutboxStatus.skipped,
        "pressure-release": OutboxStatus.sent,
        "gluteus-minimus": OutboxStatus.skipped,
        "trigger-point-or-sciatica": OutboxStatus.sent,
    }
    assert len(recorder.messages) == 4  # welcome and three lessons: no skipped one went
    with pytest.raises(steering.SteeringError, match="already had pressure-release; restart"):
        _act(settings, engine, "skip", sub, due, to="pressure-release")
    with pytest.raises(steering.SteeringError, match="no lesson nope in the course"):
        _act(settings, engine, "skip", sub, due, to="nope")


def test_skipping_a_queued_lesson_lets_the_next_one_go_in_its_place(
    settings: Settings, engine: Engine
) -> None:
    sub = subscriber(settings, "que@example.com")
    tick(settings)
    due = _progress(engine, sub.id).next_due_at
    assert due is not None
    assert queue_due(settings, engine, due) == 1
    _act(settings, engine, "skip", sub, due)
    tick(settings, due)
    assert {r.context["slug"]: r.status for r in _lessons(engine, sub.id)} == {
        "what-trigger-points-are": OutboxStatus.skipped,
        "finding-trigger-points": OutboxStatus.sent,
    }


def test_restart_sends_the_course_again_from_the_first_lesson(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    sub, first_sent = _first_lesson(settings, engine, "ray@example.com")
    due = _progress(engine, sub.id).next_due_at
    assert due is not None
    tick(settings, due)  # lesson 2
    steered = _act(settings, engine, "restart", sub, due + timedelta(hours=1))
    assert "round 2: lesson 1 (what-trigger-points-are)" in steered.detail
    progress = _progress(engine, sub.id)
    assert progress.course_round == 2
    assert progress.next_due_at is not None
    assert progress.next_due_at - due >= timedelta(days=1)  # lesson 1's own delay
    _run(settings, due + timedelta(hours=1), due + timedelta(days=4), timedelta(hours=2))
    sent = _sent(engine, sub.id)
    assert [(r.context["slug"], r.context.get("round", 1)) for r in sent] == [
        ("what-trigger-points-are", 1),
        ("finding-trigger-points", 1),
        ("what-trigger-points-are", 2),
        ("finding-trigger-points", 2),
    ]
    assert len({r.dedupe_key for r in sent}) == 4
    kinds = [m["Subject"] for m in recorder.messages]
    assert len(kinds) == 5  # one welcome only
    assert _progress(engine, sub.id).lessons_sent == 2


def test_every_action_is_in_the_readers_timeline_with_its_time(
    settings: Settings, engine: Engine
) -> None:
    sub, first_sent = _first_lesson(settings, engine, "tim@example.com")
    times = [first_sent + timedelta(hours=h) for h in (1, 2, 3, 4)]
    for what, at in zip(("pause", "resume", "skip", "restart"), times, strict=True):
        _act(settings, engine, what, sub, at)
    assert not _act(settings, engine, "resume", sub, times[-1]).changed  # not paused: no entry
    assert sub.id is not None
    with read_scope(engine) as session:
        entries = with_actions(session, sub.id, timeline(session, sub.id))
    actions = [e for e in entries if isinstance(e, CourseAction)]
    assert [(a.action, a.at, a.source) for a in actions] == [
        ("restart", times[3], "test"),
        ("skip", times[2], "test"),
        ("resume", times[1], "test"),
        ("pause", times[0], "test"),
    ]
    # Newest first, the messages among them by when they were queued.
    assert isinstance(entries[0], CourseAction)
    assert not isinstance(entries[-1], CourseAction)
    # The reader's data export (GDPR access) carries them too, oldest first.
    with read_scope(engine) as session:
        data = subscriber_data(session, sub.id)
    assert data is not None
    assert [a["action"] for a in data["course"]["actions"]] == [
        "pause",
        "resume",
        "skip",
        "restart",
    ]
    assert data["course"]["round"] == 2


def test_the_cli_steers_a_reader_and_names_what_it_cannot_do(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    from drip.cli import app

    sub, _ = _first_lesson(settings, engine, "cli@example.com")
    env = command_env(settings)
    runner = CliRunner()

    def drip(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["subscribers", *args], env=env)
        return result.exit_code, result.output

    code, out = drip("pause", "cli@example.com")
    assert code == 0
    assert "cli@example.com: paused" in out.splitlines()
    assert _progress(engine, sub.id).paused_at is not None
    code, out = drip("pause", "cli@example.com")
    assert code == 0
    assert "nothing to change: already paused" in out
    code, out = drip("resume", "CLI@example.com")
    assert code == 0
    assert "next lesson due" in out
    code, out = drip("skip", "cli@example.com", "--to", "pressure-release")
    assert code == 0
    assert "skipped lesson 2" in out
    code, out = drip("restart", "cli@example.com")
    assert code == 0
    assert "round 2" in out
    code, out = drip("skip", "cli@example.com", "--to", "nope")
    assert code == 2
    assert "drip: no lesson nope in the course" in out
    code, out = drip("pause", "nobody@example.com")
    assert code == 2
    assert "drip: no subscriber nobody@example.com" in out
