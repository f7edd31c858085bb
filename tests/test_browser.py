"""A visitor's path in real headless Chromium: sign up, confirm from the email, welcome queued."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import Engine, select

from drip.db import get_engine, session_scope, upgrade
from drip.models import MessageKind, OutboxMessage, Subscriber, SubscriberStatus
from drip.settings import Settings
from drip.web.app import create_app
from tests.browser import run_tick, serving
from tests.conftest import SettingsFactory
from tests.mailserver import MailServer, Recorder


@pytest.fixture
def site(
    tmp_path: Path, mail_server: MailServer, make_settings: SettingsFactory
) -> Iterator[tuple[str, Settings, Engine]]:
    url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    upgrade(get_engine(url))
    settings = make_settings(url, mail_server.port)
    with serving(create_app(settings)) as base:
        yield base, settings.model_copy(update={"base_url": base}), get_engine(url)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(timezone_id="Europe/Berlin")
    yield context.new_page()
    context.close()


def test_sign_up_confirm_and_get_the_welcome(
    site: tuple[str, Settings, Engine], page: Page, recorder: Recorder
) -> None:
    base, settings, engine = site
    problems: list[str] = []  # a CSP violation or a missing asset shows up here
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(base + "/")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    expect(page.locator("#timezone")).to_have_value("Europe/Berlin")
    assert problems == []
    page.get_by_label("Email address").fill("reader@example.com")
    page.get_by_label("First name").fill("Robin")
    page.get_by_label("Yes, send me the free course").check()
    page.get_by_role("button", name="Send me the free course").click()
    page.wait_for_url(base + "/thanks")
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()

    run_tick(settings)
    [confirmation] = recorder.wait_for(1)
    text = confirmation.get_body(("plain",))
    assert text is not None
    assert "Robin" not in text.get_content()  # no visitor's words in the confirmation
    link = re.search(r"http://\S+/confirm/\S+", text.get_content())
    assert link is not None
    page.goto(link.group(0))  # what a mail scanner fetches: one button, nothing changed
    with session_scope(engine) as session:
        assert session.execute(select(Subscriber.status)).scalar_one() == SubscriberStatus.pending
    page.get_by_role("button", name="Yes, start my course").click()
    expect(page.get_by_role("heading", name="You're in!")).to_be_visible()
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber)).scalar_one()
        kinds = list(
            session.execute(select(OutboxMessage.kind).order_by(OutboxMessage.id)).scalars()
        )
    assert sub.status == SubscriberStatus.active
    assert sub.timezone == "Europe/Berlin"
    assert kinds == [MessageKind.confirm, MessageKind.welcome]


def test_a_mistake_is_shown_beside_its_field(
    site: tuple[str, Settings, Engine], page: Page
) -> None:
    base, _, engine = site
    page.goto(base + "/")
    page.get_by_label("Email address").fill("not an address")
    page.get_by_label("First name").fill("Robin")
    page.get_by_role("button", name="Send me the free course").click()
    email = page.get_by_label("Email address")
    expect(email).to_have_attribute("aria-invalid", "true")
    expect(email).to_have_value("not an address")
    expect(page.locator("#email-error")).to_contain_text("doesn't look like an email address")
    expect(page.locator("#consent-error")).to_be_visible()
    expect(page.locator("#error-summary")).to_be_focused()
    expect(page.get_by_label("First name")).to_have_value("Robin")
    with session_scope(engine) as session:
        assert session.execute(select(Subscriber)).first() is None


def test_the_keyboard_skips_the_honeypot(site: tuple[str, Settings, Engine], page: Page) -> None:
    base, _, _ = site
    page.goto(base + "/")
    page.get_by_label("Email address").focus()
    order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert order == ["name", "consent", "newsletter", "BUTTON"]
    expect(page.locator("#website")).not_to_be_in_viewport()


def test_unsubscribe_with_one_button(
    site: tuple[str, Settings, Engine], page: Page, recorder: Recorder
) -> None:
    from drip.clock import utcnow
    from drip.subscribers import activate, add_subscriber
    from drip.tokens import make_token

    base, settings, engine = site
    with session_scope(engine) as session:
        sub, _ = add_subscriber(
            session, settings, email="leaving@example.com", source="test", now=utcnow()
        )
        activate(session, settings, sub, utcnow())
        token = make_token(settings.require_secret(), sub.token_salt, "unsubscribe")
    page.goto(f"{base}/unsubscribe/{token}")
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading", name="You're unsubscribed")).to_be_visible()
    run_tick(settings)
    assert recorder.raw == []  # the queued welcome was skipped
