"""Webhooks out: what happened, told to other systems as signed JSON POSTs.

Each fact (a confirmation, a lesson sent, a course finished, a reader who left, bounced
or complained) queues one outbox row of kind `webhook` per DRIP_WEBHOOK_URLS entry, in
the same transaction as the fact itself: the event exists exactly when the fact does.
Delivery then treats the row as it treats an email (claim, lease, retry with the same
backoff, one send-log row per attempt) but POSTs it (drip.sending.post) instead of
speaking SMTP. The body is fixed at queue time, so every retry carries the same bytes.

Signing, as Stripe and Standard Webhooks do it: `Drip-Signature: t=<unix>,v1=<hex>`,
the HMAC-SHA256 under the webhook secret of `<t>.<body>`; `Drip-Webhook-Id` is the
event's id, the same on every retry, for the receiver's idempotency. The secret is
DRIP_WEBHOOK_SECRET, else derived from DRIP_SECRET_KEY (`drip webhooks secret`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from drip import __version__
from drip.models import MessageKind, OutboxMessage, Subscriber
from drip.sending.outbox import NewMessage, enqueue_many
from drip.sending.post import Post
from drip.settings import Settings

SIGNATURE_HEADER = "Drip-Signature"
ID_HEADER = "Drip-Webhook-Id"
EVENT_HEADER = "Drip-Event"
#: A receiver should refuse a signature whose timestamp is further off than this.
TOLERANCE_SECONDS = 300


class Event(StrEnum):
    subscriber_confirmed = "subscriber.confirmed"
    lesson_sent = "lesson.sent"
    course_completed = "course.completed"
    subscriber_unsubscribed = "subscriber.unsubscribed"
    subscriber_bounced = "subscriber.bounced"
    subscriber_complained = "subscriber.complained"


def signing_secret(settings: Settings) -> str:
    """DRIP_WEBHOOK_SECRET, else a key derived from DRIP_SECRET_KEY (never the key itself)."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value()
    mac = hmac.new(settings.require_secret().encode(), b"drip webhook signing", hashlib.sha256)
    return "whsec_" + base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `Drip-Signature` header's value for `body` sent at `timestamp` (Unix seconds)."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, now: datetime) -> bool:
    """What a receiver does: a v1 MAC of `t.body` matches and `t` is within the tolerance."""
    fields = [part.strip().partition("=") for part in header.split(",")]
    stamps = [value for key, _, value in fields if key == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    timestamp = int(stamps[0])
    if abs(now.timestamp() - timestamp) > TOLERANCE_SECONDS:
        return False
    expected = _mac(secret, timestamp, body)
    return any(hmac.compare_digest(expected, value) for key, _, value in fields if key == "v1")


def subscriber_data(subscriber: Subscriber) -> dict[str, Any]:
    """Who an event is about, as receivers see it."""
    return {
        "id": subscriber.id,
        "email": subscriber.email,
        "name": subscriber.name,
        "status": str(subscriber.status),
        "source": subscriber.source,
        "newsletter": subscriber.newsletter,
    }


def emit(
    session: Session,
    settings: Settings,
    event: Event,
    subscriber: Subscriber,
    now: datetime,
    extra: Mapping[str, Any] | None = None,
) -> int:
    """Queue `event` about `subscriber` for every configured URL, in the caller's
    transaction; how many rows were queued (none without DRIP_WEBHOOK_URLS)."""
    return emit_many(session, settings, event, [(subscriber, extra or {})], now)


def emit_many(
    session: Session,
    settings: Settings,
    event: Event,
    items: Iterable[tuple[Subscriber, Mapping[str, Any]]],
    now: datetime,
) -> int:
    """`emit` for a batch (a delivery run's lessons): one insert for all of them."""
    urls = settings.webhook_url_list
    if not urls:
        return 0
    messages: list[NewMessage] = []
    for subscriber, extra in items:
        ident = f"evt_{secrets.token_hex(12)}"
        payload = {
            "id": ident,
            "type": str(event),
            "created_at": now.isoformat(),
            "data": {"subscriber": subscriber_data(subscriber), **extra},
        }
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        messages.extend(
            NewMessage(
                kind=MessageKind.webhook,
                template=str(event),
                # The address it is about: `drip logs --email` finds it, and erasing
                # the subscriber finds it too (drip.operator_actions).
                email=subscriber.email,
                dedupe_key=f"webhook:{ident}:url:{n}",
                due_at=now,
                context={"url": url, "id": ident, "body": body},
            )
            for n, url in enumerate(urls)
        )
    return enqueue_many(session, messages, settings.sender_address.domain, now)


def emit_by_id(
    session: Session,
    settings: Settings,
    event: Event,
    facts: Mapping[int, Mapping[str, Any]],
    now: datetime,
) -> int:
    """`emit_many` for subscribers known by id, each with its facts; without
    DRIP_WEBHOOK_URLS nothing is read (delivery calls this on its commit path)."""
    if not settings.webhook_url_list or not facts:
        return 0
    found = session.execute(select(Subscriber).where(col(Subscriber.id).in_(list(facts))))
    items = [(s, facts[s.id]) for s in found.scalars() if s.id is not None]
    return emit_many(session, settings, event, items, now)


def request_headers(secret: str, row: OutboxMessage, now: datetime) -> dict[str, str]:
    """The headers of one attempt at `row`, signed at `now`."""
    body = str(row.context["body"]).encode()
    return {
        "Content-Type": "application/json",
        "User-Agent": f"drip/{__version__} (webhook)",
        ID_HEADER: str(row.context["id"]),
        EVENT_HEADER: row.template,
        SIGNATURE_HEADER: signature(secret, int(now.timestamp()), body),
    }


def request(secret: str, row: OutboxMessage, now: datetime) -> Post:
    """A claimed webhook row as the POST to make now, signed at `now`."""
    return Post(
        url=str(row.context["url"]),
        body=str(row.context["body"]).encode(),
        headers=request_headers(secret, row, now),
    )
