"""The course funnel: what each step of the course does to its readers, and where they come from.

Only what drip knows for sure is counted: which emails went out and what became of
them (the outbox), who left through the unsubscribe link of which email (the link
names its message, drip.tokens; `Subscriber.unsubscribed_via`), who finished, and
which page or form each signup came from (`Subscriber.source`). No opens, no pixels.

Steps in course order: `confirm`, `welcome`, each lesson by its slug, `finished`. Per
email step, counted per subscriber:

- `reached`: the step's email was queued for them and not skipped (they were still
  there when it went out); `delivered`: accepted and not bounced since (a complaint
  proves delivery too); `bounced`, `complained`, `failed` (given up, or a soft bounce
  after the send); `waiting`: not out yet;
- `unsubscribed_after`: left through the unsubscribe link in that step's email.

Only course mail counts (kinds confirm, welcome, lesson): newsletters, answers and
test sends never do. Lessons' emails are found by their template, so each lesson of
the course should have its own (as the shipped course does); where a reader left is
kept by the lesson's slug (`Subscriber.unsubscribed_step`, set when they leave).

Every figure is a grouped count read from an index (the `funnel` migration adds
them): the outbox's (kind, template, status) and its confirmations' (subscriber,
status), the subscriber's (source, confirmed_at, id) and unsubscribed_step, the
progress' (finished_at, started_at, subscriber_id). bench/funnel.py measures it at 1M subscribers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import timedelta

from sqlalchemy import case, func, select
from sqlmodel import Session, col

from drip.clicks import click_counts
from drip.course import Course
from drip.db import median_seconds, reporting, side_by_side, table_of
from drip.models import (
    UNSENT_STATUSES,
    CourseProgress,
    MessageKind,
    OutboxMessage,
    OutboxStatus,
    PackDownload,
    Subscriber,
    SubscriberStatus,
)
from drip.unconfirmed import expired_by_source, expired_count

DELIVERED = (OutboxStatus.sent, OutboxStatus.complained)
#: A subscriber's confirmations, best outcome first: the one a step counts them under.
RANK = {
    OutboxStatus.complained: 6,
    OutboxStatus.bounced: 5,
    OutboxStatus.sent: 4,
    OutboxStatus.failed: 3,
    OutboxStatus.skipped: 1,
}
#: Queued, deferred or being sent: not out yet.
WAITING_RANK = 2
FINISHED = "finished"


@dataclass(frozen=True)
class Step:
    """One step of the funnel; `finished` has no email, so only `reached` is set there."""

    step: str
    title: str
    reached: int = 0
    delivered: int = 0
    bounced: int = 0
    complained: int = 0
    failed: int = 0
    waiting: int = 0
    unsubscribed_after: int = 0
    #: With DRIP_CLICK_TRACKING (drip.clicks): every request to the step's links, those
    #: judged a reader's, and the readers who clicked. Lessons only.
    clicks: int = 0
    human_clicks: int = 0
    readers_clicking: int = 0

    def as_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Source:
    """Signups from one page or form ("" when none was given), and how far they went."""

    source: str
    signups: int
    confirmed: int
    finished: int

    @property
    def confirmation_rate(self) -> float | None:
        return self.confirmed / self.signups if self.signups else None

    @property
    def completion_rate(self) -> float | None:
        """Of those who confirmed, the share who finished the course."""
        return self.finished / self.confirmed if self.confirmed else None

    def as_json(self) -> dict[str, object]:
        return asdict(self) | {
            "confirmation_rate": self.confirmation_rate,
            "completion_rate": self.completion_rate,
        }


@dataclass(frozen=True)
class Funnel:
    steps: list[Step]
    #: Subscribers who started the course (confirmed, or imported with it).
    started: int
    finished: int
    #: Median time from starting the course to its last lesson; None before anyone finished.
    median_to_finish: timedelta | None
    #: Unsubscribed through no email's link (an old link, the admin): not in any step.
    unsubscribed_unattributed: int
    #: Left through the link of mail outside the course (a newsletter, an answer).
    unsubscribed_elsewhere: int
    sources: list[Source]
    #: With DRIP_PACK_DELIVERY=link: (downloads, subscribers who downloaded); else None.
    pack_downloads: tuple[int, int] | None = None
    #: Signups never confirmed, deleted after DRIP_UNCONFIRMED_EXPIRE_DAYS (only counted):
    #: in their source's signups, no longer in the confirm step.
    unconfirmed_expired: int = 0

    def losses(self) -> list[tuple[int, float] | None]:
        """Per step, the readers lost since the step before and their share of it; None
        for the first step, or when more reached this step than the one before."""
        found: list[tuple[int, float] | None] = [None]
        for before, step in zip(self.steps, self.steps[1:], strict=False):
            lost = before.reached - step.reached
            found.append((lost, lost / before.reached) if before.reached and lost >= 0 else None)
        return found

    @property
    def any_clicks(self) -> bool:
        return any(step.clicks for step in self.steps)

    @property
    def completion_rate(self) -> float | None:
        return self.finished / self.started if self.started else None

    def summary_json(self) -> dict[str, object]:
        """The figures beside the steps, as `drip stats --json` prints them last."""
        median = self.median_to_finish
        summary: dict[str, object] = {
            "summary": True,
            "started": self.started,
            "finished": self.finished,
            "completion_rate": self.completion_rate,
            "median_days_to_finish": None if median is None else median.total_seconds() / 86400,
            "unsubscribed_unattributed": self.unsubscribed_unattributed,
            "unsubscribed_elsewhere": self.unsubscribed_elsewhere,
            "sources": [s.as_json() for s in self.sources],
            "unconfirmed_expired": self.unconfirmed_expired,
        }
        if self.pack_downloads is not None:
            summary["pack_downloads"], summary["pack_downloaders"] = self.pack_downloads
        return summary


def _email_counts(session: Session) -> dict[tuple[str, str], Counter[str]]:
    """{(kind, template): {status: subscribers}} of the welcome and lessons, and "reached"
    beside them: one row per subscriber each (their dedupe key), so rows are subscribers."""
    o = OutboxMessage
    counts: dict[tuple[str, str], Counter[str]] = {}
    per_row = session.execute(
        select(col(o.kind), col(o.template), col(o.status), func.count())
        .where(col(o.kind).in_((MessageKind.welcome, MessageKind.lesson)))
        .group_by(col(o.kind), col(o.template), col(o.status))
    )
    for kind, template, status, n in per_row:
        found = counts.setdefault((str(kind), str(template)), Counter())
        found[str(status)] += int(n)
        if status != OutboxStatus.skipped:
            found["reached"] += int(n)
    return counts


def _confirm_counts(session: Session) -> Counter[str]:
    """{status: subscribers} of the confirmations, and "reached". A confirmation may go
    out more than once: each subscriber counts once, by what became of their
    confirmations at best (RANK), grouped in the order of the confirmations' own index
    (subscriber, status): no sort and no count(DISTINCT)."""
    o = OutboxMessage
    rank = case(*((col(o.status) == status, n) for status, n in RANK.items()), else_=WAITING_RANK)
    best = (
        select(func.max(rank).label("rank"))
        .where(col(o.kind) == MessageKind.confirm)
        .group_by(col(o.subscriber_id))
        .subquery()
    )
    confirm: Counter[str] = Counter()
    by_rank = {n: status for status, n in RANK.items()} | {WAITING_RANK: OutboxStatus.queued}
    for n, subscribers in session.execute(select(best.c.rank, func.count()).group_by(best.c.rank)):
        confirm[str(by_rank[int(n)])] += int(subscribers)
        if by_rank[int(n)] != OutboxStatus.skipped:
            confirm["reached"] += int(subscribers)
    return confirm


def _left_through(session: Session) -> Counter[str]:
    """Unsubscribers by the step of the email whose link they followed."""
    s = Subscriber
    rows = session.execute(
        select(col(s.unsubscribed_step), func.count())
        .where(col(s.unsubscribed_step).is_not(None))
        .group_by(col(s.unsubscribed_step))
    )
    return Counter({str(step): int(n) for step, n in rows})


def step_of(row: OutboxMessage) -> str:
    """The funnel step an email belongs to: a lesson's slug, else its kind (`welcome`,
    or `newsletter`, `answer`... outside the course)."""
    if row.kind == MessageKind.lesson and row.context.get("slug"):
        return str(row.context["slug"])
    return str(row.kind)


def _step(name: str, title: str, statuses: Counter[str], left: int) -> Step:
    return Step(
        step=name,
        title=title,
        reached=statuses["reached"],
        delivered=sum(statuses[s] for s in DELIVERED),
        bounced=statuses[OutboxStatus.bounced],
        complained=statuses[OutboxStatus.complained],
        failed=statuses[OutboxStatus.failed],
        waiting=sum(statuses[s] for s in UNSENT_STATUSES),
        unsubscribed_after=left,
    )


def _sources(session: Session) -> list[Source]:
    """Signups, confirmations and finishers per source in one pass over the subscriber
    index (source, confirmed_at, id), the finishers joined from the progress index."""
    s, p = Subscriber, CourseProgress
    done = (
        select(col(p.subscriber_id).label("id")).where(col(p.finished_at).is_not(None)).subquery()
    )
    rows = session.execute(
        select(col(s.source), func.count(), func.count(col(s.confirmed_at)), func.count(done.c.id))
        .select_from(s)
        .outerjoin(done, done.c.id == col(s.id))
        .group_by(col(s.source))
    )
    found = {
        str(source): Source(str(source), int(n), int(confirmed), int(finished))
        for source, n, confirmed, finished in rows
    }
    # Signups deleted unconfirmed (drip.unconfirmed) still count as signups of their source.
    for source, expired in expired_by_source(session).items():
        known = found.get(source, Source(source, 0, 0, 0))
        found[source] = replace(known, signups=known.signups + expired)
    return sorted(found.values(), key=lambda s: (-s.signups, s.source))


def funnel(session: Session, course: Course, *, pack_link: bool = False) -> Funnel:
    """The whole funnel, read in a handful of grouped counts on indexes; the three
    largest side by side (drip.db.side_by_side)."""
    reporting(session)
    counts, confirms, sources = side_by_side(session, _email_counts, _confirm_counts, _sources)
    left = _left_through(session)
    welcome = counts.get((MessageKind.welcome, "welcome"), Counter())
    steps = [
        # A confirmation carries no unsubscribe link: nobody leaves through it.
        _step("confirm", "Confirmation", confirms, 0),
        _step("welcome", "Welcome", welcome, left.pop(MessageKind.welcome, 0)),
    ]
    clicked = click_counts(session)
    for number, lesson in enumerate(course.lessons, start=1):
        step = _step(
            lesson.slug,
            f"Lesson {number}: {lesson.title}",
            counts.get((MessageKind.lesson, lesson.template), Counter()),
            left.pop(lesson.slug, 0),
        )
        if (c := clicked.get(lesson.template)) is not None:
            step = replace(step, clicks=c.raw, human_clicks=c.human, readers_clicking=c.readers)
        steps.append(step)
    p = CourseProgress
    is_finished = col(p.finished_at).is_not(None)
    finished = int(
        session.execute(select(func.count()).select_from(p).where(is_finished)).scalar_one()
    )
    steps.append(Step(FINISHED, "Finished the course", reached=finished))
    times = table_of(p).c
    median = median_seconds(session, times.started_at, times.finished_at, is_finished)
    s = Subscriber
    unattributed = int(
        session.execute(
            select(func.count())
            .select_from(s)
            .where(
                col(s.status) == SubscriberStatus.unsubscribed,
                col(s.unsubscribed_step).is_(None),
            )
        ).scalar_one()
    )
    downloads = None
    if pack_link:
        d = PackDownload
        downloads = (
            int(session.execute(select(func.count()).select_from(d)).scalar_one()),
            int(
                session.execute(
                    select(func.count(func.distinct(col(d.subscriber_id))))
                ).scalar_one()
            ),
        )
    return Funnel(
        steps=steps,
        # Starting the course queues the welcome, once (its dedupe key), whatever follows.
        started=sum(n for status, n in welcome.items() if status != "reached"),
        finished=finished,
        median_to_finish=None if median is None else timedelta(seconds=median),
        unsubscribed_unattributed=unattributed,
        unsubscribed_elsewhere=sum(left.values()),
        sources=sources,
        pack_downloads=downloads,
        unconfirmed_expired=expired_count(session),
    )


def percent(share: float | None) -> str:
    """A rate as people read it: "42.5%", or "-" when there is nothing to divide by."""
    return "-" if share is None else f"{share * 100:.1f}%"


def span(duration: timedelta | None) -> str:
    """A time to finish in days (hours when under one), or "-" when nobody finished yet."""
    if duration is None:
        return "-"
    days = duration.total_seconds() / 86400
    if days >= 1:
        return f"{days:.1f} days"
    return f"{duration.total_seconds() / 3600:.1f} hours"
