"""Sender health: bounce and complaint rates, and the automatic newsletter pause.

Gmail and Yahoo hold bulk senders to a spam-complaint rate under 0.3% (better under
0.1%), and a high hard-bounce rate marks a list that was bought or left to rot. So
every pass judges the last 7 days: when hard bounces pass DRIP_MAX_BOUNCE_PERCENT
(2) or complaints DRIP_MAX_COMPLAINT_PERCENT (0.1) of the messages delivered, and at
least DRIP_HEALTH_MIN_MESSAGES (100) were delivered (one bounce in ten proves
nothing), newsletter sending pauses itself: a `sending_hold` row that delivery reads
before it claims. Course mail goes on (each reader asked for it). The operator
resumes from /admin or with `drip newsletter resume`; the rates are then judged only
on what was delivered after the resume.

A message counts as delivered once it has a `sent` or `bounced` attempt; as bounced
or complained once it has such an attempt, at send time or reported later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, case, func, select
from sqlmodel import Session, col

from drip.db import SelectT, read_scope, session_scope
from drip.models import (
    UNSENT_STATUSES,
    DeliveryAttempt,
    MessageKind,
    Newsletter,
    OutboxMessage,
    OutboxStatus,
    SendingHold,
)
from drip.sending.outbox import not_held
from drip.settings import Settings

log = logging.getLogger("drip.health")
NEWSLETTER_HOLD = "newsletter"
WINDOW = timedelta(days=7)
_COUNTED = (OutboxStatus.sent, OutboxStatus.bounced, OutboxStatus.complained)


@dataclass(frozen=True)
class Limits:
    """How many bounces and complaints are too many, judged on at least `min_messages`."""

    max_bounce_percent: float
    max_complaint_percent: float
    min_messages: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.max_bounce_percent,
            settings.max_complaint_percent,
            settings.health_min_messages,
        )


@dataclass(frozen=True)
class Rates:
    delivered: int
    bounced: int
    complained: int

    @property
    def bounce_percent(self) -> float:
        return 100.0 * self.bounced / self.delivered if self.delivered else 0.0

    @property
    def complaint_percent(self) -> float:
        return 100.0 * self.complained / self.delivered if self.delivered else 0.0

    def bounces_over(self, limits: Limits) -> bool:
        """Hard bounces over the limit, on enough messages to judge."""
        enough = self.delivered >= limits.min_messages
        return enough and self.bounce_percent > limits.max_bounce_percent

    def complaints_over(self, limits: Limits) -> bool:
        """Complaints over the limit, on enough messages to judge."""
        enough = self.delivered >= limits.min_messages
        return enough and self.complaint_percent > limits.max_complaint_percent


@dataclass(frozen=True)
class Health:
    last_7_days: Rates
    last_30_days: Rates
    #: (newsletter subject, rates) for newsletters delivered in the last 30 days, newest first.
    newsletters: list[tuple[str, Rates]]
    #: (lesson template, rates) over the last 30 days, in template order.
    lessons: list[tuple[str, Rates]]
    hold: SendingHold | None
    limits: Limits


#: Outbox rows that are emails: webhook rows (drip.hooks) never count as mail.
IS_MAIL = col(OutboxMessage.kind) != MessageKind.webhook


@dataclass(frozen=True)
class MailOnly:
    """Narrows a count to emails. While no webhook row exists (DRIP_WEBHOOK_URLS never
    set) it changes nothing, so the counts keep their index-only plans without a join."""

    webhooks: bool

    @classmethod
    def of(cls, session: Session) -> MailOnly:
        """One look-up on the (kind, created_at) index."""
        found = session.execute(
            select(col(OutboxMessage.id))
            .where(col(OutboxMessage.kind) == MessageKind.webhook)
            .limit(1)
        ).first()
        return cls(found is not None)

    def attempts(self, stmt: SelectT) -> SelectT:
        """`stmt` on DeliveryAttempt, narrowed to attempts at emails (not webhook POSTs)."""
        if not self.webhooks:
            return stmt
        outbox = col(OutboxMessage.id) == col(DeliveryAttempt.outbox_id)
        return stmt.join(OutboxMessage, outbox).where(IS_MAIL)

    def rows(self, stmt: SelectT) -> SelectT:
        """`stmt` on OutboxMessage, narrowed to emails."""
        return stmt.where(IS_MAIL) if self.webhooks else stmt


def oldest_due(session: Session, mail: MailOnly, now: datetime) -> datetime | None:
    """When the oldest email still to send fell due (held rows aside); None when none is."""
    due: datetime | None = session.execute(
        mail.rows(select(func.min(col(OutboxMessage.due_at))))
        .where(col(OutboxMessage.status).in_(UNSENT_STATUSES), not_held())
        .where(col(OutboxMessage.due_at) <= now)
    ).scalar()
    return due


def _counts(key: Any = None) -> Any:
    """Delivered, bounced and complained messages, each message counted once per figure."""
    outbox_id = col(DeliveryAttempt.outbox_id)
    status = col(DeliveryAttempt.status)

    def distinct_when(condition: Any) -> Any:
        return func.count(func.distinct(case((condition, outbox_id))))

    figures = (
        distinct_when(status.in_((OutboxStatus.sent, OutboxStatus.bounced))),
        distinct_when(status == OutboxStatus.bounced),
        distinct_when(status == OutboxStatus.complained),
    )
    return select(key, *figures) if key is not None else select(*figures)


def rates_since(session: Session, since: datetime) -> Rates:
    """Messages delivered, hard-bounced and complained about, by attempts at or after `since`.

    Test sends (drip.testmail) are not mail to readers: their few attempts, found from
    the outbox side, are taken off the totals.
    """
    row = session.execute(
        MailOnly.of(session)
        .attempts(_counts())
        .where(col(DeliveryAttempt.status).in_(_COUNTED))
        .where(col(DeliveryAttempt.at) >= since)
    ).one()
    tests = attempts_at_tests(session, since)

    def test_messages(*statuses: OutboxStatus) -> int:
        return len({outbox_id for outbox_id, status, _ in tests if status in statuses})

    taken_off = (
        test_messages(OutboxStatus.sent, OutboxStatus.bounced),
        test_messages(OutboxStatus.bounced),
        test_messages(OutboxStatus.complained),
    )
    return Rates(*(int(all_) - test for all_, test in zip(row, taken_off, strict=True)))


def attempts_at_tests(session: Session, since: datetime) -> list[tuple[int, str, datetime]]:
    """(message, status, at) of the test sends' attempts since then (drip.testmail): the
    few rows the counts take off, found from the outbox side so the counts stay
    index-only (a join on every count would not)."""
    rows = session.execute(
        select(col(DeliveryAttempt.outbox_id), col(DeliveryAttempt.status), col(DeliveryAttempt.at))
        .join(OutboxMessage, col(OutboxMessage.id) == col(DeliveryAttempt.outbox_id))
        .where(col(OutboxMessage.kind) == MessageKind.test, col(DeliveryAttempt.at) >= since)
    )
    return [(int(outbox_id), str(status), at) for outbox_id, status, at in rows]


def _grouped(session: Session, since: datetime, key: Any, kind: MessageKind) -> dict[Any, Rates]:
    rows = session.execute(
        _counts(key)
        .join(OutboxMessage, col(OutboxMessage.id) == col(DeliveryAttempt.outbox_id))
        .where(col(OutboxMessage.kind) == kind)
        .where(col(DeliveryAttempt.status).in_(_COUNTED))
        .where(col(DeliveryAttempt.at) >= since)
        .group_by(key)
    ).all()
    return {group: Rates(int(d), int(b), int(c)) for group, d, b, c in rows}


def hold(session: Session) -> SendingHold | None:
    return session.get(SendingHold, NEWSLETTER_HOLD)


def held_kinds(session: Session) -> frozenset[MessageKind]:
    """The kinds of mail delivery must not claim now."""
    row = hold(session)
    return frozenset({MessageKind.newsletter}) if row and row.paused_at else frozenset()


def judge(settings: Settings, engine: Engine, now: datetime) -> str | None:
    """Pause newsletters when a rate is over its limit; returns the reason when it paused."""
    with read_scope(engine) as session:
        current = hold(session)
        if current is not None and current.paused_at is not None:
            return None
        since = now - WINDOW
        if current is not None and current.resumed_at is not None:
            since = max(since, current.resumed_at)
        rates = rates_since(session, since)
    reason = over_limit(settings, rates)
    if reason is None:
        return None
    with session_scope(engine) as session:
        row = hold(session) or SendingHold(name=NEWSLETTER_HOLD)
        if row.paused_at is not None:
            return None
        row.paused_at, row.reason = now, reason
        session.add(row)
    log.warning("newsletter sending paused: %s", reason)
    return reason


def over_limit(settings: Settings, rates: Rates) -> str | None:
    limits = Limits.of(settings)
    if rates.complaints_over(limits):
        return (
            f"complaints at {rates.complaint_percent:.2f}% ({rates.complained} of "
            f"{rates.delivered} delivered), over the {settings.max_complaint_percent:g}% limit"
        )
    if rates.bounces_over(limits):
        return (
            f"hard bounces at {rates.bounce_percent:.2f}% ({rates.bounced} of "
            f"{rates.delivered} delivered), over the {settings.max_bounce_percent:g}% limit"
        )
    return None


def resume(engine: Engine, now: datetime) -> bool:
    """Let newsletters go again; False when they were not paused."""
    with session_scope(engine) as session:
        row = hold(session)
        if row is None or row.paused_at is None:
            return False
        row.paused_at, row.resumed_at = None, now
        session.add(row)
    log.warning("newsletter sending resumed by the operator")
    return True


def health(settings: Settings, session: Session, now: datetime) -> Health:
    month = now - timedelta(days=30)
    letters = _grouped(session, month, col(OutboxMessage.newsletter_id), MessageKind.newsletter)
    ids = [i for i in letters if i is not None]
    subjects = {
        int(i): str(subject)
        for i, subject in session.execute(
            select(col(Newsletter.id), col(Newsletter.subject)).where(col(Newsletter.id).in_(ids))
        ).all()
    }
    lessons = _grouped(session, month, col(OutboxMessage.template), MessageKind.lesson)
    return Health(
        last_7_days=rates_since(session, now - WINDOW),
        last_30_days=rates_since(session, month),
        newsletters=[(subjects.get(i, f"#{i}"), letters[i]) for i in sorted(ids, reverse=True)],
        lessons=sorted(lessons.items()),
        hold=hold(session),
        limits=Limits.of(settings),
    )
