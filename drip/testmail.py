"""Test sends: one email (a template, or a newsletter file) to one address, now.

The author wants to see a lesson, the welcome with its pack, the confirmation or a
newsletter in a real mail client before readers do. A test is an outbox row like any
other, so it takes the one delivery path (DKIM, the send rate, the send log), but of
its own kind, `test`: follow-up never moves a course on for it, and the statistics
leave it out. It is rendered with the address's own data when the address is a
subscriber's (their name, their working links), else with the sample reader's, and it
is marked: "[Test] " before the subject and an `X-Drip-Test: yes` header.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlmodel import Session, col

from drip import newsletter
from drip.course import CourseError, load_course
from drip.db import session_scope
from drip.errors import DripError
from drip.models import MessageKind, OutboxMessage
from drip.newsletter_body import LetterTemplate
from drip.render import render_email, sample_context, template_names
from drip.sending.outbox import NewMessage, dedupe_key, enqueue
from drip.settings import Settings
from drip.signup import clean_email
from drip.subscribers import find_by_email

SUBJECT_PREFIX = "[Test] "
HEADER = "X-Drip-Test"
#: Emails with their own kind; a lesson template is a lesson, anything else a plain email.
_KINDS = {
    "confirm": MessageKind.confirm,
    "welcome": MessageKind.welcome,
    "newsletter": MessageKind.newsletter,
    "answer": MessageKind.answer,
}


class SendTestRefused(DripError):
    """A test send names no email or newsletter file, or an address mail cannot reach."""


@dataclass(frozen=True)
class TestMail:
    """What a test send sends: a template, as which kind of email, and a newsletter's text."""

    __test__ = False  # not a pytest test class, whatever its name

    template: str
    kind: MessageKind
    letter: dict[str, Any] | None = None

    def context(self) -> dict[str, Any]:
        """What the outbox row carries, so delivery renders it as that kind of email."""
        found: dict[str, Any] = {"test_of": str(self.kind)}
        if self.letter is not None:
            found["letter"] = self.letter
        return found


def kind_of(settings: Settings, template: str) -> MessageKind:
    if template in _KINDS:
        return _KINDS[template]
    try:
        course = load_course(settings.emails_dir)
    except CourseError:
        return MessageKind.test
    if any(lesson.template == template for lesson in course.lessons):
        return MessageKind.lesson
    return MessageKind.test


def of_letter(settings: Settings, letter: newsletter.Letter) -> TestMail:
    """A newsletter as a test, checked by rendering it for the sample reader."""
    newsletter.check(settings, letter)
    return TestMail(
        "newsletter",
        MessageKind.newsletter,
        {
            "subject": letter.subject,
            "body": letter.body,
            "preheader": letter.preheader,
            "label": letter.label,
            "first_line": letter.first_line,
        },
    )


def of_template(settings: Settings, name: str) -> TestMail:
    """An email in emails/ as a test, checked by rendering it with sample data."""
    names = template_names(settings.emails_dir)
    if name not in names:
        known = ", ".join(names) or "none"
        raise SendTestRefused(f"no email named {name!r} in {settings.emails_dir}/ (known: {known})")
    render_email(settings.emails_dir, name, sample_context(settings, name))
    return TestMail(name, kind_of(settings, name))


def resolve(settings: Settings, name: str) -> TestMail:
    """NAME as `drip send-test` takes it: an email in emails/, or a newsletter file.

    Checked by rendering it with sample data, so a broken template is refused here,
    before anything is queued.
    """
    path = Path(name)
    if name not in template_names(settings.emails_dir) and (
        path.suffix.lower() in (".md", ".markdown") or path.is_file()
    ):
        return of_letter(settings, newsletter.parse(path))
    try:
        return of_template(settings, name)
    except SendTestRefused as exc:
        raise SendTestRefused(f"{exc}, and no newsletter file {name!r}") from None


def letter_of(context: dict[str, Any]) -> LetterTemplate | None:
    """The newsletter file a test row carries, if any."""
    letter = context.get("letter")
    if not isinstance(letter, dict):
        return None
    return LetterTemplate(
        str(letter.get("subject", "")),
        str(letter.get("body", "")),
        str(letter.get("preheader", "")),
        label=str(letter.get("label", "the newsletter")),
        first_line=int(letter.get("first_line", 1)),
    )


def address(raw: str) -> str:
    try:
        return clean_email(raw)
    except ValueError as exc:
        raise SendTestRefused(f"--to {raw!r}: {exc}") from None


def queue_test(
    session: Session, settings: Settings, mail: TestMail, to: str, now: datetime
) -> tuple[int, bool]:
    """Queue the test to `to`, due now: (outbox id, whether `to` is a subscriber)."""
    recipient = address(to)
    subscriber = find_by_email(session, recipient)
    subscriber_id = subscriber.id if subscriber is not None else None
    key = dedupe_key(MessageKind.test, subscriber_id or 0, secrets.token_hex(8))
    enqueue(
        session,
        NewMessage(
            kind=MessageKind.test,
            template=mail.template,
            email=subscriber.email if subscriber is not None else recipient,
            dedupe_key=key,
            due_at=now,
            subscriber_id=subscriber_id,
            context=mail.context(),
        ),
        settings.sender_address.domain,
        now,
    )
    row_id = session.execute(
        select(col(OutboxMessage.id)).where(col(OutboxMessage.dedupe_key) == key)
    ).scalar_one()
    return row_id, subscriber is not None


def send_test(
    settings: Settings, engine: Engine, name: str, to: str, now: datetime
) -> tuple[int, bool]:
    """Check NAME and queue its test to `to`; see `queue_test`."""
    mail = resolve(settings, name)
    with session_scope(engine) as session:
        return queue_test(session, settings, mail, to, now)
