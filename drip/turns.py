"""SQLite writers that take turns through a lock file instead of polling for the lock.

SQLite lets one writer in at a time; one that finds the lock taken sleeps 1, 2, 5...
ms and looks again (its busy handler): far longer than a delivery's group commit or
claim holds the lock, and a group commit waits on the delivery's event loop. A writer
that asks for its turn first waits in the kernel on an flock of `<database>-writers`
and is woken the moment the other lets go.

Only connections opened with the TAKE_TURNS execution option ask (the delivery's short
transactions); every other writer still meets SQLite's own busy handling, which also
stays behind this as it was. A process that dies lets go of its turn with its files.
"""

from __future__ import annotations

import fcntl
import os
import threading
from typing import Any

#: The execution option (True) of an engine or connection whose writes take turns.
TAKE_TURNS = "drip_take_turns"
_TURNS: dict[str, Turns] = {}


def turns_of(database: str) -> Turns:
    """The turns of this database file, one per process however its URL spells the
    path: two would let one thread wait on itself."""
    path = os.path.realpath(database)
    found = _TURNS.get(path)
    if found is None:
        found = _TURNS[path] = Turns(path)
    return found


class Turns:
    """One database's turns: an flock between processes, a lock between this process's
    threads (an flock belongs to the open file, which the threads share)."""

    def __init__(self, database: str) -> None:
        self.path = f"{database}-writers"
        self._threads = threading.Lock()
        self._file: int | None = None
        self._opened_by = 0
        #: The connection whose transaction holds the turn, and its thread.
        self._holder: Any = None
        self._holder_thread = 0

    def take(self, dbapi_connection: Any) -> None:
        """Wait for this connection's turn to write. None is taken when its thread holds
        one on another connection already: it would wait on itself, so SQLite's busy
        handling decides, as it did before turns."""
        if self._holder is not None and self._holder_thread == threading.get_ident():
            return
        self._threads.acquire()
        try:
            if self._file is None or self._opened_by != os.getpid():
                self._file = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._opened_by = os.getpid()
            fcntl.flock(self._file, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        self._holder, self._holder_thread = dbapi_connection, threading.get_ident()

    def give_back(self, dbapi_connection: Any) -> None:
        """End this connection's turn, if it holds one (its transaction is over)."""
        if self._holder is not dbapi_connection:
            return
        self._holder, self._holder_thread = None, 0
        try:
            assert self._file is not None
            fcntl.flock(self._file, fcntl.LOCK_UN)
        finally:
            self._threads.release()
