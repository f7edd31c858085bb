"""Every shipped email, rendered as sent, read the way a phone and a spam filter read it."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from drip import render
from drip.render import RenderError, render_email
from tests.test_content import EMAILS, NAMES, context_for

PHONE = {"width": 375, "height": 667}
#: SpamAssassin 4's `__STY_INVIS` (behind STY_INVIS_DIRECT and HTML_TEXT_INVISIBLE_STYLE).
STY_INVIS = re.compile(
    r"\bstyle\s*=\s*\"[^\">]{0,80}(?:(?<!-)visibility\s*:\s*hidden\s*|display\s*:\s*none\s*)[;\"!]",
    re.I,
)


def as_sent(name: str) -> dict[str, Any]:
    """The sample context with links as long as real ones: 43-character tokens on https."""
    base = "https://course.example.com"
    token = secrets.token_urlsafe(32)
    overrides: dict[str, Any] = {
        "base_url": base,
        "confirm_url": f"{base}/confirm/{token}",
        "unsubscribe_url": f"{base}/unsubscribe/{token}",
        "email": "a.rather.long.address.for.a.phone@subdomain.example.com",
    }
    if name == "confirm":
        overrides["unsubscribe_url"] = None
    return context_for(name, **overrides)


@pytest.mark.parametrize("name", NAMES)
def test_every_email_fits_a_375_pixel_phone(browser: Browser, name: str) -> None:
    html = render_email(EMAILS, name, as_sent(name)).html
    page = browser.new_page(viewport=PHONE)
    try:
        page.set_content(html)
        width = page.evaluate("document.documentElement.scrollWidth")
        wide = page.evaluate(
            """() => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
                .map(e => e.tagName + ' ' + (e.textContent || '').trim().slice(0, 40))
                .slice(0, 5)"""
        )
    finally:
        page.close()
    assert width <= PHONE["width"], f"{name} is {width} px wide on a phone: {wide}"


@pytest.mark.parametrize("name", NAMES)
def test_the_preheader_is_hidden_without_tricks_spam_filters_score(
    browser: Browser, name: str
) -> None:
    html = render_email(EMAILS, name, as_sent(name)).html
    assert not STY_INVIS.search(html), "display:none or visibility:hidden in a style attribute"
    preheader = re.search(r'<div class="preheader"[^>]*style="([^"]*)"', html)
    assert preheader, "the preheader is missing"
    # HTML_FONT_LOW_CONTRAST: a text colour near the background's. The preheader sets none.
    assert "color" not in preheader.group(1)
    page = browser.new_page(viewport=PHONE)
    try:
        page.set_content(html)
        box = page.locator(".preheader").bounding_box()
        text = page.locator(".preheader").text_content() or ""
    finally:
        page.close()
    if "block preheader" in (EMAILS / f"{name}.html").read_text():
        assert text.strip(), "the preheader lost its text for the inbox preview"
    assert box is not None
    assert box["height"] == 0
    assert box["width"] == 0


#: Readers' values a skeleton must put in exactly as building from scratch would.
ADVERSARIAL: list[dict[str, Any]] = [
    {},
    {"name": 'Ann-Marie O\'Brien & "Co" <b>bold</b>', "email": "o'brien&co@example.com"},
    {"name": "  Zoë   Ångström-Łukasz  ", "email": "zoe@xn--bcher-kva.example"},
    {"name": "", "email": "a@example.com"},
    {"name": None, "unsubscribe_url": None, "pack_url": None},
    {"name": "   ", "unsubscribe_url": ""},
    {"name": "名前 テスト", "pack_url": 'https://example.com/pack/a&b="c"<d>\'e'},
    {"name": "Tab\there", "email": "nbsp\xa0x@example.com"},
    {"name": "\ue000\ue100", "unsubscribe_url": "https://example.com/u/x?a=1&b=<2>"},
    {"confirm_url": "https://example.com/confirm/a\"b'c&d<e>", "name": "&amp; &lt;"},
    {"name": "{{ name }}", "email": "x@example.com", "pack_url": "https://e.com/p/1"},
]


@pytest.mark.parametrize("name", NAMES)
def test_a_skeleton_renders_each_reader_as_built_from_scratch(name: str) -> None:
    """The cached path (a skeleton per template) against Jinja and css-inline per reader."""
    for round_ in range(2):  # the first builds and checks the skeleton, the second reuses it
        for values in ADVERSARIAL:
            context = context_for(name, **values)
            expected = render._render_now(EMAILS.resolve(), name, dict(context))
            assert render_email(EMAILS, name, dict(context)) == expected, (name, round_, values)
    plan = render._plan(EMAILS.resolve(), name)
    assert plan is not None
    if name not in ("answer", "newsletter"):  # these use a reader's value otherwise
        assert plan.used is not None and plan.hits > 0, name


def _write(folder: Path, name: str, html: str, text: str = "{{ name }}\n") -> None:
    (folder / f"{name}.html").write_text(html)
    (folder / f"{name}.txt").write_text(text)


HTML = "<html><head><title>{% block subject %}Hello{% endblock %}</title>"
STYLE = "<style>p { color: red; }</style></head><body>"


def test_a_template_edited_between_two_emails_is_used_at_once(tmp_path: Path) -> None:
    _write(tmp_path, "x", HTML + STYLE + "<p>Hi {{ name }}</p></body></html>")
    assert "Hi Ann" in render_email(tmp_path, "x", {"name": "Ann"}).html
    _write(tmp_path, "x", HTML + STYLE + "<p>Hello again, {{ name }}</p></body></html>")
    html = render_email(tmp_path, "x", {"name": "Bea"}).html
    assert "Hello again, Bea" in html and 'style="color: red;"' in html


@pytest.mark.parametrize(
    "body",
    [
        "<p>{{ name|upper }}</p>",
        '<p class="{{ name }}">x</p>',
        "<p>{% filter upper %}{{ name }}{% endfilter %}</p>",
        "<p>{{ name ~ '!' }}</p>",
        "{% if name == 'Ann' %}<p>ann</p>{% endif %}",
    ],
)
def test_a_value_used_other_than_printed_is_rendered_per_reader(tmp_path: Path, body: str) -> None:
    _write(tmp_path, "x", HTML + STYLE + body + "</body></html>")
    for name in ("Ann", "Bea", "Ann", "Bea"):
        html = render_email(tmp_path, "x", {"name": name}).html
        assert html == render._render_now(tmp_path.resolve(), "x", {"name": name}).html


def test_a_broken_template_still_names_its_line(tmp_path: Path) -> None:
    _write(tmp_path, "x", HTML + STYLE + "\n\n<p>{{ name }</p></body></html>")
    with pytest.raises(RenderError, match=r"x\.html, line 3"):
        render_email(tmp_path, "x", {"name": "Ann"})
    _write(tmp_path, "x", HTML + STYLE + "\n\n<p>{{ name }}{{ nothing }}</p></body></html>")
    with pytest.raises(RenderError, match=r"x\.html, line 3: 'nothing' is undefined"):
        render_email(tmp_path, "x", {"name": "Ann"})
