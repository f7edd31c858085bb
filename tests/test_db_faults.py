"""Database faults: a SQLite writer holding the lock, the PostgreSQL server restarting."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from drip.db import get_engine, session_scope, upgrade
from drip.models import OutboxMessage, OutboxStatus
from drip.settings import Settings
from tests.conftest import SettingsFactory, truncate_pg
from tests.factories import tick
from tests.mailserver import MailServer, Recorder
from tests.processes import queue_lessons, start_worker
from tests.waiting import wait_until

pytestmark = pytest.mark.process


@pytest.fixture
def sqlite_settings(
    tmp_path: Path, mail_server: MailServer, make_settings: SettingsFactory
) -> Settings:
    url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    upgrade(get_engine(url))
    return make_settings(url, mail_server.port)


@pytest.fixture
def pg_settings(pg_url: str, mail_server: MailServer, make_settings: SettingsFactory) -> Settings:
    truncate_pg(get_engine(pg_url))
    return make_settings(pg_url, mail_server.port)


def test_a_pass_waits_for_another_sqlite_writer(
    sqlite_settings: Settings, recorder: Recorder
) -> None:
    settings = sqlite_settings
    engine = get_engine(settings.database_url)
    expected = queue_lessons(engine, 20)
    path = settings.database_url.removeprefix("sqlite:///")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process writing for a while
    released = threading.Timer(1.5, lambda: other.execute("COMMIT"))
    released.start()
    try:
        report = tick(settings)
    finally:
        released.join()
        other.close()
    assert report.delivery.counts == {"sent": 20}
    assert set(recorder.message_ids()) == expected


def _restart_postgres() -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.exclusive
def test_the_worker_rides_out_a_postgres_restart(
    pg_settings: Settings, recorder: Recorder, tmp_path: Path
) -> None:
    settings = pg_settings
    engine = get_engine(settings.database_url)
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        pytest.fail("pg_ctlcluster is needed to restart the local PostgreSQL server")
    expected = queue_lessons(engine, 600)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        wait_until(lambda: len(recorder.raw) >= 100, 60, "the first sends")
        _restart_postgres()
        wait_until(
            lambda: set(recorder.message_ids()) >= expected, 180, "every message after restart"
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    engine.dispose()  # the test's own pooled connections died with the server
    received = Counter(recorder.message_ids())
    assert sum(n - 1 for n in received.values()) <= settings.smtp_concurrency

    def statuses() -> Counter[OutboxStatus]:
        with session_scope(engine) as session:
            return Counter(session.execute(select(OutboxMessage.status)).scalars())

    wait_until(lambda: statuses() == {OutboxStatus.sent: len(expected)}, 30, "every row sent")
