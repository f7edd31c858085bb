"""/admin steering one reader's course (CSRF-guarded buttons), and the dashboard's held
courses with their fix-and-retry path, on both databases."""

from __future__ import annotations

import re
import warnings
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from starlette.exceptions import StarletteDeprecationWarning

from drip.dashboard import dashboard
from drip.db import read_scope
from drip.models import CourseProgress, MessageKind, OutboxMessage, OutboxStatus
from drip.settings import Settings
from drip.web.app import create_app
from tests.conftest import SettingsFactory
from tests.factories import course_dir, subscriber, tick
from tests.mailserver import MailServer
from tests.test_admin import PASSWORD, USER, _basic, _csrf

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient


@pytest.fixture
def emails(tmp_path: Path) -> Path:
    return course_dir(tmp_path / "emails")


@pytest.fixture
def admin_settings(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory, emails: Path
) -> Settings:
    return make_settings(
        database_url,
        mail_server.port,
        admin_user=USER,
        admin_password=PASSWORD,
        emails_dir=emails,
    )


@pytest.fixture
def client(admin_settings: Settings) -> TestClient:
    return TestClient(create_app(admin_settings), headers=_basic(USER, PASSWORD))


def _progress(engine: Engine, sub_id: int | None) -> CourseProgress:
    with read_scope(engine) as session:
        found = session.get(CourseProgress, sub_id)
        assert found is not None
        return found


def _lessons(engine: Engine) -> dict[str, OutboxStatus]:
    with read_scope(engine) as session:
        rows = session.execute(
            select(OutboxMessage).where(OutboxMessage.kind == MessageKind.lesson)
        ).scalars()
        return {f"{r.context['slug']}/{r.context.get('round', 1)}": r.status for r in rows}


def _due(engine: Engine, sub_id: int | None) -> datetime:
    due = _progress(engine, sub_id).next_due_at
    assert due is not None
    return due


def test_the_course_buttons_pause_resume_skip_and_restart(
    admin_settings: Settings, engine: Engine, client: TestClient
) -> None:
    sub = subscriber(admin_settings, "ada@example.com")
    tick(admin_settings)
    page = f"/admin/subscribers/{sub.id}"

    def press(action: str, **form: str) -> str:
        csrf = _csrf(client.get(page).text)
        answer = client.post(f"{page}/{action}", data={"csrf": csrf, **form})
        assert answer.status_code == 200, answer.text  # followed the 303 to the page
        assert str(answer.url).endswith(f"{page}?done=course-{action}")
        return answer.text

    text = press("pause")
    assert "Course paused" in text
    assert f'action="/admin/subscribers/{sub.id}/resume"' in text
    assert re.search(r"course pause</strong>\s*<span class=\"muted\">[0-9-]+ [0-9:]+", text)
    assert _progress(engine, sub.id).paused_at is not None

    text = press("resume")
    assert _progress(engine, sub.id).paused_at is None
    assert "course resume" in text

    text = press("skip", to="pressure-release")
    assert "skipped lesson 1 (what-trigger-points-are), lesson 2 (finding-trigger-points)" in text
    tick(admin_settings, _due(engine, sub.id))
    assert _lessons(engine) == {
        "what-trigger-points-are/1": OutboxStatus.skipped,
        "finding-trigger-points/1": OutboxStatus.skipped,
        "pressure-release/1": OutboxStatus.sent,
    }

    text = press("restart")
    assert "round 2" in text
    tick(admin_settings, _due(engine, sub.id))
    assert _lessons(engine)["what-trigger-points-are/2"] == OutboxStatus.sent

    # Skip with nothing chosen: the next lesson.
    press("skip", to="")
    assert _lessons(engine)["finding-trigger-points/2"] == OutboxStatus.skipped


def test_the_course_buttons_refuse_a_missing_or_wrong_csrf_token(
    admin_settings: Settings, engine: Engine, client: TestClient
) -> None:
    sub = subscriber(admin_settings, "eve@example.com")
    for action in ("pause", "resume", "skip", "restart"):
        url = f"/admin/subscribers/{sub.id}/{action}"
        assert client.post(url).status_code == 403
        assert client.post(url, data={"csrf": "0" * 64}).status_code == 403
    progress = _progress(engine, sub.id)
    assert progress.paused_at is None
    assert progress.course_round == 1
    assert _lessons(engine) == {}


def test_a_refused_action_says_why(admin_settings: Settings, client: TestClient) -> None:
    sub = subscriber(admin_settings, "pen@example.com", active=False)
    page = f"/admin/subscribers/{sub.id}"
    csrf = _csrf(client.get(page).text)
    answer = client.post(f"{page}/pause", data={"csrf": csrf})
    assert answer.status_code == 409
    assert "pen@example.com is pending: no course mail goes" in answer.text


def test_a_held_course_shows_on_the_dashboard_until_fixed_and_retried(
    admin_settings: Settings, engine: Engine, client: TestClient, emails: Path
) -> None:
    template = emails / "lesson-01-what-trigger-points-are.txt"
    good = template.read_text()
    template.write_text("Hi {{ name }}\n{{ no_such_variable }}\n")
    sub = subscriber(admin_settings, "hil@example.com")
    tick(admin_settings)
    due = _due(engine, sub.id)
    tick(admin_settings, due)
    assert _lessons(engine) == {"what-trigger-points-are/1": OutboxStatus.failed}

    with read_scope(engine) as session:
        board = dashboard(session, due)
    assert board.held == 1
    [held] = board.held_courses
    assert (held.email, held.template) == ("hil@example.com", "lesson-01-what-trigger-points-are")
    assert "line 2" in held.reason
    home = client.get("/admin").text
    assert "Held courses" in home
    assert f'action="/admin/messages/{held.outbox_id}/retry"' in home
    assert "drip check" in home

    template.write_text(good)  # the fix, then the retry button
    answer = client.post(f"/admin/messages/{held.outbox_id}/retry", data={"csrf": _csrf(home)})
    assert answer.status_code == 200
    assert "queued again" in answer.text
    tick(admin_settings, due)
    assert _lessons(engine) == {"what-trigger-points-are/1": OutboxStatus.sent}
    with read_scope(engine) as session:
        assert dashboard(session, due).held == 0
    assert "Held courses" not in client.get("/admin").text
    assert _progress(engine, sub.id).next_due_at is not None  # the course goes on


def test_skipping_the_failed_lesson_releases_a_held_course(
    admin_settings: Settings, engine: Engine, client: TestClient, emails: Path
) -> None:
    (emails / "lesson-01-what-trigger-points-are.txt").write_text("{{ no_such_variable }}\n")
    sub = subscriber(admin_settings, "sol@example.com")
    tick(admin_settings)
    due = _due(engine, sub.id)
    tick(admin_settings, due)
    with read_scope(engine) as session:
        assert dashboard(session, due).held == 1
    page = f"/admin/subscribers/{sub.id}"
    client.post(f"{page}/skip", data={"csrf": _csrf(client.get(page).text)})
    with read_scope(engine) as session:
        assert dashboard(session, due).held == 0
    tick(admin_settings, _due(engine, sub.id))
    assert _lessons(engine) == {
        "what-trigger-points-are/1": OutboxStatus.skipped,
        "finding-trigger-points/1": OutboxStatus.sent,
    }
