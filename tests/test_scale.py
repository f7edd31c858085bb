"""Several real `drip worker` processes on one outbox: each message once, one shared rate."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine

from drip.models import OutboxStatus
from tests.conftest import SettingsFactory
from tests.factories import attempts, outbox
from tests.mailserver import Recorder, serve
from tests.processes import queue_lessons, start_worker
from tests.waiting import wait_until

pytestmark = pytest.mark.process

WORKERS = 3
MESSAGES = 450
RATE = 100.0  # messages a second, for all workers together


def _all_sent(engine: Engine) -> bool:
    return all(row.status == OutboxStatus.sent for row in outbox(engine))


def test_workers_on_several_processes_share_the_outbox_and_one_rate(
    database_url: str, engine: Engine, tmp_path: Path, make_settings: SettingsFactory
) -> None:
    arrivals: list[float] = []
    recorder = Recorder(on_data=lambda _: arrivals.append(time.monotonic()) and None)
    with serve(recorder) as server:
        settings = make_settings(database_url, server.port, send_rate=RATE)
        expected = queue_lessons(engine, MESSAGES)
        log = tmp_path / "workers.log"
        workers = [start_worker(settings, log) for _ in range(WORKERS)]
        try:
            wait_until(lambda: len(recorder.raw) >= MESSAGES, 120, "every message")
            # Each send reaches the server before its outcome is recorded, so once every
            # row is recorded as sent, a duplicate, were there one, has arrived too.
            wait_until(lambda: _all_sent(engine), 60, "every row recorded as sent")
        finally:
            for worker in workers:
                worker.terminate()
            codes = [worker.wait(30) for worker in workers]
    assert codes == [0] * WORKERS, log.read_text()[-2000:]
    received = recorder.message_ids()
    assert Counter(received) == Counter(expected)  # each exactly once
    assert all(row.status == OutboxStatus.sent for row in outbox(engine))
    # The work was shared: more than one process sent.
    assert len({a.worker for a in attempts(engine)}) >= 2
    # And the rate was shared: after the bucket's first burst (RATE tokens), the three
    # workers together never went faster than RATE. Apart, they would be three times faster.
    span = arrivals[-1] - arrivals[0]
    assert span >= (MESSAGES - RATE) / RATE * 0.95, f"{MESSAGES} messages in {span:.2f} s"
