"""One scheduler pass: read the bounce mailbox, remind and expire unconfirmed signups, queue
what is due, deliver the outbox, note the pass.

`drip tick`, `drip worker` (every DRIP_WORKER_INTERVAL seconds) and the tests all
run this same function. `now` may be given to travel in time; the pass's clock
then runs on from that moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select
from sqlmodel import Session, col

from drip import alerts, health, unconfirmed
from drip.bounce_mailbox import MailboxError, MailboxReport, read_bounce_mailbox
from drip.clock import travelling_clock
from drip.course import load_course
from drip.db import get_engine, session_scope
from drip.models import CourseProgress, WorkerHeartbeat
from drip.pace import Pace
from drip.progress import lesson_due, queue_due_lessons
from drip.sending.delivery import Delivery, DeliveryReport, worker_name
from drip.settings import Settings

QUEUE_BATCH = 500


@dataclass
class PassReport:
    queued: int
    delivery: DeliveryReport
    #: DRIP_BOUNCE_MAILBOX's pass, when set; or why it could not be read.
    mailbox: MailboxReport | None = None
    mailbox_error: str | None = None


def queue_due(settings: Settings, engine: Engine, now: datetime) -> int:
    """Queue every lesson due at `now`, in batches so memory stays flat."""
    course = load_course(settings.emails_dir)
    total = 0
    while True:
        # Each batch clears the due time of the rows it reads, so this loop ends.
        with session_scope(engine) as session:
            total += queue_due_lessons(
                session,
                now,
                course,
                settings.sender_address.domain,
                limit=QUEUE_BATCH,
                pace=Pace(settings.minutes_per_day),
                settings=settings,
            )
            if not _more_due(session, now):
                return total


def _more_due(session: Session, now: datetime) -> bool:
    return (
        session.execute(
            select(col(CourseProgress.subscriber_id)).where(lesson_due(now)).limit(1)
        ).first()
        is not None
    )


def beat(engine: Engine, worker: str, at: datetime, queued: int, delivered: int) -> None:
    with session_scope(engine) as session:
        row = session.get(WorkerHeartbeat, worker) or WorkerHeartbeat(
            worker=worker, last_pass_at=at
        )
        row.last_pass_at, row.queued, row.delivered = at, queued, delivered
        session.add(row)


async def run_pass(
    settings: Settings,
    now: datetime | None = None,
    *,
    worker: str | None = None,
    stop: asyncio.Event | None = None,
    queued_hook: Callable[[], None] | None = None,
) -> PassReport:
    """`queued_hook` is called once what is due is queued, before delivery: `drip worker`
    wakes its other delivery processes with it (drip.sending.processes)."""
    engine = get_engine(settings.database_url)
    clock = travelling_clock(now)
    worker = worker or worker_name()
    # Bounces first, so no mail goes to an address that bounced since the last pass.
    mailbox: MailboxReport | None = None
    mailbox_error: str | None = None
    try:
        mailbox = await asyncio.to_thread(read_bounce_mailbox, settings, engine, clock())
    except MailboxError as exc:  # the mailbox's trouble never holds up the mail
        mailbox_error = str(exc)
    # Confirmation reminders, and unconfirmed signups expired with their data.
    reminded, _ = await asyncio.to_thread(unconfirmed.tend, settings, engine, clock())
    queued = reminded + await asyncio.to_thread(queue_due, settings, engine, clock())
    if queued_hook is not None:
        queued_hook()
    delivery = Delivery(settings, engine, worker=worker, clock=clock, stop=stop)
    report = await delivery.run()
    # Bounces and complaints of this pass (or reported since) may pause newsletters.
    await asyncio.to_thread(health.judge, settings, engine, clock())
    await asyncio.to_thread(beat, engine, worker, clock(), queued, report.total)
    # Whatever is wrong now (or cleared) goes to DRIP_ALERT_WEBHOOK, not by email.
    await asyncio.to_thread(alerts.check, settings, engine, clock())
    return PassReport(queued, report, mailbox, mailbox_error)
