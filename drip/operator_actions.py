"""What the operator does from /admin: retry a message, export or erase a subscriber's data.

Here rather than in the routes, so each change is one function on a session that tests
call directly. Erasing keeps the rows, anonymised, so the dashboard's counts stay put.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Column, ColumnElement, delete, or_, select, update
from sqlmodel import Session, col

from drip.clicks import clicks_of
from drip.db import table_of
from drip.models import (
    SUBSCRIBED_STATUSES,
    CourseProgress,
    DeliveryAttempt,
    MessageKind,
    OutboxMessage,
    Question,
    Subscriber,
    SubscriberStatus,
)
from drip.replies import asked_by
from drip.sending.outbox import retry
from drip.sending.post import where
from drip.sendlog import iso
from drip.settings import Settings
from drip.steering import actions
from drip.subscriber_view import timeline
from drip.subscribers import leave
from drip.tokens import new_salt


def retry_message(session: Session, outbox_id: int, now: datetime) -> bool:
    """Queue a failed or bounced message again (`outbox.retry`); False if it is in any
    other state. A subscriber suppressed by a bounce is let back in (their status
    follows the message's kind), or the retry would only be skipped; one who
    unsubscribed stays out, and nothing is retried to one who complained: a
    complaint is final (drip.feedback).
    """
    row = session.get(OutboxMessage, outbox_id)
    if row is None:
        return False
    subscriber = session.get(Subscriber, row.subscriber_id) if row.subscriber_id else None
    if subscriber is not None and subscriber.status == SubscriberStatus.complained:
        return False
    if not retry(session, outbox_id, now):
        return False
    if subscriber is not None and subscriber.status == SubscriberStatus.bounced:
        confirm = row.kind == MessageKind.confirm
        subscriber.status = SubscriberStatus.pending if confirm else SubscriberStatus.active
        session.add(subscriber)
    return True


def subscriber_data(session: Session, subscriber_id: int) -> dict[str, Any] | None:
    """Everything drip holds about one person (GDPR access), JSON-ready; tokens excluded."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None

    def when(value: datetime | None) -> str | None:
        return iso(value) if value else None

    progress = session.get(CourseProgress, subscriber_id)
    return {
        "subscriber": {
            "id": subscriber.id,
            "email": subscriber.email,
            "name": subscriber.name,
            "status": str(subscriber.status),
            "timezone": subscriber.timezone,
            "created_at": when(subscriber.created_at),
            "consent_at": when(subscriber.consent_at),
            "consent_source": subscriber.consent_source,
            "consent_ip": subscriber.consent_ip,
            "source": subscriber.source,
            "newsletter": subscriber.newsletter,
            "newsletter_at": when(subscriber.newsletter_at),
            "newsletter_source": subscriber.newsletter_source,
            "pending_signup": subscriber.pending_signup,
            "confirmed_at": when(subscriber.confirmed_at),
            "unsubscribed_at": when(subscriber.unsubscribed_at),
            # The email whose unsubscribe link they left through, and its funnel step.
            "unsubscribed_via": subscriber.unsubscribed_via,
            "unsubscribed_step": subscriber.unsubscribed_step,
        },
        "course": None
        if progress is None
        else {
            "started_at": when(progress.started_at),
            "lessons_sent": progress.lessons_sent,
            "last_sent_at": when(progress.last_sent_at),
            "next_due_at": when(progress.next_due_at),
            "finished_at": when(progress.finished_at),
            "paused_at": when(progress.paused_at),
            "round": progress.course_round,
            "actions": [
                {"at": when(a.at), "action": a.action, "detail": a.detail, "by": a.source}
                for a in reversed(actions(session, subscriber_id))
            ],
        },
        "messages": [
            {
                "kind": str(item.message.kind),
                "template": item.message.template,
                "email": item.message.email,
                "status": str(item.message.status),
                "created_at": when(item.message.created_at),
                "sent_at": when(item.message.sent_at),
                "message_id": item.message.message_id,
                "attempts": [
                    {
                        "at": when(attempt.at),
                        "status": str(attempt.status),
                        "smtp_code": attempt.smtp_code,
                        "smtp_message": attempt.smtp_message,
                    }
                    for attempt in item.attempts
                ],
            }
            for item in timeline(session, subscriber_id, limit=100_000)
        ],
        "questions": [
            {
                "received_at": when(q.received_at),
                "about": q.template,
                "subject": q.subject,
                "text": q.body,
                "status": str(q.status),
                "answered_at": when(q.answered_at),
            }
            for q in asked_by(session, subscriber_id)
        ],
        # DRIP_CLICK_TRACKING: which lesson links were followed, and how each was judged.
        "clicks": [
            {
                "message": c.outbox_id,
                "link": c.link,
                "at": when(c.at),
                "method": c.method,
                "human": c.human,
                "reason": c.reason,
            }
            for c in clicks_of(session, subscriber_id)
        ],
        # DRIP_WEBHOOK_URLS: what other systems were told about them (drip.hooks).
        "webhook_events": [
            {
                "type": row.template,
                "to": where(str(row.context["url"])),
                "created_at": when(row.created_at),
                "status": str(row.status),
                "body": json.loads(row.context["body"]),
            }
            for row in session.execute(
                select(OutboxMessage)
                .where(
                    col(OutboxMessage.kind) == MessageKind.webhook,
                    col(OutboxMessage.email) == subscriber.email,
                )
                .order_by(col(OutboxMessage.id))
            ).scalars()
        ],
    }


def anonymous_address(subscriber_id: int) -> str:
    return f"deleted-{subscriber_id}@invalid"


def forget_subscriber(
    session: Session, settings: Settings, subscriber_id: int, now: datetime
) -> bool:
    """Erase a person's data (GDPR) and keep the anonymous counts.

    Nothing more is sent (queued mail becomes `skipped`); the address, name, IP and
    tokens are replaced by values that lead nowhere, in the subscriber row, in every
    outbox row, in the webhook events about them (sent or not: those still to go say
    who left as the anonymous address) and inside SMTP replies that quoted the address.
    The rows themselves stay, so sent/bounced counts and course statistics do not change.
    """
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return False
    keep_out = subscriber.status in SUBSCRIBED_STATUSES
    status = SubscriberStatus.unsubscribed if keep_out else subscriber.status
    leave(session, settings, subscriber, status, now, "the subscriber's data was deleted")
    old = {subscriber.email, subscriber.email_key}
    anon = anonymous_address(subscriber_id)
    subscriber.email = subscriber.email_key = anon
    subscriber.name = ""
    subscriber.consent_ip = None
    subscriber.consent_source = "deleted"
    subscriber.source = subscriber.newsletter_source = ""
    subscriber.pending_signup = None  # a repeated signup's name, not yet confirmed
    subscriber.timezone = "UTC"
    subscriber.token_salt = new_salt()
    # Random hashes: no token, old or new, can match them.
    subscriber.confirm_token_hash = secrets.token_hex(32)
    subscriber.unsubscribe_token_hash = secrets.token_hex(32)
    session.add(subscriber)
    # Their questions and the answers' texts are their words: gone with the rest.
    session.execute(delete(Question).where(col(Question.subscriber_id) == subscriber_id))

    mine = or_(col(OutboxMessage.subscriber_id) == subscriber_id, col(OutboxMessage.email).in_(old))
    ids = list(session.execute(select(col(OutboxMessage.id)).where(mine)).scalars())
    if not ids:
        return True
    session.execute(
        update(OutboxMessage)
        .where(col(OutboxMessage.id).in_(ids), col(OutboxMessage.kind) == MessageKind.answer)
        .values(context={})
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(OutboxMessage)
        .where(col(OutboxMessage.id).in_(ids))
        .values(email=anon)
        .execution_options(synchronize_session=False)
    )
    pattern = re.compile("|".join(re.escape(address) for address in sorted(old)), re.IGNORECASE)
    _anonymise_events(session, ids, pattern, anon)
    outbox, attempts = table_of(OutboxMessage).c, table_of(DeliveryAttempt).c
    _scrub(session, outbox.last_smtp_message, outbox.id.in_(ids), pattern, anon)
    _scrub(session, attempts.smtp_message, attempts.outbox_id.in_(ids), pattern, anon)
    return True


def _anonymise_events(
    session: Session, ids: list[int], pattern: re.Pattern[str], anon: str
) -> None:
    """The webhook events among `ids` name the anonymous address (wherever they quoted
    the address) and no name."""
    events = session.execute(
        select(col(OutboxMessage.id), col(OutboxMessage.context)).where(
            col(OutboxMessage.id).in_(ids), col(OutboxMessage.kind) == MessageKind.webhook
        )
    ).all()
    for ident, context in events:
        payload = json.loads(pattern.sub(anon, context["body"]))
        payload["data"]["subscriber"].update(email=anon, name="")
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        session.execute(
            update(OutboxMessage)
            .where(col(OutboxMessage.id) == ident)
            .values(context={**context, "body": body})
            .execution_options(synchronize_session=False)
        )


def _scrub(
    session: Session,
    text: Column[Any],
    rows: ColumnElement[bool],
    pattern: re.Pattern[str],
    anon: str,
) -> None:
    """Replace what `pattern` matches in the `text` column of `rows` (SMTP replies that
    quoted an address) by `anon`."""
    table = text.table
    quoted = session.execute(select(table.c.id, text).where(rows, text.is_not(None))).all()
    for ident, value in quoted:
        if pattern.search(value):
            session.execute(
                update(table)
                .where(table.c.id == ident)
                .values({text.name: pattern.sub(anon, value)})
            )
