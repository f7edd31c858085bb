"""One way to wait in a test: for a condition, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], object],
    timeout: float,
    what: str,
    *,
    every: float = 0.05,
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Return once `condition()` is true; fail naming `what` after `timeout` seconds.

    `abort`, asked between polls, returns a reason to fail at once (a process that
    died, a thread that stopped) rather than wait out the timeout.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if abort is not None and (reason := abort()) is not None:
            raise AssertionError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
