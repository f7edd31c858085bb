"""/admin in a real headless Chromium, against a real uvicorn server on a free port."""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page
from playwright.sync_api import Error as PlaywrightError
from sqlalchemy import Engine

from drip.db import read_scope
from drip.models import Subscriber, SubscriberStatus
from drip.settings import Settings
from tests.browser import run_tick, serving
from tests.conftest import SettingsFactory
from tests.factories import subscriber
from tests.mailserver import MailServer, Recorder
from tests.test_admin import PASSWORD, USER, admin_app


@pytest.fixture
def admin_settings(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory
) -> Settings:
    return make_settings(database_url, mail_server.port, admin_user=USER, admin_password=PASSWORD)


@pytest.fixture
def site(admin_settings: Settings) -> Iterator[str]:
    with serving(admin_app(admin_settings)) as base:
        yield base


@pytest.fixture
def console_errors() -> list[str]:
    """Errors the page logged; a test removes those it expects."""
    return []


@pytest.fixture
def page(browser: Browser, console_errors: list[str]) -> Iterator[Page]:
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
    page = context.new_page()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            console_errors.append(message.text)

    page.on("console", on_console)
    yield page
    context.close()
    # A stylesheet or frame blocked by the CSP, or a missing asset, logs an error.
    assert console_errors == []


def test_log_in_filter_the_log_open_a_subscriber_and_unsubscribe_them(
    page: Page, site: str, admin_settings: Settings, engine: Engine
) -> None:
    ann = subscriber(admin_settings, "ann@example.com", name="Ann <b>Lee</b>")
    subscriber(admin_settings, "bob@example.com")
    run_tick(admin_settings)
    subscriber(admin_settings, "cat@example.com", active=False)

    page.goto(f"{site}/admin")
    assert page.locator("h1").inner_text() == "Dashboard"
    header = page.locator("header.top")
    assert header.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(29, 35, 48)"
    assert page.locator("svg.chart rect.bar").count() == 30
    assert page.get_by_role("alert").count() == 0  # a pass just ran

    page.get_by_role("link", name="Send log").click()
    page.get_by_label("Email").fill("ann@example.com")
    page.get_by_label("Status").select_option("sent")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/admin/log?*status=sent*")
    rows = page.locator("table.log tbody tr")
    assert rows.count() == 1
    assert "ann@example.com" in rows.first.inner_text()
    assert "sent" in rows.first.inner_text()

    page.get_by_role("link", name="ann@example.com").click()
    page.wait_for_url(f"**/admin/subscribers/{ann.id}")
    assert page.get_by_text("Ann <b>Lee</b>").count() == 1  # the name as text, not markup
    assert page.locator(".timeline li").count() == 1

    page.get_by_role("button", name="Unsubscribe").click()
    page.wait_for_url(f"**/admin/subscribers/{ann.id}?done=unsubscribed")
    assert "nothing more will be sent" in page.get_by_role("status").inner_text()
    assert page.get_by_role("button", name="Unsubscribe").count() == 0
    with read_scope(engine) as session:
        row = session.get(Subscriber, ann.id)
        assert row is not None
        assert row.status == SubscriberStatus.unsubscribed

    page.get_by_role("link", name="Subscribers").click()
    page.get_by_label("Status").select_option("pending")
    page.get_by_role("button", name="Search").click()
    assert page.locator("tbody tr").count() == 1
    assert page.get_by_text("cat@example.com").count()


def test_caught_mail_renders_in_a_sandboxed_frame(
    page: Page, site: str, admin_settings: Settings, console_errors: list[str]
) -> None:
    message = EmailMessage()
    message["To"] = "ann@example.com"
    message["Subject"] = "Your first release"
    message.set_content("Press gently for 30 seconds.\n")
    message.add_alternative(
        "<h1 style='color: rgb(200, 0, 0)'>Press gently</h1>"
        "<script>document.body.dataset.ran = 'yes'</script>",
        subtype="html",
    )
    mailbox.Maildir(admin_settings.catcher_dir, create=True).add(message)

    page.goto(f"{site}/admin")
    page.get_by_role("link", name="Caught mail").first.click()
    page.get_by_role("link", name="Your first release").click()
    frame = page.frame_locator("iframe.mail")
    heading = frame.locator("h1")
    assert heading.inner_text() == "Press gently"
    assert heading.evaluate("e => getComputedStyle(e).color") == "rgb(200, 0, 0)"
    assert frame.locator("body").get_attribute("data-ran") is None  # no script ran
    blocked = [e for e in console_errors if "Blocked script execution in 'about:srcdoc'" in e]
    assert blocked, console_errors  # Chromium says why: the frame is sandboxed
    console_errors[:] = [e for e in console_errors if e not in blocked]
    assert "Press gently for 30 seconds." in page.locator("pre.mailtext").inner_text()


def test_the_caught_mail_frame_shows_the_whole_email(
    page: Page, site: str, admin_settings: Settings, console_errors: list[str]
) -> None:
    message = EmailMessage()
    message["To"] = "ann@example.com"
    message["Subject"] = "A long lesson"
    message.set_content("Long.\n")
    paragraphs = "".join(f"<p>Paragraph {n} of the lesson.</p>" for n in range(80))
    message.add_alternative(f"<h1>Start</h1>{paragraphs}<p id='end'>The end.</p>", subtype="html")
    key = mailbox.Maildir(admin_settings.catcher_dir, create=True).add(message)

    page.goto(f"{site}/admin/outbox/{key}")
    frame = page.locator("iframe.mail")
    content = page.frame_locator("iframe.mail").locator("html")
    page.wait_for_function(
        "() => { const f = document.querySelector('iframe.mail');"
        " return f.contentDocument && f.clientHeight >= f.contentDocument.body.scrollHeight; }"
    )
    height = frame.evaluate("f => f.getBoundingClientRect().height")
    inner = content.evaluate("e => e.scrollHeight")
    assert height >= inner > 1000  # 80 paragraphs, all of them shown
    assert content.evaluate("e => e.scrollHeight <= e.clientHeight")  # no scrollbar inside


def test_the_send_log_fits_a_phone(browser: Browser, site: str, admin_settings: Settings) -> None:
    long = "a-rather-long-address-for-a-phone@mail.subdomain.example.com"
    subscriber(admin_settings, long, name="Ann")
    run_tick(admin_settings)
    context = browser.new_context(
        viewport={"width": 375, "height": 740},
        http_credentials={"username": USER, "password": PASSWORD},
    )
    phone = context.new_page()
    for path in ("/admin/log", "/admin"):
        phone.goto(f"{site}{path}")
        wide = phone.evaluate("() => document.documentElement.scrollWidth")
        assert wide <= 375, (path, wide)
    phone.goto(f"{site}/admin/log")
    cell = phone.get_by_text(long)
    assert cell.is_visible()
    box = cell.bounding_box()
    assert box is not None
    assert 0 <= box["x"] <= box["x"] + box["width"] <= 375
    context.close()


def test_closed_without_credentials_or_login(
    browser: Browser, site: str, tmp_path: Path, make_settings: SettingsFactory
) -> None:
    context = browser.new_context()
    anonymous = context.new_page()
    with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
        anonymous.goto(f"{site}/admin")  # headless Chromium has no one to ask for a password
    answer = context.request.get(f"{site}/admin")
    assert answer.status == 401
    assert "Dashboard" not in answer.text()
    assert answer.headers["www-authenticate"].startswith('Basic realm="drip admin"')
    context.close()

    wrong = browser.new_context(http_credentials={"username": USER, "password": "guess"})
    answer = wrong.request.get(f"{site}/admin")
    assert answer.status == 401
    wrong.close()

    unset = make_settings(f"sqlite:///{tmp_path / 'closed.db'}", 2525)
    with serving(admin_app(unset)) as closed_site:
        context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
        visitor = context.new_page()
        response = visitor.goto(f"{closed_site}/admin")
        assert response is not None
        assert response.status == 503
        assert "admin is closed" in visitor.inner_text("body")
        context.close()


def test_send_a_test_from_the_dashboard(
    page: Page, site: str, admin_settings: Settings, recorder: Recorder
) -> None:
    subscriber(admin_settings, "ann@example.com", name="Ann Lee", start=False)
    page.goto(f"{site}/admin")
    page.get_by_label("Email", exact=True).select_option("lesson-02-finding-trigger-points")
    page.get_by_label("To", exact=True).fill("ann@example.com")
    page.get_by_role("button", name="Send test").click()
    page.wait_for_url("**/admin?done=test-queued")
    assert "The test is queued" in page.get_by_role("status").inner_text()
    run_tick(admin_settings)
    [message] = recorder.wait_for(1)
    assert message["Subject"].startswith("[Test] Lesson 2 of 9")
    assert message["X-Drip-Test"] == "yes"
    assert message["To"] == "Ann Lee <ann@example.com>"


def test_the_course_buttons_pause_resume_and_skip_from_the_subscribers_page(
    page: Page, site: str, admin_settings: Settings, engine: Engine
) -> None:
    ann = subscriber(admin_settings, "ann@example.com")
    run_tick(admin_settings)
    page.goto(f"{site}/admin/subscribers/{ann.id}")
    page.get_by_role("button", name="Pause the course").click()
    page.wait_for_url("**done=course-pause")
    assert "Course paused" in page.locator("main").inner_text()
    assert page.locator(".pill", has_text="paused").count() == 1
    page.get_by_role("button", name="Resume the course").click()
    page.wait_for_url("**done=course-resume")
    page.get_by_label("Skip to").select_option("pressure-release")
    page.get_by_role("button", name="Skip", exact=True).click()
    page.wait_for_url("**done=course-skip")
    actions = page.locator("li.course-action strong").all_inner_texts()
    assert actions == ["course skip", "course resume", "course pause"]
    assert (
        "lesson 2 (finding-trigger-points)" in page.locator("li.course-action").first.inner_text()
    )
