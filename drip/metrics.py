"""Prometheus metrics, read from the database at each scrape.

Every worker writes its state to the database (outbox rows, attempts, heartbeats, the
shared send budget), so any process answers for all of them and a scrape needs no
process-local counters. Each figure is one grouped query read in one snapshot.
Attempts are counted over the last hour (`drip_delivery_attempts_last_hour`): a
range on the attempt's time index, cheap whatever the size of the send log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from drip.db import read_scope
from drip.health import IS_MAIL, WINDOW, MailOnly, oldest_due, rates_since
from drip.models import (
    DeliveryAttempt,
    OutboxMessage,
    SendBudget,
    Subscriber,
    WorkerHeartbeat,
)
from drip.sending.ratelimit import BUCKET
from drip.unconfirmed import expired_count

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RECENT = timedelta(hours=1)
DAY = timedelta(days=1)


def smtp_class(code: int | None) -> str:
    """'2xx', '4xx', '5xx', or 'none' when no SMTP reply was had (a refused connection)."""
    return f"{code // 100}xx" if code else "none"


class DripCollector(Collector):
    """Yields drip's metrics from one read-only transaction per scrape."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self.engine = engine
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.clock()
        with read_scope(self.engine) as session:
            yield from _outbox(session, now)
            yield from _attempts(session, now)
            yield from _budget(session, now)
            yield from _workers(session)
            yield from _subscribers(session, now)
            yield from _rates(session, now)


def _by_status(
    session: Session, name: str, what: str, status: Any, where: Any = None
) -> GaugeMetricFamily:
    """One gauge of row counts grouped by a status column (of the rows `where` picks)."""
    family = GaugeMetricFamily(name, f"{what} by status.", labels=["status"])
    stmt = select(status, func.count()).group_by(status)
    if where is not None:
        stmt = stmt.where(where)
    for value, count in session.execute(stmt):
        family.add_metric([str(value)], count)
    return family


def _outbox(session: Session, now: datetime) -> Iterator[GaugeMetricFamily]:
    status = col(OutboxMessage.status)
    mail = MailOnly.of(session)
    emails = IS_MAIL if mail.webhooks else None
    yield _by_status(session, "drip_outbox_messages", "Outbox rows of emails", status, emails)
    hooks = GaugeMetricFamily(
        "drip_webhook_messages", "Outbox rows of webhook events by status.", labels=["status"]
    )
    if mail.webhooks:
        hooks = _by_status(
            session, "drip_webhook_messages", "Outbox rows of webhook events", status, ~IS_MAIL
        )
    yield hooks
    oldest = oldest_due(session, mail, now)
    waited = (now - oldest).total_seconds() if oldest is not None else 0.0
    yield GaugeMetricFamily(
        "drip_outbox_oldest_due_seconds",
        "How long the oldest message not yet sent has waited since it fell due (0: none).",
        value=waited,
    )


def _attempts(session: Session, now: datetime) -> Iterator[GaugeMetricFamily]:
    family = GaugeMetricFamily(
        "drip_delivery_attempts_last_hour",
        "Send attempts in the last hour by message kind, outcome and SMTP reply class.",
        labels=["kind", "status", "smtp_class"],
    )
    rows = session.execute(
        select(
            col(OutboxMessage.kind),
            col(DeliveryAttempt.status),
            col(DeliveryAttempt.smtp_code),
            func.count(),
        )
        .join(OutboxMessage, col(OutboxMessage.id) == col(DeliveryAttempt.outbox_id))
        .where(col(DeliveryAttempt.at) > now - RECENT)
        .group_by(
            col(OutboxMessage.kind), col(DeliveryAttempt.status), col(DeliveryAttempt.smtp_code)
        )
    )
    merged: dict[tuple[str, str, str], int] = {}
    for kind, status, code, count in rows:
        key = (str(kind), str(status), smtp_class(code))
        merged[key] = merged.get(key, 0) + count
    for labels, count in sorted(merged.items()):
        family.add_metric(list(labels), count)
    yield family


def _budget(session: Session, now: datetime) -> Iterator[GaugeMetricFamily]:
    tokens = GaugeMetricFamily(
        "drip_send_budget_tokens", "Messages the shared send rate allows at once now."
    )
    paused = GaugeMetricFamily(
        "drip_send_paused_seconds",
        "Seconds left of a pause every worker keeps after a 421 or a throttle (0: sending).",
    )
    budget = session.get(SendBudget, BUCKET)
    tokens.add_metric([], budget.tokens if budget else 0.0)
    until = budget.paused_until if budget else None
    paused.add_metric([], max(0.0, (until - now).total_seconds()) if until else 0.0)
    yield tokens
    yield paused


def _workers(session: Session) -> Iterator[GaugeMetricFamily]:
    family = GaugeMetricFamily(
        "drip_worker_last_pass_timestamp_seconds",
        "When each worker last finished a scheduler pass (Unix time).",
        labels=["worker"],
    )
    for beat in session.execute(select(WorkerHeartbeat)).scalars():
        family.add_metric([beat.worker], beat.last_pass_at.timestamp())
    yield family


def _subscribers(session: Session, now: datetime) -> Iterator[GaugeMetricFamily]:
    yield _by_status(session, "drip_subscribers", "Subscribers", col(Subscriber.status))
    signups = session.execute(
        select(func.count()).where(col(Subscriber.created_at) > now - DAY)
    ).scalar_one()
    confirmed = session.execute(
        select(func.count()).where(col(Subscriber.confirmed_at) > now - DAY)
    ).scalar_one()
    yield GaugeMetricFamily("drip_signups_last_day", "Signups in the last 24 hours.", signups)
    yield GaugeMetricFamily(
        "drip_confirmations_last_day", "Confirmations in the last 24 hours.", confirmed
    )
    yield GaugeMetricFamily(
        "drip_unconfirmed_expired",
        "Signups never confirmed, deleted after DRIP_UNCONFIRMED_EXPIRE_DAYS, ever (a count only).",
        expired_count(session),
    )


def _rates(session: Session, now: datetime) -> Iterator[GaugeMetricFamily]:
    rates = rates_since(session, now - WINDOW)
    family = GaugeMetricFamily(
        "drip_feedback_percent_7d",
        "Hard bounces and complaints as a percentage of messages delivered in 7 days.",
        labels=["kind"],
    )
    family.add_metric(["bounce"], rates.bounce_percent)
    family.add_metric(["complaint"], rates.complaint_percent)
    yield family


def render(engine: Engine, clock: Callable[[], datetime]) -> bytes:
    """The Prometheus text exposition of drip's metrics, now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DripCollector(engine, clock))
    return generate_latest(registry)
