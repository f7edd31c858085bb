"""Newsletters: one Markdown file, queued once for every active subscriber.

The file's SHA-256 names the newsletter, and queuing walks subscribers in id
order in batches, remembering the last id queued in the same transaction. So
running the command again, or after a crash, queues only what is missing, and
memory stays flat however long the list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlmodel import Session

from drip.clock import utcnow
from drip.db import session_scope
from drip.models import MessageKind, Newsletter, Subscriber, SubscriberStatus
from drip.outbox import NewMessage, dedupe_key, enqueue_many
from drip.render import SAMPLE_CONTEXT, Rendered, render_email
from drip.settings import Settings

BATCH = 1000


class NewsletterError(Exception):
    """The newsletter file is unusable; the message says why."""


@dataclass(frozen=True)
class Letter:
    subject: str
    body: str
    digest: str


def parse(path: Path) -> Letter:
    """Read `---\\nsubject: ...\\n---\\nMarkdown body`."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NewsletterError(f"{path}: cannot read the file ({exc})") from None
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
    body = "\n".join(lines[end + 1 :]).strip() + "\n"
    if not body.strip():
        raise NewsletterError(f"{path}: the newsletter has no text after the front matter")
    return Letter(subject, body, hashlib.sha256(raw.encode()).hexdigest())


def preview(settings: Settings, letter: Letter) -> Rendered:
    import markdown

    context = {
        **SAMPLE_CONTEXT,
        "subject": letter.subject,
        "content_html": markdown.markdown(letter.body),
        "content_text": letter.body,
    }
    return render_email(settings.emails_dir, "newsletter", context)


def count_active(session: Session, after_id: int = 0) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(Subscriber)
            .where(Subscriber.status == SubscriberStatus.active)
            .where(Subscriber.id > after_id)  # type: ignore[operator]
        ).scalar_one()
    )


def _record(session: Session, letter: Letter) -> Newsletter:
    found = session.execute(
        select(Newsletter).where(Newsletter.digest == letter.digest)
    ).scalar_one_or_none()
    if found is None:
        found = Newsletter(digest=letter.digest, subject=letter.subject, body_markdown=letter.body)
        session.add(found)
        session.flush()
    return found


def queue(
    settings: Settings,
    engine: Engine,
    letter: Letter,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Queue the letter to every active subscriber still without it: (queued, to go at start)."""
    with session_scope(engine) as session:
        newsletter = _record(session, letter)
        start = newsletter.queued_through
        remaining = count_active(session, start)
    assert newsletter.id is not None
    now = utcnow()
    queued = 0
    cursor = start
    while True:
        with session_scope(engine) as session:
            batch = session.execute(
                select(Subscriber.id, Subscriber.email)
                .where(Subscriber.status == SubscriberStatus.active)
                .where(Subscriber.id > cursor)  # type: ignore[operator]
                .order_by(Subscriber.id)
                .limit(BATCH)
            ).all()
            if not batch:
                letter_row = session.get(Newsletter, newsletter.id)
                if letter_row is not None and letter_row.finished_at is None:
                    letter_row.finished_at = now
                return queued, remaining
            messages = [
                NewMessage(
                    kind=MessageKind.newsletter,
                    template="newsletter",
                    email=email,
                    dedupe_key=dedupe_key(MessageKind.newsletter, sub_id, newsletter.id),
                    due_at=now,
                    subscriber_id=sub_id,
                    newsletter_id=newsletter.id,
                )
                for sub_id, email in batch
            ]
            queued += enqueue_many(session, messages, settings.sender_address.domain)
            cursor = batch[-1][0]
            letter_row = session.get(Newsletter, newsletter.id)
            assert letter_row is not None
            letter_row.queued_through = cursor
        if progress is not None:
            progress(len(batch))
