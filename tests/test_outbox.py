"""The outbox on both databases: queue once, claim exclusively, recover from a dead worker."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import Engine, func, select, text, update

from drip.clock import utcnow
from drip.db import get_engine, session_scope
from drip.models import DeliveryAttempt, MessageKind, OutboxMessage, OutboxStatus
from drip.sending.outbox import (
    NewMessage,
    Result,
    claim,
    dedupe_key,
    enqueue,
    enqueue_many,
    record,
    release,
    renew,
)
from tests.conftest import truncate_pg

LEASE = timedelta(minutes=5)


def _message(n: int, due_offset: timedelta = timedelta(0)) -> NewMessage:
    return NewMessage(
        kind=MessageKind.lesson,
        template="lesson-01",
        email=f"reader{n}@example.com",
        dedupe_key=dedupe_key(MessageKind.lesson, n, "intro"),
        due_at=utcnow() + due_offset,
    )


def _pass_database_time(engine: Engine, by: timedelta) -> None:
    """As if the database's clock had moved on by `by`: every lease is that much nearer its end."""
    with session_scope(engine) as session:
        leased = session.execute(
            select(OutboxMessage).where(OutboxMessage.lease_until.is_not(None))  # type: ignore[union-attr]
        ).scalars()
        for row in leased:
            assert row.lease_until is not None
            row.lease_until -= by


def _count(engine: Engine, *where: object) -> int:
    with session_scope(engine) as session:
        return int(
            session.execute(
                select(func.count()).select_from(OutboxMessage).where(*where)
            ).scalar_one()
        )


def test_the_same_email_is_queued_once(engine: Engine) -> None:
    with session_scope(engine) as session:
        assert enqueue(session, _message(1), "example.com", utcnow()) is True
        assert enqueue(session, _message(1), "example.com", utcnow()) is False
        assert (
            enqueue_many(session, [_message(1), _message(2), _message(2)], "example.com", utcnow())
            == 1
        )
    assert _count(engine) == 2
    with session_scope(engine) as session:
        ids = session.execute(select(OutboxMessage.message_id)).scalars().all()
    assert len(set(ids)) == 2
    assert all(i.endswith("@example.com>") for i in ids)


def test_claim_takes_only_due_rows_and_leases_them(engine: Engine) -> None:
    with session_scope(engine) as session:
        enqueue_many(
            session, [_message(1), _message(2, timedelta(hours=1))], "example.com", utcnow()
        )
    now = utcnow()
    rows = claim(engine, "w1", now, 10, LEASE)
    assert [r.email for r in rows] == ["reader1@example.com"]
    assert rows[0].status == OutboxStatus.sending
    assert rows[0].leased_by == "w1"
    assert rows[0].attempts == 1
    assert claim(engine, "w2", now, 10, LEASE) == []
    # The lease of a dead worker runs out and the row is claimed again.
    _pass_database_time(engine, LEASE + timedelta(seconds=1))
    again = claim(engine, "w2", now, 10, LEASE)
    assert {r.email for r in again} == {"reader1@example.com"}
    assert again[0].attempts == 2
    assert again[0].leased_by == "w2"


def test_only_the_lease_holder_moves_a_row_on(engine: Engine) -> None:
    with session_scope(engine) as session:
        enqueue(session, _message(1), "example.com", utcnow())
    now = utcnow()
    [first] = claim(engine, "w1", now, 1, LEASE)
    _pass_database_time(engine, LEASE * 2)
    [second] = claim(engine, "w2", now, 1, LEASE)
    with session_scope(engine) as session:
        assert (
            record(session, [(first, Result(OutboxStatus.sent, 250, "OK"))], "w1", utcnow())
            == set()
        )
        sent = [(second, Result(OutboxStatus.sent, 250, "OK"))]
        assert record(session, sent, "w2", utcnow()) == {second.id}
    with session_scope(engine) as session:
        row = session.execute(select(OutboxMessage)).scalar_one()
        attempts = session.execute(select(DeliveryAttempt)).scalars().all()
    assert row.status == OutboxStatus.sent
    assert row.next_attempt_at is None
    assert row.sent_at
    assert [a.worker for a in attempts] == ["w1", "w2"]


def test_renewing_keeps_a_lease_only_for_its_holder(engine: Engine) -> None:
    with session_scope(engine) as session:
        enqueue_many(session, [_message(1), _message(2)], "example.com", utcnow())
    now = utcnow()
    [first] = claim(engine, "w1", now, 1, LEASE)
    [second] = claim(engine, "w2", now, 1, LEASE)
    _pass_database_time(engine, LEASE - timedelta(seconds=1))
    assert renew(engine, "w1", [first.id, second.id], LEASE) == {first.id}  # type: ignore[list-item]
    _pass_database_time(engine, timedelta(seconds=2))
    # w1 renewed in time and keeps its row; w2 did not, and its row is free again.
    assert [r.id for r in claim(engine, "w3", now, 10, LEASE)] == [second.id]


def test_leases_run_on_the_database_clock_not_the_workers(engine: Engine) -> None:
    """Two workers whose clocks are an hour apart, each way from the database's: neither
    takes the other's row before its lease has run out by the database's clock."""
    with session_scope(engine) as session:
        enqueue_many(
            session, [_message(n, -timedelta(hours=3)) for n in (1, 2)], "example.com", utcnow()
        )
    skew = timedelta(hours=1)  # far more than the lease
    started = utcnow()
    [behinds] = claim(engine, "behind", started - skew, 1, LEASE)
    # The lease ends by the database's clock (the same machine's here), not the worker's.
    assert behinds.lease_until is not None
    assert started + LEASE - timedelta(seconds=5) <= behinds.lease_until
    assert behinds.lease_until <= utcnow() + LEASE + timedelta(seconds=5)
    # The worker an hour ahead sees the first lease as long gone by its own clock.
    aheads = claim(engine, "ahead", utcnow() + skew, 10, LEASE)
    assert behinds.email == "reader1@example.com"
    assert [r.email for r in aheads] == ["reader2@example.com"]
    assert claim(engine, "behind", utcnow() - skew, 10, LEASE) == []
    assert claim(engine, "ahead", utcnow() + skew, 10, LEASE) == []
    # Once the database's clock passes the leases, either worker may take both rows back.
    _pass_database_time(engine, LEASE + timedelta(seconds=1))
    again = claim(engine, "ahead", utcnow() + skew, 10, LEASE)
    assert sorted(r.email for r in again) == ["reader1@example.com", "reader2@example.com"]
    assert all(r.leased_by == "ahead" and r.attempts == 2 for r in again)


def test_deferred_rows_come_back_at_their_retry_time(engine: Engine) -> None:
    with session_scope(engine) as session:
        enqueue(session, _message(1), "example.com", utcnow())
    now = utcnow()
    [row] = claim(engine, "w1", now, 1, LEASE)
    retry = now + timedelta(minutes=10)
    with session_scope(engine) as session:
        record(
            session, [(row, Result(OutboxStatus.deferred, 451, "try later", retry))], "w1", utcnow()
        )
    assert claim(engine, "w1", now + timedelta(minutes=9), 1, LEASE) == []
    assert len(claim(engine, "w1", retry, 1, LEASE)) == 1


def test_a_batch_of_outcomes_is_recorded_row_by_row(engine: Engine) -> None:
    """One call records a mixed batch; each row gets its own outcome and log row."""
    with session_scope(engine) as session:
        enqueue_many(session, [_message(n) for n in range(1, 5)], "example.com", utcnow())
    now = utcnow()
    rows = claim(engine, "w1", now, 4, LEASE)
    retry = now + timedelta(minutes=10)
    outcomes = [
        Result(OutboxStatus.sent, 250, "OK"),
        Result(OutboxStatus.sent, 250, "OK"),
        Result(OutboxStatus.deferred, 451, "try later", retry),
        Result(OutboxStatus.bounced, 550, "no such user " + "x" * 2000),
    ]
    with session_scope(engine) as session:
        moved = record(session, list(zip(rows, outcomes, strict=True)), "w1", utcnow())
    assert moved == {r.id for r in rows}
    with session_scope(engine) as session:
        found = {r.id: r for r in session.execute(select(OutboxMessage)).scalars()}
        attempts = session.execute(select(DeliveryAttempt)).scalars().all()
    for row, outcome in zip(rows, outcomes, strict=True):
        stored = found[row.id]
        assert (stored.status, stored.last_smtp_code) == (outcome.status, outcome.smtp_code)
        assert stored.leased_by is None
        assert stored.lease_until is None
        assert (stored.sent_at is not None) == (outcome.status == OutboxStatus.sent)
    assert found[rows[2].id].next_attempt_at == retry
    assert len(found[rows[3].id].last_smtp_message or "") == 1000
    assert sorted((a.outbox_id, a.status) for a in attempts) == sorted(
        (r.id, o.status) for r, o in zip(rows, outcomes, strict=True)
    )


def test_release_hands_rows_back_untouched(engine: Engine) -> None:
    with session_scope(engine) as session:
        enqueue_many(session, [_message(1), _message(2)], "example.com", utcnow())
    now = utcnow()
    rows = claim(engine, "w1", now, 10, LEASE)
    assert release(engine, "w1", [r.id for r in rows if r.id], utcnow()) == 2
    again = claim(engine, "w2", utcnow(), 10, LEASE)
    assert len(again) == 2
    assert all(r.attempts == 1 for r in again)


def test_concurrent_claims_never_share_a_row(engine: Engine) -> None:
    with session_scope(engine) as session:
        enqueue_many(session, [_message(n) for n in range(300)], "example.com", utcnow())
    got: dict[str, list[int]] = {}
    now = utcnow()

    def work(name: str) -> None:
        mine: list[int] = []
        while rows := claim(engine, name, now, 7, LEASE):
            mine.extend(r.id for r in rows if r.id)
        got[name] = mine

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in got.values() for i in ids]
    assert len(every) == 300
    assert len(set(every)) == 300


def test_a_claim_takes_its_limit_even_when_the_planner_expects_nothing_due(
    pg_url: str,
) -> None:
    """PostgreSQL, statistics taken while nothing was due (a quiet outbox full of sent
    rows), then a burst arrives: the claim must still lease `limit` rows, not all of them."""
    engine = get_engine(pg_url)
    truncate_pg(engine)
    with session_scope(engine) as session:
        enqueue_many(session, [_message(n) for n in range(20_000)], "example.com", utcnow())
        session.execute(update(OutboxMessage).values(status="sent", next_attempt_at=None))
    with engine.begin() as conn:
        conn.execute(text("ANALYZE outbox"))
    with session_scope(engine) as session:
        enqueue_many(session, [_message(n) for n in range(20_000, 20_500)], "example.com", utcnow())
    assert len(claim(engine, "w1", utcnow(), 8, LEASE)) == 8
    assert _count(engine, OutboxMessage.status == OutboxStatus.sending) == 8


def test_a_batch_past_one_statement_records_each_version_and_skips_lost_leases(
    engine: Engine,
) -> None:
    """More rows than one statement takes (drip.db.SIZED_CHUNK), of two versions and none:
    each moved row notes its version (none keeps the one stored), and the rows another
    worker took meanwhile are left to it, with only their attempts logged."""
    with session_scope(engine) as session:
        enqueue_many(session, [_message(n) for n in range(1, 22)], "example.com", utcnow())
    rows = claim(engine, "w1", utcnow(), 21, LEASE)
    for n, row in enumerate(rows):
        row.version = "v1" if n < 10 else "v2" if n < 20 else None
    lost = {rows[3].id, rows[15].id}
    with session_scope(engine) as session:
        table = OutboxMessage.__table__  # type: ignore[attr-defined]
        session.execute(update(table).where(table.c.id.in_(lost)).values(leased_by="w2"))
        session.execute(update(table).where(table.c.id == rows[20].id).values(version="old"))
    with session_scope(engine) as session:
        sent = Result(OutboxStatus.sent, 250, "OK")
        moved = record(session, [(row, sent) for row in rows], "w1", utcnow())
    assert moved == {row.id for row in rows} - lost
    with session_scope(engine) as session:
        found = {r.id: r for r in session.execute(select(OutboxMessage)).scalars()}
        logged = sorted(session.execute(select(DeliveryAttempt.outbox_id)).scalars())
    assert logged == sorted(row.id for row in rows)
    for n, row in enumerate(rows):
        stored = found[row.id]
        if row.id in lost:
            assert (stored.status, stored.leased_by, stored.version) == ("sending", "w2", None)
        else:
            assert (stored.status, stored.leased_by) == (OutboxStatus.sent, None)
            assert stored.version == ("v1" if n < 10 else "v2" if n < 20 else "old")
