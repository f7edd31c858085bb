"""The shipped course: every email renders, links and unsubscribes right, and stays safe.

These read the real files in emails/, so a broken template, a lost unsubscribe
link or a lesson without its safety note fails here rather than in an inbox.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from drip import figure
from drip.course import load_course
from drip.render import SAMPLE_CONTEXT, render_email, template_names
from drip.templating import Rendered

ROOT = Path(__file__).resolve().parent.parent
EMAILS = ROOT / "emails"
COURSE = load_course(EMAILS)
LESSONS = {lesson.template: number for number, lesson in enumerate(COURSE.lessons, start=1)}
NAMES = template_names(EMAILS)
BASE = SAMPLE_CONTEXT["base_url"]
UNSUBSCRIBE = SAMPLE_CONTEXT["unsubscribe_url"]
CONFIRM = SAMPLE_CONTEXT["confirm_url"]
SAFETY_PHRASES = ("not a diagnosis", "numbness", "bladder", "Stop if the pain turns sharp")


def context_for(template: str, **overrides: Any) -> dict[str, Any]:
    """The context drip sends each kind of email with, built from the sample data."""
    context = dict(SAMPLE_CONTEXT, lesson_total=COURSE.total, lessons=COURSE.schedule())
    if template in LESSONS:
        context["lesson_number"] = LESSONS[template]
    if template == "confirm":
        context["unsubscribe_url"] = None
    context.update(overrides)
    return context


def render(template: str, **overrides: Any) -> Rendered:
    return render_email(EMAILS, template, context_for(template, **overrides))


def flat(text: str) -> str:
    """Whitespace folded, so a phrase wrapped across lines still matches."""
    return " ".join(text.split())


class _Tags(HTMLParser):
    """Collects every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    parser.close()
    return parser.tags


# The course file


def test_course_loads_with_enough_lessons_and_unique_slugs() -> None:
    assert COURSE.title == "Trigger Point Relief"
    assert COURSE.total >= 7
    slugs = [lesson.slug for lesson in COURSE.lessons]
    assert len(set(slugs)) == len(slugs)
    assert all(lesson.template.startswith("lesson-") for lesson in COURSE.lessons)


def test_lessons_are_spaced_one_day_then_two_or_three() -> None:
    delays = [lesson.delay_days for lesson in COURSE.lessons]
    assert delays[0] == 1
    assert all(2 <= d <= 3 for d in delays[1:]), delays


def test_sample_lessons_match_the_course() -> None:
    """SAMPLE_CONTEXT's welcome schedule is the shipped course, so previews tell the truth."""
    assert SAMPLE_CONTEXT["lessons"] == COURSE.schedule()
    assert SAMPLE_CONTEXT["lesson_total"] == COURSE.total


def test_every_email_is_there() -> None:
    assert {"confirm", "welcome", "newsletter", "answer", *LESSONS} <= set(NAMES)
    assert not [
        n
        for n in NAMES
        if n not in LESSONS and n not in {"confirm", "welcome", "newsletter", "answer"}
    ]


# Every email


@pytest.mark.parametrize("name", NAMES)
def test_renders_with_a_subject_and_no_template_left_over(name: str) -> None:
    rendered = render(name)
    assert rendered.subject.strip()
    for part in (rendered.html, rendered.text):
        assert "{{" not in part
        assert "{%" not in part
        # The newsletter does not greet; the confirmation greets nobody by name (a
        # visitor's words never go to an address no one has vouched for).
        assert "Hi Sam," in part or name in ("newsletter", "confirm")


@pytest.mark.parametrize("name", [n for n in NAMES if n != "confirm"])
def test_unsubscribe_link_in_both_parts(name: str) -> None:
    rendered = render(name)
    assert f'<a href="{UNSUBSCRIBE}"' in rendered.html
    assert f"Unsubscribe: {UNSUBSCRIBE}" in rendered.text


def test_confirm_links_to_confirm_and_offers_no_unsubscribe() -> None:
    rendered = render("confirm")
    for part in (rendered.html, rendered.text):
        assert CONFIRM in part
        assert "/unsubscribe/" not in part
        assert "Unsubscribe" not in part
    assert "ignore this email" in flat(rendered.text)
    assert "sam@example.com" in rendered.text
    assert "Sam" not in rendered.text.replace("sam@example.com", "")


@pytest.mark.parametrize("name", NAMES)
def test_links_go_only_to_drip_or_https(name: str) -> None:
    allowed = {BASE, UNSUBSCRIBE, CONFIRM}
    for tag, attrs in tags(render(name).html):
        href = attrs.get("href")
        if tag == "a" or href is not None:
            assert href in allowed or (href or "").startswith("https://"), (tag, href)


@pytest.mark.parametrize("name", NAMES)
def test_nothing_is_fetched_from_the_web(name: str) -> None:
    """Only drip's own pictures, on DRIP_BASE_URL, each with alt text; nothing else loads."""
    for tag, attrs in tags(render(name).html):
        assert tag not in {"link", "script", "iframe"}, tag
        if tag == "img":
            assert (attrs.get("src") or "").startswith(f"{BASE}/pictures/"), attrs
            assert len(attrs.get("alt") or "") > 40, attrs
            assert attrs.get("width"), attrs
        else:
            assert "src" not in attrs, (tag, attrs)


def test_lesson_four_shows_the_muscle_and_reads_well_with_images_off() -> None:
    rendered = render("lesson-04-gluteus-minimus")
    images = [attrs for tag, attrs in tags(rendered.html) if tag == "img"]
    assert len(images) == 1
    assert images[0]["src"] == f"{BASE}/pictures/gluteus-minimus.png"
    assert images[0]["alt"] == figure.gluteus_minimus().alt
    # With images off, the words around the picture still give both patterns.
    words = flat(re.sub(r"<img[^>]*>", "", rendered.html))
    for phrase in ("down the outside of the thigh and leg", "as far as the ankle",
                   "passing the outside of the knee by", "to just below the knee"):  # fmt: skip
        assert phrase in flat(re.sub(r"<[^>]+>", "", words)), phrase
        assert phrase in flat(rendered.text), phrase
    assert f"{BASE}/pictures/gluteus-minimus.png" in rendered.text
    # No other email carries a picture.
    for name in NAMES:
        if name != "lesson-04-gluteus-minimus":
            assert "<img" not in render(name).html, name


@pytest.mark.parametrize("name", NAMES)
def test_css_is_inlined(name: str) -> None:
    styled = [tag for tag, attrs in tags(render(name).html) if attrs.get("style")]
    assert {"body", "table", "td"} <= set(styled)
    assert len(styled) >= 10


@pytest.mark.parametrize("name", NAMES)
def test_hostile_name_is_escaped_in_html(name: str) -> None:
    rendered = render(name, name="<script>alert(1)</script>")
    assert "<script" not in rendered.html.lower()
    if name not in ("newsletter", "confirm"):  # those two do not greet by name
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html


@pytest.mark.parametrize("name", [n for n in NAMES if n not in {"newsletter", "confirm"}])
def test_the_greeting_uses_the_first_name(name: str) -> None:
    """("confirm" greets no one by name: the address is not confirmed yet.)"""
    rendered = render(name, name="  Sam   Reader ")
    assert re.search(r"<p[^>]*>Hi Sam,</p>", rendered.html)
    assert "\nHi Sam,\n" in "\n" + rendered.text
    assert "Reader" not in rendered.text


@pytest.mark.parametrize("name", [n for n in NAMES if n != "newsletter"])
def test_empty_name_greets_without_a_gap(name: str) -> None:
    rendered = render(name, name="   ")
    assert re.search(r"<p[^>]*>Hi,</p>", rendered.html)
    assert "\nHi,\n" in "\n" + rendered.text
    assert "Hi ," not in rendered.text


@pytest.mark.parametrize("name", NAMES)
def test_text_lines_fit_a_narrow_client(name: str) -> None:
    long = [line for line in render(name).text.splitlines() if len(line) > 78 and "://" not in line]
    assert not long


# The lessons


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_lesson_is_numbered(name: str) -> None:
    rendered = render(name)
    number = LESSONS[name]
    assert rendered.subject.startswith(f"Lesson {number} of {COURSE.total}: ")
    assert f"LESSON {number} OF {COURSE.total}" in rendered.text


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_lesson_carries_the_shared_safety_note(name: str) -> None:
    rendered = render(name)
    for part in (rendered.html, rendered.text):
        for phrase in SAFETY_PHRASES:
            assert phrase in flat(re.sub(r"<[^>]+>", "", part)), (phrase, name)
    # Included, not copied, so the note cannot drift between lessons.
    assert '{% include "partials/safety.html" %}' in (EMAILS / f"{name}.html").read_text()
    assert '{% include "partials/safety.txt" %}' in (EMAILS / f"{name}.txt").read_text()


#: The urgent signs added after the seed's readers' questions (issue 20), in every lesson.
URGENT_SIGNS = (
    "both legs",
    "weakness that is getting worse",
    "a foot that starts to drop",
    "hot, swollen, painful calf",
)


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_every_lesson_lists_the_three_new_urgent_signs(name: str) -> None:
    rendered = render(name)
    for part in (rendered.html, rendered.text):
        urgent = flat(re.sub(r"<[^>]+>", "", part))
        urgent = urgent[urgent.index("Get urgent medical help") :]
        for phrase in URGENT_SIGNS:
            assert phrase in urgent, (phrase, name)


def test_the_nerve_rule_stands_where_sciatica_comes_up() -> None:
    """Tingling, numbness and weakness: a nerve, not gluteus minimus, and both together."""
    rule = (
        "tingling, numbness and weakness point to a nerve, not to gluteus minimus trigger "
        "points, and the two can happen together"
    )
    for name in ("lesson-04-gluteus-minimus", "lesson-05-trigger-point-or-sciatica"):
        rendered = render(name)
        for part in (rendered.html, rendered.text):
            assert rule in flat(re.sub(r"<[^>]+>", "", part)).lower(), name
            assert "sciatica" in part


def test_one_call_to_action_colour_on_the_site_and_in_the_emails() -> None:
    css = (ROOT / "drip" / "web" / "static" / "site.css").read_text()
    accent = re.search(r"--accent:\s*(#[0-9a-fA-F]{6})", css)
    assert accent is not None
    assert "background: var(--accent)" in css
    buttons = [
        attrs.get("style") or ""
        for tag, attrs in tags(render("confirm").html)
        if tag == "td" and "border-radius" in (attrs.get("style") or "")
    ]
    assert buttons
    assert all(f"background-color: {accent.group(1)}" in b for b in buttons)


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_lesson_reads_in_about_three_minutes(name: str) -> None:
    words = len(render(name).text.split())
    assert 400 <= words <= 800, words


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_lesson_gives_one_thing_to_do_today(name: str) -> None:
    rendered = render(name)
    assert "Try this today" in rendered.html
    assert "TRY THIS TODAY" in rendered.text


def test_lessons_make_no_promise_of_a_cure() -> None:
    for name in LESSONS:
        text = render(name).text.lower()
        assert not re.search(
            r"\b(cures?|guarantee[sd]?|permanent(ly)?)\b",
            text.replace("it does not cure anything", ""),
        ), name


# Welcome and newsletter


def test_welcome_lists_every_lesson_with_its_day_and_the_pack() -> None:
    rendered = render("welcome")
    for lesson in COURSE.schedule():
        line = f"Lesson {lesson['number']}: {lesson['title']}"
        assert line in rendered.html
        assert line in rendered.text
        assert f"Day {lesson['day']}" in rendered.html
        assert re.search(rf"Day {lesson['day']} +{re.escape(line)}", rendered.text)
    assert "attached" in rendered.text
    assert "PDF" in rendered.text
    assert "unsubscribe link" in flat(rendered.text)


def test_newsletter_wraps_operator_content_and_keeps_the_subject_plain() -> None:
    rendered = render(
        "newsletter",
        subject="Q&A: hips & knees",
        content_html='<h2>Your questions</h2><p><a href="https://example.org/x">More</a></p>',
        content_text="YOUR QUESTIONS\n\nMore: https://example.org/x",
    )
    assert rendered.subject == "Q&A: hips & knees"
    assert "Your questions</h2>" in rendered.html
    assert "YOUR QUESTIONS\n\nMore: https://example.org/x" in rendered.text


# drip preview


def _cli() -> typer.Typer:
    """The `drip` command itself, which mounts the content commands."""
    from drip.cli import app

    return app


def test_preview_prints_subject_then_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(_cli(), ["preview", "lesson-04-gluteus-minimus", "--text"])
    assert result.exit_code == 0, result.output
    first, _, rest = result.stdout.partition("\n")
    assert first == f"Subject: Lesson 4 of {COURSE.total}: Gluteus minimus, the hidden hip muscle"
    assert f"Unsubscribe: {UNSUBSCRIBE}" in rest
    assert "<html" not in rest


def test_preview_writes_html_for_a_browser(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "confirm.html"
    result = CliRunner().invoke(_cli(), ["preview", "confirm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert CONFIRM in html
    assert "/unsubscribe/" not in html


def test_preview_of_an_unknown_email_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(_cli(), ["preview", "no-such-email"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no-such-email" in result.stderr


@pytest.mark.parametrize("asked", [True, False])
def test_the_emails_say_what_was_agreed_to(asked: bool) -> None:
    """Course and newsletter are separate choices, and every email says which were made."""
    for name in ("confirm", "welcome"):
        rendered = render(name, newsletter=asked)
        for part in (flat(rendered.text), flat(rendered.html)):
            if asked:
                assert "asked for our occasional newsletter" in part, name
            else:
                assert "no newsletters, as you chose" in part, name
    letter = render("newsletter", newsletter=True, content_text="Hi.", content_html="<p>Hi.</p>")
    assert "asked for it when signing up" in flat(letter.text)
    for name in NAMES:
        text = flat(render(name).text)
        assert "nothing else is sent" not in text.lower()
        if name != "confirm":  # the one email without an unsubscribe link
            assert "no lessons, no newsletters" in text, name
