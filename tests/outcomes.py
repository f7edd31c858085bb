"""Delivery outcomes for the send log's and the operator's tests, and the log read back.

`deliver` records an outcome straight into the outbox, no SMTP involved; `bounce` has
the test SMTP server refuse an address for good, for tests that run a real pass.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from drip.clock import utcnow
from drip.db import read_scope, session_scope
from drip.models import OutboxMessage, OutboxStatus
from drip.sending.outbox import Result, claim, record, release
from drip.sendlog import LogEntry, LogFilter, entries
from tests import mailserver
from tests.mailserver import Recorder

LEASE = timedelta(minutes=5)
OK = Result(OutboxStatus.sent, 250, "2.0.0 OK")
BUSY = Result(OutboxStatus.deferred, 451, "4.3.0 try again later")


def deliver(engine: Engine, result: Result, email: str | None = None) -> list[OutboxMessage]:
    """Claim what is due, record `result` for it (or only for `email`'s), hand back the rest."""
    rows = claim(engine, "w1", utcnow() + timedelta(seconds=1), 100, LEASE)
    done = [r for r in rows if email is None or r.email == email]
    with session_scope(engine) as session:
        for row in done:
            retry_now = Result(result.status, result.smtp_code, result.smtp_message, utcnow())
            record(session, [(row, retry_now)], "w1", utcnow())
    release(engine, "w1", [r.id for r in rows if r not in done and r.id is not None], utcnow())
    return done


def read_log(engine: Engine, **kw: object) -> list[LogEntry]:
    with read_scope(engine) as session:
        return entries(session, LogFilter(**kw))  # type: ignore[arg-type]


def bounce(recorder: Recorder, address: str) -> None:
    """The real SMTP server refuses `address` for good."""
    recorder.on_data = lambda env: mailserver.NO_SUCH_USER if address in env.rcpt_tos else None
