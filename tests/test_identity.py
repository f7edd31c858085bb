"""Making drip the author's own: settings and template overrides reach pages and emails."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from drip.identity import identity
from drip.render import SAMPLE_CONTEXT
from drip.settings import Settings, SettingsError, load_settings
from drip.web.app import create_app
from tests.conftest import EMAILS
from tests.factories import subscriber, tick
from tests.mailserver import Recorder

AUTHOR = {
    "site_name": "Ana's Back Room",
    "author_name": "Ana Ruiz",
    "signoff": "Keep moving,",
    "privacy_controller": "Ana Ruiz Physio Ltd",
    "privacy_contact": "privacy@ana.example",
}


def test_the_defaults_are_the_shipped_course_and_sender() -> None:
    plain = load_settings(_env_file=None)
    made = identity(plain, "Trigger Point Relief").context()
    assert made == {k: SAMPLE_CONTEXT[k] for k in made}  # previews and `drip check` agree
    assert made["signature"] == "Your Trigger Point Relief teacher"
    own = identity(load_settings(_env_file=None, **AUTHOR), "Trigger Point Relief")
    assert own.signature == "Ana Ruiz"
    assert own.privacy_contact_href == "mailto:privacy@ana.example"
    url = identity(load_settings(_env_file=None, privacy_contact="https://ana.example/p"), "T")
    assert url.privacy_contact_href == "https://ana.example/p"


@pytest.mark.parametrize(
    "name, value",
    [
        ("privacy_contact", "Ana <ana@example.com>"),
        ("privacy_contact", "javascript:alert(1)"),
        ("author_name", "Ana\nBcc: x@example.com"),
        ("site_name", "<b>Ana</b>"),
    ],
)
def test_a_bad_identity_setting_is_one_plain_line(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"DRIP_{name.upper()}"):
        load_settings(_env_file=None, **{name: value})


@pytest.fixture
def own(settings: Settings, tmp_path: Path) -> Settings:
    """The author's settings, and an emails/ folder with a page of their own."""
    emails = tmp_path / "emails"
    shutil.copytree(EMAILS, emails)
    (emails / "pages").mkdir()
    (emails / "pages" / "thanks.html").write_text(
        '{% extends "page.html" %}{% block heading %}Nearly there, friend{% endblock %}'
        "{% block body %}<p>{{ author_name }} will write to you in a moment.</p>{% endblock %}"
    )
    (emails / "pages" / "admin").mkdir()  # admin pages are never taken from here
    (emails / "pages" / "admin" / "base.html").write_text("HIJACKED")
    return settings.model_copy(
        update={
            **AUTHOR,
            "emails_dir": emails,
            "admin_user": "op",
            "admin_password": SecretStr("pw" * 8),
        }
    )


def test_settings_and_an_override_show_on_the_pages(own: Settings) -> None:
    client = TestClient(create_app(own), follow_redirects=False)
    form = client.get("/").text
    assert "Ana&#39;s Back Room" in form
    assert "Trigger Point Relief" not in form.split("<main")[0]
    privacy = client.get("/privacy").text
    assert "Ana Ruiz Physio Ltd" in privacy
    assert 'href="mailto:privacy@ana.example"' in privacy
    thanks = client.get("/thanks").text
    assert "Nearly there, friend" in thanks
    assert "Ana Ruiz will write to you" in thanks
    assert "<title>Nearly there, friend</title>" in thanks
    # The embed's inline thank-you (the JSON answer) says what the overridden page says.
    answer = client.post("/subscribe", json={"email": "j@example.com", "consent": True})
    assert answer.json()["message"] == "Ana Ruiz will write to you in a moment."
    assert "Check your inbox" not in thanks
    admin = client.get("/admin", auth=("op", "pw" * 8))
    assert admin.status_code == 200
    assert "HIJACKED" not in admin.text


def test_settings_show_in_the_emails(own: Settings, recorder: Recorder) -> None:
    subscriber(own, "ann@example.com", name="Ann")
    tick(own)
    [welcome] = recorder.wait_for(1)
    text = welcome.get_body(("plain",))
    html = welcome.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "Keep moving,\nAna Ruiz" in text.get_content().replace("\r\n", "\n")
    assert "Ana's Back Room" in html.get_content().replace("&#39;", "'")
    assert "teacher" not in text.get_content()
