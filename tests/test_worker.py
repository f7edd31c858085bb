"""The real `drip worker` process: killed mid-send and restarted, or stopped with SIGTERM."""

from __future__ import annotations

import bisect
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope
from sqlalchemy import Engine, select

from drip.db import read_scope, session_scope
from drip.models import OutboxMessage, OutboxStatus
from drip.sendlog import MAX_LIMIT, LogFilter, entries
from drip.settings import Settings
from tests.conftest import SettingsFactory
from tests.factories import attempts
from tests.mailserver import OK, Recorder, serve
from tests.processes import queue_lessons, start_worker
from tests.waiting import wait_until

pytestmark = pytest.mark.process


class CountingSink:
    """An SMTP sink that only notes each message's Message-ID, in arrival order.

    Parsing 5,000 messages would slow the very drain under test, so the ID is cut
    from the header block with a regular expression.
    """

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        head = raw.split(b"\r\n\r\n", 1)[0]
        found = MESSAGE_ID.search(head)
        self.ids.append(found.group(1).decode() if found else "<none>")
        return OK


MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.I | re.M)
TOTAL = 5_000
KILLS = 10
#: The whole crash test, every kill and the final drain included, ends within this.
BUDGET = 300.0


def kill_points(rng: random.Random, total: int, kills: int, gap: int) -> list[int]:
    """`kills` random counts received, at least `gap` apart, so each kill finds the
    restarted worker well into its stream, never starting up nor draining the last rows."""
    while True:
        points = sorted(rng.sample(range(gap, total - 4 * gap), kills))
        if all(b - a >= gap for a, b in zip(points, points[1:], strict=False)):
            return points


def test_a_worker_killed_ten_times_mid_send_loses_nothing(
    database_url: str, engine: Engine, tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """The crash test: 5,000 queued messages, a real `drip worker` SIGKILLed at
    random moments 10 times and restarted; every message arrives, a duplicate only where
    a kill caught it between the server's 250 and the commit, and the send log agrees."""
    sink = CountingSink()
    seed = int(os.environ.get("DRIP_TEST_SEED") or random.randrange(2**32))  # to replay a run
    rng = random.Random(seed)
    note = f"seed {seed}"
    with serve(sink) as server:
        settings = make_settings(database_url, server.port)
        expected = queue_lessons(engine, TOTAL)
        assert len(expected) == TOTAL
        log = tmp_path / "worker.log"
        deadline = time.monotonic() + BUDGET

        def left() -> float:
            return max(deadline - time.monotonic(), 0.1)

        marks: list[int] = []  # messages received when each kill had taken effect
        for point in kill_points(rng, TOTAL, KILLS, gap=150):
            # Never a kill before the new worker has sent something of its own.
            target = max(point, marks[-1] + 50 if marks else 0)
            worker = start_worker(settings, log)
            try:
                running_until(worker, lambda: len(sink.ids) >= target, left(), log)  # noqa: B023
            finally:
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)
            assert worker.returncode == -signal.SIGKILL, log.read_text()[-2000:]  # mid-run
            # A message whose end was already sent is still counted: wait for the sink
            # to have handled and closed every connection of the killed worker.
            wait_until(lambda: server.open_sessions == 0, 10, "the killed worker's sessions")
            marks.append(len(sink.ids))
            assert len(marks) == 1 or marks[-1] > marks[-2], note
        worker = start_worker(settings, log)
        try:
            running_until(
                worker, lambda: len(sink.ids) >= TOTAL and set(sink.ids) >= expected, left(), log
            )
        finally:
            worker.terminate()
            assert worker.wait(30) == 0, log.read_text()[-2000:]
        received = list(sink.ids)

    assert set(received) == expected, note
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    # Every duplicate straddles a kill, and no kill makes more than one per connection:
    # the only window is a connection's message between the 250 and its commit.
    seen: dict[str, int] = {}
    per_kill: Counter[int] = Counter()
    for position, message_id in enumerate(received):
        if message_id in seen:
            kill = bisect.bisect_right(marks, seen[message_id])
            assert kill < len(marks), f"{message_id} sent twice without a kill between, {note}"
            assert marks[kill] <= position, (
                f"{message_id} sent twice without a kill between, {note}"
            )
            per_kill[kill] += 1
        seen[message_id] = position
    concurrency = settings.smtp_concurrency
    assert all(n <= concurrency for n in per_kill.values()), (per_kill, note)
    assert len(received) - TOTAL == sum(per_kill.values()) <= KILLS * concurrency
    # The send log (what `drip logs` and /admin/log read) agrees with the sink: one
    # `sent` entry per Message-ID received, no other outcome, every row sent.
    assert sent_in_log(engine) == Counter(expected), note
    assert {a.status for a in attempts(engine)} == {OutboxStatus.sent}
    with session_scope(engine) as session:
        statuses = set(session.execute(select(OutboxMessage.status)).scalars())
    assert statuses == {OutboxStatus.sent}


def running_until(
    worker: subprocess.Popen[bytes], predicate: Callable[[], bool], timeout: float, log: Path
) -> None:
    """Wait for `predicate` while the worker runs; a worker that dies fails the test at once.
    Polled every 10 ms, so a kill lands close to its count however fast delivery gets."""

    def died() -> str | None:
        if worker.poll() is None:
            return None
        return f"the worker exited ({worker.returncode}): {log.read_text()[-2000:]}"

    wait_until(predicate, timeout, "the worker's progress", every=0.01, abort=died)


def sent_in_log(engine: Engine) -> Counter[str]:
    """Message-IDs of the send log's `sent` entries, page by page as an operator reads it."""
    found: Counter[str] = Counter()
    before: str | None = None
    with read_scope(engine) as session:
        while True:
            page = entries(session, LogFilter(status="sent", limit=MAX_LIMIT, before_id=before))
            found.update(entry.message_id for entry in page)
            if len(page) < MAX_LIMIT:
                return found
            before = page[-1].key


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
    assert sent == set(recorder.message_ids())
    assert len(sent) < len(expected)
