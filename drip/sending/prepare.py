"""A claimed outbox row made ready to send: its template context, rendered and composed.

A row is rendered when it is claimed, seconds before it is sent, so an unsubscribe or
a fixed template counts until then. `email_context` is the one place an email's
template variables are put together from a subscriber; `drip preview` and `drip check`
use drip.render's sample values instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlmodel import Session

from drip import verp
from drip.clock import Clock
from drip.course import Course
from drip.identity import identity
from drip.models import (
    MessageKind,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from drip.newsletter import stored_context
from drip.pack_link import pack_url
from drip.render import RenderError, render_email
from drip.replies import REPLY_KINDS, reply_address
from drip.sending.message import Envelope, PackMissing, Unaddressable, compose
from drip.sending.outbox import Result, retry_or_give_up
from drip.settings import Settings
from drip.subscribers import confirm_salt
from drip.tokens import make_token


def email_context(
    settings: Settings,
    secret: str,
    course: Course | None,
    row: OutboxMessage,
    subscriber: Subscriber,
    newsletter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The template variables of `row`'s email to `subscriber`: links, course, newsletter,
    and last the values fixed when the row was queued."""
    base = settings.base_url
    # The link names this email too, so leaving through it is attributed to it.
    unsubscribe = make_token(secret, subscriber.token_salt, "unsubscribe", row.id)
    context: dict[str, Any] = {
        # The confirmation goes to an address nobody has vouched for yet: none of the
        # visitor's words go in it (a name with a link would make drip a spam cannon).
        "name": "" if row.kind == MessageKind.confirm else subscriber.name,
        "email": subscriber.email,
        "base_url": base,
        "course_title": course.title if course else "",
        **identity(settings, course.title if course else "").context(),
        "pack_url": None,
        # Newsletters too? A repeated signup's choice counts once its link is followed,
        # so the confirmation it asks for already speaks of it.
        "newsletter": bool(
            (subscriber.pending_signup or {}).get("newsletter", subscriber.newsletter)
        ),
        "unsubscribe_url": None
        if row.kind == MessageKind.confirm
        else f"{base}/unsubscribe/{unsubscribe}",
    }
    if row.kind == MessageKind.welcome and settings.pack_delivery == "link":
        assert subscriber.id is not None
        context["pack_url"] = pack_url(base, secret, subscriber.id, subscriber.token_salt)
    if row.kind == MessageKind.confirm:
        confirm = make_token(secret, confirm_salt(subscriber), "confirm")
        context["confirm_url"] = f"{base}/confirm/{confirm}"
    if newsletter is not None:
        context.update(newsletter)
    context.update(row.context)
    return context


class Preparer:
    """Builds claimed rows' messages for one delivery run; keeps the newsletters it read."""

    def __init__(self, settings: Settings, course: Course | None, clock: Clock) -> None:
        self.settings = settings
        self.secret = settings.require_secret()
        self.course = course
        self.clock = clock
        self._newsletters: dict[int, dict[str, Any]] = {}

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

    def load_newsletters(self, session: Session, ids: Iterable[int | None]) -> None:
        """Read the newsletters these rows carry, each once per run."""
        for letter_id in set(ids) - {None} - self._newsletters.keys():
            assert letter_id is not None
            self._newsletters[letter_id] = stored_context(session, letter_id)

    def prepare(self, row: OutboxMessage, subscriber: Subscriber | None) -> Envelope | Result:
        """Render and build the message, or say why it must not be sent."""
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
        letter = self._newsletters.get(row.newsletter_id) if row.newsletter_id else None
        context = email_context(self.settings, self.secret, self.course, row, subscriber, letter)
        try:
            rendered = render_email(self.settings.emails_dir, row.template, context)
            return compose(
                self.settings,
                rendered,
                email=row.email,
                name=context["name"],
                message_id=row.message_id,
                unsubscribe_url=context["unsubscribe_url"],
                attach_pack=row.kind == MessageKind.welcome
                and self.settings.pack_delivery == "attach",
                now=self.clock(),
                bounce_address=self._bounce_address(row),
                reply_to=self._reply_to(row),
                in_reply_to=row.context.get("in_reply_to")
                if row.kind == MessageKind.answer
                else None,
            )
        except RenderError as exc:
            return Result(OutboxStatus.failed, None, f"template error: {exc}")
        except (Unaddressable, ValueError) as exc:
            return Result(OutboxStatus.failed, None, f"cannot build the message: {exc}")
        except PackMissing as exc:
            return retry_or_give_up(self.settings, row, None, str(exc), self.clock())
