"""The schema and the engine: migrations match the models, SQLite is tuned for workers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text
from sqlmodel import SQLModel

from drip.db import DatabaseError, ensure_schema, get_engine, schema_state


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
