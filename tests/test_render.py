"""Every shipped email, rendered as sent, read the way a phone and a spam filter read it."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from drip.render import render_email
from drip.templating import RenderError
from tests.test_content import EMAILS, NAMES, context_for
from tests.test_skeleton import HTML, STYLE, write

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


def test_a_broken_template_still_names_its_line(tmp_path: Path) -> None:
    write(tmp_path, "x", HTML + STYLE + "\n\n<p>{{ name }</p></body></html>")
    with pytest.raises(RenderError, match=r"x\.html, line 3"):
        render_email(tmp_path, "x", {"name": "Ann"})
    write(tmp_path, "x", HTML + STYLE + "\n\n<p>{{ name }}{{ nothing }}</p></body></html>")
    with pytest.raises(RenderError, match=r"x\.html, line 3: 'nothing' is undefined"):
        render_email(tmp_path, "x", {"name": "Ann"})
