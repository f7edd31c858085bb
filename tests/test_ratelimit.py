"""The shared send budget: a token bucket in the database, and the pause a 421 sets."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from drip.clock import utcnow
from drip.sending.ratelimit import pause, take


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
