"""/admin through HTTP (TestClient), on both databases, with mail from a real SMTP round trip."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import mailbox
import re
import time
import warnings
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, select
from starlette.exceptions import StarletteDeprecationWarning

from drip.db import get_engine, read_scope
from drip.models import OutboxMessage, OutboxStatus, RateLimit, Subscriber, SubscriberStatus
from drip.settings import Settings
from drip.web.admin import CLOSED, build_admin_router
from drip.web.app import create_app
from tests.conftest import SettingsFactory
from tests.factories import subscriber, tick
from tests.mailserver import NO_SUCH_USER, MailServer, Recorder

with warnings.catch_warnings():
    # Starlette asks for httpx2; the client works the same with the httpx installed here.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

USER, PASSWORD = "admin", "correct horse battery"


def admin_app(settings: Settings) -> FastAPI:
    """The whole web app, as `drip serve` runs it: /admin lives inside it."""
    return create_app(settings)


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def admin_settings(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory
) -> Settings:
    return make_settings(database_url, mail_server.port, admin_user=USER, admin_password=PASSWORD)


@pytest.fixture
def client(admin_settings: Settings) -> TestClient:
    return TestClient(admin_app(admin_settings), headers=_basic(USER, PASSWORD))


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def _sub(engine: Engine, sub_id: int | None) -> Subscriber:
    with read_scope(engine) as session:
        row = session.get(Subscriber, sub_id)
        assert row is not None
        return row


def test_closed_until_the_login_is_set(settings: Settings) -> None:
    closed = TestClient(admin_app(settings), headers=_basic(USER, PASSWORD))
    for path in ("/admin", "/admin/log", "/admin/subscribers/1", "/admin/outbox"):
        response = closed.get(path)
        assert response.status_code == 503
        assert response.text == CLOSED
    assert closed.post("/admin/subscribers/1/delete").status_code == 503
    assert "DRIP_ADMIN_USER and DRIP_ADMIN_PASSWORD" in CLOSED


def test_credentials_are_required_and_failures_are_slowed(admin_settings: Settings) -> None:
    anonymous = TestClient(admin_app(admin_settings))
    bare = anonymous.get("/admin/log")
    assert bare.status_code == 401
    assert bare.headers["WWW-Authenticate"] == 'Basic realm="drip admin"'
    assert bare.headers["X-Frame-Options"] == "DENY"
    started = time.monotonic()
    assert anonymous.get("/admin", headers=_basic(USER, "wrong")).status_code == 401
    assert time.monotonic() - started >= 0.9  # a wrong password waits a second
    assert anonymous.get("/admin", headers=_basic(USER, PASSWORD)).status_code == 200


def test_each_failure_waits_longer(admin_settings: Settings) -> None:
    app = FastAPI()
    app.include_router(build_admin_router(admin_settings, failure_delay=0.2))
    anonymous = TestClient(app)
    waits = []
    for user, password in ((USER, "wrong"), ("root", PASSWORD), ("", ""), (USER, PASSWORD + "x")):
        started = time.monotonic()
        assert anonymous.get("/admin", headers=_basic(user, password)).status_code == 401
        waits.append(time.monotonic() - started)
    # 0.2 s, 0.4 s, 0.6 s, 0.8 s: each wrong password waits longer than the one before.
    assert all(w >= 0.2 * (i + 1) - 0.02 for i, w in enumerate(waits)), waits
    assert waits[3] < 2.0, waits
    garbage = anonymous.get("/admin", headers={"Authorization": "Basic !!not-base64"})
    assert garbage.status_code == 401
    assert anonymous.get("/admin", headers=_basic(USER, PASSWORD)).status_code == 200


async def _guesses(
    app: FastAPI, passwords: list[str], then: tuple[str, ...] = (), engine: Engine | None = None
) -> list[tuple[int, float]]:
    """Send the passwords at once from one address; then, once each of them holds its
    turn in the database, the passwords of `then`."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as client:

        async def attempt(password: str) -> tuple[int, float]:
            started = time.monotonic()
            response = await client.get("/admin", headers=_basic(USER, password))
            return response.status_code, time.monotonic() - started

        first = [asyncio.create_task(attempt(p)) for p in passwords]
        if then:
            assert engine is not None
            deadline = time.monotonic() + 30
            while (held := _attempts_held(engine)) < len(passwords):
                assert time.monotonic() < deadline, f"only {held} attempts hold a turn"
                await asyncio.sleep(0.01)
        return await asyncio.gather(*first, *(attempt(p) for p in then))


def _attempts_held(engine: Engine) -> int:
    with read_scope(engine) as session:
        row = session.execute(select(RateLimit).where(RateLimit.key == "127.0.0.1")).scalar()
        return row.count if row else 0


async def test_parallel_guesses_queue_behind_the_delay(admin_settings: Settings) -> None:
    """Guesses sent at once are checked one after another, each after the wait of the
    one before: the right password, sent after them, is let in only after those waits
    (0.1 + 0.2 + 0.3 s), so parallel connections cannot outrun the delay."""
    app = FastAPI()
    app.include_router(build_admin_router(admin_settings, failure_delay=0.1))
    engine = get_engine(admin_settings.database_url)
    results = await _guesses(app, ["guess-1", "guess-2", "guess-3"], (PASSWORD,), engine)
    assert [code for code, _ in results] == [401, 401, 401, 200]
    assert results[3][1] >= 0.5, results


async def test_a_flood_of_guesses_from_one_address_is_turned_away_unchecked(
    admin_settings: Settings,
) -> None:
    """Past four attempts waiting from one address (turns at 0, 1, 3 and 6 steps), the
    rest get 429 at once, checked not at all: the right password among them is refused
    too."""
    app = FastAPI()
    app.include_router(build_admin_router(admin_settings, failure_delay=0.5))
    engine = get_engine(admin_settings.database_url)
    results = await _guesses(app, [f"guess-{n}" for n in range(4)], (PASSWORD,) * 4, engine)
    codes = [code for code, _ in results]
    assert codes == [401] * 4 + [429] * 4, results
    assert all(waited < 0.5 for code, waited in results if code == 429), results
    # Once the queue has drained, the right password gets in (after the delay earned).
    assert (await _guesses(app, [PASSWORD]))[0][0] == 200


def test_pages_carry_security_headers(client: TestClient) -> None:
    response = client.get("/admin")
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "script-src" not in csp  # no scripts at all
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert client.get("/static/admin.css").status_code == 200


def test_dashboard_shows_counts_chart_and_a_stopped_scheduler(
    client: TestClient, admin_settings: Settings
) -> None:
    subscriber(admin_settings, "ann@example.com")
    page = client.get("/admin").text
    assert "No scheduler pass in the last 5 minutes" in page
    assert "<svg" in page
    assert 'class="bar"' in page
    assert "/admin/outbox" in page
    tick(admin_settings)
    page = client.get("/admin").text
    assert "No scheduler pass" not in page
    assert re.search(r"<dt>sent</dt><dd>1</dd>", page)
    assert ": 1 sent</title>" in page  # today's bar in the chart
    assert "0 lessons sent" in page


def test_names_and_addresses_are_escaped(client: TestClient, admin_settings: Settings) -> None:
    sub = subscriber(admin_settings, "x@example.com", name="<script>alert(1)</script>")
    for path in (f"/admin/subscribers/{sub.id}", "/admin/subscribers", "/admin/log"):
        page = client.get(path).text
        assert "<script>" not in page
    page = client.get(f"/admin/subscribers/{sub.id}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in client.get("/admin/log?email=<script>").text


def test_log_filters_and_pages(client: TestClient, admin_settings: Settings) -> None:
    for n in range(4):
        subscriber(admin_settings, f"reader{n}@example.com")
    tick(admin_settings)
    subscriber(admin_settings, "late@example.com")

    sent = client.get("/admin/log?status=sent").text
    assert sent.count('class="pill status-sent"') == 4
    assert "late@example.com" not in sent
    queued = client.get("/admin/log", params={"status": "queued"}).text
    assert "late@example.com" in queued
    assert "status-sent" not in queued
    one = client.get("/admin/log", params={"email": "READER2@example.com"}).text
    assert "reader2@example.com" in one
    assert "reader1@" not in one

    first = client.get("/admin/log?limit=3").text
    older = re.search(r'href="(/admin/log\?[^"]+)" rel="next"', first)
    assert older
    second = client.get(older.group(1).replace("&amp;", "&")).text
    rows = re.findall(r'<tr id="([aq]\d+)">', first) + re.findall(r'<tr id="([aq]\d+)">', second)
    assert len(rows) == len(set(rows)) == 5

    bad = client.get("/admin/log?status=lost")
    assert bad.status_code == 422
    assert "status must be one of" in bad.text
    assert client.get("/admin/log?since=soonish").status_code == 422
    assert client.get("/admin/log?since=2h").status_code == 200


def test_subscriber_search_and_timeline(client: TestClient, admin_settings: Settings) -> None:
    ann = subscriber(admin_settings, "Ann@example.com")
    subscriber(admin_settings, "bob@example.com", active=False)
    tick(admin_settings)
    found = client.get("/admin/subscribers", params={"q": "an"}).text
    assert "Ann@example.com" in found
    assert "bob@" not in found
    pending = client.get("/admin/subscribers?status=pending").text
    assert "bob@example.com" in pending
    assert "Ann@" not in pending
    page = client.get(f"/admin/subscribers/{ann.id}").text
    assert "welcome" in page
    assert 'class="pill status-sent"' in page
    assert "<code>250</code>" in page
    assert client.get("/admin/subscribers/99999").status_code == 404


def test_actions_refuse_a_missing_or_wrong_csrf_token(
    client: TestClient, admin_settings: Settings, engine: Engine
) -> None:
    sub = subscriber(admin_settings, "keep@example.com")
    url = f"/admin/subscribers/{sub.id}/unsubscribe"
    assert client.post(url).status_code == 403
    assert client.post(url, data={"csrf": "0" * 64}).status_code == 403
    assert (
        client.post(f"/admin/subscribers/{sub.id}/delete", data={"sure": "yes"}).status_code == 403
    )
    assert client.post(f"/admin/subscribers/{sub.id}/export").status_code == 403
    assert _sub(engine, sub.id).status == SubscriberStatus.active
    assert _sub(engine, sub.id).email == "keep@example.com"
    # Another process (another key) made this token: refused too.
    other = TestClient(admin_app(admin_settings), headers=_basic(USER, PASSWORD))
    stale = _csrf(other.get(f"/admin/subscribers/{sub.id}").text)
    assert client.post(url, data={"csrf": stale}).status_code == 403


def test_unsubscribe_from_the_subscriber_page(
    client: TestClient, admin_settings: Settings, engine: Engine
) -> None:
    sub = subscriber(admin_settings, "leaving@example.com")
    page = client.get(f"/admin/subscribers/{sub.id}").text
    response = client.post(
        f"/admin/subscribers/{sub.id}/unsubscribe",
        data={"csrf": _csrf(page)},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/admin/subscribers/{sub.id}?done=unsubscribed"
    assert _sub(engine, sub.id).status == SubscriberStatus.unsubscribed
    after = client.get(response.headers["location"]).text
    assert "Unsubscribed: nothing more will be sent" in after
    assert 'class="pill status-skipped"' in after  # the queued welcome
    assert "/unsubscribe" not in after  # no button any more


def test_retry_a_bounced_message(
    client: TestClient, admin_settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    sub = subscriber(admin_settings, "typo@example.com")
    recorder.on_data = lambda env: NO_SUCH_USER
    tick(admin_settings)
    with read_scope(engine) as session:
        [row] = session.execute(select(OutboxMessage)).scalars().all()
    assert row.status == OutboxStatus.bounced
    page = client.get(f"/admin/subscribers/{sub.id}").text
    assert f'action="/admin/messages/{row.id}/retry"' in page

    response = client.post(f"/admin/messages/{row.id}/retry", data={"csrf": _csrf(page)})
    assert response.status_code == 200
    assert "queued again" in response.text
    again = client.post(f"/admin/messages/{row.id}/retry", data={"csrf": _csrf(page)})
    assert "Nothing to retry" in again.text

    recorder.on_data = None
    tick(admin_settings)
    assert len(recorder.wait_for(1)) == 1
    sent = client.get("/admin/log", params={"email": "typo@example.com"}).text
    assert sent.index("status-sent") < sent.index("status-bounced")  # newest first


def test_export_then_delete_personal_data_keeps_anonymous_counts(
    client: TestClient, admin_settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    sub = subscriber(admin_settings, "Erase.Me@example.com", name="Erin Erase")
    subscriber(admin_settings, "stay@example.com")
    tick(admin_settings)
    recorder.wait_for(2)
    before = client.get("/admin").text
    page = client.get(f"/admin/subscribers/{sub.id}").text

    exported = client.post(f"/admin/subscribers/{sub.id}/export", data={"csrf": _csrf(page)})
    assert exported.headers["content-type"].startswith("application/json")
    assert "attachment" in exported.headers["content-disposition"]
    data = json.loads(exported.text)
    assert data["subscriber"]["email"] == "Erase.Me@example.com"
    assert data["messages"][0]["attempts"][0]["status"] == "sent"

    unsure = client.post(f"/admin/subscribers/{sub.id}/delete", data={"csrf": _csrf(page)})
    assert unsure.status_code == 400
    assert _sub(engine, sub.id).name == "Erin Erase"
    deleted = client.post(
        f"/admin/subscribers/{sub.id}/delete", data={"csrf": _csrf(page), "sure": "yes"}
    )
    assert deleted.status_code == 200
    assert "Personal data deleted" in deleted.text
    row = _sub(engine, sub.id)
    assert row.email == f"deleted-{sub.id}@invalid"
    assert row.name == ""
    assert row.status == SubscriberStatus.unsubscribed

    for path in ("/admin/log", "/admin/subscribers", f"/admin/subscribers/{sub.id}"):
        text = client.get(path).text.lower()
        assert "erase.me" not in text
        assert "erin" not in text
    after = client.get("/admin").text
    counts = re.compile(r'<dl class="counts">.*?</dl>', re.S)
    assert counts.findall(after) == counts.findall(before)
    assert f"deleted-{sub.id}@invalid" in client.get("/admin/log?status=sent").text


def _caught_mail(directory: Path) -> str:
    message = EmailMessage()
    message["From"] = "Course <course@localhost>"
    message["To"] = "Ann <ann@example.com>"
    message["Subject"] = "Welcome <b>aboard</b>"
    message["Date"] = "Mon, 01 Jan 2024 09:00:00 +0000"
    message.set_content("Hello Ann,\nyour pack is attached.\n")
    message.add_alternative(
        '<p class="x">Hello <b>Ann</b> &amp; "friends"</p><script>alert(1)</script>',
        subtype="html",
    )
    message.add_attachment(
        b"%PDF-1.4 fake pack", maintype="application", subtype="pdf", filename="info-pack.pdf"
    )
    box = mailbox.Maildir(directory, create=True)
    return box.add(message)


def test_outbox_lists_and_shows_caught_mail(client: TestClient, admin_settings: Settings) -> None:
    assert "No mail caught yet" in client.get("/admin/outbox").text
    key = _caught_mail(admin_settings.catcher_dir)
    listing = client.get("/admin/outbox").text
    assert "Welcome &lt;b&gt;aboard&lt;/b&gt;" in listing
    assert "ann@example.com" in listing
    assert f"/admin/outbox/{key}" in listing

    page = client.get(f"/admin/outbox/{key}")
    assert page.status_code == 200
    frame = re.search(r"<iframe[^>]*>", page.text)
    assert frame
    tag = frame.group(0)
    # No script runs in the frame; same-origin only lets drip's own script measure it.
    assert 'sandbox="' in tag
    assert "allow-scripts" not in tag
    assert "allow-forms" not in tag
    srcdoc = re.search(r'srcdoc="([^"]*)"', tag)
    assert srcdoc
    assert "&lt;p class=&#34;x&#34;&gt;Hello &lt;b&gt;Ann&lt;/b&gt;" in srcdoc.group(1)
    assert "<script>" not in page.text
    scripts = re.findall(r"<script[^>]*>", page.text)
    assert scripts == ['<script src="/static/admin-mail.js" defer>']
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp
    assert "unsafe-inline';" not in csp.split("script-src")[1]
    assert "your pack is attached." in page.text  # the text part
    assert "Subject" in page.text
    assert "info-pack.pdf" in page.text

    link = re.search(rf'href="(/admin/outbox/{re.escape(key)}/part/\d+)"', page.text)
    assert link
    part = client.get(link.group(1))
    assert part.status_code == 200
    assert part.content == b"%PDF-1.4 fake pack"
    assert part.headers["content-type"] == "application/pdf"
    assert part.headers["content-disposition"] == 'attachment; filename="info-pack.pdf"'
    assert client.get(f"/admin/outbox/{key}/part/99").status_code == 404
    assert client.get("/admin/outbox/no-such-key").status_code == 404


def test_a_caught_mail_with_a_hostile_header_lists_and_shows_escaped(
    client: TestClient, admin_settings: Settings
) -> None:
    """One mail whose To: holds an encoded word that decodes to CR LF made /admin/outbox
    answer 500 until 200 newer mails arrived; headers that decode to markup are shown
    escaped, and control characters not at all."""
    raw = (
        b"To: =?utf-8?q?Sam=0D=0A?= <sam@example.com>\r\n"
        b"Cc: =?utf-8?q?=3Cscript=3Ealert(1)=3C/script=3E?= <cy@example.com>\r\n"
        b"Subject: =?utf-8?q?=3Cscript=3Ealert(2)=3C/script=3E=1B[31m?=\r\n"
        b"Date: not a date\r\n"
        b"Content-Type: text/plain\r\n\r\nHello\r\n"
    )
    key = mailbox.Maildir(admin_settings.catcher_dir, create=True).add(raw)
    listing = client.get("/admin/outbox")
    assert listing.status_code == 200
    assert "sam@example.com" in listing.text
    assert "&lt;script&gt;alert(2)" in listing.text
    page = client.get(f"/admin/outbox/{key}")
    assert page.status_code == 200
    assert "sam@example.com" in page.text
    assert "&lt;script&gt;alert(1)" in page.text
    for text in (listing.text, page.text):
        assert "<script>" not in text
        assert "\x1b" not in text


def test_the_embed_page_shows_the_form_and_what_the_script_needs(
    client: TestClient, admin_settings: Settings
) -> None:
    page = client.get("/admin/embed")
    assert page.status_code == 200
    assert 'aria-current="page">Form for your site' in page.text
    assert "No site is allowed yet" in page.text
    assert "DRIP_CORS_ORIGINS" in page.text
    assert f'action="{admin_settings.base_url}/subscribe"' in html.unescape(page.text)
    assert "<form class" not in page.text  # shown as text to copy, never as a live form
    allowed = admin_settings.model_copy(update={"cors_origins": "https://blog.example"})
    page = TestClient(admin_app(allowed), headers=_basic(USER, PASSWORD)).get("/admin/embed")
    assert "<code>https://blog.example</code>" in page.text
    assert TestClient(admin_app(allowed)).get("/admin/embed").status_code == 401


def test_send_test_from_admin_is_csrf_guarded_and_queues_a_marked_test(
    client: TestClient, admin_settings: Settings, recorder: Recorder
) -> None:
    engine = get_engine(admin_settings.database_url)
    page = client.get("/admin").text
    assert 'action="/admin/send-test"' in page
    assert "<option>lesson-03-pressure-release</option>" in page
    form = {"name": "lesson-03-pressure-release", "to": "me@example.org"}
    assert client.post("/admin/send-test", data={**form, "csrf": "0" * 64}).status_code == 403
    refused = client.post(
        "/admin/send-test", data={"csrf": _csrf(page), "name": "/etc/passwd", "to": "me@x.org"}
    )
    assert refused.status_code == 400
    assert "Not sent: no email named &#39;/etc/passwd&#39;" in refused.text
    with read_scope(engine) as session:
        assert session.execute(select(OutboxMessage)).first() is None

    letter = "---\nsubject: Spring news for {{ name }}\n---\nHi {{ name }}!\n"
    done = client.post(
        "/admin/send-test",
        data={"csrf": _csrf(page), "name": "welcome", "to": "me@example.org", "letter": letter},
    )
    assert done.status_code == 200  # followed the 303 to the dashboard
    assert "The test is queued" in done.text
    tick(admin_settings)
    [message] = recorder.wait_for(1)
    assert message["Subject"] == "[Test] Spring news for Sam"
    assert message["X-Drip-Test"] == "yes"
    with read_scope(engine) as session:
        [row] = session.execute(select(OutboxMessage)).scalars()
        assert (row.kind, row.status) == ("test", OutboxStatus.sent)
