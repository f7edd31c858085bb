"""The counts on /admin's first page: sends, subscribers, course progress, workers.

Each figure is a count on an index, not a scan of the log (see `_count`), so the first
page stays quick on a large log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, select
from sqlmodel import Session, col

from drip.health import MailOnly, attempts_at_tests
from drip.held import HeldCourse, held_courses
from drip.models import (
    NOT_TRIED_STATUSES,
    CourseProgress,
    DeliveryAttempt,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
    WorkerHeartbeat,
)

DASHBOARD_STATUSES = ("sent", "deferred", "failed", "bounced")
DAYS = 30
#: A worker without a pass for this long is marked stale (stopped, crashed or stuck).
STALE_AFTER = timedelta(minutes=5)
#: A worker without a pass for this long is gone: no longer listed, only counted.
GONE_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class WorkerPass:
    worker: str
    last_pass_at: datetime
    queued: int
    delivered: int
    stale: bool = False


@dataclass(frozen=True)
class Dashboard:
    now: datetime
    today: dict[str, int]
    #: The 30 UTC days up to and including today, as in the chart.
    last_30_days: dict[str, int]
    #: (UTC day, messages sent), oldest first, every day present.
    sends_per_day: list[tuple[date, int]]
    subscribers: dict[str, int]
    #: (lessons sent, active subscribers on the course at that point), by lessons sent.
    progress: list[tuple[int, int]]
    finished: int
    #: Left before the end (unsubscribed, bounced...).
    stopped: int
    waiting: int
    #: Workers seen in the last day (GONE_AFTER), the latest first; silent ones stale.
    workers: list[WorkerPass]
    #: Workers not seen for longer: left off the list.
    workers_gone: int = 0
    #: Readers whose course waits on an email that failed for good (drip.held).
    held: int = 0
    #: The latest of them, with the failed message to retry.
    held_courses: list[HeldCourse] = field(default_factory=list)

    def workers_alive(self, within: timedelta = STALE_AFTER) -> bool:
        return any(self.now - w.last_pass_at <= within for w in self.workers)


def _count(
    session: Session, mail: MailOnly, status: str, start: datetime, end: datetime | None = None
) -> int:
    """Attempts with `status` in [start, end): a range count on the (status, at) index.

    Many such counts beat one GROUP BY day: grouping sorts every row of the month,
    a range count only walks the index.
    """
    stmt = mail.attempts(
        select(func.count())
        .select_from(DeliveryAttempt)
        .where(col(DeliveryAttempt.status) == status, col(DeliveryAttempt.at) >= start)
    )
    if end is not None:
        stmt = stmt.where(col(DeliveryAttempt.at) < end)
    return int(session.execute(stmt).scalar_one())


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC)


def dashboard(session: Session, now: datetime) -> Dashboard:
    """Every count on the admin's first page, each one grouped query on an index."""
    today = now.astimezone(UTC).date()
    days = [today - timedelta(days=DAYS - 1 - i) for i in range(DAYS)]
    # Test sends are not mail to readers: they count nowhere here (their few attempts
    # are taken off); webhook POSTs are not sends at all.
    mail = MailOnly.of(session)
    tests = attempts_at_tests(session, _midnight(days[0]))

    def tests_on(status: str, first: date, last: date = today) -> int:
        return sum(
            1 for _, s, at in tests if s == status and first <= at.astimezone(UTC).date() <= last
        )

    sent_per_day = [
        (
            d,
            _count(session, mail, OutboxStatus.sent, _midnight(d), _midnight(d + timedelta(days=1)))
            - tests_on(OutboxStatus.sent, d, d),
        )
        for d in days
    ]
    today_counts = {"sent": sent_per_day[-1][1]}
    month_counts = {"sent": sum(n for _, n in sent_per_day)}
    for status in DASHBOARD_STATUSES[1:]:
        today_counts[status] = _count(session, mail, status, _midnight(today)) - tests_on(
            status, today
        )
        month_counts[status] = _count(session, mail, status, _midnight(days[0])) - tests_on(
            status, days[0]
        )
    by_status = dict.fromkeys((s.value for s in SubscriberStatus), 0)
    by_status.update(
        {
            str(s): int(n)
            for s, n in session.execute(
                select(col(Subscriber.status), func.count()).group_by(col(Subscriber.status))
            )
        }
    )
    on_course = select(col(CourseProgress.lessons_sent), func.count()).join(
        Subscriber, col(Subscriber.id) == col(CourseProgress.subscriber_id)
    )
    progress = [
        (int(lessons), int(n))
        for lessons, n in session.execute(
            on_course.where(
                col(CourseProgress.finished_at).is_(None),
                col(Subscriber.status) == SubscriberStatus.active,
            )
            .group_by(col(CourseProgress.lessons_sent))
            .order_by(col(CourseProgress.lessons_sent))
        )
    ]
    finished = session.execute(
        select(func.count())
        .select_from(CourseProgress)
        .where(col(CourseProgress.finished_at).is_not(None))
    ).scalar_one()
    stopped = session.execute(
        select(func.count())
        .select_from(CourseProgress)
        .join(Subscriber, col(Subscriber.id) == col(CourseProgress.subscriber_id))
        .where(
            col(CourseProgress.finished_at).is_(None),
            col(Subscriber.status) != SubscriberStatus.active,
        )
    ).scalar_one()
    waiting = session.execute(
        mail.rows(select(func.count()).select_from(OutboxMessage)).where(
            col(OutboxMessage.status).in_((*NOT_TRIED_STATUSES, OutboxStatus.deferred))
        )
    ).scalar_one()
    hb = WorkerHeartbeat
    since = now - GONE_AFTER
    workers = [
        WorkerPass(
            w.worker, w.last_pass_at, w.queued, w.delivered, now - w.last_pass_at > STALE_AFTER
        )
        for w in session.execute(
            select(hb)
            .where(col(hb.last_pass_at) >= since)
            .order_by(col(hb.last_pass_at).desc())
            .limit(20)
        ).scalars()
    ]
    gone = session.execute(
        select(func.count()).select_from(hb).where(col(hb.last_pass_at) < since)
    ).scalar_one()
    held, held_list = held_courses(session)
    return Dashboard(
        now=now,
        today=today_counts,
        last_30_days=month_counts,
        sends_per_day=sent_per_day,
        subscribers=by_status,
        progress=progress,
        finished=int(finished),
        stopped=int(stopped),
        waiting=int(waiting),
        workers=workers,
        workers_gone=int(gone),
        held=held,
        held_courses=held_list,
    )
