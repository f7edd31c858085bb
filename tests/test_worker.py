"""The real `drip worker` process: killed mid-send and restarted, or stopped with SIGTERM."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

from sqlalchemy import Engine, select

from drip.db import session_scope
from drip.models import OutboxMessage, OutboxStatus
from drip.settings import Settings
from tests.factories import attempts
from tests.mailserver import Recorder
from tests.processes import queue_lessons, start_worker, wait_until


def test_a_worker_killed_mid_send_loses_nothing(
    settings: Settings, engine: Engine, recorder: Recorder, tmp_path: Path
) -> None:
    expected = queue_lessons(engine, 600)
    log = tmp_path / "worker.log"
    kills = 3
    for round_ in range(1, kills + 1):
        worker = start_worker(settings, log)
        try:
            target = 120 * round_
            wait_until(lambda: len(recorder.raw) >= target, 60, f"sends before kill {round_}")  # noqa: B023
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
    worker = start_worker(settings, log)
    try:
        wait_until(lambda: set(recorder.message_ids()) >= expected, 120, "every message delivered")
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
    expected = queue_lessons(engine, 400)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    wait_until(lambda: len(recorder.raw) >= 50, 60, "the first sends")
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
