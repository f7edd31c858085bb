"""Click counting: signed redirects in lessons, and only readers' clicks counted as human."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser
from pydantic import SecretStr
from sqlalchemy import Engine, select

from drip import clicks, scanners
from drip.db import get_engine, read_scope, upgrade
from drip.models import Click, OutboxMessage
from drip.operator_actions import subscriber_data
from drip.settings import Settings
from drip.templating import Rendered
from drip.web.app import create_app
from tests.browser import serving
from tests.conftest import EMAILS, SECRET, SettingsFactory
from tests.factories import lesson_sent
from tests.mailserver import MailServer, Recorder, free_port
from tests.test_admin import PASSWORD, USER, _basic
from tests.test_cli import _env, drip

LESSON = "lesson-01-what-trigger-points-are"
STUDY = "https://example.org/trigger?a=1&b=2"
MAP = "https://example.net/map"
BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


def emails_with_links(tmp_path: Path, study: str = STUDY, map_: str = MAP) -> Path:
    """The shipped emails, the first lesson linking to two outside pages in both parts."""
    emails = tmp_path / "emails"
    shutil.copytree(EMAILS, emails)
    html_file, text_file = emails / f"{LESSON}.html", emails / f"{LESSON}.txt"
    escaped = study.replace("&", "&amp;")
    html_file.write_text(
        html_file.read_text().replace(
            "<h1>What trigger points are</h1>",
            f'<h1>What trigger points are</h1><p>Read <a href="{escaped}">the study</a> '
            f'and <a href="{map_}">the map</a>, then <a href="{escaped}">the study</a> again.</p>',
        )
    )
    text_file.write_text(
        text_file.read_text().replace(
            "=======================\n",
            f"=======================\n\nRead the study: {study}. And the map ({map_}).\n",
            1,
        )
    )
    return emails


def _parts(message: EmailMessage) -> tuple[str, str]:
    found = {p.get_content_type(): p.get_content() for p in message.walk() if not p.is_multipart()}
    return found["text/html"], found["text/plain"]


def _tracked(base: str, text: str) -> list[str]:
    return [u.rstrip(".") for u in re.findall(re.escape(base) + r"/c/[A-Za-z0-9_.=-]+", text)]


def test_links_are_rewritten_in_both_parts_and_drips_own_stay() -> None:
    base = "https://course.example.com"
    rendered = Rendered(
        subject="s",
        html=f'<a href="{STUDY.replace("&", "&amp;")}">a</a> <a href="{MAP}">b</a>'
        f' <a href="{base}/unsubscribe/TOKEN">leave</a> <a href="mailto:x@example.com">m</a>',
        text=f"See {MAP}. Leave: {base}/unsubscribe/TOKEN",
    )
    tracked = clicks.track_links(rendered, base, SECRET, 42)
    html_links, text_links = _tracked(base, tracked.html), _tracked(base, tracked.text)
    assert len(html_links) == 2 and len(text_links) == 1
    assert f"{base}/unsubscribe/TOKEN" in tracked.html and "mailto:x@example.com" in tracked.html
    assert tracked.text.endswith(f"Leave: {base}/unsubscribe/TOKEN")
    read = [clicks.read_token([SECRET], u.rsplit("/", 1)[1]) for u in html_links]
    assert read == [
        clicks.Link(42, 0, 2, STUDY),
        clicks.Link(42, 1, 2, MAP),
    ]
    # The text part's link to the map is the same link 1.
    assert text_links[0] == html_links[1]
    nothing = Rendered(subject="s", html="<p>plain</p>", text="plain")
    assert clicks.track_links(nothing, base, SECRET, 1) is nothing


def test_a_token_is_only_good_as_drip_signed_it() -> None:
    token = clicks.make_token(SECRET, clicks.Link(7, 0, 1, MAP))
    assert clicks.read_token([SECRET], token) == clicks.Link(7, 0, 1, MAP)
    assert clicks.read_token(["another-key-0123456789"], token) is None
    assert clicks.read_token(["another-key-0123456789", SECRET], token) is not None  # rotation
    payload, _, mac = token.rpartition(".")
    elsewhere = clicks._b64(b"https://evil.example/")
    forged = ".".join([*payload.split(".")[:3], elsewhere]) + "." + mac
    assert clicks.read_token([SECRET], forged) is None
    assert clicks.read_token([SECRET], token.replace("7.", "8.", 1)) is None
    assert clicks.read_token([SECRET], "garbage") is None
    assert clicks.read_token([SECRET], f"{token}).") is not None  # the text's punctuation
    sneaky = clicks.make_token(SECRET, clicks.Link(7, 0, 1, "javascript:alert(1)"))
    assert clicks.read_token([SECRET], sneaky) is None


@pytest.mark.parametrize(
    ("agent", "scanner"),
    [
        (BROWSER_UA, False),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148", False),
        ("", True),
        (None, True),
        ("Mozilla/5.0 HeadlessChrome/120.0", True),
        ("python-requests/2.31", True),
        ("Microsoft Office Existence Discovery", True),
        ("Mozilla/5.0 (compatible; Barracuda Sentinel)", True),
    ],
)
def test_scanner_user_agents(agent: str | None, scanner: bool) -> None:
    assert scanners.scanner_user_agent(agent) is scanner


def test_scanner_networks() -> None:
    assert scanners.scanner_address("40.107.22.1")  # Microsoft EOP
    assert scanners.scanner_address("205.139.110.30")  # Mimecast
    assert not scanners.scanner_address("192.0.2.1")
    assert not scanners.scanner_address(None)


@pytest.fixture
def tracked_lesson(
    tmp_path: Path,
    database_url: str,
    mail_server: MailServer,
    recorder: Recorder,
    make_settings: SettingsFactory,
) -> tuple[Settings, OutboxMessage, list[str]]:
    """A lesson with two links, sent with click tracking: (settings, its row, its links)."""
    settings = make_settings(
        database_url,
        mail_server.port,
        emails_dir=emails_with_links(tmp_path),
        click_tracking=True,
        click_delay_seconds=60,
    )
    row, _ = lesson_sent(settings, "ann@example.com")
    html, text = _parts(recorder.messages[-1])
    assert STUDY.replace("&", "&amp;") not in html and MAP not in html and MAP not in text
    links = list(dict.fromkeys(_tracked(settings.base_url, html)))
    assert len(links) == 2
    assert set(_tracked(settings.base_url, text)) == set(links)
    return settings, row, links


def _clicks(engine: Engine) -> list[Click]:
    with read_scope(engine) as session:
        return list(session.execute(select(Click).order_by(Click.id)).scalars())


def test_only_a_readers_click_counts_as_human(
    tracked_lesson: tuple[Settings, OutboxMessage, list[str]], engine: Engine
) -> None:
    settings, row, (study, map_) = tracked_lesson
    assert row.sent_at is not None
    now = [row.sent_at]
    client = TestClient(create_app(settings, clock=lambda: now[0]), follow_redirects=False)
    path = len(settings.base_url)
    reader = {"user-agent": BROWSER_UA}

    now[0] = row.sent_at + timedelta(seconds=5)  # the gateway, at delivery
    assert client.get(study[path:], headers=reader).headers["location"] == STUDY
    now[0] = row.sent_at + timedelta(minutes=5)
    assert client.head(study[path:], headers=reader).status_code == 302
    scanned = client.get(map_[path:], headers={"user-agent": "Mozilla/5.0 HeadlessChrome/120"})
    assert scanned.status_code == 302 and scanned.headers["location"] == MAP
    now[0] = row.sent_at + timedelta(minutes=6)
    assert client.get(study[path:], headers=reader).status_code == 302  # the reader
    now[0] = row.sent_at + timedelta(hours=2)
    client.get(study[path:], headers=reader)  # every link at once: a scanner, late
    now[0] += timedelta(seconds=1)
    client.get(map_[path:], headers=reader)

    token = study[path:]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert client.get(tampered, headers=reader).status_code == 404
    assert client.get("/c/1.0.2.aHR0cHM6Ly9ldmlsLmV4YW1wbGUv.x", headers=reader).status_code == 404

    seen = [(c.method, c.link, c.human, c.reason) for c in _clicks(engine)]
    assert seen == [
        ("GET", 0, False, "early"),
        ("HEAD", 0, False, "head"),
        ("GET", 1, False, "scanner"),
        ("GET", 0, True, ""),
        ("GET", 0, False, "burst"),
        ("GET", 1, False, "burst"),
    ]
    with read_scope(engine) as session:
        counts = clicks.click_counts(session)
        assert row.subscriber_id is not None
        exported = subscriber_data(session, row.subscriber_id)
    assert counts == {LESSON: clicks.ClickCounts(raw=6, human=1, readers=1)}
    assert exported is not None
    assert [(c["link"], c["human"]) for c in exported["clicks"]] == [(c[1], c[2]) for c in seen]

    # The funnel shows both counts, and says how it told them apart.
    stats = drip("stats", "--json", env=_env(settings) | {"DRIP_CLICK_TRACKING": "true"})
    assert stats.returncode == 0, stats.stderr
    *steps, summary = [json.loads(line) for line in stats.stdout.splitlines()]
    [lesson] = [s for s in steps if s["step"] == "what-trigger-points-are"]
    assert (lesson["clicks"], lesson["human_clicks"], lesson["readers_clicking"]) == (6, 1, 1)
    assert all(s["clicks"] == 0 for s in steps if s is not lesson)
    assert "HEAD request" in summary["clicks_counted_as_human"]
    admin = settings.model_copy(update={"admin_user": USER, "admin_password": SecretStr(PASSWORD)})
    page = TestClient(create_app(admin), headers=_basic(USER, PASSWORD)).get("/admin/funnel")
    row = re.search(r'<tr id="clicks-what-trigger-points-are">(.*?)</tr>', page.text, re.S)
    assert row is not None
    cells = dict(re.findall(r'data-field="(\w+)">([^<]*)<', row.group(1)))
    assert cells == {"clicks": "6", "human_clicks": "1", "readers_clicking": "1"}
    assert "within 60 seconds of the lesson being sent" in page.text


def test_off_by_default_links_go_straight_and_nothing_is_counted(
    tmp_path: Path,
    database_url: str,
    mail_server: MailServer,
    recorder: Recorder,
    make_settings: SettingsFactory,
    engine: Engine,
) -> None:
    settings = make_settings(database_url, mail_server.port, emails_dir=emails_with_links(tmp_path))
    assert settings.click_tracking is False
    row, _ = lesson_sent(settings, "ann@example.com")
    html, text = _parts(recorder.messages[-1])
    assert MAP in html and MAP in text and not _tracked(settings.base_url, html)
    # A link sent while tracking was on still leads on, uncounted.
    assert row.id is not None
    token = clicks.make_token(SECRET, clicks.Link(row.id, 0, 1, MAP))
    client = TestClient(create_app(settings), follow_redirects=False)
    assert client.get(f"/c/{token}").headers["location"] == MAP
    assert _clicks(engine) == []
    privacy = client.get("/privacy").text
    assert "no link tracking" in privacy
    tracking = TestClient(create_app(settings.model_copy(update={"click_tracking": True})))
    assert (
        "/c/" in tracking.get("/privacy").text
        and "no link tracking" not in tracking.get("/privacy").text
    )


@pytest.fixture
def site(
    tmp_path: Path, mail_server: MailServer, make_settings: SettingsFactory
) -> Iterator[tuple[Settings, int]]:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    upgrade(get_engine(url))
    # The lesson links to a page on localhost: outside drip's base URL, so it is tracked.
    emails = emails_with_links(tmp_path, study=f"http://localhost:{port}/privacy")
    settings = make_settings(
        url,
        mail_server.port,
        emails_dir=emails,
        click_tracking=True,
        base_url=f"http://127.0.0.1:{port}",
    )
    yield settings, port


def test_a_real_chromium_click_counts_as_human_after_the_delay(
    site: tuple[Settings, int], recorder: Recorder, browser: Browser
) -> None:
    settings, port = site
    # Scheduler passes in a thread of their own: Playwright's sync API holds this one's loop.
    with ThreadPoolExecutor(1) as pool:
        row, _ = pool.submit(lesson_sent, settings, "ann@example.com").result(timeout=60)
    assert row.sent_at is not None
    sent_at: datetime = row.sent_at
    html, _ = _parts(recorder.messages[-1])
    later = sent_at + timedelta(seconds=settings.click_delay_seconds + 1)
    with serving(create_app(settings, clock=lambda: later), port):
        # A reader's Chrome, not a scripted one: the same browser, without "Headless".
        context = browser.new_context(user_agent=BROWSER_UA)
        page = context.new_page()
        page.set_content(html)
        page.get_by_role("link", name="the study").first.click()
        page.wait_for_url(f"http://localhost:{port}/privacy")
        assert page.get_by_role("heading", name="Privacy note").is_visible()
        context.close()
    engine = get_engine(settings.database_url)
    assert [(c.method, c.human, c.reason) for c in _clicks(engine)] == [("GET", True, "")]
    with read_scope(engine) as session:
        assert clicks.click_counts(session)[LESSON] == clicks.ClickCounts(1, 1, 1)
