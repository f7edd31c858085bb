"""A consistent copy of the whole database while drip runs, and its restore.

SQLite: the online backup API copies a snapshot page by page while writers carry on,
and `PRAGMA integrity_check` proves the copy before it takes the file's name.
PostgreSQL: `pg_dump` in its custom format (one snapshot, restored by `pg_restore`).
A SQLite backup also restores into PostgreSQL, row by row through the models: that is
how a course moves from one machine's SQLite to a PostgreSQL server.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, MetaData, Table, func, inspect, select, text
from sqlalchemy.engine import URL
from sqlmodel import SQLModel

from drip.db import DatabaseError, get_engine, is_postgresql, upgrade

SQLITE_MAGIC = b"SQLite format 3\x00"
PG_DUMP_MAGIC = b"PGDMP"
BATCH = 1000


class BackupError(DatabaseError):
    """A backup or restore cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class Copied:
    """What a backup or restore carried: the format and the rows per table."""

    kind: str
    rows: dict[str, int]

    def summary(self) -> str:
        subscribers = self.rows.get("subscriber", 0)
        messages = self.rows.get("outbox", 0)
        attempts = self.rows.get("delivery_attempt", 0)
        return (
            f"{subscribers} subscribers, {messages} outbox messages, "
            f"{attempts} send attempts ({self.kind})"
        )


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows in each of drip's tables that exist in this database."""
    with engine.connect() as conn:
        present = set(inspect(conn).get_table_names())
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in SQLModel.metadata.sorted_tables
            if table.name in present
        }


def backup(url: str, dest: Path) -> Copied:
    """Write a consistent copy of the database at `url` to `dest` (readable only by its owner)."""
    engine = get_engine(url)
    if dest.exists() and dest.is_dir():
        raise BackupError(f"{dest} is a directory; name a file to write the backup to")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    part.unlink(missing_ok=True)
    # Created 0600 before anything is written into it: a backup holds every address.
    os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        if is_postgresql(engine):
            _pg_dump(engine.url, part)
            kind = "postgresql pg_dump"
        else:
            _sqlite_backup(_sqlite_path(engine.url), part)
            kind = "sqlite, integrity ok"
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return Copied(kind, row_counts(engine))


def restore(url: str, source: Path, *, force: bool = False) -> Copied:
    """Load the backup `source` into the database at `url`, which must be empty unless
    `force`; then bring its schema up to date."""
    kind = _backup_kind(source)
    engine = get_engine(url)
    counts = row_counts(engine)
    held = {name: n for name, n in counts.items() if n}
    if held and not force:
        raise BackupError(
            f"the database at DRIP_DATABASE_URL is not empty ({_describe(held)}); restore "
            "into an empty database, or pass --force to replace what it holds"
        )
    if kind == "postgresql":
        if not is_postgresql(engine):
            raise BackupError(
                f"{source} is a PostgreSQL backup (pg_dump); it restores only into PostgreSQL"
            )
        _drop_drip_tables(engine)
        _pg_restore(engine.url, source)
    elif is_postgresql(engine):
        _copy_sqlite_into(source, engine)
    else:
        engine.dispose()
        with sqlite3.connect(source) as src, sqlite3.connect(_sqlite_path(engine.url)) as dst:
            src.backup(dst)
        engine.dispose()
    upgrade(engine)
    return Copied(kind, row_counts(engine))


def _describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} rows in {name}" for name, n in sorted(counts.items()))


def _backup_kind(source: Path) -> str:
    try:
        with source.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise BackupError(f"cannot read the backup {source}: {exc.strerror}") from None
    if head == SQLITE_MAGIC:
        _check_integrity(source)
        return "sqlite"
    if head.startswith(PG_DUMP_MAGIC):
        return "postgresql"
    raise BackupError(f"{source} is not a drip backup (neither a SQLite file nor a pg_dump)")


def _sqlite_path(url: URL) -> str:
    if not url.database or url.database == ":memory:":
        raise BackupError("DRIP_DATABASE_URL: an in-memory SQLite database has no file to copy")
    return url.database


def _sqlite_backup(path: str, part: Path) -> None:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as src, sqlite3.connect(part) as dst:
        src.backup(dst)
        # One self-contained file: no -wal beside it to forget when copying it away.
        dst.execute("PRAGMA journal_mode = DELETE")
    _check_integrity(part)


def _check_integrity(path: Path) -> None:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            result = conn.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is damaged: {exc}") from None
    if result != "ok":
        raise BackupError(f"{path} failed SQLite's integrity check: {result}")


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is missing: install PostgreSQL's client tools "
            "(Debian: apt-get install postgresql-client)"
        )
    return found


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password, and an environment carrying it (never in argv)."""
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run(argv: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
        raise BackupError(f"{Path(argv[0]).name} failed: {lines[0]}")


def _pg_dump(url: URL, part: Path) -> None:
    dsn, env = _libpq(url)
    argv = [_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges"]
    _run([*argv, f"--file={part}", f"--dbname={dsn}"], env)


def _pg_restore(url: URL, source: Path) -> None:
    dsn, env = _libpq(url)
    argv = [_pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error"]
    _run([*argv, "--single-transaction", f"--dbname={dsn}", str(source)], env)


def _drop_drip_tables(engine: Engine) -> None:
    """Remove drip's tables (and the schema's version) so a restore starts from nothing."""
    with engine.begin() as conn:
        present = MetaData()
        present.reflect(conn)
        present.drop_all(conn)


def _copy_sqlite_into(source: Path, engine: Engine) -> None:
    """Copy a SQLite backup's rows into PostgreSQL through the current schema."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "backup.db"
        shutil.copyfile(source, copy)
        staged = get_engine(f"sqlite:///{copy}")
        try:
            upgrade(staged)  # an older backup first gains today's columns
            _drop_drip_tables(engine)
            upgrade(engine)
            with staged.connect() as src, engine.begin() as dst:
                for table in SQLModel.metadata.sorted_tables:
                    _copy_table(table, src, dst)
        finally:
            staged.dispose()


def _copy_table(table: Table, src: Connection, dst: Connection) -> None:
    rows = src.execute(select(table)).mappings()
    while batch := [dict(row) for row in rows.fetchmany(BATCH)]:
        dst.execute(table.insert(), batch)
    for column in table.primary_key.columns:
        if column.autoincrement is True or (
            column.autoincrement == "auto" and column.type.python_type is int
        ):
            dst.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                    f"COALESCE(MAX({column.name}), 1), MAX({column.name}) IS NOT NULL) "
                    f"FROM {table.name}"
                )
            )
