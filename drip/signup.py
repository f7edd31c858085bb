"""The visitor's side: check a signup, then subscribe, confirm or unsubscribe.

Independent of HTTP so the rules are tested directly and the web routes stay thin.
Every valid signup gets the same answer whether the address is new, pending or
active (no enumeration); only what is queued differs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from drip.db import lock, session_scope
from drip.errors import DripError
from drip.models import SUBSCRIBED_STATUSES, OutboxMessage, Subscriber, SubscriberStatus
from drip.sending.outbox import enqueue_many
from drip.settings import Settings
from drip.subscribers import (
    Newcomer,
    activate,
    add_subscriber,
    apply_pending,
    confirmation,
    email_key,
    find_by_link,
    find_by_token,
    insert_new,
    leave,
    queue_confirmation,
    renew_confirm_token,
)

NAME_MAX = 100
EMAIL_MAX = 254
_MARKUP = re.compile(r"[<>]")


SOURCE_MAX = 200


@dataclass(frozen=True)
class Signup:
    """A checked signup: a normalised address, a clean name and a known time zone; whether
    newsletters were asked for too, and which page or form it came from."""

    email: str
    name: str
    timezone: str
    newsletter: bool = False
    source: str = ""


@dataclass
class Checked:
    signup: Signup | None
    errors: dict[str, str] = field(default_factory=dict)
    #: A bot filled the hidden field: answer as for success, store nothing.
    bot: bool = False


def clean_name(raw: str) -> str:
    """Trim and collapse spaces; refuse control characters and markup (ValueError)."""
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") and c != " " for c in raw):
        raise ValueError("Please use letters only: no line breaks or special characters.")
    name = " ".join(raw.split())
    if _MARKUP.search(name):
        raise ValueError("Please leave out < and > from your name.")
    if len(name) > NAME_MAX:
        raise ValueError(f"Please keep your name under {NAME_MAX} characters.")
    return name


def clean_email(raw: str) -> str:
    """A normalised address (domain lower-cased, Unicode normalised); no DNS lookups."""
    address = raw.strip()
    if not address:
        raise ValueError("Please enter your email address.")
    if len(address) > EMAIL_MAX:
        raise ValueError("That email address is too long.")
    try:
        valid = validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        raise ValueError(
            "That doesn't look like an email address. Please check it, e.g. name@example.com."
        ) from None
    if not valid.local_part.isascii():
        # Mail to such a mailbox needs SMTPUTF8 end to end, which drip does not send
        # (drip.sending.message refuses it): say so now rather than fail every email.
        raise ValueError(
            "Please use an address with only plain letters, digits and . _ - + before "
            "the @ (accents and other scripts there cannot be delivered yet)."
        )
    return valid.normalized


def known_timezone(raw: str) -> str | None:
    """The zone named, if the zone database knows it; None for anything else."""
    name = raw.strip()
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return name


def clean_timezone(raw: str, default: str) -> str:
    """The browser's zone if the zone database knows it, else the operator's default."""
    return known_timezone(raw.strip()[:64]) or default


def clean_source(raw: str, referer: str = "") -> str:
    """Which page or form a signup came from: the form's hidden `source` field, else the
    path of the page that posted it (the Referer, without its query); printable, short."""
    text = raw.strip()
    if not text and referer:
        parsed = urlsplit(referer.strip())
        text = parsed.path if parsed.scheme in ("http", "https") else ""
    text = "".join(c for c in text if unicodedata.category(c)[0] not in ("C", "Z") or c == " ")
    return " ".join(text.split())[:SOURCE_MAX]


def check(
    *,
    email: str,
    name: str,
    consent: bool,
    website: str,
    timezone: str,
    settings: Settings,
    newsletter: bool = False,
    source: str = "",
) -> Checked:
    """Every problem with the form, each in plain words under its field's name."""
    if website.strip():
        return Checked(signup=None, bot=True)
    errors: dict[str, str] = {}
    try:
        address = clean_email(email)
    except ValueError as exc:
        errors["email"] = str(exc)
    try:
        first_name = clean_name(name)
    except ValueError as exc:
        errors["name"] = str(exc)
    if not consent:
        errors["consent"] = "Please tick the box to say you'd like the course emails."
    if errors:
        return Checked(signup=None, errors=errors)
    zone = clean_timezone(timezone, settings.default_timezone)
    return Checked(
        signup=Signup(
            email=address,
            name=first_name,
            timezone=zone,
            newsletter=newsletter,
            source=clean_source(source),
        )
    )


def subscribe(
    session: Session, settings: Settings, signup: Signup, now: datetime, source: str = "web"
) -> None:
    """Store a signup and queue its confirmation, as far as the address's state allows.

    Every signup of an address that can get mail is answered by a confirmation email
    (the per-address rate limit, checked before, bounds how many): a new address, one
    whose first email was lost (pending), one that left and comes back (unsubscribed:
    a fresh opt-in), and an active one (to change its name or newsletter choice). What
    a repeated signup asks for waits in `pending_signup` until its link is followed, so
    typing someone's address into the form changes nothing of theirs. Bounced or
    complained addresses are suppressed: nothing is sent, and the page cannot say so
    without telling anyone who is subscribed.
    """
    subscriber, created = add_subscriber(
        session,
        settings,
        email=signup.email,
        name=signup.name,
        timezone=signup.timezone,
        source=source,
        page=signup.source,
        newsletter=signup.newsletter,
        now=now,
    )
    if created:
        queue_confirmation(session, settings, subscriber, now)
        return
    if subscriber.status not in (
        SubscriberStatus.pending,
        SubscriberStatus.unsubscribed,
        SubscriberStatus.active,
    ):
        return
    subscriber.pending_signup = {
        "name": signup.name,
        "newsletter": signup.newsletter,
        "source": signup.source,
        "at": now.isoformat(),
    }
    if subscriber.status == SubscriberStatus.unsubscribed:
        # Coming back is a fresh opt-in: confirm again, with a new link, before anything
        # is sent.
        subscriber.status = SubscriberStatus.pending
        renew_confirm_token(settings, subscriber)
    session.add(subscriber)
    queue_confirmation(session, settings, subscriber, now)


def store(engine: Engine, settings: Settings, signup: Signup, now: datetime) -> None:
    """`subscribe` in its own transaction, safe when two requests bring the same new address.

    On PostgreSQL both may insert at once; the loser's unique violation means the
    subscriber now exists, so one retry takes the "already known" path.
    """
    for attempt in (1, 2):
        try:
            with session_scope(engine) as session:
                subscribe(session, settings, signup, now)
            return
        except IntegrityError:
            if attempt == 2:
                raise


class _NotAllQueued(DripError):
    """A new subscriber's confirmation key was already taken: redo the batch one by one."""


def subscribe_many(
    session: Session,
    settings: Settings,
    signups: Sequence[Signup],
    now: datetime,
    source: str = "web",
) -> None:
    """`subscribe` for several signups in one transaction, with the same outcome.

    New addresses (the usual case) take two statements for the whole batch: one
    INSERT of the subscribers, already marked as sent their confirmation, and one
    of their confirmation emails. Known addresses, and an address repeated within
    the batch, go through `subscribe` one by one, after the new ones, in order.
    """
    first: dict[str, Signup] = {}
    again: list[Signup] = []
    for item in signups:
        key = email_key(item.email)
        if key in first:
            again.append(item)
        else:
            first[key] = item
    people = [
        Newcomer(s.email, s.name, s.timezone, newsletter=s.newsletter, page=s.source)
        for s in first.values()
    ]
    created = insert_new(session, settings, people, source=source, now=now, confirm_sent_at=now)
    messages = [confirmation(id_, first[key].email, now) for key, id_ in created.items()]
    if enqueue_many(session, messages, settings.sender_address.domain, now) != len(messages):
        raise _NotAllQueued
    for key, item in first.items():
        if key not in created:
            subscribe(session, settings, item, now, source)
    for item in again:
        subscribe(session, settings, item, now, source)


def store_many(
    engine: Engine, settings: Settings, signups: Sequence[Signup], now: datetime
) -> None:
    """`subscribe_many` in one transaction; if it cannot, `store` each one on its own.

    The fallback covers a unique violation from another process inserting the same
    address at once (PostgreSQL) and a confirmation key already taken.
    """
    try:
        with session_scope(engine) as session:
            subscribe_many(session, settings, signups, now)
    except (IntegrityError, _NotAllQueued):
        for item in signups:
            store(engine, settings, item, now)


class Confirmation(StrEnum):
    ready = "ready"
    confirmed = "confirmed"
    #: Already active; what a later signup asked for (name, newsletters) is now applied.
    updated = "updated"
    already = "already"
    expired = "expired"
    unknown = "unknown"


def confirmation_state(
    session: Session, settings: Settings, token: str, now: datetime
) -> Confirmation:
    """What a confirmation link would do, changing nothing: `ready` means it would confirm.

    For GET, which mail scanners send for every link in a message: only a POST confirms.
    """
    subscriber = find_by_token(session, token, "confirm", settings.secret_keys())
    if subscriber is None:
        return Confirmation.unknown
    if subscriber.status == SubscriberStatus.active and subscriber.pending_signup is None:
        return Confirmation.already
    if subscriber.status not in (SubscriberStatus.active, SubscriberStatus.pending):
        return Confirmation.unknown
    if _expired(settings, subscriber, now):
        return Confirmation.expired
    return Confirmation.ready  # to confirm, or (already active) to apply a later signup


def _expired(settings: Settings, subscriber: Subscriber, now: datetime) -> bool:
    ttl = timedelta(hours=settings.confirm_ttl_hours)
    return now - (subscriber.confirm_sent_at or subscriber.created_at) > ttl


def confirm(
    session: Session, settings: Settings, token: str, now: datetime, ip: str | None
) -> Confirmation:
    """Activate the subscriber behind a confirmation link, once, whoever clicks twice.

    `ip`: the address of whoever confirmed (the POST's client), kept as consent.
    """
    subscriber = find_by_token(session, token, "confirm", settings.secret_keys())
    if subscriber is None:
        return Confirmation.unknown
    # Two clicks at once (or a mail scanner racing the reader): the second waits for
    # the first, then sees "active".
    lock(session, subscriber)
    if subscriber.status not in (SubscriberStatus.active, SubscriberStatus.pending):
        return Confirmation.unknown  # unsubscribed or suppressed: the old link no longer works
    if subscriber.status == SubscriberStatus.active:
        if subscriber.pending_signup is None:
            return Confirmation.already
        if _expired(settings, subscriber, now):
            return Confirmation.expired
        apply_pending(session, subscriber)
        return Confirmation.updated
    if _expired(settings, subscriber, now):
        return Confirmation.expired
    apply_pending(session, subscriber)
    activate(session, settings, subscriber, now, ip=ip)
    return Confirmation.confirmed


def unsubscribe(session: Session, settings: Settings, token: str, now: datetime) -> bool:
    """Unsubscribe at once; False for an unknown token. Saying it twice is fine. A link
    naming the email it came in records that email as where they left (`unsubscribed_via`)."""
    found = find_by_link(session, token, "unsubscribe", settings.secret_keys())
    if found is None:
        return False
    subscriber, message = found
    if subscriber.status in SUBSCRIBED_STATUSES:
        # The link's signature covers the message id: drip put it in that very email.
        via = session.get(OutboxMessage, message) if message is not None else None
        if via is not None and via.subscriber_id != subscriber.id:
            via = None
        leave(
            session,
            settings,
            subscriber,
            SubscriberStatus.unsubscribed,
            now,
            "unsubscribed",
            via=via,
        )
    return True


class UnsubscribeLink(StrEnum):
    unknown = "unknown"
    #: Mail still goes out: show the button.
    subscribed = "subscribed"
    #: Nothing more is sent (unsubscribed, or stopped by a bounce or complaint): say so.
    done = "done"


def unsubscribe_link(session: Session, settings: Settings, token: str) -> UnsubscribeLink:
    """What an unsubscribe link leads to, before showing its button (read-only)."""
    subscriber = find_by_token(session, token, "unsubscribe", settings.secret_keys())
    if subscriber is None:
        return UnsubscribeLink.unknown
    if subscriber.status in SUBSCRIBED_STATUSES:
        return UnsubscribeLink.subscribed
    return UnsubscribeLink.done
