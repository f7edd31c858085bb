"""/admin/funnel in real headless Chromium, after tests/test_funnel.py's course run.

Its own module: the browser fixture holds Playwright's event loop in this thread for
the whole module, so the passes of the course run go to another thread.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from playwright.sync_api import Browser

from drip.settings import Settings
from drip.web.app import create_app
from tests.browser import serving
from tests.mailserver import Recorder
from tests.test_admin import PASSWORD, USER
from tests.test_funnel import EXPECTED, funnel_settings, run_course

__all__ = ["funnel_settings"]  # the fixture, used by name


def test_the_funnel_page_in_chromium(
    browser: Browser, funnel_settings: Settings, recorder: Recorder
) -> None:
    # Playwright's sync API holds this thread's event loop: the passes run in another.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(run_course, funnel_settings, recorder).result(timeout=300)
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        with serving(create_app(funnel_settings)) as site:
            page.goto(f"{site}/admin")
            page.get_by_role("navigation").get_by_role("link", name="Funnel").click()
            page.wait_for_url("**/admin/funnel")
            assert page.locator("h1").inner_text() == "Course funnel"
            chart = page.get_by_role("img", name=re.compile("Readers reaching each step"))
            assert chart.locator("rect.bar").count() == len(EXPECTED)
            # Lost readers are drawn where they were lost: before lessons 2, 4 (two) and 6
            # (the bounce). The one who never confirmed was deleted a week on, only counted.
            lost = chart.locator("rect.lost")
            assert lost.count() == 3
            colour = lost.first.evaluate("e => getComputedStyle(e).fill")
            bar = chart.locator("rect.bar").first.evaluate("e => getComputedStyle(e).fill")
            assert colour != bar
            row = page.locator("#step-pressure-release")
            assert row.locator('[data-field="reached"]').inner_text() == "4"
            assert row.locator('[data-field="unsubscribed_after"]').inner_text() == "2"
            bounced = page.locator("#step-trigger-point-or-sciatica [data-field='bounced']")
            assert bounced.inner_text() == "1"
            assert page.locator("#step-finished [data-field='reached']").inner_text() == "1"
            assert page.locator("#completion-rate").inner_text() == "20.0%"
            sources = page.locator("table.funnel-sources tbody tr")
            assert sources.count() == 2
            assert sources.first.locator('[data-field="confirmation_rate"]').inner_text() == "75.0%"
    finally:
        context.close()
    assert errors == []  # nothing blocked by the CSP, no missing asset
