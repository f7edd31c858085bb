"""Bounces and complaints, however they arrive: one recording step and one policy.

A bounce refused at send time (drip.sending.delivery), a delivery status notification
or feedback report taken by `drip inbound` or read from DRIP_BOUNCE_MAILBOX, and a
provider's webhook all end here. Each names one outbox message, and through it one
subscriber; nothing a report says about an address is believed, only which message
it proves to be about:

- a VERP tag (drip.verp) proves itself by its HMAC under DRIP_SECRET_KEY;
- a Message-ID is believed only from a caller that checked the report's own
  signature first (a provider's signed webhook), never from a bounce's body.

Policy: a hard bounce stops all mail to that subscriber (`bounced`); soft bounces
count, and DRIP_SOFT_BOUNCE_LIMIT of them within DRIP_SOFT_BOUNCE_DAYS count as a
hard one; a complaint stops everything (`complained`), and no later bounce or
operator's retry lets that subscriber back in. The message shows the event in the
send log (`bounced`, `failed` for a soft bounce, `complained`).

Recording is idempotent: one event per message and kind, so a report read twice
(a mailbox pass that died before deleting it, a webhook sent again) counts once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from drip import verp
from drip.db import insert_ignoring, session_scope
from drip.models import FeedbackEvent, OutboxMessage, OutboxStatus, Subscriber, SubscriberStatus
from drip.sending.outbox import record_report
from drip.settings import Settings
from drip.subscribers import leave


class Kind(StrEnum):
    hard = "hard"
    soft = "soft"
    complaint = "complaint"


#: What the message's send-log row says for each kind.
LOG_STATUS = {
    Kind.hard: OutboxStatus.bounced,
    Kind.soft: OutboxStatus.failed,
    Kind.complaint: OutboxStatus.complained,
}
_LABEL = {Kind.hard: "hard bounce", Kind.soft: "soft bounce", Kind.complaint: "complaint"}


@dataclass(frozen=True)
class Event:
    """One bounce or complaint about one message, as a route in has read it."""

    kind: Kind
    #: Where it came from, for the send log: `inbound`, `mailbox`, `ses`, `postmark`...
    source: str
    #: A VERP tag (`42-abcdefghijkl`): believed only if its signature checks.
    tag: str | None = None
    #: The message's Message-ID (`<...@domain>`): only from a source whose own
    #: signature the caller has checked (a provider's webhook), never from a bounce body.
    message_id: str | None = None
    smtp_code: int | None = None
    #: The server's words (a DSN's Diagnostic-Code, a provider's reason); shown in the log.
    diagnostic: str = ""


class Recorded(StrEnum):
    recorded = "recorded"
    #: The same kind of event for that message was recorded before: nothing changed.
    duplicate = "duplicate"
    #: The event names no message drip sent (an unknown or forged tag): nothing changed.
    unknown = "unknown"


def record_event(engine: Engine, settings: Settings, event: Event, now: datetime) -> Recorded:
    """Record `event` on the message it proves to be about and apply the policy, in one
    transaction. `unknown` when it proves nothing: a forged report changes nothing."""
    secret = settings.require_secret()
    with session_scope(engine) as session:
        row = find_message(session, secret, event)
        if row is None:
            return Recorded.unknown
        return record_on(session, settings, row, event, now)


def find_message(session: Session, secret: str, event: Event) -> OutboxMessage | None:
    """The outbox row an event proves to be about, or None."""
    if event.tag is not None:
        return verp.signed_message(session, secret, event.tag)
    if event.message_id:
        wanted = event.message_id.strip()
        if not wanted.startswith("<"):
            wanted = f"<{wanted}>"
        return session.execute(
            select(OutboxMessage).where(col(OutboxMessage.message_id) == wanted).limit(1)
        ).scalar_one_or_none()
    return None


def record_on(
    session: Session, settings: Settings, row: OutboxMessage, event: Event, now: datetime
) -> Recorded:
    """Record `event` on the message `row`, which the caller has proved it is about, in
    the caller's transaction (a provider's webhook finds the message and records in one)."""
    if not _note(session, row, event.kind, event.source, event.smtp_code, now):
        return Recorded.duplicate
    text = f"{_LABEL[event.kind]} ({event.source})"
    diagnostic = " ".join(event.diagnostic.split())
    if diagnostic:
        text += f": {diagnostic}"
    record_report(session, row, LOG_STATUS[event.kind], event.smtp_code, text, event.source, now)
    if row.subscriber_id is not None:
        apply_policy(session, settings, row.subscriber_id, event.kind, now, text)
    return Recorded.recorded


def bounced_at_send(
    session: Session,
    settings: Settings,
    row: OutboxMessage,
    smtp_code: int | None,
    smtp_message: str | None,
    now: datetime,
) -> None:
    """A 5xx for the recipient during the send (the attempt is logged by the delivery):
    the same event and the same policy as a hard bounce that arrives later."""
    _note(session, row, Kind.hard, "smtp", smtp_code, now)
    if row.subscriber_id is not None:
        reason = f"suppressed after a bounce: {smtp_code} {smtp_message}"
        _stop(session, settings, row.subscriber_id, SubscriberStatus.bounced, now, reason)


def _note(
    session: Session,
    row: OutboxMessage,
    kind: Kind,
    source: str,
    smtp_code: int | None,
    now: datetime,
) -> bool:
    """The event row; False if this message already had an event of this kind."""
    stmt = insert_ignoring(session, FeedbackEvent, ["outbox_id", "kind"]).returning(
        col(FeedbackEvent.id)
    )
    values = {
        "outbox_id": row.id,
        "subscriber_id": row.subscriber_id,
        "kind": str(kind),
        "at": now,
        "source": source[:32],
        "smtp_code": smtp_code,
    }
    return session.execute(stmt, [values]).first() is not None


def soft_bounces(session: Session, subscriber_id: int, since: datetime) -> int:
    """Soft bounces recorded for a subscriber since a moment."""
    e = FeedbackEvent
    count = session.execute(
        select(func.count())
        .select_from(e)
        .where(
            col(e.subscriber_id) == subscriber_id,
            col(e.kind) == str(Kind.soft),
            col(e.at) >= since,
        )
    ).scalar_one()
    return int(count)


def apply_policy(
    session: Session,
    settings: Settings,
    subscriber_id: int,
    kind: Kind,
    now: datetime,
    reason: str,
) -> SubscriberStatus | None:
    """Stop mail to the subscriber if the event calls for it; the status it left with, if any."""
    if kind == Kind.complaint:
        return _stop(session, settings, subscriber_id, SubscriberStatus.complained, now, reason)
    if kind == Kind.hard:
        return _stop(session, settings, subscriber_id, SubscriberStatus.bounced, now, reason)
    days = settings.soft_bounce_days
    count = soft_bounces(session, subscriber_id, now - timedelta(days=days))
    if count < settings.soft_bounce_limit:
        return None
    reason = f"suppressed after {count} soft bounces within {days:g} days; the last: {reason}"
    return _stop(session, settings, subscriber_id, SubscriberStatus.bounced, now, reason)


def _stop(
    session: Session,
    settings: Settings,
    subscriber_id: int,
    status: SubscriberStatus,
    now: datetime,
    reason: str,
) -> SubscriberStatus | None:
    """Nothing more to this subscriber. A complaint is final: one who complained stays
    `complained` whatever comes next."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None or subscriber.status == SubscriberStatus.complained:
        return None
    leave(session, settings, subscriber, status, now, reason)
    return status
