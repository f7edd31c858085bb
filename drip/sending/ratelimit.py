"""DRIP_SEND_RATE as a token bucket kept in the database, shared by every worker.

Workers take a few tokens per round trip. The same row holds a pause that a 421
or throttling reply sets, so one server's "slow down" slows every worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, select
from sqlmodel import Session, col

from drip.db import for_update, insert_ignoring, session_scope
from drip.models import SendBudget

BUCKET = "smtp"
#: Longest pause a throttling reply may impose; anything longer was set by a clock far ahead.
MAX_PAUSE = timedelta(hours=1)
UNLIMITED_CHUNK = 50
#: Without a rate, the bucket is asked about a pause at most this often (seconds) ...
PAUSE_CHECK_SECONDS = 1.0
#: A refill time further ahead than this was written by a clock travelling in time.
FAR_AHEAD = timedelta(minutes=1)


def _row(session: Session, now: datetime) -> SendBudget:
    """The bucket row, locked for this transaction; created once, race-free."""
    session.execute(
        insert_ignoring(session, SendBudget).values(name=BUCKET, tokens=0.0, refilled_at=now)
    )
    row: SendBudget = session.execute(
        for_update(session, select(SendBudget).where(col(SendBudget.name) == BUCKET))
    ).scalar_one()
    return row


def take(engine: Engine, rate: float, wanted: int, now: datetime) -> tuple[int, float]:
    """Take up to `wanted` tokens: (granted, seconds to wait before asking again).

    A rate of 0 means no limit; the shared pause still holds.
    """
    capacity = max(rate, 1.0)
    with session_scope(engine) as session:
        row = _row(session, now)
        if row.paused_until is not None and now < row.paused_until <= now + MAX_PAUSE:
            return 0, (row.paused_until - now).total_seconds()
        if rate <= 0:
            return wanted, 0.0
        if row.refilled_at > now + FAR_AHEAD:  # written by `drip tick --now` in the future
            row.refilled_at, row.tokens = now, capacity
        # `now` was read before this transaction waited for the row's lock, so another
        # worker may have refilled a moment later: that is no time elapsed, not a reset.
        elapsed = max((now - row.refilled_at).total_seconds(), 0.0)
        tokens = min(capacity, row.tokens + elapsed * rate)
        granted = min(wanted, int(tokens))
        row.tokens = tokens - granted
        row.refilled_at = max(now, row.refilled_at)
        session.add(row)
    wait = 0.0 if granted else (1.0 - tokens) / rate
    return granted, wait


def pause(engine: Engine, until: datetime, reason: str, now: datetime) -> None:
    """Hold every worker's sending until `until` (never shortens a longer pause)."""
    with session_scope(engine) as session:
        row = _row(session, now)
        if row.paused_until is None or row.paused_until < until:
            row.paused_until = until
            row.pause_reason = reason[:1000]
            session.add(row)


class Limiter:
    """A worker's view of the shared bucket; `rate == 0` means no limit at all."""

    def __init__(
        self, engine: Engine, rate: float, clock: Callable[[], datetime], chunk: int
    ) -> None:
        self.engine = engine
        self.rate = rate
        self.clock = clock
        # Without a rate the bucket is only asked about a pause: once per UNLIMITED_CHUNK
        # sends, and no more than once per PAUSE_CHECK_SECONDS (a transaction each time).
        self.chunk = UNLIMITED_CHUNK if rate <= 0 else max(1, min(chunk, int(rate)))
        self._tokens = 0
        self._lock = asyncio.Lock()
        #: Without a rate: until then (monotonic), a used-up chunk is renewed without asking.
        self._asked_until = 0.0

    async def acquire(self) -> None:
        if self._tokens and not self._lock.locked():
            self._tokens -= 1
            return
        async with self._lock:
            while self._tokens == 0:
                if self.rate <= 0 and time.monotonic() < self._asked_until:
                    self._tokens = self.chunk
                    break
                granted, wait = await asyncio.to_thread(
                    take, self.engine, self.rate, self.chunk, self.clock()
                )
                if granted:
                    self._tokens = granted
                    self._asked_until = time.monotonic() + PAUSE_CHECK_SECONDS
                else:
                    await asyncio.sleep(min(max(wait, 0.01), 5.0))
            self._tokens -= 1

    async def pause(self, seconds: float, reason: str) -> None:
        self._tokens = 0
        self._asked_until = 0.0
        now = self.clock()
        await asyncio.to_thread(pause, self.engine, now + timedelta(seconds=seconds), reason, now)
