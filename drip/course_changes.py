"""What an edit of the course file does to the readers already on it, said before it applies.

`drip check` compares the course file as it is now with what each reader has had (the
lesson slugs of their outbox rows) and the version of each lesson last sent, and says
in plain words what the next passes will do, following the rules in drip.progress
(README: "Changing the course mid-way"):

- a lesson a reader lacks but with a later one already had comes next for them
  (inserted or moved up), unless it is marked `skip_if_past`;
- a lesson that is gone is not sent; a reader who had it queued moves on;
- a lesson whose template changed goes out in its new text to readers not yet at it;
- a reader who finished the course is not reopened.

The database holds what each reader had, not the course file as it was: a lesson nobody
has had yet is "new or moved up".

Information, not a problem: `drip check` still exits 0 for it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlmodel import Session, col

from drip.course import Course
from drip.models import (
    UNSENT_STATUSES,
    CourseProgress,
    MessageKind,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from drip.progress import next_lesson
from drip.versions import template_version


@dataclass
class Reader:
    """One active subscriber on the course: the lessons they have had or have queued."""

    had: set[str] = field(default_factory=set)
    unsent: set[str] = field(default_factory=set)
    finished: bool = False


@dataclass
class Sent:
    """One lesson slug as the database knows it: its last version sent, and when."""

    version: str | None = None
    at: datetime | None = None


def _readers_and_lessons(session: Session) -> tuple[list[Reader], dict[str, Sent]]:
    on_course = session.execute(
        select(col(CourseProgress.subscriber_id), col(CourseProgress.finished_at))
        .join(Subscriber, col(Subscriber.id) == col(CourseProgress.subscriber_id))
        .where(col(Subscriber.status) == SubscriberStatus.active)
    ).all()
    readers = {sid: Reader(finished=finished is not None) for sid, finished in on_course}
    lessons: dict[str, Sent] = {}
    rows = session.execute(
        select(
            col(OutboxMessage.subscriber_id),
            col(OutboxMessage.context),
            col(OutboxMessage.status),
            col(OutboxMessage.version),
            col(OutboxMessage.sent_at),
        ).where(col(OutboxMessage.kind) == MessageKind.lesson)
    )
    for subscriber_id, context, status, version, sent_at in rows:
        slug = str(context.get("slug"))
        known = lessons.setdefault(slug, Sent())
        newer = known.at is None or (sent_at is not None and sent_at > known.at)
        if status == OutboxStatus.sent and version and newer:
            known.version, known.at = version, sent_at
        reader = readers.get(subscriber_id)
        if reader is not None:
            reader.had.add(slug)
            if status in UNSENT_STATUSES:
                reader.unsent.add(slug)
    return list(readers.values()), lessons


def _readers(count: int) -> str:
    return f"{count} reader{'' if count == 1 else 's'}"


def explain(session: Session, course: Course, emails_dir: Path) -> list[str]:
    """One sentence per lesson the edit affects; empty when nobody is affected."""
    readers, known = _readers_and_lessons(session)
    going = [r for r in readers if not r.finished]
    finished = [r for r in readers if r.finished]
    slugs = [lesson.slug for lesson in course.lessons]
    said: list[str] = []
    for i, lesson in enumerate(course.lessons):
        later = set(slugs[i + 1 :])
        lacking = [r for r in going if lesson.slug not in r.had]
        past = sum(1 for r in lacking if r.had & later)
        behind = len(lacking) - past
        done_without = sum(1 for r in finished if lesson.slug not in r.had)
        parts: list[str] = []
        if past:
            parts.append(
                f"{_readers(past)} past it will skip it (skip_if_past)"
                if lesson.skip_if_past
                else f"{_readers(past)} past it will get it next, then go on as before"
            )
        if done_without:
            parts.append(f"{_readers(done_without)} who finished the course will not get it")
        if parts:
            # Nobody has had it: added, or moved up from where nobody was yet (the
            # database knows what readers had, not the course file as it was).
            what = (
                "is new or moved up"
                if lesson.slug not in known
                else "now comes before lessons some readers already had"
            )
            said.append(f"lesson {lesson.slug!r} {what}: " + "; ".join(parts))
        getting = behind + (0 if lesson.skip_if_past else past)
        last = known.get(lesson.slug)
        now = template_version(emails_dir, lesson.template)
        if last is not None and last.version and now and last.version != now:
            said.append(
                f"lesson {lesson.slug!r} changed since it was last sent (version "
                f"{last.version} → {now}): {_readers(getting)} not yet at it will get "
                "the new text; nobody gets it again"
            )
    for slug in sorted(set(known) - set(slugs)):
        queued = [r for r in going if slug in r.unsent]
        without = [r for r in going if slug not in r.had]
        parts = []
        if queued:
            nexts = Counter(_next_slug(course, r.had) for r in queued)
            parts.append(
                f"{_readers(len(queued))} who had it queued will not get it and move on "
                f"to {_destinations(nexts)}, with the usual gap"
            )
        if without:
            parts.append(f"{_readers(len(without))} still without it will not get it")
        if parts:
            said.append(f"lesson {slug!r} was removed: " + "; ".join(parts))
    return said


def _next_slug(course: Course, had: set[str]) -> str | None:
    lesson = next_lesson(course, had)
    return lesson.slug if lesson else None


def _destinations(nexts: Counter[str | None]) -> str:
    """ "'z'" or "'z' (2), the end of the course (1)": where readers go instead."""
    names = {slug: repr(slug) if slug else "the end of the course" for slug in nexts}
    if len(nexts) == 1:
        return next(iter(names.values()))
    return ", ".join(f"{names[slug]} ({n})" for slug, n in nexts.most_common())
