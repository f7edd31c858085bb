"""The web app's signup writer: one thread stores the signups that arrive together.

Why: a signup is a short write and SQLite takes one writer at a time. Threads of
the pool racing for BEGIN IMMEDIATE wait in SQLite's busy handler, which sleeps
between tries, so under load a signup could wait for seconds. One thread
writes in arrival order instead, and signups that arrived meanwhile share one
transaction (on PostgreSQL, one commit to disk), so the cost of each falls as the
load rises. The thread ends when idle and starts again on the next signup.

The rules of a signup stay in drip.signup (`store_many`); this is only how the web
process hands them over.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future

from sqlalchemy import Engine

from drip.clock import Clock, utcnow
from drip.settings import Settings
from drip.signup import Signup, store_many


class Writer:
    """Stores the web app's signups from one thread, whatever arrived together in one go."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        batch: int = 128,
        idle: float = 10.0,
        clock: Clock = utcnow,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        self.batch = batch
        self.idle = idle
        self._queue: queue.SimpleQueue[tuple[Signup, Future[None]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    async def store(self, item: Signup) -> None:
        """Return once the signup is committed; raise what storing it raised."""
        await asyncio.wrap_future(self.submit(item))

    def submit(self, item: Signup) -> Future[None]:
        future: Future[None] = Future()
        with self._lock:
            self._queue.put((item, future))
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

    def _write(self, batch: list[tuple[Signup, Future[None]]]) -> None:
        try:
            store_many(self.engine, self.settings, [item for item, _ in batch], self.clock())
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for _, future in batch:
                future.set_exception(exc)
        else:
            for _, future in batch:
                future.set_result(None)
