"""One notion of "now", always timezone-aware UTC, so `drip tick --now` can travel in time."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_instant(text: str) -> datetime:
    """Parse ISO-8601; a time without an offset is taken as UTC."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
