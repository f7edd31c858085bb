"""The shared send budget: a token bucket in the database, and the pause a 421 sets."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from drip.clock import utcnow
from drip.sending import ratelimit
from drip.sending.ratelimit import UNLIMITED_CHUNK, Limiter, pause, take


def test_the_bucket_refills_at_the_rate(engine: Engine) -> None:
    start = utcnow()
    assert take(engine, 10, 100, start) == (0, 0.1)
    # One second later the bucket holds 10 tokens, never more than a second's worth.
    assert take(engine, 10, 100, start + timedelta(seconds=1))[0] == 10
    assert take(engine, 10, 100, start + timedelta(seconds=1))[0] == 0
    assert take(engine, 10, 4, start + timedelta(seconds=60))[0] == 4
    assert take(engine, 10, 100, start + timedelta(seconds=60))[0] == 6


def test_workers_share_one_budget(engine: Engine) -> None:
    start = utcnow()
    take(engine, 5, 5, start)
    granted = [take(engine, 5, 3, start + timedelta(seconds=1))[0] for _ in range(4)]
    assert sum(granted) == 5


def test_a_worker_whose_clock_reading_is_a_moment_old_gets_no_fresh_bucket(
    engine: Engine,
) -> None:
    """A worker reads its clock, then waits for the row's lock while another refills it:
    its `now` is behind the row's. That must count as no time passed, not as a reset."""
    start = utcnow()
    take(engine, 100, 1000, start)
    assert take(engine, 100, 1000, start + timedelta(seconds=1))[0] == 100  # emptied
    assert take(engine, 100, 1000, start + timedelta(milliseconds=990))[0] == 0
    assert take(engine, 100, 1000, start + timedelta(seconds=1.1))[0] == 10
    # A clock far ahead (`drip tick --now` in the future) still starts afresh.
    assert take(engine, 100, 1000, start + timedelta(days=3))[0] == 100
    assert take(engine, 100, 1000, start + timedelta(seconds=2))[0] == 100


def test_a_pause_holds_everyone(engine: Engine) -> None:
    start = utcnow()
    pause(engine, start + timedelta(seconds=30), "421 slow down", start)
    granted, wait = take(engine, 10, 1, start + timedelta(seconds=10))
    assert granted == 0
    assert 19 < wait <= 20
    assert take(engine, 0, 1, start + timedelta(seconds=10))[0] == 0  # even with no rate limit
    assert take(engine, 10, 1, start + timedelta(seconds=31))[0] == 1


def test_rate_zero_means_unlimited(engine: Engine) -> None:
    assert take(engine, 0, 1000, utcnow()) == (1000, 0.0)


def test_without_a_rate_a_pause_is_asked_about_per_chunk_and_at_most_so_often(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker's pause holds this one within PAUSE_CHECK_SECONDS, yet a fast worker
    does not ask the database once per chunk of sends."""
    monkeypatch.setattr(ratelimit, "PAUSE_CHECK_SECONDS", 0.3)
    asked: list[datetime] = []

    def counted(engine: Engine, rate: float, wanted: int, now: datetime) -> tuple[int, float]:
        asked.append(now)
        return take(engine, rate, wanted, now)

    monkeypatch.setattr(ratelimit, "take", counted)

    async def run() -> float:
        limiter = Limiter(engine, 0, utcnow, chunk=4)
        for _ in range(UNLIMITED_CHUNK * 3):  # three chunks within moments: asked once
            await limiter.acquire()
        assert len(asked) == 1
        now = utcnow()
        pause(engine, now + timedelta(seconds=1), "421 slow down", now)  # another worker's
        await asyncio.sleep(0.35)
        began = time.monotonic()
        for _ in range(UNLIMITED_CHUNK * 3):  # the next chunk asks again, and waits
            await limiter.acquire()
        return time.monotonic() - began

    waited = asyncio.run(run())
    assert 0.4 < waited < 3
    assert len(asked) >= 3  # asked, told to wait out the pause, asked again
