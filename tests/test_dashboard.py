"""The dashboard's counts on both databases, after a real scheduler pass."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from drip.clock import utcnow
from drip.dashboard import dashboard
from drip.db import read_scope, session_scope
from drip.models import WorkerHeartbeat
from drip.settings import Settings
from tests.factories import subscriber, tick
from tests.mailserver import Recorder
from tests.outcomes import bounce


def test_dashboard_counts(settings: Settings, engine: Engine, recorder: Recorder) -> None:
    subscriber(settings, "a@example.com")
    subscriber(settings, "b@example.com")
    subscriber(settings, "c@example.com", active=False)
    bounce(recorder, "b@example.com")
    tick(settings)
    subscriber(settings, "d@example.com", active=False)
    now = utcnow()
    with session_scope(engine) as session:
        session.add(WorkerHeartbeat(worker="old", last_pass_at=now - timedelta(hours=1)))
        session.add(WorkerHeartbeat(worker="gone", last_pass_at=now - timedelta(days=2)))
    with read_scope(engine) as session:
        board = dashboard(session, now)
    assert board.today == {"sent": 2, "deferred": 0, "failed": 0, "bounced": 1}
    assert board.last_30_days == board.today
    assert board.subscribers["active"] == 1
    assert board.subscribers["bounced"] == 1
    assert board.subscribers["pending"] == 2
    assert board.subscribers["unsubscribed"] == 0
    assert len(board.sends_per_day) == 30
    assert board.sends_per_day[-1] == (now.date(), 2)
    assert sum(n for _, n in board.sends_per_day) == 2
    assert dict(board.progress) == {0: 1}
    assert board.finished == 0
    assert board.stopped == 1
    assert board.waiting == 1  # d's confirmation
    names = [w.worker for w in board.workers]
    assert names[-1] == "old"
    assert len(names) == 2
    assert board.workers_alive()
    # A worker silent for an hour is marked stale; one silent for days is only counted.
    assert [w.stale for w in board.workers] == [False, True]
    assert board.workers_gone == 1
