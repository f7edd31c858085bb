"""The send log, for `drip logs` and /admin: read a page at a time, or followed as it grows.

A log entry is one `DeliveryAttempt` with its `OutboxMessage`, or an outbox row not
attempted yet, shown as `queued` at its creation time. Pages are cut by keyset on
(time, source, id), never OFFSET: each source walks an index newest first and stops
at the page size, and the sources are merged in Python. So a page costs the same on
ten rows as on ten million.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from drip.clock import parse_instant
from drip.db import AnySelect
from drip.models import (
    MAX_ID,
    NOT_TRIED_STATUSES,
    DeliveryAttempt,
    MessageKind,
    OutboxMessage,
    OutboxStatus,
)
from drip.sending.outbox import REPORT_WORKER_PREFIX
from drip.subscribers import find_by_email

#: The statuses a log entry can have (`sending` shows as `queued`).
LOG_STATUSES = ("queued", "sent", "deferred", "failed", "bounced", "complained", "skipped")
KINDS = tuple(k.value for k in MessageKind)
#: The fields of one `drip logs --json` line, in order (README: Commands).
JSON_FIELDS = (
    "at",
    "email",
    "kind",
    "template",
    "status",
    "attempts",
    "smtp_code",
    "smtp_message",
    "message_id",
    "version",
)
MAX_LIMIT = 1000
#: How far back (in ids) `follow` looks again, for rows committed out of id order.
FOLLOW_LOOKBACK = 200

ATTEMPT, QUEUED = "a", "q"
#: At equal times an attempt sorts after (is newer than) a queued row.
_RANK = {QUEUED: 0, ATTEMPT: 1}


_RELATIVE = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime) -> datetime:
    """ISO-8601 (no offset means UTC), or a span back from now such as 30m, 2h, 7d.

    ValueError for anything else, including times that do not fit a datetime
    (99999999d, or year 1 at +01:00, which is still year 0 in UTC)."""
    try:
        match = _RELATIVE.match(text.strip())
        if match:
            span = timedelta(**{_UNITS[match[2]]: int(match[1])})
            return now - span
        return parse_instant(text.strip())
    except OverflowError:
        raise ValueError(f"out of range: {text!r}") from None


def iso(value: datetime) -> str:
    """ISO-8601 in UTC with a Z, to the second: the log's time format."""
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class LogEntry:
    """One line of the send log. `key` ("a<attempt id>" or "q<outbox id>") pages and follows."""

    key: str
    outbox_id: int
    attempt_id: int | None
    subscriber_id: int | None
    at: datetime
    email: str
    kind: str
    template: str
    status: str
    attempts: int
    smtp_code: int | None
    smtp_message: str | None
    message_id: str
    #: The template's version when it was rendered (drip.versions); None before that.
    version: str | None = None

    @property
    def sort_key(self) -> tuple[datetime, int, int]:
        source, ident = parse_key(self.key)
        return (self.at, _RANK[source], ident)

    def as_json(self) -> dict[str, Any]:
        """Exactly the JSON_FIELDS, ready for json.dumps."""
        return {
            "at": iso(self.at),
            "email": self.email,
            "kind": self.kind,
            "template": self.template,
            "status": self.status,
            "attempts": self.attempts,
            "smtp_code": self.smtp_code,
            "smtp_message": self.smtp_message,
            "message_id": self.message_id,
            "version": self.version,
        }


def parse_key(key: str) -> tuple[str, int]:
    """("a", 12) from "a12"; ValueError for anything else."""
    source, digits = key[:1], key[1:]
    if source not in _RANK or not digits.isascii() or not digits.isdigit() or len(digits) > 10:
        raise ValueError(f"not a log entry id: {key!r}")
    if int(digits) > MAX_ID:
        raise ValueError(f"not a log entry id: {key!r}")
    return source, int(digits)


@dataclass(frozen=True)
class LogFilter:
    """What the operator asked for; checked here so CLI and web refuse the same things."""

    email: str | None = None
    kind: str | None = None
    status: str | None = None
    since: datetime | None = None
    limit: int = 50
    #: The key of the last entry of the previous page: the next page starts below it.
    before_id: str | None = None

    def __post_init__(self) -> None:
        email = (self.email or "").strip() or None
        object.__setattr__(self, "email", email)
        object.__setattr__(self, "kind", self.kind or None)
        object.__setattr__(self, "status", self.status or None)
        object.__setattr__(self, "before_id", self.before_id or None)
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        if self.status is not None and self.status not in LOG_STATUSES:
            raise ValueError(f"status must be one of {', '.join(LOG_STATUSES)}")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
        if self.since is not None and self.since.tzinfo is None:
            raise ValueError("since must carry a time zone")
        if email is not None and "\x00" in email:  # PostgreSQL text cannot hold NUL
            raise ValueError("email must not contain a NUL character")
        if self.before_id is not None:
            parse_key(self.before_id)

    @property
    def wants_attempts(self) -> bool:
        return self.status != "queued"

    @property
    def wants_queued(self) -> bool:
        return self.status in (None, "queued")


_Cursor = tuple[datetime, int, int]
_ATTEMPT_COLUMNS = (
    col(DeliveryAttempt.id),
    col(DeliveryAttempt.outbox_id),
    col(DeliveryAttempt.at),
    col(DeliveryAttempt.status),
    col(DeliveryAttempt.smtp_code),
    col(DeliveryAttempt.smtp_message),
    col(OutboxMessage.subscriber_id),
    col(OutboxMessage.email),
    col(OutboxMessage.kind),
    col(OutboxMessage.template),
    col(OutboxMessage.message_id),
    col(OutboxMessage.version),
)
_QUEUED_COLUMNS = (
    col(OutboxMessage.id),
    col(OutboxMessage.created_at),
    col(OutboxMessage.attempts),
    col(OutboxMessage.subscriber_id),
    col(OutboxMessage.email),
    col(OutboxMessage.kind),
    col(OutboxMessage.template),
    col(OutboxMessage.message_id),
    col(OutboxMessage.version),
)


def _message_filters(session: Session, wanted: LogFilter) -> list[ColumnElement[bool]]:
    """Filters on the outbox row; each can use an index (email, subscriber_id, kind)."""
    clauses: list[ColumnElement[bool]] = []
    if wanted.email:
        subscriber = find_by_email(session, wanted.email)
        same_address = col(OutboxMessage.email) == wanted.email
        if subscriber is not None:
            clauses.append(or_(col(OutboxMessage.subscriber_id) == subscriber.id, same_address))
        else:
            clauses.append(same_address)
    if wanted.kind:
        clauses.append(col(OutboxMessage.kind) == wanted.kind)
    return clauses


def _before(at: Any, ident: Any, rank: int, cursor: _Cursor | None) -> list[ColumnElement[bool]]:
    """Rows strictly older than the cursor in the (time, source rank, id) order."""
    if cursor is None:
        return []
    c_at, c_rank, c_id = cursor
    if rank < c_rank:
        return [at <= c_at]
    if rank > c_rank:
        return [at < c_at]
    # The first clause is a plain range, so the time index finds the start at once.
    return [at <= c_at, or_(at < c_at, ident < c_id)]


def _attempt_entry(row: Any) -> LogEntry:
    return LogEntry(
        key=f"{ATTEMPT}{row.id}",
        outbox_id=row.outbox_id,
        attempt_id=row.id,
        subscriber_id=row.subscriber_id,
        at=row.at,
        email=row.email,
        kind=str(row.kind),
        template=row.template,
        status=str(row.status),
        attempts=0,  # numbered afterwards, for the page only
        smtp_code=row.smtp_code,
        smtp_message=row.smtp_message,
        message_id=row.message_id,
        version=row.version,
    )


def _queued_entry(row: Any) -> LogEntry:
    return LogEntry(
        key=f"{QUEUED}{row.id}",
        outbox_id=row.id,
        attempt_id=None,
        subscriber_id=row.subscriber_id,
        at=row.created_at,
        email=row.email,
        kind=str(row.kind),
        template=row.template,
        status="queued",
        attempts=row.attempts,
        smtp_code=None,
        smtp_message=None,
        message_id=row.message_id,
        version=row.version,
    )


def _not_attempted() -> ColumnElement[bool]:
    return ~exists().where(col(DeliveryAttempt.outbox_id) == col(OutboxMessage.id))


def _attempts(wanted: LogFilter, outbox: list[ColumnElement[bool]]) -> AnySelect:
    """Attempts joined to their message, with every filter but paging."""
    stmt = select(*_ATTEMPT_COLUMNS).join(
        OutboxMessage, col(OutboxMessage.id) == col(DeliveryAttempt.outbox_id)
    )
    stmt = stmt.where(*outbox)
    if wanted.status:
        stmt = stmt.where(col(DeliveryAttempt.status) == wanted.status)
    if wanted.since:
        stmt = stmt.where(col(DeliveryAttempt.at) >= wanted.since)
    return stmt


def _not_tried(wanted: LogFilter, outbox: list[ColumnElement[bool]]) -> AnySelect:
    """Messages with no attempt yet, with every filter but status and paging."""
    stmt = select(*_QUEUED_COLUMNS).where(_not_attempted(), *outbox)
    if wanted.since:
        stmt = stmt.where(col(OutboxMessage.created_at) >= wanted.since)
    return stmt


def _attempts_page(
    session: Session, wanted: LogFilter, outbox: list[ColumnElement[bool]], cursor: _Cursor | None
) -> list[LogEntry]:
    stmt = _attempts(wanted, outbox).where(
        *_before(col(DeliveryAttempt.at), col(DeliveryAttempt.id), _RANK[ATTEMPT], cursor)
    )
    stmt = stmt.order_by(col(DeliveryAttempt.at).desc(), col(DeliveryAttempt.id).desc()).limit(
        wanted.limit
    )
    return [_attempt_entry(r) for r in session.execute(stmt)]


def _queued_page(
    session: Session,
    wanted: LogFilter,
    outbox: list[ColumnElement[bool]],
    cursor: _Cursor | None,
    status: OutboxStatus,
) -> list[LogEntry]:
    # One status per query, so (status, created_at) hands rows over already in order.
    stmt = _not_tried(wanted, outbox).where(col(OutboxMessage.status) == status)
    stmt = stmt.where(
        *_before(col(OutboxMessage.created_at), col(OutboxMessage.id), _RANK[QUEUED], cursor)
    )
    stmt = stmt.order_by(col(OutboxMessage.created_at).desc(), col(OutboxMessage.id).desc()).limit(
        wanted.limit
    )
    return [_queued_entry(r) for r in session.execute(stmt)]


def _cursor(session: Session, key: str) -> _Cursor:
    source, ident = parse_key(key)
    if source == ATTEMPT:
        at = session.execute(
            select(col(DeliveryAttempt.at)).where(col(DeliveryAttempt.id) == ident)
        )
    else:
        at = session.execute(
            select(col(OutboxMessage.created_at)).where(col(OutboxMessage.id) == ident)
        )
    when = at.scalar_one_or_none()
    if when is None:
        raise ValueError(f"no log entry {key!r}")
    return (when, _RANK[source], ident)


def _numbered(session: Session, entries: list[LogEntry]) -> list[LogEntry]:
    """Give each attempt its number: real attempts of its message up to and including it
    (a report arriving later carries the number of the attempt it is about)."""
    ids = [e.attempt_id for e in entries if e.attempt_id is not None]
    if not ids:
        return entries
    attempt, earlier = DeliveryAttempt, aliased(DeliveryAttempt)
    counts: dict[int, int] = {
        ident: count
        for ident, count in session.execute(
            select(col(attempt.id), func.count(col(earlier.id)))
            .outerjoin(
                earlier,
                and_(
                    col(earlier.outbox_id) == col(attempt.outbox_id),
                    col(earlier.id) <= col(attempt.id),
                    col(earlier.status) != OutboxStatus.skipped,
                    # A bounce or complaint reported later is shown, not counted as a try.
                    or_(
                        col(earlier.worker).is_(None),
                        ~col(earlier.worker).startswith(REPORT_WORKER_PREFIX),
                    ),
                ),
            )
            .where(col(attempt.id).in_(ids))
            .group_by(col(attempt.id))
        )
    }
    return [
        replace(e, attempts=int(counts.get(e.attempt_id, 0))) if e.attempt_id else e
        for e in entries
    ]


def _any_of_kind(session: Session, kind: str) -> bool:
    found = session.execute(
        select(col(OutboxMessage.id)).where(col(OutboxMessage.kind) == kind).limit(1)
    )
    return found.first() is not None


def entries(session: Session, wanted: LogFilter) -> list[LogEntry]:
    """One page of the log, newest first; pass the last entry's key as `before_id` for more."""
    cursor = _cursor(session, wanted.before_id) if wanted.before_id else None
    if wanted.kind and not _any_of_kind(session, wanted.kind):
        # Else a planner guessing "a third of the rows" may walk the whole log to find none.
        return []
    outbox = _message_filters(session, wanted)
    sources: list[list[LogEntry]] = []
    if wanted.wants_attempts:
        sources.append(_attempts_page(session, wanted, outbox, cursor))
    if wanted.wants_queued:
        for status in NOT_TRIED_STATUSES:
            sources.append(_queued_page(session, wanted, outbox, cursor, status))
    merged = heapq.merge(*sources, key=lambda e: e.sort_key, reverse=True)
    return _numbered(session, list(islice(merged, wanted.limit)))


# -- follow ---------------------------------------------------------------------------


@dataclass
class FollowState:
    """Where `follow` stands: the highest ids seen, and the keys seen near them."""

    attempt_id: int = 0
    outbox_id: int = 0
    seen: set[str] = field(default_factory=set)
    #: Where following began: rows at or below were there before and are never shown.
    attempt_start: int = 0
    outbox_start: int = 0

    @property
    def attempt_floor(self) -> int:
        return max(self.attempt_start, self.attempt_id - FOLLOW_LOOKBACK)

    @property
    def outbox_floor(self) -> int:
        return max(self.outbox_start, self.outbox_id - FOLLOW_LOOKBACK)

    def note(self, shown: Iterable[LogEntry], attempt_id: int = 0, outbox_id: int = 0) -> None:
        """Remember what was shown, and move the marks up to at least the ids given
        (the newest rows when the poll began, matching or not: with a narrow filter the
        marks still move, so each poll reads only recent rows)."""
        self.attempt_id = max(self.attempt_id, attempt_id)
        self.outbox_id = max(self.outbox_id, outbox_id)
        for entry in shown:
            self.seen.add(entry.key)
            source, ident = parse_key(entry.key)
            if source == ATTEMPT:
                self.attempt_id = max(self.attempt_id, ident)
            else:
                self.outbox_id = max(self.outbox_id, entry.outbox_id)
        floor = {ATTEMPT: self.attempt_floor, QUEUED: self.outbox_floor}
        self.seen = {k for k in self.seen if parse_key(k)[1] > floor[k[0]]}


def _newest_ids(session: Session) -> tuple[int, int]:
    attempt_id = session.execute(select(func.max(col(DeliveryAttempt.id)))).scalar() or 0
    outbox_id = session.execute(select(func.max(col(OutboxMessage.id)))).scalar() or 0
    return int(attempt_id), int(outbox_id)


def follow_start(session: Session, shown: Sequence[LogEntry] = ()) -> FollowState:
    """Start following from now: what exists is taken as seen."""
    attempt_id, outbox_id = _newest_ids(session)
    state = FollowState(attempt_id, outbox_id, attempt_start=attempt_id, outbox_start=outbox_id)
    state.note(shown)
    return state


def follow(
    session: Session, wanted: LogFilter, state: FollowState, batch: int = 500
) -> list[LogEntry]:
    """Entries that appeared since the last call, oldest first; `state` moves on.

    Ids a little below the highest seen are read again: on PostgreSQL two workers can
    commit out of id order, and a row committed late must not be missed.
    """
    top_attempt, top_outbox = _newest_ids(session)
    outbox = _message_filters(session, wanted)
    window = FOLLOW_LOOKBACK + batch
    attempts: list[LogEntry] = []
    queued: list[LogEntry] = []
    if wanted.wants_attempts:
        stmt = _attempts(wanted, outbox).where(col(DeliveryAttempt.id) > state.attempt_floor)
        attempts = [
            _attempt_entry(r)
            for r in session.execute(stmt.order_by(col(DeliveryAttempt.id)).limit(window))
        ]
    if wanted.wants_queued:
        stmt = _not_tried(wanted, outbox).where(
            col(OutboxMessage.id) > state.outbox_floor,
            col(OutboxMessage.status).in_(NOT_TRIED_STATUSES),
        )
        queued = [
            _queued_entry(r)
            for r in session.execute(stmt.order_by(col(OutboxMessage.id)).limit(window))
        ]
    found = attempts + queued
    new = sorted((e for e in found if e.key not in state.seen), key=lambda e: e.sort_key)
    # A source that filled its window has more to give: its mark moves only as far as
    # what was read, and the next poll reads on from there.
    state.note(
        new,
        attempt_id=0 if len(attempts) >= window else top_attempt,
        outbox_id=0 if len(queued) >= window else top_outbox,
    )
    return _numbered(session, new)
