"""The schema and the engine: migrations match the models, SQLite is tuned for workers."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, Integer, bindparam, func, insert, literal, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import SQLModel

from drip.clock import utcnow
from drip.db import (
    DatabaseError,
    DriverStatement,
    Sized,
    ensure_schema,
    get_engine,
    schema_state,
    session_scope,
    table_of,
)
from drip.models import DeliveryAttempt, MessageKind, OutboxMessage, OutboxStatus, UTCDateTime
from drip.sending.outbox import NewMessage, enqueue
from tests.conftest import PG_ADMIN


def test_migrations_build_exactly_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == [], "models changed without a migration: regenerate it"


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    engine = get_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert int(conn.execute(text("PRAGMA busy_timeout")).scalar() or 0) >= 5000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_sqlite_commits_survive_power_loss(tmp_path: Path) -> None:
    """synchronous=FULL (2) on every connection: the WAL is synced at each commit, so a
    signup answered 303 or a 250 recorded as sent is on disk, not only in the OS cache."""
    engine = get_engine(f"sqlite:///{tmp_path / 'durable.db'}")
    connections = [engine.raw_connection() for _ in range(3)]  # each pooled one, not the first
    try:
        for raw in connections:
            cursor = raw.cursor()
            assert cursor.execute("PRAGMA synchronous").fetchone() == (2,)
            cursor.close()
    finally:
        for raw in connections:
            raw.close()


def test_an_empty_database_is_migrated_and_an_outdated_one_refused(tmp_path: Path) -> None:
    engine = get_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert schema_state(engine) == "empty"
    ensure_schema(engine)
    assert schema_state(engine) == "current"
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    with pytest.raises(DatabaseError, match="drip db upgrade"):
        ensure_schema(engine)


def test_an_unreachable_database_is_named_plainly() -> None:
    engine = get_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(DatabaseError, match="DRIP_DATABASE_URL: cannot reach the database"):
        schema_state(engine)


def test_the_database_files_are_their_owners_only(tmp_path: Path) -> None:
    """subscribers.db and its -wal and -shm are 0600 whatever the umask; a database made
    readable to others before is tightened when drip opens it."""
    kept = os.umask(0o022)
    try:
        path = tmp_path / "private" / "subscribers.db"
        engine = get_engine(f"sqlite:///{path}")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        reader = engine.connect()  # holds the WAL and the shared memory open
        try:
            reader.execute(text("SELECT x FROM t")).all()
            for name in ("subscribers.db", "subscribers.db-wal", "subscribers.db-shm"):
                assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600, name
        finally:
            reader.close()
        older = tmp_path / "older.db"
        older.touch(mode=0o644)
        older.chmod(0o644)
        get_engine(f"sqlite:///{older}")
        assert stat.S_IMODE(older.stat().st_mode) == 0o600
    finally:
        os.umask(kept)


_OUTBOX = table_of(OutboxMessage)


def _queued(engine: Engine) -> int:
    with session_scope(engine) as session:
        enqueue(
            session,
            NewMessage(
                kind=MessageKind.lesson,
                template="lesson-01",
                email="reader@example.com",
                dedupe_key="lesson:intro:subscriber:1",
                due_at=utcnow() - timedelta(minutes=1),
                context={"slug": "intro", "round": 2},
            ),
            "example.com",
            utcnow(),
        )
        return int(session.execute(select(_OUTBOX.c.id)).scalar_one())


def test_a_driver_statement_reads_and_writes_as_sqlalchemy_does(engine: Engine) -> None:
    """The same statement through SQLAlchemy and on the driver's cursor: the same rows,
    converted alike (aware UTC times, SQLite's times as text, JSON paths, enums)."""
    row_id = _queued(engine)
    now = utcnow()
    read = select(
        _OUTBOX.c.id,
        _OUTBOX.c.due_at,
        _OUTBOX.c.status,
        _OUTBOX.c.next_attempt_at,
        _OUTBOX.c.context["slug"].as_string(),
        _OUTBOX.c.context["round"].as_integer(),
    ).where(
        _OUTBOX.c.kind == MessageKind.lesson,
        _OUTBOX.c.due_at <= bindparam("at"),
        _OUTBOX.c.status == bindparam("status"),
    )
    params = {"at": now, "status": OutboxStatus.queued}
    with engine.begin() as conn:
        by_sqlalchemy = [tuple(r) for r in conn.execute(read, params)]
        assert DriverStatement(read).rows(conn, params) == by_sqlalchemy
    assert [r[0] for r in by_sqlalchemy] == [row_id]
    later = now + timedelta(hours=1)
    move = (
        update(_OUTBOX)
        .where(_OUTBOX.c.id == bindparam("row"))
        .values(next_attempt_at=bindparam("when"), status=OutboxStatus.deferred)
        .returning(_OUTBOX.c.id, _OUTBOX.c.next_attempt_at)
    )
    with engine.begin() as conn:
        assert DriverStatement(move).rows(conn, {"row": row_id, "when": later}) == [(row_id, later)]
        assert [tuple(r) for r in conn.execute(read, {**params, "status": "deferred"})] == [
            (row_id, by_sqlalchemy[0][1], "deferred", later, "intro", 2)
        ]


def test_a_sized_statement_takes_any_number_of_items(engine: Engine) -> None:
    """Rows inserted a chunk at a time, whatever their number, and IN lists of any
    length (padded with a repeat, cut in chunks) matching each row once."""
    row_id = _queued(engine)
    attempts = table_of(DeliveryAttempt)

    def build(typed: bool) -> Sized:
        at = attempts.c.at.type if typed else None
        return Sized(
            lambda n: insert(attempts).values(
                [
                    {"outbox_id": row_id, "status": "sent", "at": bindparam(f"at_{i}", type_=at)}
                    for i in range(n)
                ]
            ),
            pad=False,
        )

    log = build(typed=True)
    pick = Sized(
        lambda n: select(attempts.c.id).where(
            attempts.c.id.in_([bindparam(f"id_{i}", type_=Integer) for i in range(n)])
        ),
        pad=True,
    )
    now = utcnow()
    with engine.begin() as conn:
        log.rows(conn, {}, [{"at": now + timedelta(seconds=n)} for n in range(37)])
        ids = list(conn.execute(select(attempts.c.id).order_by(attempts.c.id)).scalars())
        assert len(ids) == 37
        # Stored as SQLAlchemy stores them: equal in SQL to the same times bound by it.
        same = select(func.count()).where(attempts.c.at == bindparam("at", type_=UTCDateTime()))
        assert conn.execute(same, {"at": now + timedelta(seconds=3)}).scalar() == 1
        with pytest.raises(ValueError, match="needs its type"):  # else stored unconverted
            build(typed=False).rows(conn, {}, [{"at": now}, {"at": now}])
        for some in (ids[:1], ids[:5], ids[3:20], ids):
            found = [row_id for (row_id,) in pick.rows(conn, {}, [{"id": i} for i in some])]
            assert sorted(found) == some


def test_a_driver_error_is_sqlalchemys_and_rolls_back(engine: Engine) -> None:
    _queued(engine)
    attempts = table_of(DeliveryAttempt)
    log = DriverStatement(
        insert(attempts).values(outbox_id=bindparam("row"), status="sent", at=bindparam("at"))
    )
    with pytest.raises(IntegrityError), engine.begin() as conn:
        log.rows(conn, {"row": 1_000_000, "at": utcnow()})  # no such message
    with engine.begin() as conn:
        assert conn.execute(select(attempts.c.id)).all() == []


def test_a_connection_lost_under_a_driver_statement_is_not_used_again(pg_url: str) -> None:
    engine = get_engine(pg_url)
    one = DriverStatement(select(literal(1)))
    with pytest.raises(DBAPIError) as raised, engine.begin() as conn:
        backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (backend,))  # and wait
        one.rows(conn, {})
    assert raised.value.connection_invalidated
    with engine.begin() as conn:
        assert one.rows(conn, {}) == [(1,)]
