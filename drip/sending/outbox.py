"""The outbox: queue an email once, claim it with a lease, record how it went.

Queuing is an insert that does nothing when the dedupe key exists. Claiming sets a
lease; a worker that dies leaves rows whose lease simply runs out, and the next
claim takes them again. The result of an attempt and its send-log row are written
in one transaction, so the log never disagrees with the outbox.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import make_msgid
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    SQLColumnExpression,
    String,
    and_,
    bindparam,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlmodel import Session, col

from drip.db import (
    Sized,
    database_now,
    insert_ignoring,
    session_scope,
    table_of,
    unlocked,
)
from drip.models import (
    PENDING_STATUSES,
    RETRYABLE_STATUSES,
    UNSENT_STATUSES,
    DeliveryAttempt,
    MessageKind,
    OutboxMessage,
    OutboxStatus,
    UTCDateTime,
)
from drip.printable import printable
from drip.settings import Settings


@dataclass(frozen=True)
class NewMessage:
    kind: MessageKind
    template: str
    email: str
    dedupe_key: str
    due_at: datetime
    subscriber_id: int | None = None
    newsletter_id: int | None = None
    context: dict[str, Any] | None = None


#: A row no worker holds: what claiming sets, every other move clears.
LEASE_CLEARED: dict[str, Any] = {"lease_until": None, "leased_by": None}


def _dedupe_prefix(kind: MessageKind | str, item: str | int | None) -> str:
    middle = f"{kind}:{item}" if item is not None else str(kind)
    return f"{middle}:subscriber:"


def dedupe_key(kind: MessageKind | str, subscriber_id: int, item: str | int | None = None) -> str:
    """The one email of this kind (and item: lesson, newsletter, hour) for a subscriber,
    e.g. "lesson:intro:subscriber:42"."""
    return f"{_dedupe_prefix(kind, item)}{subscriber_id}"


def dedupe_key_sql(
    kind: MessageKind | str, subscriber_id: SQLColumnExpression[Any], item: str | int | None = None
) -> ColumnElement[str]:
    """`dedupe_key` as SQL, for a subscriber id column of an INSERT ... SELECT."""
    return literal(_dedupe_prefix(kind, item)) + cast(subscriber_id, String)


def enqueue_many(
    session: Session, messages: Sequence[NewMessage], msgid_domain: str, now: datetime
) -> int:
    """Queue messages, dropping any whose dedupe key is already queued; returns how many."""
    if not messages:
        return 0
    rows = [
        {
            "dedupe_key": m.dedupe_key,
            "kind": m.kind,
            "template": m.template,
            "email": m.email,
            "subscriber_id": m.subscriber_id,
            "newsletter_id": m.newsletter_id,
            "context": m.context or {},
            "status": OutboxStatus.queued,
            "due_at": m.due_at,
            "next_attempt_at": m.due_at,
            "attempts": 0,
            # Fixed at queue time: a resend after a crash carries the same Message-ID.
            "message_id": make_msgid(domain=msgid_domain),
            "created_at": now,
            "updated_at": now,
        }
        for m in messages
    ]
    # A Core insert on the table: the ORM's bulk-insert path costs more and adds nothing here.
    stmt = insert_ignoring(session, OutboxMessage, ["dedupe_key"])
    result = session.execute(stmt.returning(table_of(OutboxMessage).c.id), rows)
    return len(result.all())


def enqueue(session: Session, message: NewMessage, msgid_domain: str, now: datetime) -> bool:
    """Queue one message; False when the same email was already queued."""
    return enqueue_many(session, [message], msgid_domain, now) == 1


def has_unsent(session: Session, subscriber_id: int, kind: MessageKind) -> bool:
    """Whether a message of this kind to this subscriber is still on its way."""
    found = session.execute(
        select(col(OutboxMessage.id))
        .where(
            col(OutboxMessage.subscriber_id) == subscriber_id,
            col(OutboxMessage.kind) == kind,
            col(OutboxMessage.status).in_(UNSENT_STATUSES),
        )
        .limit(1)
    ).first()
    return found is not None


def claim(
    engine: Engine,
    worker: str,
    now: datetime,
    limit: int,
    lease: timedelta,
    held: Collection[MessageKind] = (),
    only: Collection[int] | None = None,
) -> list[OutboxMessage]:
    """Lease up to `limit` due rows to `worker`; no two workers ever hold the same row.

    A row is due when its `next_attempt_at` has come by the caller's `now` (which
    `drip tick --now` may move) and no lease holds it. Leases are timed by the
    database's clock (`drip.db.database_now`), never the worker's: a worker whose clock
    runs ahead cannot take another's row before its lease has really run out. Rows of a
    `held` kind (newsletters paused by sender health) stay where they are. `only`:
    claim none but these rows (a test send delivering its own message).
    """
    stmt = _claim_statement(engine, lease, frozenset(held), only is not None)
    params: dict[str, Any] = {"c_now": now, "c_limit": limit, "c_worker": worker}
    if only is not None:
        params["c_only"] = list(only)
    with session_scope(engine) as session:
        rows = list(session.execute(stmt, params).scalars().all())
    rows.sort(key=lambda r: (r.next_attempt_at or now, r.id or 0))
    return rows


#: Claim statements, built once per database kind, lease, held kinds and `only` or not:
#: each claim binds its values instead of building and hashing a new statement.
_CLAIMS: dict[tuple[str, timedelta, frozenset[MessageKind], bool], Any] = {}


def _claim_statement(
    engine: Engine, lease: timedelta, held: frozenset[MessageKind], only: bool
) -> Any:
    key = (engine.dialect.name, lease, held, only)
    stmt = _CLAIMS.get(key)
    if stmt is not None:
        return stmt
    free = or_(
        col(OutboxMessage.lease_until).is_(None),
        col(OutboxMessage.lease_until) <= database_now(engine),
    )
    now = bindparam("c_now", type_=UTCDateTime())
    due = and_(col(OutboxMessage.next_attempt_at) <= now, free)
    if held:
        due = and_(due, col(OutboxMessage.kind).not_in(sorted(held)))
    if only:
        due = and_(due, col(OutboxMessage.id).in_(bindparam("c_only", expanding=True)))
    pick = (
        select(col(OutboxMessage.id))
        .where(due)
        .order_by(col(OutboxMessage.next_attempt_at))
        .limit(bindparam("c_limit", type_=Integer()))
    )
    stmt = _CLAIMS[key] = (
        update(OutboxMessage)
        # Rows another worker is claiming right now are skipped, not waited for.
        .where(col(OutboxMessage.id).in_(unlocked(engine, pick)))
        .where(due)
        .values(
            status=OutboxStatus.sending,
            lease_until=database_now(engine, lease),
            leased_by=bindparam("c_worker", type_=String()),
            attempts=col(OutboxMessage.attempts) + 1,
            updated_at=now,
        )
        .returning(OutboxMessage)
        .execution_options(synchronize_session=False)
    )
    return stmt


@dataclass(frozen=True)
class Result:
    """What became of one attempt."""

    status: OutboxStatus
    smtp_code: int | None = None
    smtp_message: str | None = None
    retry_at: datetime | None = None
    #: Not sent, yet the course moves on past it as if it were: a lesson the author
    #: removed from the course while it was queued (drip.sending.prepare).
    moves_on: bool = False

    @property
    def log_text(self) -> str | None:
        """The server's words as stored: control characters spelled out (drip.printable)."""
        return printable(self.smtp_message or "")[:1000] or None


def retry_or_give_up(
    settings: Settings, row: OutboxMessage, code: int | None, message: str, now: datetime
) -> Result:
    """Exponential backoff with jitter, as Postfix does; failed once the lifetime is spent."""
    lifetime = timedelta(days=settings.retry_lifetime_days)
    if now - row.created_at >= lifetime:
        gave_up = f"gave up after {row.attempts} attempts over {lifetime.days} days: {message}"
        return Result(OutboxStatus.failed, code, gave_up)
    minutes = min(
        settings.retry_first_minutes * 2 ** max(row.attempts - 1, 0), settings.retry_max_hours * 60
    )
    delay = timedelta(minutes=minutes * random.uniform(0.8, 1.2))
    return Result(OutboxStatus.deferred, code, message, now + delay)


#: The statements of every recorded result, compiled once per database and run on the
#: driver's cursor (drip.db.DriverStatement): a group commit only binds its values.
_ATTEMPTS = table_of(DeliveryAttempt)
_OUTBOX = table_of(OutboxMessage)
#: The send log's columns an attempt sets, and their parameters' names.
_LOGGED = {
    "outbox_id": "a_outbox",
    "at": "a_at",
    "status": "a_status",
    "smtp_code": "a_code",
    "smtp_message": "a_text",
    "worker": "a_worker",
}
#: Typed as their columns: a multi-row VALUES does not lend its columns' types.
_LOG_ATTEMPTS = Sized(
    lambda n: insert(_ATTEMPTS).values(
        [
            {
                column: bindparam(f"{name}_{i}", type_=_ATTEMPTS.c[column].type)
                for column, name in _LOGGED.items()
            }
            for i in range(n)
        ]
    ),
    pad=False,
)


def _move(sent: bool) -> Sized:
    """Move held rows on to one outcome, and note the version rendered (kept when None)."""
    moved = {
        "status": bindparam("r_status"),
        "last_smtp_code": bindparam("r_code"),
        "last_smtp_message": bindparam("r_text"),
        **LEASE_CLEARED,
        "updated_at": bindparam("r_now"),
        "next_attempt_at": bindparam("r_retry"),
        "version": func.coalesce(bindparam("r_version", type_=String), _OUTBOX.c.version),
    }
    if sent:
        moved["sent_at"] = bindparam("r_now")
    return Sized(
        lambda n: (
            update(_OUTBOX)
            .where(_OUTBOX.c.id.in_([bindparam(f"id_{i}", type_=Integer) for i in range(n)]))
            .where(_OUTBOX.c.leased_by == bindparam("r_worker"))
            .where(_OUTBOX.c.status == OutboxStatus.sending)
            .values(**moved)
            .returning(_OUTBOX.c.id)
        ),
        pad=True,
    )


_MOVE = _move(sent=False)
_MOVE_SENT = _move(sent=True)


def record(
    bind: Session | Connection,
    results: Sequence[tuple[OutboxMessage, Result]],
    worker: str,
    now: datetime,
) -> set[int]:
    """Write the attempts and the rows' new states together, in a few statements.

    Only the worker that holds a row's lease may move it on. Returns the ids it
    moved; a row missing there had lost its lease (it expired and another worker
    took it), and only its attempt is logged. Delivery passes a Connection: the
    ORM adds nothing to these statements but its cost.
    """
    if not results:
        return set()
    _LOG_ATTEMPTS.rows(
        bind,
        {},
        [
            {
                "a_outbox": message.id,
                "a_at": now,
                "a_status": result.status,
                "a_code": result.smtp_code,
                "a_text": result.log_text,
                "a_worker": worker,
            }
            for message, result in results
        ],
    )
    # Rows with the same outcome and version (a run of 250s of one lesson, say) move
    # in one statement.
    classes: dict[tuple[Result, str | None], list[dict[str, Any]]] = {}
    for message, result in results:
        classes.setdefault((result, message.version), []).append({"id": message.id})
    moved: set[int] = set()
    for (result, version), ids in classes.items():
        values = {
            "r_worker": worker,
            "r_status": result.status,
            "r_code": result.smtp_code,
            "r_text": result.log_text,
            "r_now": now,
            "r_retry": result.retry_at if result.status == OutboxStatus.deferred else None,
            "r_version": version,
        }
        stmt = _MOVE_SENT if result.status == OutboxStatus.sent else _MOVE
        moved.update(row_id for (row_id,) in stmt.rows(bind, values, ids))
    return moved


def renew(engine: Engine, worker: str, ids: Iterable[int], lease: timedelta) -> set[int]:
    """Extend the lease on rows `worker` still holds; returns the ids it kept.

    A live worker renews what it holds, so only a dead (or stalled) worker's rows are
    ever taken again: a slow send or a slow commit of its outcome never lets a second
    worker resend what the first has already sent.
    """
    id_list = list(ids)
    if not id_list:
        return set()
    table = table_of(OutboxMessage)
    with session_scope(engine) as session:
        kept = session.execute(
            update(table)
            .where(table.c.id.in_(id_list))
            .where(table.c.leased_by == worker)
            .where(table.c.status == OutboxStatus.sending)
            .values(lease_until=database_now(engine, lease))
            .returning(table.c.id)
        ).scalars()
        return set(kept)


def release(engine: Engine, worker: str, ids: Iterable[int], now: datetime) -> int:
    """Hand back rows claimed but not attempted, e.g. on shutdown, so others take them at once."""
    id_list = list(ids)
    if not id_list:
        return 0
    with session_scope(engine) as session:
        result = session.execute(
            update(OutboxMessage)
            .where(col(OutboxMessage.id).in_(id_list))
            .where(col(OutboxMessage.leased_by) == worker)
            .where(col(OutboxMessage.status) == OutboxStatus.sending)
            .values(
                status=OutboxStatus.queued,
                next_attempt_at=now,
                **LEASE_CLEARED,
                attempts=col(OutboxMessage.attempts) - 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        return result.rowcount  # type: ignore[attr-defined,no-any-return]


def skip_for_subscriber(session: Session, subscriber_id: int, reason: str, now: datetime) -> int:
    """Mark every not-yet-sent message to a subscriber as skipped, each with a log row."""
    ids = list(
        session.execute(
            select(col(OutboxMessage.id))
            .where(col(OutboxMessage.subscriber_id) == subscriber_id)
            .where(col(OutboxMessage.status).in_(PENDING_STATUSES))
        ).scalars()
    )
    return skip(session, ids, reason, now)


def skip(
    session: Session,
    ids: Sequence[int],
    reason: str,
    now: datetime,
    from_statuses: Collection[OutboxStatus] = PENDING_STATUSES,
) -> int:
    """Mark these messages skipped, with a send-log row each, if they are still in one of
    `from_statuses` (a row a worker holds is left to it); returns how many moved."""
    if not ids:
        return 0
    moved = list(
        session.execute(
            update(OutboxMessage)
            .where(col(OutboxMessage.id).in_(list(ids)))
            .where(col(OutboxMessage.status).in_(list(from_statuses)))
            .values(
                status=OutboxStatus.skipped,
                next_attempt_at=None,
                last_smtp_message=reason,
                updated_at=now,
            )
            .returning(col(OutboxMessage.id))
            .execution_options(synchronize_session=False)
        ).scalars()
    )
    session.add_all(
        DeliveryAttempt(outbox_id=i, at=now, status=OutboxStatus.skipped, smtp_message=reason)
        for i in moved
    )
    return len(moved)


def not_held() -> ColumnElement[bool]:
    """Rows a worker may take when due: a held row (see `hold`) has no next attempt."""
    return col(OutboxMessage.next_attempt_at).is_not(None)


def is_held() -> ColumnElement[bool]:
    """A held row: not sent yet, and no time for its next attempt (see `hold`)."""
    return and_(
        col(OutboxMessage.status).in_(PENDING_STATUSES),
        col(OutboxMessage.next_attempt_at).is_(None),
    )


def _mail_of(subscriber_id: int, kinds: Collection[MessageKind]) -> ColumnElement[bool]:
    return and_(
        col(OutboxMessage.subscriber_id) == subscriber_id,
        col(OutboxMessage.kind).in_(list(kinds)),
    )


def hold(
    session: Session, subscriber_id: int, kinds: Collection[MessageKind], now: datetime
) -> list[int]:
    """Keep a subscriber's unsent messages of these kinds from every worker, until
    `unhold`: they stay queued or deferred, with no time for their next attempt, so no
    claim takes them and nothing waits on them. A row a worker holds already goes."""
    return list(
        session.execute(
            update(OutboxMessage)
            .where(_mail_of(subscriber_id, kinds))
            .where(col(OutboxMessage.status).in_(PENDING_STATUSES))
            .where(not_held())
            .values(next_attempt_at=None, updated_at=now)
            .returning(col(OutboxMessage.id))
            .execution_options(synchronize_session=False)
        ).scalars()
    )


def held_for(
    session: Session, subscriber_id: int, kinds: Collection[MessageKind]
) -> list[OutboxMessage]:
    """A subscriber's held messages of these kinds, oldest first."""
    return list(
        session.execute(
            select(OutboxMessage)
            .where(_mail_of(subscriber_id, kinds), is_held())
            .order_by(col(OutboxMessage.id))
        ).scalars()
    )


def unhold(session: Session, outbox_id: int, at: datetime, now: datetime) -> bool:
    """Let a held message go again at `at`; False if it was not held."""
    moved = session.execute(
        update(OutboxMessage)
        .where(col(OutboxMessage.id) == outbox_id, is_held())
        .values(next_attempt_at=at, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return moved.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def retry(session: Session, outbox_id: int, now: datetime) -> bool:
    """Queue a failed or bounced message again; False if it is in any other state.

    The status test is in the UPDATE itself, so a row a worker holds (`sending`) or
    has since sent is never touched.
    """
    moved = session.execute(
        update(OutboxMessage)
        .where(
            col(OutboxMessage.id) == outbox_id, col(OutboxMessage.status).in_(RETRYABLE_STATUSES)
        )
        .values(status=OutboxStatus.queued, next_attempt_at=now, **LEASE_CLEARED, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return moved.rowcount == 1  # type: ignore[attr-defined,no-any-return]


#: The `worker` of a send-log row that records a report (`report:inbound`), not an attempt.
REPORT_WORKER_PREFIX = "report:"
#: How far a report moves a message on: a later, weaker report never moves it back.
_REPORT_RANK = {
    OutboxStatus.sent: 0,
    OutboxStatus.failed: 1,
    OutboxStatus.bounced: 2,
    OutboxStatus.complained: 3,
}


def record_report(
    session: Session,
    row: OutboxMessage,
    status: OutboxStatus,
    smtp_code: int | None,
    text: str,
    source: str,
    now: datetime,
) -> bool:
    """A bounce or complaint that came after the send, shown on the message it is about.

    Always a send-log row; the message's own status moves on (sent -> failed for a
    soft bounce -> bounced -> complained) only from a state it reached by being sent,
    so a row queued or in a worker's hands is left to its worker. True if it moved.
    """
    assert row.id is not None
    logged = text[:1000] or None
    session.add(
        DeliveryAttempt(
            outbox_id=row.id,
            at=now,
            status=status,
            smtp_code=smtp_code,
            smtp_message=logged,
            worker=f"{REPORT_WORKER_PREFIX}{source}"[:100],
        )
    )
    weaker = [s for s, rank in _REPORT_RANK.items() if rank < _REPORT_RANK[status]]
    table = OutboxMessage.__table__  # type: ignore[attr-defined]
    moved = session.execute(
        update(table)
        .where(table.c.id == row.id, table.c.status.in_(weaker))
        .values(status=status, last_smtp_code=smtp_code, last_smtp_message=logged, updated_at=now)
    )
    return bool(moved.rowcount)  # type: ignore[attr-defined]
