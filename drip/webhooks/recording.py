"""A verified webhook's events, found on their messages and handed to the one recording step.

Each event names a recipient and, when the provider reports them, the Message-ID drip
gave the message or the VERP envelope sender. A VERP tag proves itself (its HMAC); a
Message-ID is believed because the provider's signature covers it, and only if that
message went to the recipient the event names; without either, the event falls on the
last message sent to the recipient. Nothing else in the body is believed. Then
`drip.feedback.record_on`, the step a bounce at send time, `drip inbound` and the
bounce mailbox end in too, records it and applies the policy.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, func, select
from sqlmodel import Session, col

from drip import verp
from drip.db import insert_ignoring, read_scope, session_scope
from drip.errors import DripError
from drip.feedback import Event, Kind, Recorded, record_on
from drip.models import OutboxMessage, WebhookReceipt
from drip.settings import Settings
from drip.webhooks.events import FRESH_SECONDS, Batch, ProviderEvent

log = logging.getLogger("drip.webhooks")
_KIND = {"hard_bounce": Kind.hard, "soft_bounce": Kind.soft, "complaint": Kind.complaint}


class Replayed(DripError):
    """This signed request was accepted before."""


def find_message(session: Session, event: ProviderEvent) -> OutboxMessage | None:
    recipient = event.recipient.lower()
    if event.message_id is not None:
        row: OutboxMessage | None = session.execute(
            select(OutboxMessage).where(col(OutboxMessage.message_id) == event.message_id)
        ).scalar_one_or_none()
        if row is not None and row.email.lower() == recipient:
            return row
        return None
    return (
        session.execute(
            select(OutboxMessage)
            .where(func.lower(col(OutboxMessage.email)) == recipient)
            .where(col(OutboxMessage.sent_at).is_not(None))
            .order_by(col(OutboxMessage.sent_at).desc())
            .limit(1)
        )
        .scalars()
        .first()
    )


def message_of(session: Session, secret: str, event: ProviderEvent) -> OutboxMessage | None:
    """The message a provider's event is about, or None when it names none of ours."""
    _, tag, _ = verp.split(event.envelope_sender or "")
    ident = verp.tag_id(tag) if tag is not None else None
    if tag is not None and ident is not None:
        row = session.get(OutboxMessage, ident)
        if row is not None and row.email.lower() == event.recipient.lower():
            return verp.signed_message(session, secret, tag)  # proves itself, or nothing
    return find_message(session, event)


def record(settings: Settings, engine: Engine, batch: Batch, now: datetime) -> int:
    """Record every event whose message is found; returns how many were new. Raises Replayed."""
    if batch.once_key is not None:
        with read_scope(engine) as session:
            if session.get(WebhookReceipt, batch.once_key[:200]) is not None:
                raise Replayed(batch.once_key)
    secret = settings.require_secret()
    recorded = 0
    for provided in batch.events:
        # Found and recorded in one transaction, so the row is read once.
        with session_scope(engine) as session:
            row = message_of(session, secret, provided)
            if row is None:
                log.info("%s %s: no message of ours", provided.provider, provided.kind)
                continue
            event = Event(_KIND[provided.kind], provided.provider, diagnostic=provided.detail)
            if record_on(session, settings, row, event, now) == Recorded.recorded:
                recorded += 1
    if batch.once_key is not None:
        _remember(engine, batch.once_key[:200], now)
    return recorded


def _remember(engine: Engine, key: str, now: datetime) -> None:
    """Keep a one-time value while its timestamp could still pass as fresh."""
    with session_scope(engine) as session:
        session.execute(
            delete(WebhookReceipt).where(
                col(WebhookReceipt.at) < now - timedelta(seconds=2 * FRESH_SECONDS)
            )
        )
        session.execute(
            insert_ignoring(session, WebhookReceipt, ["key"]), [{"key": key, "at": now}]
        )
