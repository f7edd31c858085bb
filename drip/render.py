"""Render an email from its template pair in `emails/`: NAME.html and NAME.txt.

The HTML template extends `base.html` and sets the subject in a `subject` block;
its CSS is inlined (css-inline) so Gmail and Outlook show it as designed. Any
error names the template and line, and nothing half-rendered ever leaves.
"""

from __future__ import annotations

import html as html_lib
import sys
import traceback
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import css_inline
import jinja2

from drip.course import Course, CourseError, load_course
from drip.errors import DripError
from drip.identity import identity
from drip.pace import Pace
from drip.settings import Settings

SAMPLE_CONTEXT: dict[str, Any] = {
    "name": "Sam",
    "email": "sam@example.com",
    "base_url": "http://127.0.0.1:8000",
    "unsubscribe_url": "http://127.0.0.1:8000/unsubscribe/SAMPLE-TOKEN",
    "confirm_url": "http://127.0.0.1:8000/confirm/SAMPLE-TOKEN",
    #: Set on the welcome with DRIP_PACK_DELIVERY=link; None: the pack is attached.
    "pack_url": None,
    "lesson_number": 1,
    "lesson_total": 9,
    "course_title": "Trigger Point Relief",
    # drip.identity's variables, as its defaults make them for the shipped course.
    "site_name": "Trigger Point Relief",
    "author_name": "",
    "signoff": "Warmly,",
    "signature": "Your Trigger Point Relief teacher",
    "privacy_controller": "Trigger Point Course",
    "privacy_contact": "course@localhost",
    "privacy_contact_href": "mailto:course@localhost",
    "newsletter": True,
    "first_lesson": "tomorrow morning",
    "first_lesson_later": "a day later",
    # The shipped course (emails/course.toml): number, title, and the day after
    # confirmation when each lesson arrives; tests/test_content.py keeps them in step.
    "lessons": [
        {"number": 1, "title": "What trigger points are", "day": 1},
        {"number": 2, "title": "Finding your trigger points", "day": 3},
        {"number": 3, "title": "The pressure release, step by step", "day": 6},
        {"number": 4, "title": "Gluteus minimus, the hidden hip muscle", "day": 8},
        {"number": 5, "title": "Trigger point or sciatica?", "day": 11},
        {"number": 6, "title": "After a release: heat, stretch, move", "day": 13},
        {"number": 7, "title": "Why they come back, and a daily routine", "day": 16},
        {"number": 8, "title": "Looking back, and where to go next", "day": 18},
        {"number": 9, "title": "Your questions, answered", "day": 20},
    ],
    "question_subject": "Re: Lesson 4 of 9: Gluteus minimus, the hidden hip muscle",
    "question_text": "Does this work for shoulder pain too?",
    "answer_text": "Often, yes: the same steps work for any muscle you can reach.\n\n"
    "Start with the top of the shoulder, and never press the front of the neck.",
    "subject": "Hip pain on the stairs? Three small changes",
    "preheader": "Why stairs hurt more than walking, and three things to try this week.",
    "content_html": (
        "<h1>Hip pain on the stairs?</h1>"
        "<p>A reader asked why her hip aches most on the stairs. Here is what I told her.</p>"
    ),
    "content_text": (
        "HIP PAIN ON THE STAIRS?\n\n"
        "A reader asked why her hip aches most on the stairs. Here is what I told her."
    ),
}


def sample_context(settings: Settings, name: str) -> dict[str, Any]:
    """SAMPLE_CONTEXT made true to the course in the emails folder and to its author
    (drip.identity) for the email `name`: what `drip preview`, `drip check` and a
    newsletter's dry run render with."""
    context = dict(SAMPLE_CONTEXT)
    try:
        course: Course | None = load_course(settings.emails_dir)
    except CourseError:
        course = None  # `drip check` reports a broken course; a preview still helps
    if course is not None:
        context["course_title"] = course.title
        context["lesson_total"] = course.total
        context["lessons"] = course.schedule()
        context.update(Pace(settings.minutes_per_day).first_lesson(course))
        for number, lesson in enumerate(course.lessons, start=1):
            if lesson.template == name:
                context["lesson_number"] = number
    context.update(identity(settings, context["course_title"]).context())
    if name == "confirm":
        context["unsubscribe_url"] = None  # as sent: nothing to unsubscribe from yet
    return context


#: Never fetch a stylesheet over the network: emails are built from local files only.
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False)


class RenderError(DripError):
    """A template could not be rendered; the message names the template and line."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


def first_name(name: str | None) -> str:
    """The first word of a name, for a greeting ("Hi Sam"); "" when there is no name."""
    words = (name or "").split()
    return words[0] if words else ""


@cache
def environment(emails_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(emails_dir)),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["first_name"] = first_name
    return env


def _where(exc: BaseException, fallback: str) -> str:
    """'name.html, line N' from a Jinja error or the template frame in its traceback."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return (
            f"{exc.filename and Path(exc.filename).name or exc.name or fallback}, line {exc.lineno}"
        )
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith((".html", ".txt")):
            return f"{Path(frame.filename).name}, line {frame.lineno}"
    return fallback


def _render(env: jinja2.Environment, name: str, context: dict[str, Any]) -> tuple[str, str]:
    try:
        template = env.get_template(name)
        body = template.render(context)
        subject = ""
        if "subject" in template.blocks:
            ctx = template.new_context(context)
            subject = "".join(template.blocks["subject"](ctx))
        return body, subject
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"{exc.name}: template not found") from None
    except Exception as exc:  # noqa: BLE001 - any template failure is reported the same way
        message = getattr(exc, "message", None) or str(exc)
        raise RenderError(f"{_where(exc, name)}: {message}").with_traceback(
            sys.exc_info()[2]
        ) from None


def render_email(emails_dir: Path, name: str, context: dict[str, Any]) -> Rendered:
    env = environment(emails_dir.resolve())
    html, subject = _render(env, f"{name}.html", context)
    text, _ = _render(env, f"{name}.txt", context)
    # The subject block is rendered with HTML escaping on; a header wants the plain text.
    subject = html_lib.unescape(" ".join(subject.split()))
    if not subject:
        raise RenderError(f"{name}.html: no subject (add a {{% block subject %}})")
    try:
        html = _INLINER.inline(html)
    except ValueError as exc:
        raise RenderError(f"{name}.html: CSS could not be inlined ({exc})") from None
    return Rendered(subject=subject, html=html, text=text)


def template_names(emails_dir: Path) -> list[str]:
    """Every email that has both parts; `base` is the layout, not an email."""
    html = {p.stem for p in emails_dir.glob("*.html")}
    text = {p.stem for p in emails_dir.glob("*.txt")}
    return sorted((html & text) - {"base"})
