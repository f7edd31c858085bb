"""The author steers one reader's course: pause, resume, skip ahead, restart.

The CLI (`drip subscribers pause|resume|skip|restart`) and the subscriber's page in
/admin are thin over these functions; each takes the time as `now`, locks the reader's
progress row (so a pass queuing lessons side by side takes it next time, not half-way),
and records what it did as a `CourseAction` in the reader's timeline.

- **Pause** sets `paused_at`: a pass queues no lesson for a paused reader, and an email
  of the course already queued is held (`drip.sending.outbox.hold`: still queued, with no
  next attempt, so no worker takes it). One a worker holds at that moment still goes.
- **Resume** lets a held email go at the next send moment, and the next lesson keep its
  due time, or the next send moment if that has passed: one lesson, then the normal
  delays, never the lessons the pause kept back all at once.
- **Skip** marks the reader's next lesson (or every lesson before `--to SLUG`) skipped in
  the outbox, so it is in their history and never queued; the lesson after it takes its
  slot. Only forwards: going back is a restart.
- **Restart** begins a new round: the unsent lessons of the old one are skipped, and the
  lessons go again from the first, a normal delay after the last one sent. The round is
  in the lessons' dedupe keys (`drip.progress.lesson_key`), so they may go again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

from sqlalchemy import select
from sqlmodel import Session, col

from drip.course import Course, Lesson
from drip.db import lock
from drip.errors import DripError
from drip.followup import COURSE_KINDS
from drip.models import (
    PENDING_STATUSES,
    CourseAction,
    CourseProgress,
    MessageKind,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from drip.pace import REAL_DAYS, Pace
from drip.progress import lesson_key, lesson_message
from drip.sending.outbox import enqueue_many, held_for, hold, unhold
from drip.sending.outbox import skip as skip_messages
from drip.sendtime import newsletter_days, send_moment
from drip.settings import Settings
from drip.subscribers import find_by_email

#: A lesson of the current round in these states is the one the reader is at: not sent
#: yet, or failed for good (its course is held until a retry or a skip).
CURRENT_STATUSES = (*PENDING_STATUSES, OutboxStatus.failed)


class SteeringError(DripError):
    """A course action that cannot apply to this reader now; the message says why."""


@dataclass(frozen=True)
class Steered:
    """What an action did: `changed` False when there was nothing to do."""

    action: str
    changed: bool
    detail: str


def find(session: Session, email: str) -> Subscriber:
    found = find_by_email(session, email)
    if found is None:
        raise SteeringError(f"no subscriber {email}")
    return found


def _when(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC"


def _name(course: Course, lesson: Lesson) -> str:
    return f"lesson {course.number_of(lesson.slug)} ({lesson.slug})"


def _progress(session: Session, subscriber: Subscriber) -> CourseProgress:
    """The reader's progress, locked; only an active reader's course can be steered."""
    if subscriber.status != SubscriberStatus.active:
        raise SteeringError(f"{subscriber.email} is {subscriber.status}: no course mail goes")
    progress = session.get(CourseProgress, subscriber.id)
    if progress is None:
        raise SteeringError(f"{subscriber.email} has not started the course")
    lock(session, progress)
    return progress


def _record(
    session: Session, subscriber: Subscriber, steered: Steered, now: datetime, source: str
) -> Steered:
    if steered.changed:
        assert subscriber.id is not None
        session.add(
            CourseAction(
                subscriber_id=subscriber.id,
                at=now,
                action=steered.action,
                detail=steered.detail[:500],
                source=source,
            )
        )
    return steered


def _moment(
    session: Session, subscriber: Subscriber, course: Course, pace: Pace, at: datetime
) -> datetime:
    """When a lesson wanted at `at` may go: the window, the send days, the newsletter's day."""
    if not pace.uses_window:
        return at
    busy: set[date] = set()
    if not course.newsletter_same_day:
        assert subscriber.id is not None
        days = newsletter_days(session, {subscriber.id: subscriber.timezone}, at)
        busy = days.get(subscriber.id, set())
    return send_moment(at, subscriber.timezone, course, busy)


def pause(session: Session, subscriber: Subscriber, now: datetime, source: str) -> Steered:
    """Hold the reader's course: nothing of it goes until `resume`."""
    progress = _progress(session, subscriber)
    if progress.paused_at is not None:
        return Steered("pause", False, f"already paused since {_when(progress.paused_at)}")
    if progress.finished_at is not None:
        raise SteeringError(f"{subscriber.email} has finished the course: nothing to pause")
    assert subscriber.id is not None
    progress.paused_at = now
    session.add(progress)
    held = hold(session, subscriber.id, COURSE_KINDS, now)
    detail = "paused"
    if held:
        rows = held_for(session, subscriber.id, COURSE_KINDS)
        detail += "; held, not lost: " + ", ".join(r.template for r in rows)
    return _record(session, subscriber, Steered("pause", True, detail), now, source)


def resume(
    session: Session,
    subscriber: Subscriber,
    course: Course,
    now: datetime,
    source: str,
    pace: Pace = REAL_DAYS,
) -> Steered:
    """Let the course go on from where it stopped, with its normal gap."""
    progress = _progress(session, subscriber)
    if progress.paused_at is None:
        return Steered("resume", False, "not paused")
    assert subscriber.id is not None
    progress.paused_at = None
    parts = ["resumed"]
    held = held_for(session, subscriber.id, COURSE_KINDS)
    # The welcome goes at once, as it always does; a lesson at its next send moment.
    lessons_at = (
        _moment(session, subscriber, course, pace, now)
        if any(row.kind != MessageKind.welcome for row in held)
        else now
    )
    for row in held:
        at = now if row.kind == MessageKind.welcome else lessons_at
        assert row.id is not None
        unhold(session, row.id, at, now)
        parts.append(f"{row.template} goes {_when(at)}")
    if progress.next_due_at is not None:
        progress.next_due_at = _moment(
            session, subscriber, course, pace, max(progress.next_due_at, now)
        )
        parts.append(f"next lesson due {_when(progress.next_due_at)}")
    session.add(progress)
    return _record(session, subscriber, Steered("resume", True, "; ".join(parts)), now, source)


def _round_lessons(
    session: Session, subscriber_id: int, course_round: int
) -> dict[str, OutboxMessage]:
    """The current round's lesson rows of the reader, by slug."""
    rows = session.execute(
        select(OutboxMessage)
        .where(col(OutboxMessage.subscriber_id) == subscriber_id)
        .where(col(OutboxMessage.kind) == MessageKind.lesson)
    ).scalars()
    return {
        str(r.context.get("slug")): r for r in rows if r.context.get("round", 1) == course_round
    }


def _not_in_flight(subscriber: Subscriber, rows: dict[str, OutboxMessage]) -> None:
    if any(r.status == OutboxStatus.sending for r in rows.values()):
        raise SteeringError(
            f"a lesson is being sent to {subscriber.email} right now; try again in a minute"
        )


def upcoming(session: Session, subscriber_id: int, course: Course) -> list[Lesson]:
    """The lessons the reader has not had in this round, in course order; the first is
    the one they are at (queued, held or failed), if any."""
    progress = session.get(CourseProgress, subscriber_id)
    if progress is None or progress.finished_at is not None:
        return []
    rows = _round_lessons(session, subscriber_id, progress.course_round)
    had = {slug for slug, r in rows.items() if r.status not in CURRENT_STATUSES}
    return [lesson for lesson in course.lessons if lesson.slug not in had]


def skip(
    session: Session,
    subscriber: Subscriber,
    course: Course,
    msgid_domain: str,
    now: datetime,
    source: str,
    to: str | None = None,
    pace: Pace = REAL_DAYS,
) -> Steered:
    """Skip the reader's next lesson, or every lesson before `to` (a slug)."""
    progress = _progress(session, subscriber)
    assert subscriber.id is not None
    if progress.finished_at is not None:
        raise SteeringError(f"{subscriber.email} has finished the course: restart to send it again")
    course_round = progress.course_round
    rows = _round_lessons(session, subscriber.id, course_round)
    _not_in_flight(subscriber, rows)
    current = {slug: r for slug, r in rows.items() if r.status in CURRENT_STATUSES}
    had = set(rows) - set(current)
    left = [lesson for lesson in course.lessons if lesson.slug not in had]
    if not left:
        raise SteeringError(f"{subscriber.email} has no lesson left to skip")
    if to is None:
        skipped, target = left[:1], (left[1] if len(left) > 1 else None)
    else:
        slugs = [lesson.slug for lesson in course.lessons]
        if to not in slugs:
            raise SteeringError(f"no lesson {to} in the course; its lessons: {', '.join(slugs)}")
        if to in had:
            raise SteeringError(
                f"{subscriber.email} already had {to}; restart to send the course again"
            )
        target = next(lesson for lesson in left if lesson.slug == to)
        skipped = left[: left.index(target)]
        if not skipped:
            return Steered("skip", False, f"{_name(course, target)} is next already")
    reason = f"skipped by the author ({source})"
    # The lesson the reader is at, queued, held or failed, is skipped where it stands...
    at_row = [current[lesson.slug] for lesson in skipped if lesson.slug in current]
    skip_messages(
        session, [r.id for r in at_row if r.id is not None], reason, now, CURRENT_STATUSES
    )
    # ... and those never queued get a skipped row each, so no pass queues them.
    fresh = [lesson for lesson in skipped if lesson.slug not in current]
    enqueue_many(
        session,
        [
            lesson_message(course, lesson, subscriber.id, subscriber.email, course_round, now)
            for lesson in fresh
        ],
        msgid_domain,
        now,
    )
    keys = [lesson_key(subscriber.id, lesson.slug, course_round) for lesson in fresh]
    if keys:
        ids = session.execute(
            select(col(OutboxMessage.id)).where(col(OutboxMessage.dedupe_key).in_(keys))
        ).scalars()
        skip_messages(session, list(ids), reason, now, (OutboxStatus.queued,))
    if target is None:
        progress.next_due_at = now  # the next pass sees the course is done
    elif at_row or progress.next_due_at is None:
        # The skipped lesson was due already: the next one takes its place now.
        progress.next_due_at = _moment(session, subscriber, course, pace, now)
    session.add(progress)
    detail = "skipped " + ", ".join(_name(course, lesson) for lesson in skipped)
    if target is None:
        detail += "; that was the last lesson"
    else:
        detail += f"; next {_name(course, target)}, due {_when(progress.next_due_at or now)}"
    return _record(session, subscriber, Steered("skip", True, detail), now, source)


def restart(
    session: Session,
    subscriber: Subscriber,
    course: Course,
    now: datetime,
    source: str,
    pace: Pace = REAL_DAYS,
) -> Steered:
    """Start the course again from the first lesson, a normal delay after the last sent."""
    progress = _progress(session, subscriber)
    assert subscriber.id is not None
    rows = _round_lessons(session, subscriber.id, progress.course_round)
    _not_in_flight(subscriber, rows)
    unsent = [r.id for r in rows.values() if r.status in CURRENT_STATUSES and r.id is not None]
    skip_messages(
        session, unsent, f"the author restarted the course ({source})", now, CURRENT_STATUSES
    )
    progress.course_round += 1
    progress.finished_at = None
    progress.lessons_sent = 0
    first = course.lessons[0]
    base = progress.last_sent_at or now
    progress.next_due_at = _moment(
        session, subscriber, course, pace, max(now, base + pace.delay(first.delay_days))
    )
    session.add(progress)
    detail = (
        f"round {progress.course_round}: {_name(course, first)} due {_when(progress.next_due_at)}"
    )
    if progress.paused_at is not None:
        detail += " (paused: it goes after resume)"
    return _record(session, subscriber, Steered("restart", True, detail), now, source)


def actions(session: Session, subscriber_id: int) -> list[CourseAction]:
    """The author's actions on this reader's course, newest first."""
    return list(
        session.execute(
            select(CourseAction)
            .where(col(CourseAction.subscriber_id) == subscriber_id)
            .order_by(col(CourseAction.at).desc(), col(CourseAction.id).desc())
        ).scalars()
    )


#: The actions, as the CLI's commands and the admin's buttons name them.
Action = Literal["pause", "resume", "skip", "restart"]


def apply(
    session: Session,
    subscriber: Subscriber,
    action: Action,
    course: Course,
    settings: Settings,
    now: datetime,
    source: str,
    to: str | None = None,
) -> Steered:
    """One action by name, with what it needs from the settings: the one dispatch the CLI
    and the admin share. `to` is skip's target slug."""
    pace = Pace(settings.minutes_per_day)
    if action == "pause":
        return pause(session, subscriber, now, source)
    if action == "resume":
        return resume(session, subscriber, course, now, source, pace)
    if action == "skip":
        domain = settings.sender_address.domain
        return skip(session, subscriber, course, domain, now, source, to, pace)
    return restart(session, subscriber, course, now, source, pace)
