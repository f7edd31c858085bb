"""The real `drip worker` process: killed mid-send and restarted, or stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import Engine, select

from drip.clock import utcnow
from drip.db import session_scope
from drip.models import MessageKind, OutboxMessage, OutboxStatus
from drip.outbox import NewMessage, enqueue_many
from drip.settings import Settings
from tests.factories import attempts, many_active
from tests.mailserver import Recorder


def _queue_lessons(engine: Engine, count: int) -> set[str]:
    subs = many_active(engine, count)
    with session_scope(engine) as session:
        enqueue_many(
            session,
            [
                NewMessage(
                    kind=MessageKind.lesson,
                    template="lesson-01-what-trigger-points-are",
                    email=s.email,
                    dedupe_key=f"lesson:what-trigger-points-are:subscriber:{s.id}",
                    due_at=utcnow(),
                    subscriber_id=s.id,
                    context={
                        "slug": "what-trigger-points-are",
                        "lesson_number": 1,
                        "lesson_total": 8,
                    },
                )
                for s in subs
            ],
            "localhost",
        )
        return set(session.execute(select(OutboxMessage.message_id)).scalars())


def _start(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DRIP_DATABASE_URL": settings.database_url,
        "DRIP_SMTP_PORT": str(settings.smtp_port),
        "DRIP_SECRET_KEY": "x" * 32,
        "DRIP_EMAILS_DIR": str(settings.emails_dir),
        "DRIP_INFO_PACK": str(settings.info_pack),
        "DRIP_WORKER_INTERVAL": "0.2",
        "DRIP_LEASE_SECONDS": "3",
        "DRIP_SEND_RATE": "0",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "drip.cli", "worker"], env=env, stdout=out, stderr=out
        )


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_worker_killed_mid_send_loses_nothing(
    settings: Settings, engine: Engine, recorder: Recorder, tmp_path: Path
) -> None:
    expected = _queue_lessons(engine, 600)
    log = tmp_path / "worker.log"
    kills = 3
    for round_ in range(1, kills + 1):
        worker = _start(settings, log)
        try:
            target = 120 * round_
            _wait(lambda: len(recorder.raw) >= target, 60, f"sends before kill {round_}")  # noqa: B023
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
    worker = _start(settings, log)
    try:
        _wait(lambda: set(recorder.message_ids()) >= expected, 120, "every message delivered")
    finally:
        worker.terminate()
        assert worker.wait(30) == 0, log.read_text()[-2000:]
    received = Counter(recorder.message_ids())
    assert set(received) == expected
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates <= kills * settings.smtp_concurrency
    # The send log agrees with the sink: one `sent` row per message, never two.
    sent = Counter(a.outbox_id for a in attempts(engine) if a.status == OutboxStatus.sent)
    assert len(sent) == len(expected) and max(sent.values()) == 1
    with session_scope(engine) as session:
        statuses = set(session.execute(select(OutboxMessage.status)).scalars())
    assert statuses == {OutboxStatus.sent}


def test_sigterm_finishes_in_flight_mail_and_hands_back_the_rest(
    settings: Settings, engine: Engine, recorder: Recorder, tmp_path: Path
) -> None:
    expected = _queue_lessons(engine, 400)
    log = tmp_path / "worker.log"
    worker = _start(settings, log)
    _wait(lambda: len(recorder.raw) >= 50, 60, "the first sends")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, log.read_text()[-2000:]
    assert "stopped" in log.read_text()
    with session_scope(engine) as session:
        rows = list(session.execute(select(OutboxMessage)).scalars())
    # Nothing is left leased to the stopped worker: what was not sent is queued for the next.
    assert {r.status for r in rows} <= {OutboxStatus.sent, OutboxStatus.queued}
    assert all(r.leased_by is None for r in rows)
    sent = {r.message_id for r in rows if r.status == OutboxStatus.sent}
    assert sent == set(recorder.message_ids()) and len(sent) < len(expected)
