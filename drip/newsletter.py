"""Newsletters: one Markdown file, queued once for every active subscriber who asked for them.

Only those who ticked the newsletter box (or were imported with `newsletter` yes)
get one: course consent is not newsletter consent.

The file's SHA-256 names the newsletter, and queuing walks subscribers in id
order in batches, remembering the last id queued in the same transaction. So
running the command again, or after a crash, queues only what is missing, and
memory stays flat however long the list.

The body is a Jinja2 template rendered for each reader when their copy is sent
(drip.newsletter_body); `check` renders it first, so a broken one stops before
anything is queued. A file with another newsletter's subject from the last 7 days is
most often a typo fix of one already sent: `recent_same_subject` lets the command ask.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Engine,
    String,
    and_,
    cast,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlmodel import Session, col

from drip.db import insert_ignoring, session_scope
from drip.errors import DripError
from drip.models import (
    MessageKind,
    Newsletter,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
    UTCDateTime,
)
from drip.newsletter_body import LetterTemplate
from drip.render import render_email, sample_context
from drip.sending.outbox import dedupe_key_sql
from drip.settings import Settings
from drip.templating import Rendered

#: Subscribers per transaction: big enough that round trips do not count, small enough
#: that a crash loses little and SQLite's write lock is held briefly.
BATCH = 5000


class NewsletterError(DripError):
    """The newsletter file is unusable; the message says why."""


@dataclass(frozen=True)
class Letter:
    subject: str
    body: str
    digest: str
    preheader: str = ""
    #: Where it came from, for messages ("spring.md"), and the body's first line there.
    label: str = "the newsletter"
    first_line: int = 1

    def template(self) -> LetterTemplate:
        return LetterTemplate(
            self.subject, self.body, self.preheader, label=self.label, first_line=self.first_line
        )


def parse(path: Path) -> Letter:
    """Read `---\\nsubject: ...\\npreheader: ...\\n---\\nMarkdown body`."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NewsletterError(f"{path}: cannot read the file ({exc})") from None
    return parse_text(raw, path)


def parse_text(raw: str, path: Path) -> Letter:
    """`parse` of a file's text (one pasted into /admin, say); `path` names it."""
    lines = raw.splitlines()
    if not lines or lines[0].strip() != "---" or "---" not in [x.strip() for x in lines[1:]]:
        raise NewsletterError(
            f"{path}: must start with a front-matter block: ---, subject: ..., ---"
        )
    end = 1 + [x.strip() for x in lines[1:]].index("---")
    meta: dict[str, str] = {}
    for line in lines[1:end]:
        key, sep, value = line.partition(":")
        if sep:
            meta[key.strip().lower()] = value.strip().strip("\"'")
    subject = " ".join(meta.get("subject", "").split())
    if not subject:
        raise NewsletterError(f"{path}: the front matter needs a subject: line")
    if len(subject) > 200:
        raise NewsletterError(f"{path}: the subject is longer than 200 characters")
    preheader = " ".join(meta.get("preheader", "").split())
    if len(preheader) > 300:
        raise NewsletterError(f"{path}: the preheader is longer than 300 characters")
    rest = lines[end + 1 :]
    blank = next((i for i, line in enumerate(rest) if line.strip()), len(rest))
    body = "\n".join(rest).strip() + "\n"
    if not body.strip():
        raise NewsletterError(f"{path}: the newsletter has no text after the front matter")
    return Letter(
        subject,
        body,
        hashlib.sha256(raw.encode()).hexdigest(),
        preheader=preheader,
        label=path.name,
        first_line=end + 2 + blank,
    )


def stored_letter(session: Session, newsletter_id: int) -> LetterTemplate:
    """A queued newsletter's templates (empty if it was deleted: its rows then fail)."""
    letter = session.get(Newsletter, newsletter_id)
    if letter is None:
        return LetterTemplate("", "")
    label = f"newsletter {letter.subject!r}"
    return LetterTemplate(letter.subject, letter.body_markdown, letter.preheader, label=label)


def render_letter(settings: Settings, letter: LetterTemplate, context: dict[str, Any]) -> Rendered:
    """The whole newsletter email for one reader's template context."""
    return render_email(settings.emails_dir, "newsletter", {**context, **letter.render(context)})


def preview(settings: Settings, letter: Letter, name: str | None = None) -> Rendered:
    """The newsletter as the sample reader gets it (`name` instead of theirs, if given)."""
    sample = sample_context(settings, "newsletter")
    if name is not None:
        sample["name"] = name
    return render_letter(settings, letter.template(), sample)


def check(settings: Settings, letter: Letter) -> None:
    """Render it for a reader with a name and one without: a broken template stops here,
    before anything is queued (RenderError naming the file and line)."""
    preview(settings, letter)
    preview(settings, letter, name="")


def _recipients() -> ColumnElement[bool]:
    """Who gets newsletters: active subscribers who agreed to them."""
    return and_(col(Subscriber.status) == SubscriberStatus.active, col(Subscriber.newsletter))


def count_recipients(session: Session, after_id: int = 0) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(Subscriber)
            .where(_recipients())
            .where(col(Subscriber.id) > after_id)
        ).scalar_one()
    )


def _record(session: Session, letter: Letter, now: datetime, at: datetime | None) -> Newsletter:
    found = session.execute(
        select(Newsletter).where(col(Newsletter.digest) == letter.digest)
    ).scalar_one_or_none()
    if found is None:
        found = Newsletter(
            digest=letter.digest,
            subject=letter.subject,
            body_markdown=letter.body,
            preheader=letter.preheader,
            created_at=now,
            send_at=at,
        )
        session.add(found)
        session.flush()
    elif at is not None:
        found.send_at = at  # the rest still to queue goes at the new time
    return found


#: How far back a newsletter with the same subject makes `send` ask for --again.
RECENT = timedelta(days=7)


def recent_same_subject(session: Session, letter: Letter, now: datetime) -> Newsletter | None:
    """Another newsletter with this subject queued (or scheduled) in the last 7 days.

    The same file again is a resume and does not count; a file with the same subject
    and other words is most often a typo fixed after sending, which would reach every
    reader a second time.
    """
    since = now - RECENT
    return session.execute(
        select(Newsletter)
        .where(
            func.lower(col(Newsletter.subject)) == letter.subject.lower(),
            col(Newsletter.digest) != letter.digest,
            or_(col(Newsletter.created_at) >= since, col(Newsletter.send_at) >= since),
        )
        .order_by(col(Newsletter.created_at).desc())
        .limit(1)
    ).scalar_one_or_none()


def queue(
    settings: Settings,
    engine: Engine,
    letter: Letter,
    now: datetime,
    progress: Callable[[int], None] | None = None,
    at: datetime | None = None,
) -> tuple[int, int]:
    """Queue the letter to every recipient still without it: (queued, to go at start).

    `at`: the time it is due (`newsletter send --at`); else the time it was first
    scheduled for, else `now`.
    """
    with session_scope(engine) as session:
        newsletter = _record(session, letter, now, at)
        start = newsletter.queued_through
        due = newsletter.send_at or now
        remaining = count_recipients(session, start)
    assert newsletter.id is not None
    queued = 0
    cursor = start
    while True:
        with session_scope(engine) as session:
            ids = (
                session.execute(
                    select(col(Subscriber.id))
                    .where(_recipients())
                    .where(col(Subscriber.id) > cursor)
                    .order_by(col(Subscriber.id))
                    .limit(BATCH)
                )
                .scalars()
                .all()
            )
            if not ids:
                letter_row = session.get(Newsletter, newsletter.id)
                if letter_row is not None and letter_row.finished_at is None:
                    letter_row.finished_at = now
                return queued, remaining
            upto = ids[-1]
            assert upto is not None
            queued += _enqueue_range(session, newsletter.id, cursor, upto, now, due, settings)
            cursor = upto
            session.execute(
                update(Newsletter)
                .where(col(Newsletter.id) == newsletter.id)
                .values(queued_through=cursor)
            )
        if progress is not None:
            progress(len(ids))


def _enqueue_range(
    session: Session,
    newsletter_id: int,
    after: int,
    upto: int,
    now: datetime,
    due: datetime,
    settings: Settings,
) -> int:
    """Queue the letter for the recipients with ids in (after, upto], in one
    INSERT ... SELECT: no subscriber row crosses the wire, so a million costs what the
    database takes to write them. Same rows as outbox.enqueue_many would write, and the
    same rule: a dedupe key already queued is skipped."""
    domain = settings.sender_address.domain
    # make_msgid's unique left part for this batch, then the subscriber id: unique per row.
    left = make_msgid(domain=domain)[1:].rsplit("@", 1)[0]
    subscriber_id = cast(col(Subscriber.id), String)
    rows = select(
        dedupe_key_sql(MessageKind.newsletter, col(Subscriber.id), newsletter_id),
        literal(str(MessageKind.newsletter)),
        literal("newsletter"),
        col(Subscriber.id),
        col(Subscriber.email),
        literal(newsletter_id),
        literal({}, JSON),
        literal(str(OutboxStatus.queued)),
        literal(due, UTCDateTime()),
        literal(due, UTCDateTime()),
        literal(0),
        literal(f"<{left}.") + subscriber_id + literal(f"@{domain}>"),
        literal(now, UTCDateTime()),
        literal(now, UTCDateTime()),
    ).where(
        _recipients(),
        col(Subscriber.id) > after,
        col(Subscriber.id) <= upto,
    )
    columns = [
        "dedupe_key",
        "kind",
        "template",
        "subscriber_id",
        "email",
        "newsletter_id",
        "context",
        "status",
        "due_at",
        "next_attempt_at",
        "attempts",
        "message_id",
        "created_at",
        "updated_at",
    ]
    stmt = insert_ignoring(session, OutboxMessage, ["dedupe_key"]).from_select(columns, rows)
    # Counted from RETURNING: the driver's rowcount for INSERT ... SELECT is not reliable here.
    return len(session.execute(stmt.returning(col(OutboxMessage.id))).all())
