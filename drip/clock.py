"""One notion of "now", always timezone-aware UTC, so `drip tick --now` can travel in time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

#: What code that runs on (a delivery run, a rate limit) asks for the time.
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def travelling_clock(now: datetime | None) -> Clock:
    """The real clock, or one that starts at `now` and runs on from there at real speed."""
    if now is None:
        return utcnow
    started = utcnow()
    return lambda: now + (utcnow() - started)


def parse_instant(text: str) -> datetime:
    """Parse ISO-8601; a time without an offset is taken as UTC."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
