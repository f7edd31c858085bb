"""Backups while drip runs, and restores that carry on without a duplicate, on both databases."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlmodel import SQLModel

from drip.backup import BackupError, backup, restore, row_counts
from drip.clock import utcnow
from drip.db import get_engine, session_scope, upgrade
from drip.models import DeliveryAttempt, OutboxMessage, OutboxStatus
from drip.sending.tick import run_pass
from drip.settings import Settings
from tests.conftest import SettingsFactory
from tests.factories import many_active
from tests.mailserver import MailServer, Recorder, serve
from tests.processes import queue_lessons, start_worker
from tests.waiting import wait_until

WORKER_SECRET = "x" * 32  # the key tests.processes.start_worker gives its worker


def table_rows(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every drip table, in primary-key order, for comparing two databases."""
    with engine.connect() as conn:
        return {
            table.name: [
                tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key))
            ]
            for table in SQLModel.metadata.sorted_tables
        }


def sent_ids(engine: Engine) -> set[str]:
    with session_scope(engine) as session:
        rows = session.execute(
            select(OutboxMessage.message_id).where(OutboxMessage.status == OutboxStatus.sent)
        )
        return set(rows.scalars())


def drip_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drip.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_backup_taken_mid_send_restores_and_carries_on_without_a_duplicate(
    settings: Settings,
    engine: Engine,
    empty_database_url: str,
    mail_server: MailServer,
    tmp_path: Path,
    make_settings: SettingsFactory,
) -> None:
    everything = queue_lessons(engine, 300)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_until(lambda: len(sent_ids(engine)) >= 30, 60, "the worker to send 30")
        copy = backup(settings.database_url, tmp_path / "mid-send.backup")
        assert len(sent_ids(engine)) < len(everything), "the backup was not taken mid-send"
    finally:
        worker.terminate()
        worker.wait(30)

    restored = restore(empty_database_url, tmp_path / "mid-send.backup")
    assert restored.rows["outbox"] == copy.rows["outbox"] == len(everything)
    target = get_engine(empty_database_url)
    snapshot_sent = sent_ids(target)
    assert snapshot_sent, "the snapshot holds the messages sent before it"
    # A consistent snapshot: each message it calls sent has its 250 attempt, and no more.
    with session_scope(target) as session:
        attempts = session.execute(select(DeliveryAttempt)).scalars().all()
        ids = {m.id: m.message_id for m in session.execute(select(OutboxMessage)).scalars().all()}
    sent_attempts = [ids[a.outbox_id] for a in attempts if a.status == OutboxStatus.sent]
    assert sorted(sent_attempts) == sorted(snapshot_sent)

    # The restored system delivers the rest, once each, and nothing it already sent.
    second = Recorder()
    with serve(second) as sink:
        restored_settings = make_settings(empty_database_url, sink.port, secret_key=WORKER_SECRET)
        # A day on: the snapshot's leases and any deferral are over (no course is running).
        later = utcnow() + timedelta(days=1)

        def drained() -> bool:
            asyncio.run(run_pass(restored_settings, later))
            return sent_ids(target) == everything

        wait_until(drained, 120, "the restored system to deliver the rest")
    delivered_after = second.message_ids()
    assert len(delivered_after) == len(set(delivered_after))
    assert set(delivered_after).isdisjoint(snapshot_sent)
    assert set(delivered_after) | snapshot_sent == everything


def test_a_restore_holds_exactly_what_was_backed_up(
    settings: Settings, engine: Engine, empty_database_url: str, tmp_path: Path
) -> None:
    queue_lessons(engine, 40)
    asyncio.run(run_pass(settings))
    before = table_rows(engine)
    assert before["delivery_attempt"], "something was sent before the backup"

    backup(settings.database_url, tmp_path / "copy.backup")
    restore(empty_database_url, tmp_path / "copy.backup")

    assert table_rows(get_engine(empty_database_url)) == before


def test_a_sqlite_backup_moves_into_postgresql(
    tmp_path: Path, mail_server: MailServer, pg_url: str, make_settings: SettingsFactory
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    upgrade(get_engine(sqlite_url))
    source = make_settings(sqlite_url, mail_server.port)
    queue_lessons(get_engine(sqlite_url), 30)
    asyncio.run(run_pass(source))
    backup(sqlite_url, tmp_path / "move.backup")

    restore(pg_url, tmp_path / "move.backup", force=True)

    assert table_rows(get_engine(pg_url)) == table_rows(get_engine(sqlite_url))
    # New rows in PostgreSQL take ids after the copied ones.
    more = many_active(get_engine(pg_url), 1, prefix="m")
    assert more[0].id is not None
    assert more[0].id > 30


def test_restore_refuses_a_database_that_holds_data_unless_forced(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    many_active(engine, 3)
    backup(database_url, tmp_path / "three.backup")
    many_active(engine, 2, prefix="l")

    with pytest.raises(BackupError, match="not empty.*--force"):
        restore(database_url, tmp_path / "three.backup")
    assert row_counts(engine)["subscriber"] == 5

    restore(database_url, tmp_path / "three.backup", force=True)
    assert row_counts(engine)["subscriber"] == 3


def test_the_backup_file_is_readable_only_by_its_owner(database_url: str, tmp_path: Path) -> None:
    made = tmp_path / "private.backup"
    backup(database_url, made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o600


def test_restore_names_what_is_wrong_with_the_file(database_url: str, tmp_path: Path) -> None:
    not_a_backup = tmp_path / "notes.txt"
    not_a_backup.write_text("hello")
    with pytest.raises(BackupError, match="not a drip backup"):
        restore(database_url, not_a_backup)
    with pytest.raises(BackupError, match="cannot read the backup"):
        restore(database_url, tmp_path / "missing.backup")


def test_a_postgresql_backup_does_not_restore_into_sqlite(pg_url: str, tmp_path: Path) -> None:
    backup(pg_url, tmp_path / "pg.backup")
    with pytest.raises(BackupError, match="restores only into PostgreSQL"):
        restore(f"sqlite:///{tmp_path / 'new.db'}", tmp_path / "pg.backup")


def test_backup_and_restore_commands(
    database_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    many_active(get_engine(database_url), 4)
    env = {"DRIP_DATABASE_URL": database_url, "DRIP_SECRET_KEY": WORKER_SECRET}
    made = drip_cli("backup", str(tmp_path / "cli.backup"), env=env)
    assert made.returncode == 0, made.stderr
    assert "4 subscribers" in made.stdout

    into = {**env, "DRIP_DATABASE_URL": empty_database_url}
    assert drip_cli("restore", str(tmp_path / "cli.backup"), env=into).returncode == 0
    again = drip_cli("restore", str(tmp_path / "cli.backup"), env=into)
    assert again.returncode == 2
    assert again.stderr.startswith("drip: ")
    assert "--force" in again.stderr
    assert "Traceback" not in again.stderr
