"""The signup form on the author's own site, in real Chromium: the snippet from /admin/embed
pasted into a page served on a second loopback origin (another port), posted without
JavaScript and through the script's JSON path with CORS."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import Engine, select

from drip.db import get_engine, session_scope, upgrade
from drip.models import Subscriber, SubscriberStatus
from drip.settings import Settings
from drip.web.app import _course_facts, create_app
from drip.web.embed import snippet
from tests.browser import serving
from tests.conftest import ROOT, SettingsFactory
from tests.mailserver import MailServer, free_port

ADMIN = ("admin", "embed-test-password-123")


@dataclass
class Sites:
    drip: str
    blog: str
    settings: Settings
    engine: Engine
    #: The page the blog serves at /posts/knees: the snippet as /admin/embed shows it.
    page: dict[str, str]


def _blog(page: dict[str, str]) -> FastAPI:
    blog = FastAPI()

    @blog.get("/posts/knees", response_class=HTMLResponse)
    def post() -> str:
        return (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<link rel='icon' href='data:,'><title>A blog</title>"
            f"</head><body><h1>Knees, a post</h1>{page['html']}</body></html>"
        )

    return blog


@pytest.fixture
def sites(
    tmp_path: Path, mail_server: MailServer, make_settings: SettingsFactory
) -> Iterator[Sites]:
    url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    upgrade(get_engine(url))
    drip_port, blog_port = free_port(), free_port()
    blog_origin = f"http://127.0.0.1:{blog_port}"
    settings = make_settings(
        url,
        mail_server.port,
        base_url=f"http://127.0.0.1:{drip_port}",
        cors_origins=blog_origin,
        admin_user=ADMIN[0],
        admin_password=ADMIN[1],
    )
    page: dict[str, str] = {}
    with serving(create_app(settings), drip_port) as drip, serving(_blog(page), blog_port) as blog:
        admin = TestClient(create_app(settings)).get("/admin/embed", auth=ADMIN)
        assert admin.status_code == 200
        found = re.search(r'<textarea id="snippet"[^>]*>(.*?)</textarea>', admin.text, re.S)
        assert found is not None
        page["html"] = html.unescape(found.group(1))
        assert page["html"] == snippet(settings.base_url, _course_facts(settings))
        yield Sites(drip, blog, settings, get_engine(url), page)


@pytest.fixture
def js_page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(timezone_id="Europe/Berlin")
    yield context.new_page()
    context.close()


@pytest.fixture
def plain_page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(java_script_enabled=False)
    yield context.new_page()
    context.close()


def _only(engine: Engine) -> Subscriber:
    with session_scope(engine) as session:
        return session.execute(select(Subscriber)).scalar_one()


def _fill(page: Page, email: str, *, newsletter: bool) -> None:
    page.get_by_label("Email address").fill(email)
    page.get_by_label("First name").fill("Robin")
    page.get_by_label("Yes, send me the free course").check()
    if newsletter:
        page.get_by_label("Also send me the occasional newsletter").check()
    page.get_by_role("button", name="Send me the free course").click()


def test_the_script_thanks_in_place_through_cors(sites: Sites, js_page: Page) -> None:
    problems: list[str] = []
    js_page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    js_page.goto(sites.blog + "/posts/knees")
    _fill(js_page, "reader@example.com", newsletter=True)
    expect(js_page.locator("[data-drip-message]")).to_contain_text(
        "We've sent you an email with a link to confirm your address."
    )
    assert js_page.url == sites.blog + "/posts/knees"  # the reader never left the blog
    assert problems == []
    sub = _only(sites.engine)
    assert sub.email == "reader@example.com"
    assert sub.status == SubscriberStatus.pending
    assert sub.name == "Robin"
    assert sub.timezone == "Europe/Berlin"
    assert sub.newsletter
    assert sub.newsletter_source == "/posts/knees"
    assert sub.source == "/posts/knees"  # the page's path, filled in by the script

    # A mistake the browser lets through comes back in place too, in drip's words.
    js_page.get_by_label("Email address").fill("robin@b")
    js_page.get_by_label("Yes, send me the free course").check()
    js_page.get_by_role("button", name="Send me the free course").click()
    expect(js_page.locator("[data-drip-message]")).to_contain_text("doesn't look like an email")


def test_the_form_works_without_javascript(sites: Sites, plain_page: Page) -> None:
    sites.page["html"] = sites.page["html"].replace(
        '<input type="hidden" name="source" value="">',
        '<input type="hidden" name="source" value="sidebar">',
    )
    plain_page.goto(sites.blog + "/posts/knees")
    _fill(plain_page, "plain@example.com", newsletter=False)
    plain_page.wait_for_url(sites.drip + "/thanks")
    expect(plain_page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    sub = _only(sites.engine)
    assert sub.email == "plain@example.com"
    assert sub.source == "sidebar"
    assert not sub.newsletter
    assert sub.newsletter_at is None


def test_a_site_not_allowed_falls_back_to_the_plain_post(sites: Sites, js_page: Page) -> None:
    """A third origin, not in DRIP_CORS_ORIGINS: the browser refuses the JSON answer, and
    the script posts the form plainly instead of leaving the reader with nothing."""
    with serving(_blog(sites.page)) as elsewhere:
        js_page.goto(elsewhere + "/posts/knees")
        _fill(js_page, "other@example.com", newsletter=False)
        js_page.wait_for_url(sites.drip + "/thanks")
    assert _only(sites.engine).email == "other@example.com"


def test_the_readme_shows_the_same_snippet(tmp_path: Path, make_settings: SettingsFactory) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'x.db'}", 1025)
    expected = snippet("https://course.example.com", _course_facts(settings))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert expected in readme, "README's embed block is out of step with drip/web/embed.py"
