"""A claimed outbox row made ready to send: its template context, rendered and composed.

A row is rendered when it is claimed, seconds before it is sent, so an unsubscribe or
a fixed template counts until then. `email_context` is the one place an email's
template variables are put together from a subscriber; `drip preview` and `drip check`
use drip.render's sample values instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from sqlmodel import Session

from drip import clicks, hooks, testmail, verp
from drip.clock import Clock
from drip.course import Course
from drip.identity import identity
from drip.models import (
    SUPPRESSED,
    MessageKind,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from drip.newsletter import stored_letter
from drip.newsletter_body import LetterTemplate
from drip.pace import Pace
from drip.pack_link import pack_url
from drip.render import render_email, sample_context
from drip.replies import REPLY_KINDS, reply_address
from drip.sending.message import Envelope, PackMissing, Unaddressable, compose
from drip.sending.outbox import Result, retry_or_give_up
from drip.sending.post import Post
from drip.settings import Settings
from drip.subscribers import confirm_salt
from drip.templating import RenderError
from drip.tokens import make_token
from drip.versions import template_version

#: Emails whose text is their template's alone, so its version says what went out
#: (a newsletter's or an answer's text is in the database, not the template).
VERSIONED_KINDS = (MessageKind.confirm, MessageKind.welcome, MessageKind.lesson)


def run_context(settings: Settings, course: Course | None) -> dict[str, Any]:
    """The template variables that are the same in every email of a run: the course and
    its author (drip.identity), and when the first lesson comes."""
    title = course.title if course else ""
    context: dict[str, Any] = {
        "base_url": settings.base_url,
        "course_title": title,
        **identity(settings, title).context(),
    }
    if course is not None:  # true also under drip dev --minutes-per-day
        context.update(Pace(settings.minutes_per_day).first_lesson(course))
    return context


def email_context(
    settings: Settings,
    secret: str,
    course: Course | None,
    row: OutboxMessage,
    subscriber: Subscriber,
    kind: MessageKind | None = None,
    constants: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The template variables of `row`'s email to `subscriber`: links, course, and last
    the values fixed when the row was queued. `kind`: render as this kind of email (a
    test send's), not the row's own. `constants`: `run_context`, if already made."""
    kind = kind or row.kind
    base = settings.base_url
    context = dict(run_context(settings, course) if constants is None else constants)
    # The confirmation goes to an address nobody has vouched for yet: none of the
    # visitor's words go in it (a name with a link would make drip a spam cannon).
    context["name"] = "" if kind == MessageKind.confirm else subscriber.name
    context["email"] = subscriber.email
    context["pack_url"] = None
    # Newsletters too? A repeated signup's choice counts once its link is followed,
    # so the confirmation it asks for already speaks of it.
    pending = subscriber.pending_signup
    context["newsletter"] = bool(
        pending.get("newsletter", subscriber.newsletter) if pending else subscriber.newsletter
    )
    if kind == MessageKind.confirm:
        context["unsubscribe_url"] = None
        confirm = make_token(secret, confirm_salt(subscriber), "confirm")
        context["confirm_url"] = f"{base}/confirm/{confirm}"
    else:
        # The link names this email too, so leaving through it is attributed to it.
        unsubscribe = make_token(secret, subscriber.token_salt, "unsubscribe", row.id)
        context["unsubscribe_url"] = f"{base}/unsubscribe/{unsubscribe}"
    if kind == MessageKind.welcome and settings.pack_delivery == "link":
        assert subscriber.id is not None
        context["pack_url"] = pack_url(base, secret, subscriber.id, subscriber.token_salt)
    context.update(row.context)
    return context


def sample_reader_context(settings: Settings, row: OutboxMessage) -> dict[str, Any]:
    """A test send's variables for an address that is no subscriber's: the sample
    reader's, on this site's links, with no unsubscribe link (there is nobody to
    unsubscribe)."""
    base = settings.base_url
    context = sample_context(settings, row.template)
    context.update(
        email=row.email,
        base_url=base,
        unsubscribe_url=None,
        confirm_url=f"{base}/confirm/SAMPLE-TOKEN",
        pack_url=f"{base}/pack/SAMPLE-TOKEN" if settings.pack_delivery == "link" else None,
    )
    return context


class Preparer:
    """Builds claimed rows' messages for one delivery run; keeps the newsletters it read."""

    def __init__(self, settings: Settings, course: Course | None, clock: Clock) -> None:
        self.settings = settings
        self.secret = settings.require_secret()
        self.webhook_secret = hooks.signing_secret(settings)
        self.course = course
        self.clock = clock
        self._newsletters: dict[int, LetterTemplate] = {}
        self._constants = run_context(settings, course)

    def _bounce_address(self, row: OutboxMessage) -> str | None:
        """With DRIP_BOUNCE_DOMAIN, a VERP address naming this message, so its bounce finds it."""
        domain = self.settings.bounce_domain
        if not domain or row.id is None:
            return None
        return verp.address(self.secret, domain, row.id, row.message_id)

    def _reply_to(self, row: OutboxMessage) -> str | None:
        """With DRIP_BOUNCE_DOMAIN, a lesson's, newsletter's or answer's replies go to
        `reply+TAG@` that domain, where drip inbound files them as questions (drip.replies)."""
        domain = self.settings.bounce_domain
        if not domain or row.id is None or row.kind not in REPLY_KINDS:
            return None
        return reply_address(self.secret, domain, row.id, row.message_id)

    def _removed_lesson(self, row: OutboxMessage) -> Result | None:
        """A lesson queued before the author took it out of the course is not sent; the
        reader moves on to their next lesson, with the usual gap from now."""
        if row.kind != MessageKind.lesson or self.course is None:
            return None
        slug = row.context.get("slug")
        if any(lesson.slug == slug for lesson in self.course.lessons):
            return None
        reason = f"lesson {slug!r} was removed from the course"
        return Result(OutboxStatus.skipped, None, reason, moves_on=True)

    def load_newsletters(self, session: Session, ids: Iterable[int | None]) -> None:
        """Read the newsletters these rows carry, each once per run."""
        for letter_id in set(ids) - {None} - self._newsletters.keys():
            assert letter_id is not None
            self._newsletters[letter_id] = stored_letter(session, letter_id)

    def prepare(
        self, row: OutboxMessage, subscriber: Subscriber | None
    ) -> Envelope | Post | Result:
        """Render and build the message, or say why it must not be sent. A webhook row
        is its signed POST: it reports a fact, whatever the subscriber's state now."""
        if row.kind == MessageKind.webhook:
            return hooks.request(self.webhook_secret, row, self.clock())
        if row.kind == MessageKind.test:
            return self._prepare_test(row, subscriber)
        if subscriber is None:
            return Result(OutboxStatus.skipped, None, "the subscriber was deleted")
        # A confirmation goes to a pending subscriber, or to an active one who signed up
        # again (drip.signup.subscribe); everything else only to an active one.
        wanted = (
            (SubscriberStatus.pending, SubscriberStatus.active)
            if row.kind == MessageKind.confirm
            else (SubscriberStatus.active,)
        )
        if subscriber.status not in wanted:
            return Result(OutboxStatus.skipped, None, f"the subscriber is {subscriber.status}")
        if row.kind == MessageKind.newsletter and not subscriber.newsletter:
            return Result(OutboxStatus.skipped, None, "the subscriber did not agree to newsletters")
        removed = self._removed_lesson(row)
        if removed is not None:
            return removed
        letter = self._newsletters.get(row.newsletter_id) if row.newsletter_id else None
        context = email_context(
            self.settings, self.secret, self.course, row, subscriber, constants=self._constants
        )
        return self._build(row, row.kind, context, letter)

    def _prepare_test(self, row: OutboxMessage, subscriber: Subscriber | None) -> Envelope | Result:
        """A test send (drip.testmail): the subscriber's data if the address is one's, else
        the sample reader's; never to an address that bounced or complained."""
        kind = MessageKind(row.context.get("test_of", MessageKind.test))
        if subscriber is not None and subscriber.status in SUPPRESSED:
            return Result(OutboxStatus.skipped, None, f"the subscriber is {subscriber.status}")
        if subscriber is None:
            context = sample_reader_context(self.settings, row)
        else:
            context = sample_context(self.settings, row.template)
            context.update(
                email_context(
                    self.settings, self.secret, self.course, row, subscriber, kind, self._constants
                )
            )
        letter = testmail.letter_of(row.context)
        # The sample reader's name greets, but is not put on an address that is not theirs.
        to_name = "" if subscriber is None else None
        return self._build(row, kind, context, letter, test=True, to_name=to_name)

    def _build(
        self,
        row: OutboxMessage,
        kind: MessageKind,
        context: dict[str, Any],
        letter: LetterTemplate | None,
        test: bool = False,
        to_name: str | None = None,
    ) -> Envelope | Result:
        try:
            if letter is not None:
                context.update(letter.render(context))
            rendered = render_email(self.settings.emails_dir, row.template, context)
            if test:
                rendered = replace(rendered, subject=testmail.SUBJECT_PREFIX + rendered.subject)
            elif row.kind in VERSIONED_KINDS:
                row.version = template_version(self.settings.emails_dir, row.template)
            if self.settings.click_tracking and row.kind == MessageKind.lesson and row.id:
                base = self.settings.base_url
                rendered = clicks.track_links(rendered, base, self.secret, row.id)
            return compose(
                self.settings,
                rendered,
                email=row.email,
                name=context["name"] if to_name is None else to_name,
                message_id=row.message_id,
                unsubscribe_url=context["unsubscribe_url"],
                attach_pack=kind == MessageKind.welcome and self.settings.pack_delivery == "attach",
                now=self.clock(),
                bounce_address=self._bounce_address(row),
                reply_to=self._reply_to(row),
                in_reply_to=row.context.get("in_reply_to") if kind == MessageKind.answer else None,
                headers={testmail.HEADER: "yes"} if test else None,
            )
        except RenderError as exc:
            return Result(OutboxStatus.failed, None, f"template error: {exc}")
        except (Unaddressable, ValueError) as exc:
            return Result(OutboxStatus.failed, None, f"cannot build the message: {exc}")
        except PackMissing as exc:
            return retry_or_give_up(self.settings, row, None, str(exc), self.clock())
