"""The web app's signup writer: one thread counts the posts that arrive together against
the rate limits and stores their signups.

Why: a signup is a short write and SQLite takes one writer at a time. Threads of
the pool racing for BEGIN IMMEDIATE wait in SQLite's busy handler, which sleeps
between tries, so under load a signup could wait for seconds. One thread
writes in arrival order instead, and posts that arrived meanwhile share one
transaction for their limits and one for their signups (on PostgreSQL, one commit
to disk each), so the cost of each falls as the load rises. The thread ends when
idle and starts again on the next post.

The rules of a signup stay in drip.signup (`store_many`), those of the limits in
drip.limits; this is only how the web process hands them over.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from drip.clock import Clock, utcnow
from drip.db import session_scope
from drip.limits import Admission, SignupLimits, purge
from drip.settings import Settings
from drip.signup import Signup, store_many

#: How often the writer deletes limit rows that no longer limit anyone.
PURGE_EVERY = timedelta(minutes=10)
#: Tries of a batch's limits when the database aborts its transaction (a deadlock).
ADMIT_TRIES = 3


@dataclass(frozen=True)
class _Job:
    signup: Signup | None
    client: str
    future: Future[Admission]


class Writer:
    """Counts the web app's posts and stores their signups from one thread, whatever
    arrived together in one go. Without `limits`, every post is let through."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        batch: int = 128,
        idle: float = 10.0,
        clock: Clock = utcnow,
        *,
        limits: SignupLimits | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        self.batch = batch
        self.idle = idle
        self.limits = limits
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._purged: datetime | None = None

    async def store(self, item: Signup | None, client: str = "unknown") -> Admission:
        """Once the post is counted and its signup (if any) committed: whether the limits
        let it through, and if not, which one refused it. Raises what storing it raised."""
        return await asyncio.wrap_future(self.submit(item, client))

    def submit(self, item: Signup | None, client: str = "unknown") -> Future[Admission]:
        """`item`: a valid signup, or None for a post that stores nothing (still counted
        against `client`, the key drip.web.proxies gives the post's client)."""
        future: Future[Admission] = Future()
        with self._lock:
            self._queue.put(_Job(item, client, future))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="drip-signup-writer", daemon=True
                )
                self._thread.start()
        return future

    def _run(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=self.idle)]
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            while len(batch) < self.batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)

    def _admit(self, batch: list[_Job], now: datetime) -> list[Admission]:
        limits = self.limits
        if limits is None:
            return [Admission.admitted] * len(batch)
        for attempt in range(1, ADMIT_TRIES + 1):
            try:
                with session_scope(self.engine) as session:
                    admitted = [
                        limits.verdict(
                            session, job.client, job.signup.email if job.signup else None, now
                        )
                        for job in batch
                    ]
                    if self._purged is None or now - self._purged > PURGE_EVERY:
                        purge(session, now)
                        self._purged = now
                return admitted
            except OperationalError:
                # On PostgreSQL two processes' batches can lock the same two rows in
                # opposite orders; the server then aborts one of them. Nothing of it
                # was counted, so counting the batch again is exact.
                if attempt == ADMIT_TRIES:
                    raise
        raise AssertionError("unreachable")

    def _write(self, batch: list[_Job]) -> None:
        try:
            now = self.clock()
            admitted = self._admit(batch, now)
            signups = [
                job.signup
                for job, ok in zip(batch, admitted, strict=True)
                if ok == Admission.admitted and job.signup
            ]
            if signups:
                store_many(self.engine, self.settings, signups, now)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for job in batch:
                job.future.set_exception(exc)
        else:
            for job, ok in zip(batch, admitted, strict=True):
                job.future.set_result(ok)
