"""Subscriber lifecycle: add, activate (consent given), unsubscribe, suppress.

The web signup, the CSV import and the sender's bounce handling all change a
subscriber through these few functions, so the rules live in one place: an
address is one subscriber whatever its case, activation starts the course once,
and leaving cancels everything not yet sent.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, select
from sqlmodel import Session, col

from drip import hooks
from drip.course import load_course
from drip.db import insert_ignoring, table_of
from drip.funnel import step_of
from drip.models import MessageKind, OutboxMessage, Subscriber, SubscriberStatus
from drip.progress import start_course, stop_course
from drip.sending.outbox import (
    NewMessage,
    dedupe_key,
    enqueue,
    has_unsent,
    skip_for_subscriber,
)
from drip.settings import Settings
from drip.tokens import (
    Purpose,
    hash_token,
    legacy_hash,
    new_salt,
    parse_token,
    token_hashes,
    verifies,
)


def email_key(address: str) -> str:
    return address.strip().lower()


def find_by_email(session: Session, address: str) -> Subscriber | None:
    return session.execute(
        select(Subscriber).where(col(Subscriber.email_key) == email_key(address))
    ).scalar_one_or_none()


def find_by_token(
    session: Session, token: str, purpose: Purpose, keys: Sequence[str]
) -> Subscriber | None:
    """The subscriber a link's token names, if it is signed with one of `keys`."""
    found = find_by_link(session, token, purpose, keys)
    return None if found is None else found[0]


def find_by_link(
    session: Session, token: str, purpose: Purpose, keys: Sequence[str]
) -> tuple[Subscriber, int | None] | None:
    """(subscriber, the outbox id the link came in) a token names, if it is signed with
    one of `keys`; the id is None for a link that names no message (drip.tokens)."""
    parsed = parse_token(token)
    if parsed is not None:
        if parsed.message is not None and purpose != "unsubscribe":
            return None  # only unsubscribe links name their message
        if not verifies(keys, parsed.salt, purpose, parsed.mac, parsed.message):
            return None
        salt = parsed.salt
        if purpose == "unsubscribe":
            found = _first(session, col(Subscriber.token_salt) == salt)
            return None if found is None else (found, parsed.message)
        # A confirmation link carries the confirmation's own salt once it was renewed
        # (renew_confirm_token, leave), and the subscriber's salt before that.
        found = _first(session, col(Subscriber.confirm_salt) == salt) or _first(
            session,
            and_(col(Subscriber.token_salt) == salt, col(Subscriber.confirm_salt).is_(None)),
        )
        return None if found is None else (found, None)
    # A link sent before tokens carried their salt: its hash was stored when it was made.
    column = col(
        Subscriber.confirm_token_hash if purpose == "confirm" else Subscriber.unsubscribe_token_hash
    )
    found = session.execute(
        select(Subscriber).where(column == hash_token(token))
    ).scalar_one_or_none()
    return None if found is None else (found, None)


def _first(session: Session, where: ColumnElement[bool]) -> Subscriber | None:
    return session.execute(select(Subscriber).where(where).limit(1)).scalar_one_or_none()


def confirm_salt(subscriber: Subscriber) -> str:
    """The salt the confirmation token is made from (its own once renewed)."""
    return subscriber.confirm_salt or subscriber.token_salt


def renew_confirm_token(settings: Settings, subscriber: Subscriber) -> None:
    """A new confirmation token for a confirmation asked for again after leaving: a link
    from before (in an old email, a mail scanner's cache) no longer works. The
    unsubscribe token stays, so links in mail already sent still let them leave."""
    salt = new_salt()
    subscriber.confirm_salt = salt
    subscriber.confirm_token_hash = legacy_hash(settings.require_secret(), salt, "confirm")


def add_subscriber(
    session: Session,
    settings: Settings,
    *,
    email: str,
    name: str = "",
    timezone: str | None = None,
    source: str,
    page: str = "",
    newsletter: bool = False,
    now: datetime,
) -> tuple[Subscriber, bool]:
    """The subscriber for `email`, created as pending if new; (subscriber, created).

    `source` is how consent was given ("web", "import:FILE"); `page` which page or
    form it came from; `newsletter` whether newsletters were asked for too, at `now`.
    A known subscriber is returned unchanged.
    """
    existing = find_by_email(session, email)
    if existing is not None:
        return existing, False
    salt = new_salt()
    confirm_hash, unsubscribe_hash = token_hashes(settings.require_secret(), salt)
    subscriber = Subscriber(
        email=email,
        email_key=email_key(email),
        name=name,
        timezone=timezone or settings.default_timezone,
        created_at=now,
        consent_source=source,
        source=page,
        newsletter=newsletter,
        newsletter_at=now if newsletter else None,
        newsletter_source=(page or source) if newsletter else "",
        token_salt=salt,
        confirm_token_hash=confirm_hash,
        unsubscribe_token_hash=unsubscribe_hash,
    )
    session.add(subscriber)
    session.flush()
    return subscriber, True


@dataclass(frozen=True)
class Newcomer:
    email: str
    name: str
    timezone: str
    newsletter: bool = False
    page: str = ""


def insert_new(
    session: Session,
    settings: Settings,
    people: Sequence[Newcomer],
    *,
    source: str,
    now: datetime,
    confirm_sent_at: datetime | None,
) -> dict[str, int]:
    """Insert as pending those not yet known, in one statement; {email_key: id} of the new.

    The signup's fast path: one multi-row INSERT ... ON CONFLICT DO NOTHING instead of
    a look-up, an ORM flush and an update per person. An address already known (or
    inserted at the same moment by another transaction) is simply not returned, and
    the caller takes the slow path for it. `people` must not repeat an email key. The
    new are marked as sent their confirmation at `now`: the caller queues it.
    """
    if not people:
        return {}
    secret = settings.require_secret()
    rows = []
    for person in people:
        salt = new_salt()
        confirm_hash, unsubscribe_hash = token_hashes(secret, salt)
        rows.append(
            {
                "email": person.email,
                "email_key": email_key(person.email),
                "name": person.name,
                "status": SubscriberStatus.pending,
                "timezone": person.timezone or settings.default_timezone,
                "created_at": now,
                "consent_source": source,
                "source": person.page,
                "newsletter": person.newsletter,
                "newsletter_at": now if person.newsletter else None,
                "newsletter_source": (person.page or source) if person.newsletter else "",
                "pending_signup": None,
                "confirm_sent_at": confirm_sent_at,
                "token_salt": salt,
                "confirm_token_hash": confirm_hash,
                "unsubscribe_token_hash": unsubscribe_hash,
            }
        )
    table = table_of(Subscriber)  # Core, not the ORM's bulk path: less work per row
    stmt = insert_ignoring(session, table, ["email_key"]).returning(table.c.id, table.c.email_key)
    return {key: id_ for id_, key in session.execute(stmt, rows).all()}


def confirmation(subscriber_id: int, email: str, now: datetime) -> NewMessage:
    """The confirmation email as an outbox row. Every signup gets its own: the key carries
    the time and a random part, so a second signup in the same hour (the first mail lost,
    or a return after unsubscribing) is never taken for the first. How many an address
    gets is bounded by the signup rate limit, not here."""
    stamp = f"{now:%Y%m%d%H%M%S}-{secrets.token_hex(4)}"
    return NewMessage(
        kind=MessageKind.confirm,
        template="confirm",
        email=email,
        dedupe_key=dedupe_key(MessageKind.confirm, subscriber_id, stamp),
        due_at=now,
        subscriber_id=subscriber_id,
    )


def queue_confirmation(
    session: Session, settings: Settings, subscriber: Subscriber, now: datetime
) -> bool:
    """Queue a confirmation email for this signup (see `confirmation`), unless one is
    still on its way: that one answers this signup too (its link and words are made
    when it is sent). False when none was queued."""
    assert subscriber.id is not None
    queued = not has_unsent(session, subscriber.id, MessageKind.confirm) and enqueue(
        session,
        confirmation(subscriber.id, subscriber.email, now),
        settings.sender_address.domain,
        now,
    )
    subscriber.confirm_sent_at = now  # the link lasts DRIP_CONFIRM_TTL_HOURS from this signup
    session.add(subscriber)
    return queued


def apply_pending(session: Session, subscriber: Subscriber) -> None:
    """Apply what a repeated signup asked for, now that its confirmation link was followed:
    the name given (a blank one keeps the old), the newsletter choice and its page."""
    pending = subscriber.pending_signup
    if not pending:
        return
    name = str(pending.get("name") or "")
    if name:
        subscriber.name = name
    wants = bool(pending.get("newsletter"))
    page = str(pending.get("source") or "")
    if wants != subscriber.newsletter:  # the time and page of the latest change of mind
        subscriber.newsletter = wants
        subscriber.newsletter_at = _instant(pending.get("at"))
        subscriber.newsletter_source = page or "web"
    if page:
        subscriber.source = page
    subscriber.pending_signup = None
    session.add(subscriber)


def _instant(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def activate(
    session: Session,
    settings: Settings,
    subscriber: Subscriber,
    now: datetime,
    *,
    ip: str | None = None,
    start: bool = True,
) -> bool:
    """Record consent and start the course; False if the subscriber was already active."""
    if subscriber.status == SubscriberStatus.active:
        return False
    subscriber.status = SubscriberStatus.active
    subscriber.consent_at = now
    subscriber.confirmed_at = now
    subscriber.consent_ip = ip
    session.add(subscriber)
    session.flush()
    hooks.emit(session, settings, hooks.Event.subscriber_confirmed, subscriber, now)
    if start:
        course = load_course(settings.emails_dir)
        start_course(
            session,
            subscriber,
            course,
            settings.sender_address.domain,
            now,
        )
    return True


#: The webhook event of each way of leaving.
LEFT_EVENTS = {
    SubscriberStatus.unsubscribed: hooks.Event.subscriber_unsubscribed,
    SubscriberStatus.bounced: hooks.Event.subscriber_bounced,
    SubscriberStatus.complained: hooks.Event.subscriber_complained,
}


def leave(
    session: Session,
    settings: Settings,
    subscriber: Subscriber,
    status: SubscriberStatus,
    now: datetime,
    reason: str,
    *,
    via: OutboxMessage | None = None,
) -> int:
    """Unsubscribe or suppress: nothing more is sent, queued mail becomes `skipped`, and
    the webhooks hear of it (once: only when the status changes).

    `via`: the email whose unsubscribe link they left through, kept on the subscriber
    (its id and its funnel step, drip.funnel); None when it is not known.
    """
    assert subscriber.id is not None
    if subscriber.status != status:
        subscriber.status = status
        if status == SubscriberStatus.unsubscribed:
            subscriber.unsubscribed_at = now
            subscriber.unsubscribed_via = via.id if via is not None else None
            subscriber.unsubscribed_step = step_of(via) if via is not None else None
        # The confirmation link dies with leaving: a salt no link was made from, and a
        # random hash no older link can match.
        subscriber.confirm_salt = new_salt()
        subscriber.confirm_token_hash = secrets.token_hex(32)
        session.add(subscriber)
        if status in LEFT_EVENTS:
            hooks.emit(session, settings, LEFT_EVENTS[status], subscriber, now, {"reason": reason})
    stop_course(session, subscriber.id)
    return skip_for_subscriber(session, subscriber.id, reason, now)
