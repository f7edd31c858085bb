"""Render an email from its template pair in `emails/`: NAME.html and NAME.txt.

The HTML template extends `base.html` and sets the subject in a `subject` block;
its CSS is inlined (css-inline) so Gmail and Outlook show it as designed
(drip.templating). A reader's email is filled into its template's skeleton when the
template allows (drip.skeleton), the same email to the byte. Sample values for
previews and checks are here too.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from drip.course import Course, CourseError, load_course
from drip.identity import identity
from drip.pace import Pace
from drip.settings import Settings
from drip.skeleton import fill
from drip.templating import Rendered, from_scratch

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


@cache
def _resolved(emails_dir: Path) -> Path:
    return emails_dir.resolve()


def render_email(emails_dir: Path, name: str, context: dict[str, Any]) -> Rendered:
    """`name`'s email for `context`. The same email, to the byte, as Jinja and css-inline
    make from scratch; filled into a skeleton of it when the template allows."""
    emails_dir = _resolved(emails_dir)
    return fill(emails_dir, name, context) or from_scratch(emails_dir, name, context)


def template_names(emails_dir: Path) -> list[str]:
    """Every email that has both parts; `base` is the layout, not an email."""
    html = {p.stem for p in emails_dir.glob("*.html")}
    text = {p.stem for p in emails_dir.glob("*.txt")}
    return sorted((html & text) - {"base"})
