"""The course funnel, end to end: signups from two sources through the real web app, a
whole course delivered by `drip tick --now` passes to a real SMTP server, readers who
leave through the links in their lesson 3 email, one bounce, pack downloads; then
`drip stats --json` and /admin/funnel must show exactly those numbers, on both databases.
"""

from __future__ import annotations

import html
import json
import re
import statistics
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import Engine, insert, select
from starlette.exceptions import StarletteDeprecationWarning

from drip.clock import utcnow
from drip.course import load_course
from drip.db import get_engine, read_scope, session_scope
from drip.funnel import funnel
from drip.models import (
    CourseProgress,
    MessageKind,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from drip.settings import Settings
from drip.subscribers import leave, queue_confirmation
from drip.tokens import make_token
from drip.web.app import create_app
from tests.conftest import SECRET, SettingsFactory
from tests.factories import subscriber, tick
from tests.mailserver import NO_SUCH_USER, MailServer, Recorder
from tests.test_admin import PASSWORD, USER, _basic
from tests.test_cli import _env, drip

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

BLOG = "blog-sidebar"
LANDING = "/landing"
#: Who signs up where: (the form's hidden source, the page that posted it).
READERS = {
    "ann@example.com": (BLOG, ""),  # leaves after lesson 3: its footer link, page then POST
    "bob@example.com": (BLOG, ""),  # leaves after lesson 3: List-Unsubscribe one-click
    "cat@example.com": (BLOG, ""),  # leaves after lesson 1 through a link naming no email
    "dan@example.com": ("", "https://site.example/landing?utm_source=x"),  # finishes
    "eve@example.com": ("", "https://site.example/landing"),  # lesson 5 bounces
    "fay@example.com": (BLOG, ""),  # never confirms
}
LESSON_1 = "lesson-01-what-trigger-points-are"
LESSON_3 = "lesson-03-pressure-release"
LESSON_4 = "lesson-04-gluteus-minimus"

#: What the run above must show, step by step: (reached, delivered, bounced, unsub. after).
EXPECTED = {
    # Fay never confirms: a week on, her signup is deleted and only counted (drip.unconfirmed).
    "confirm": (5, 5, 0, 0),
    "welcome": (5, 5, 0, 0),
    "what-trigger-points-are": (5, 5, 0, 0),
    "finding-trigger-points": (4, 4, 0, 0),
    "pressure-release": (4, 4, 0, 2),
    "gluteus-minimus": (2, 2, 0, 0),
    "trigger-point-or-sciatica": (2, 1, 1, 0),
    "heat-stretch-move": (1, 1, 0, 0),
    "keep-them-away": (1, 1, 0, 0),
    "where-next": (1, 1, 0, 0),
    "your-questions": (1, 1, 0, 0),
    "finished": (1, 0, 0, 0),
}


@pytest.fixture
def funnel_settings(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory
) -> Settings:
    return make_settings(
        database_url,
        mail_server.port,
        admin_user=USER,
        admin_password=PASSWORD,
        pack_delivery="link",
    )


def _row(engine: Engine, email: str, template: str) -> OutboxMessage | None:
    with read_scope(engine) as session:
        return session.execute(
            select(OutboxMessage).where(
                OutboxMessage.email == email,
                OutboxMessage.template == template,
                OutboxMessage.status == OutboxStatus.sent,
            )
        ).scalar_one_or_none()


def _mail(recorder: Recorder, row: OutboxMessage) -> EmailMessage:
    return next(m for m in recorder.messages if m["Message-ID"] == row.message_id)


def _text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def _link(message: EmailMessage, route: str) -> str:
    found = re.search(rf"/{route}/([A-Za-z0-9._-]+)", _text(message))
    assert found, f"no /{route}/ link in {message['Subject']}"
    return found.group(1)


def run_course(
    settings: Settings, recorder: Recorder, ticker: Callable[[Settings, datetime], object] = tick
) -> None:
    """The whole course for READERS, a pass a day at 09:00 UTC, each reader acting on the
    mail they got as the comment beside them says."""
    engine = get_engine(settings.database_url)
    client = TestClient(create_app(settings), follow_redirects=False)
    for address, (source, referer) in READERS.items():
        form = {"email": address, "name": "", "consent": "yes", "website": "", "timezone": "UTC"}
        if source:
            form["source"] = source
        answer = client.post(
            "/subscribe", data=form, headers={"referer": referer} if referer else {}
        )
        assert answer.status_code == 303, answer.text
    start = datetime.combine(utcnow().date() + timedelta(days=1), datetime.min.time(), UTC)
    start += timedelta(hours=9)
    ticker(settings, start)
    for address in READERS:
        if address == "fay@example.com":
            continue
        confirmation = _row(engine, address, "confirm")
        assert confirmation is not None
        token = _link(_mail(recorder, confirmation), "confirm")
        assert client.post(f"/confirm/{token}").status_code == 200
    done: set[str] = set()
    for day in range(60):
        ticker(settings, start + timedelta(days=day))
        if "pack" not in done and (welcome := _row(engine, "dan@example.com", "welcome")):
            pack = _link(_mail(recorder, welcome), "pack")
            assert client.get(f"/pack/{pack}").status_code == 200
            assert client.get(f"/pack/{pack}").status_code == 200  # twice: two downloads
            ann_welcome = _row(engine, "ann@example.com", "welcome")
            assert ann_welcome is not None
            assert (
                client.get(f"/pack/{_link(_mail(recorder, ann_welcome), 'pack')}").status_code
                == 200
            )
            done.add("pack")
        if "cat" not in done and _row(engine, "cat@example.com", LESSON_1):
            with read_scope(engine) as session:
                cat = session.execute(
                    select(Subscriber).where(Subscriber.email_key == "cat@example.com")
                ).scalar_one()
            old_style = make_token(SECRET, cat.token_salt, "unsubscribe")  # names no email
            assert client.post(f"/unsubscribe/{old_style}").status_code == 200
            done.add("cat")
        if "ann" not in done and (lesson := _row(engine, "ann@example.com", LESSON_3)):
            token = _link(_mail(recorder, lesson), "unsubscribe")
            shown = client.get(f"/unsubscribe/{token}")
            assert shown.status_code == 200
            assert f'action="/unsubscribe/{token}"' in shown.text  # the button keeps the email
            assert client.post(f"/unsubscribe/{token}").status_code == 200
            done.add("ann")
        if "bob" not in done and (lesson := _row(engine, "bob@example.com", LESSON_3)):
            header = str(_mail(recorder, lesson)["List-Unsubscribe"])
            url = header.strip("<>")
            path = url[len(settings.base_url) :]
            one_click = client.post(
                path,
                content=b"List-Unsubscribe=One-Click",
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            assert one_click.status_code == 200
            done.add("bob")
        if "eve" not in done and _row(engine, "eve@example.com", LESSON_4):
            recorder.on_data = lambda envelope: (
                NO_SUCH_USER if envelope.rcpt_tos == ["eve@example.com"] else None
            )
            done.add("eve")
        with read_scope(engine) as session:
            progress = session.execute(
                select(CourseProgress)
                .join(Subscriber, Subscriber.id == CourseProgress.subscriber_id)  # type: ignore[arg-type]
                .where(Subscriber.email_key == "dan@example.com")
            ).scalar_one()
        if progress.finished_at is not None:
            break
    assert done == {"pack", "cat", "ann", "bob", "eve"}
    # Mail outside the course never counts, even with a lesson's template.
    with session_scope(engine) as session:
        dan = session.execute(
            select(Subscriber).where(Subscriber.email_key == "dan@example.com")
        ).scalar_one()
        now = utcnow()
        for kind in ("test", MessageKind.newsletter, MessageKind.answer):
            session.execute(
                insert(OutboxMessage.__table__),  # type: ignore[attr-defined]
                {
                    "dedupe_key": f"{kind}:extra:{dan.id}",
                    "kind": kind,
                    "template": LESSON_3,
                    "subscriber_id": dan.id,
                    "email": dan.email,
                    "context": {},
                    "status": OutboxStatus.sent,
                    "due_at": now,
                    "attempts": 1,
                    "message_id": f"<{kind}-extra@example.com>",
                    "created_at": now,
                    "updated_at": now,
                    "sent_at": now,
                },
            )


def _expected_median_days(engine: Engine) -> float:
    with read_scope(engine) as session:
        spans = [
            (p.finished_at - p.started_at).total_seconds() / 86400
            for p in session.execute(select(CourseProgress)).scalars()
            if p.finished_at is not None
        ]
    return statistics.median(spans)


def test_a_course_run_shows_exactly_its_numbers_in_drip_stats_and_on_the_page(
    funnel_settings: Settings, recorder: Recorder, engine: Engine
) -> None:
    run_course(funnel_settings, recorder)
    with read_scope(engine) as session:
        left = {
            s.email: (s.status, s.unsubscribed_via, s.unsubscribed_step)
            for s in session.execute(select(Subscriber)).scalars()
        }
    for address in ("ann@example.com", "bob@example.com"):
        lesson_3 = _row(engine, address, LESSON_3)
        assert lesson_3 is not None
        assert left[address] == (SubscriberStatus.unsubscribed, lesson_3.id, "pressure-release")
    assert left["cat@example.com"] == (SubscriberStatus.unsubscribed, None, None)
    assert left["eve@example.com"][0] == SubscriberStatus.bounced

    env = _env(funnel_settings) | {"DRIP_PACK_DELIVERY": "link"}
    result = drip("stats", "--json", env=env)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    steps, summary = lines[:-1], lines[-1]
    assert [s["step"] for s in steps] == list(EXPECTED)
    for s in steps:
        got = (s["reached"], s["delivered"], s["bounced"], s["unsubscribed_after"])
        assert got == EXPECTED[s["step"]], s["step"]
        assert s["complained"] == 0
        assert "summary" not in s
    assert summary["summary"] is True
    assert (summary["started"], summary["finished"]) == (5, 1)
    assert summary["completion_rate"] == pytest.approx(0.2)
    assert summary["median_days_to_finish"] == pytest.approx(_expected_median_days(engine))
    assert summary["median_days_to_finish"] > 20  # nine lessons spread over weeks
    assert summary["unsubscribed_unattributed"] == 1
    assert summary["unsubscribed_elsewhere"] == 0
    assert summary["unconfirmed_expired"] == 1
    assert (summary["pack_downloads"], summary["pack_downloaders"]) == (3, 2)
    sources = {s["source"]: s for s in summary["sources"]}
    assert [s["source"] for s in summary["sources"]] == [BLOG, LANDING]
    assert (sources[BLOG]["signups"], sources[BLOG]["confirmed"], sources[BLOG]["finished"]) == (
        4,
        3,
        0,
    )
    assert sources[BLOG]["confirmation_rate"] == pytest.approx(0.75)
    assert (sources[LANDING]["signups"], sources[LANDING]["finished"]) == (2, 1)
    assert sources[LANDING]["completion_rate"] == pytest.approx(0.5)

    human = drip("stats", env=env)
    assert human.returncode == 0, human.stderr
    assert re.search(r"^pressure-release\s+4\s+4\s+0\s+0\s+2\s+0\.0%$", human.stdout, re.M)
    assert re.search(r"^gluteus-minimus\s+2\s+2\s+0\s+0\s+0\s+50\.0%$", human.stdout, re.M)
    assert "completion 20.0%" in human.stdout
    assert "pack downloads 3, by 2 subscribers" in human.stdout

    admin = TestClient(create_app(funnel_settings), headers=_basic(USER, PASSWORD))
    page = admin.get("/admin/funnel")
    assert page.status_code == 200
    assert '<a href="/admin/funnel" aria-current="page">Funnel</a>' in page.text
    for step, (reached, delivered, bounced, after) in EXPECTED.items():
        row = re.search(rf'<tr id="step-{step}">(.*?)</tr>', page.text, re.S)
        assert row, step
        cells = dict(re.findall(r'data-field="(\w+)">([^<]*)<', row.group(1)))
        assert cells["reached"] == str(reached), step
        if step != "finished":
            assert (cells["delivered"], cells["bounced"]) == (str(delivered), str(bounced)), step
            assert cells["unsubscribed_after"] == str(after), step
    lost = {
        step: dict(re.findall(r'data-field="(\w+)">([^<]*)<', row))["lost"]
        for step, row in re.findall(r'<tr id="step-([\w-]+)">(.*?)</tr>', page.text, re.S)
    }
    assert lost["confirm"] == ""  # nothing before it
    assert lost["pressure-release"] == "0 (0.0%)"  # as `drip stats` says
    assert lost["gluteus-minimus"] == "2 (50.0%)"
    assert page.text.count('<rect class="bar"') == len(EXPECTED)
    assert '<dd id="completion-rate">20.0%</dd>' in page.text
    assert '<dd id="pack-downloads">3</dd>' in page.text
    assert '<dd id="unattributed">1</dd>' in page.text
    assert '<dd id="unconfirmed-expired">1</dd>' in page.text
    assert f"<code>{html.escape(BLOG)}</code>" in page.text


def test_an_empty_database_has_an_empty_funnel(funnel_settings: Settings, engine: Engine) -> None:
    course = load_course(funnel_settings.emails_dir)
    with read_scope(engine) as session:
        found = funnel(session, course, pack_link=True)
    assert [s.reached for s in found.steps] == [0] * (course.total + 3)
    assert found.completion_rate is None
    assert found.median_to_finish is None
    assert found.pack_downloads == (0, 0)
    assert found.sources == []
    admin = TestClient(create_app(funnel_settings), headers=_basic(USER, PASSWORD))
    page = admin.get("/admin/funnel")
    assert page.status_code == 200
    assert "Nobody has signed up yet." in page.text


def test_a_reader_who_asked_twice_for_a_confirmation_counts_once(
    settings: Settings, engine: Engine
) -> None:
    ann = subscriber(settings, "ann@example.com", active=False)
    subscriber(settings, "bob@example.com", active=False)
    tick(settings)
    with session_scope(engine) as session:
        again = session.get(Subscriber, ann.id)
        assert again is not None
        assert queue_confirmation(session, settings, again, utcnow())
    tick(settings)
    with session_scope(engine) as session:
        cat = session.get(Subscriber, subscriber(settings, "cat@example.com", active=False).id)
        assert cat is not None
        leave(session, settings, cat, SubscriberStatus.unsubscribed, utcnow(), "changed their mind")
    with read_scope(engine) as session:
        confirms = session.execute(
            select(OutboxMessage.status).where(OutboxMessage.kind == MessageKind.confirm)
        ).all()
        assert sorted(s for (s,) in confirms) == ["sent", "sent", "sent", "skipped"]
        found = funnel(session, load_course(settings.emails_dir))
    confirm = found.steps[0]
    assert (confirm.reached, confirm.delivered, confirm.waiting) == (2, 2, 0)
    assert found.unsubscribed_unattributed == 1
