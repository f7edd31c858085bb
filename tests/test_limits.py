"""Rate limits in the database, on both databases, with the time passed in (no sleeps);
and two real `drip serve` processes sharing them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from drip import limits
from drip.clock import utcnow
from drip.db import read_scope, session_scope
from drip.limits import Admission, LoginPace, Rate, SignupLimits, mailbox_key
from drip.models import OutboxMessage, RateLimit
from drip.settings import Settings
from tests.processes import drip_serve

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=utcnow().tzinfo)


def _hits(engine: Engine, key: str, rate: Rate, at: datetime, n: int = 1) -> list[bool]:
    with session_scope(engine) as session:
        return [limits.hit(session, "test", key, rate, at) for _ in range(n)]


def test_a_rate_allows_its_burst_then_one_per_interval(engine: Engine) -> None:
    rate = Rate(limit=3, period=60)  # 3 at once, then one every 20 s
    assert _hits(engine, "a", rate, T0, 4) == [True, True, True, False]
    assert _hits(engine, "a", rate, T0 + timedelta(seconds=19)) == [False]
    assert _hits(engine, "a", rate, T0 + timedelta(seconds=20), 2) == [True, False]
    assert _hits(engine, "b", rate, T0, 3) == [True] * 3  # another key, its own count
    # Quiet for a whole period: the full burst again.
    assert _hits(engine, "a", rate, T0 + timedelta(seconds=80), 4) == [True] * 3 + [False]


def test_refused_hits_do_not_push_the_limit_further(engine: Engine) -> None:
    """A client that keeps posting while refused is let in again on time, not later."""
    rate = Rate(limit=1, period=10)
    assert _hits(engine, "a", rate, T0, 50) == [True] + [False] * 49
    assert _hits(engine, "a", rate, T0 + timedelta(seconds=10)) == [True]


def test_hits_from_many_threads_at_once_count_exactly(engine: Engine) -> None:
    """Each hit is one atomic upsert: threads racing on one key never over-admit."""
    rate = Rate(limit=10, period=60)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _hits(engine, "a", rate, T0)[0], range(40)))
    assert results.count(True) == 10


def test_the_mailbox_key_follows_the_documented_rule() -> None:
    same = [
        "ann@example.com",
        "Ann@Example.COM",
        "ann+news@example.com",
        "ANN+a+b@example.com.",
    ]
    assert len({mailbox_key(a) for a in same}) == 1
    gmail = ["a.n.n@gmail.com", "ann@googlemail.com", "A.nn+x@GMail.com", "ann@gmail.com"]
    assert len({mailbox_key(a) for a in gmail}) == 1
    # Dots count outside Gmail; different people stay apart.
    assert mailbox_key("a.nn@example.com") != mailbox_key("ann@example.com")
    assert mailbox_key("ann@example.com") != mailbox_key("ann@example.org")
    assert "ann" not in mailbox_key("ann@example.com")  # a digest: no address is kept


def test_eight_variants_of_one_inbox_get_its_limit_not_eight(engine: Engine) -> None:
    policy = SignupLimits(per_client=Rate(1000, 60), per_mailbox=Rate(3, 3600))
    variants = [
        "victim@gmail.com",
        "Victim@gmail.com",
        "v.ictim@gmail.com",
        "victim+1@gmail.com",
        "vi.ctim+2@googlemail.com",
        "VICTIM+3@GMAIL.COM",
        "vic.tim@gmail.com",
        "victim+x@googlemail.com",
    ]
    with session_scope(engine) as session:
        admitted = [policy.admit(session, f"192.0.2.{n}", a, T0) for n, a in enumerate(variants)]
    assert admitted == [True] * 3 + [False] * 5


def test_the_client_is_counted_for_every_post_the_mailbox_only_for_a_signup(
    engine: Engine,
) -> None:
    policy = SignupLimits(per_client=Rate(2, 60), per_mailbox=Rate(1, 3600))
    with session_scope(engine) as session:
        assert policy.admit(session, "192.0.2.1", None, T0)  # a typo
        assert policy.admit(session, "192.0.2.1", "ann@example.com", T0)
        assert not policy.admit(session, "192.0.2.1", "bob@example.com", T0)  # client spent
        assert not policy.admit(session, "192.0.2.2", "ann@example.com", T0)  # mailbox spent
        assert policy.admit(session, "192.0.2.2", "bob@example.com", T0)  # not counted above


def _turn(engine: Engine, client: str, at: datetime, pace: LoginPace) -> limits.Turn | None:
    with session_scope(engine) as session:
        return limits.login_turn(session, client, lambda: at, pace)


def _offsets(turn: limits.Turn | None, start: datetime) -> tuple[float, float] | None:
    if turn is None:
        return None
    return (
        (turn.check_at - start).total_seconds(),
        (turn.answer_at - start).total_seconds(),
    )


def test_login_attempts_queue_behind_a_growing_delay(engine: Engine) -> None:
    """Attempts at once from one client: checked one after another, each after the wait
    of the one before (0, 1, 3, 6 steps), and a fifth refused unchecked."""
    pace = LoginPace(step=1.0, max_delay=10.0)
    turns = [_offsets(_turn(engine, "203.0.113.9", T0, pace), T0) for _ in range(5)]
    assert turns == [(0, 1), (1, 3), (3, 6), (6, 10), None]
    # Another client is not held up at all.
    assert _offsets(_turn(engine, "198.51.100.4", T0, pace), T0) == (0, 1)


def test_the_delay_is_capped_forgiven_after_quiet_and_reset_by_a_success(
    engine: Engine,
) -> None:
    pace = LoginPace(step=1.0, max_delay=3.0, forget_after=900.0)
    at = T0
    waits = []
    for _ in range(5):  # one attempt at a time, each when answered
        turn = _turn(engine, "a", at, pace)
        assert turn is not None
        waits.append((turn.answer_at - turn.check_at).total_seconds())
        at = turn.answer_at
    assert waits == [1, 2, 3, 3, 3]
    later = at + timedelta(seconds=901)
    assert _offsets(_turn(engine, "a", later, pace), later) == (0, 1)  # forgiven
    with session_scope(engine) as session:
        limits.login_succeeded(session, "a", later)
    assert _offsets(_turn(engine, "a", later, pace), later) == (0, 1)


def test_under_attack_the_operator_at_another_address_gets_a_turn_at_once(
    engine: Engine,
) -> None:
    """An attacker keeping guesses in flight behind a proxy used to fill the one queue of
    the proxy's address, and the operator's right password got 429. Per client, the
    attacker fills only their own."""
    pace = LoginPace(step=1.0, max_delay=10.0)
    for n in range(20):
        _turn(engine, "203.0.113.9", T0 + timedelta(seconds=n), pace)
    assert _turn(engine, "203.0.113.9", T0 + timedelta(seconds=20), pace) is None
    operator = _turn(engine, "198.51.100.4", T0 + timedelta(seconds=20), pace)
    assert operator is not None
    assert operator.check_at == T0 + timedelta(seconds=20)


def test_purge_deletes_only_rows_that_limit_no_one(engine: Engine) -> None:
    _hits(engine, "old", Rate(1, 60), T0)
    _hits(engine, "new", Rate(1, 60), T0 + timedelta(minutes=5))
    _turn(engine, "203.0.113.9", T0, LoginPace(forget_after=900))
    with session_scope(engine) as session:
        assert limits.purge(session, T0 + timedelta(minutes=5)) == 1
    with read_scope(engine) as session:
        keys = set(session.execute(select(RateLimit.key)).scalars())
    assert keys == {"new", "203.0.113.9"}


FORM = {"name": "", "consent": "yes", "website": ""}


def test_limits_hold_across_two_drip_serve_processes(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    """Kept in each process's memory, two processes let twice the limit through; in the
    database, the per-client and per-mailbox limits are one for both."""
    env = {
        "DRIP_SIGNUPS_PER_IP_PER_MINUTE": "4",
        "DRIP_SIGNUPS_PER_ADDRESS_PER_HOUR": "2",
        "DRIP_TRUSTED_PROXIES": "127.0.0.1",
    }
    with (
        drip_serve(settings, tmp_path / "one.log", **env) as one,
        drip_serve(settings, tmp_path / "two.log", **env) as two,
        httpx.Client(timeout=10) as client,
    ):

        def post(base: str, email: str, ip: str) -> int:
            response = client.post(
                f"{base}/subscribe",
                data=FORM | {"email": email},
                headers={"X-Forwarded-For": ip},
            )
            return response.status_code

        # One client, alternating processes: four posts a minute in all, not per process.
        codes = [post((one, two)[n % 2], f"p{n}@example.com", "198.51.100.1") for n in range(6)]
        assert codes == [303] * 4 + [429] * 2
        # One inbox under several spellings and clients: two signups an hour in all.
        spellings = ["Ann+a@example.com", "ann@example.com", "ann+b@EXAMPLE.com"]
        codes = [post((one, two)[n % 2], a, f"203.0.113.{n}") for n, a in enumerate(spellings)]
        assert codes == [303, 303, 429]
    with read_scope(engine) as session:
        queued = session.execute(select(func.count()).select_from(OutboxMessage)).scalar()
    assert queued == 6  # four from the first client, two for Ann's inbox


def test_a_refusal_names_the_spent_limit_and_its_real_wait(engine: Engine) -> None:
    policy = SignupLimits(per_client=Rate(2, 60), per_mailbox=Rate(1, 3600))
    ann = "ann@example.com"
    with session_scope(engine) as session:
        assert policy.verdict(session, "192.0.2.1", ann, T0) == Admission.admitted
        assert policy.verdict(session, "192.0.2.2", ann, T0) == Admission.mailbox
        seconds = policy.refused_wait(session, Admission.mailbox, "192.0.2.2", ann, T0)
        assert seconds == 3600
        # This post spends the client's last turn and is refused by the mailbox's limit:
        # the mailbox's, not the (now spent) client's, is named.
        assert policy.verdict(session, "192.0.2.2", ann, T0) == Admission.mailbox
        assert policy.verdict(session, "192.0.2.1", None, T0) == Admission.admitted
        assert policy.verdict(session, "192.0.2.1", None, T0) == Admission.client
        seconds = policy.refused_wait(session, Admission.client, "192.0.2.1", None, T0)
        assert seconds == pytest.approx(30)
