"""A verified webhook's events, found on their messages and recorded.

Each event names a recipient and, when the provider reports it, the Message-ID drip
gave the message. The outbox row is found by that Message-ID, and only if it went to
that recipient; without one, by the last message sent to the recipient. Nothing else
in the body is believed. The effect is the send-time bounce's: a hard bounce makes the
subscriber `bounced`, a complaint `complained`, both stop all mail; a soft bounce is
logged on the message.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, func, select
from sqlmodel import Session, col

from drip.db import session_scope
from drip.errors import DripError
from drip.models import (
    DeliveryAttempt,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
    WebhookReceipt,
)
from drip.subscribers import leave
from drip.webhooks.events import FRESH_SECONDS, Batch, ProviderEvent

log = logging.getLogger("drip.webhooks")


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


def record(engine: Engine, batch: Batch, now: datetime) -> int:
    """Record every event whose message is found; returns how many were. Raises Replayed."""
    recorded = 0
    with session_scope(engine) as session:
        if batch.once_key is not None:
            _once(session, batch.once_key, now)
        for event in batch.events:
            row = find_message(session, event)
            if row is None:
                log.info(
                    "%s %s for %s: no such message", event.provider, event.kind, event.message_id
                )
                continue
            if apply(session, row, event, now):
                recorded += 1
    return recorded


def _once(session: Session, key: str, now: datetime) -> None:
    session.execute(
        delete(WebhookReceipt).where(
            col(WebhookReceipt.at) < now - timedelta(seconds=2 * FRESH_SECONDS)
        )
    )
    if session.get(WebhookReceipt, key[:200]) is not None:
        raise Replayed(key)
    session.add(WebhookReceipt(key=key[:200], at=now))
    session.flush()


_STATUS = {
    "hard_bounce": OutboxStatus.bounced,
    "complaint": OutboxStatus.complained,
    "soft_bounce": OutboxStatus.deferred,
}


def apply(session: Session, row: OutboxMessage, event: ProviderEvent, now: datetime) -> bool:
    """The recording step for one event on its message; False when it was already recorded."""
    status = _STATUS[event.kind]
    message = f"{event.provider} webhook: {event.detail}"[:1000]
    seen = session.execute(
        select(col(DeliveryAttempt.id))
        .where(col(DeliveryAttempt.outbox_id) == row.id)
        .where(col(DeliveryAttempt.status) == status)
        .where(col(DeliveryAttempt.smtp_message) == message)
    ).first()
    if seen is not None:
        return False
    assert row.id is not None
    session.add(
        DeliveryAttempt(
            outbox_id=row.id,
            at=now,
            status=status,
            smtp_message=message,
            worker=f"webhook:{event.provider}",
        )
    )
    subscriber = session.get(Subscriber, row.subscriber_id) if row.subscriber_id else None
    if subscriber is None or event.kind == "soft_bounce":
        return True
    if event.kind == "complaint":
        leave(session, subscriber, SubscriberStatus.complained, now, f"complaint: {message}")
    elif subscriber.status != SubscriberStatus.complained:
        leave(session, subscriber, SubscriberStatus.bounced, now, f"hard bounce: {message}")
    log.info("%s %s recorded on %s", event.provider, event.kind, row.message_id)
    return True
