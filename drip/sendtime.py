"""When a lesson may go: inside the send window, on a send day, in the reader's time zone,
and (unless the course allows it) not on a day a newsletter reached that reader.

Pure arithmetic on a given moment, plus the one query that finds a reader's newsletter
days; drip.progress asks both when it schedules and when it queues a lesson.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import or_, select
from sqlmodel import Session, col

from drip.course import Course
from drip.models import UNSENT_STATUSES, MessageKind, OutboxMessage, OutboxStatus

#: A newsletter in these states went, or is on its way: its day is taken.
NEWSLETTER_TAKES_DAY = (OutboxStatus.sent, OutboxStatus.complained, *UNSENT_STATUSES)
#: How far back and ahead newsletters are looked for; a day is at most 14 hours off UTC.
LOOK_AROUND = timedelta(days=2)


def zone(name: str) -> ZoneInfo:
    """The subscriber's time zone; an unknown name counts as UTC rather than stopping mail."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def send_moment(
    when: datetime, tz_name: str, course: Course, busy: Collection[date] = ()
) -> datetime:
    """The first moment at or after `when` inside the send window of a send day that is
    not one of the `busy` local dates."""
    tz = zone(tz_name)
    local = when.astimezone(tz)
    day = local.date()
    # send_days is never empty (drip.course), so a week past the busy days finds one.
    for _ in range(8 + len(busy)):
        start = datetime.combine(day, course.window_start, tz)
        end = datetime.combine(day, course.window_end, tz)
        if day.weekday() in course.send_days and day not in busy and local < end:
            return max(local, start).astimezone(when.tzinfo)
        day += timedelta(days=1)
    raise AssertionError("no send day found in a week")


def blocked_today(now: datetime, tz_name: str, course: Course, busy: Collection[date]) -> bool:
    """Whether a lesson due at `now` must wait: not a send day, or a newsletter's day."""
    today = now.astimezone(zone(tz_name)).date()
    return today.weekday() not in course.send_days or today in busy


def newsletter_days(
    session: Session, zones: Mapping[int, str], now: datetime
) -> dict[int, set[date]]:
    """The local dates around `now` on which a newsletter went, or will go, to each of
    these subscribers (`zones`: subscriber id to time zone), in one query."""
    found: dict[int, set[date]] = {}
    ids: Sequence[int] = list(zones)
    if not ids:
        return found
    since = now - LOOK_AROUND
    rows = session.execute(
        select(
            col(OutboxMessage.subscriber_id),
            col(OutboxMessage.sent_at),
            col(OutboxMessage.next_attempt_at),
            col(OutboxMessage.due_at),
        )
        .where(col(OutboxMessage.subscriber_id).in_(ids))
        .where(col(OutboxMessage.kind) == MessageKind.newsletter)
        .where(col(OutboxMessage.status).in_(NEWSLETTER_TAKES_DAY))
        .where(
            or_(col(OutboxMessage.sent_at) >= since, col(OutboxMessage.next_attempt_at) >= since)
        )
    )
    for subscriber_id, sent_at, next_attempt_at, due_at in rows:
        # A message not sent yet goes at its next attempt, and not before now.
        at = sent_at or max(next_attempt_at or due_at, now)
        found.setdefault(subscriber_id, set()).add(at.astimezone(zone(zones[subscriber_id])).date())
    return found
