"""Rate limits kept in the database, so they hold across every `drip serve` process.

Three limits, each a row per key in `rate_limit` (drip.models.RateLimit):

- signups per client (`DRIP_SIGNUPS_PER_IP_PER_MINUTE`): every post to /subscribe, keyed
  by the client's IPv4 address or IPv6 /64 (drip.web.proxies);
- signups per mailbox (`DRIP_SIGNUPS_PER_ADDRESS_PER_HOUR`): every valid signup, keyed by
  the normalised mailbox (`mailbox_key`), so `Ann+1@x`, `ann+2@X` and, on Gmail,
  `a.n.n@gmail.com` count as the one inbox they reach;
- admin login attempts per client (`login_turn`): each attempt is given a turn, and each
  turn comes a growing delay after the one before.

A signup limit is a GCRA ("generic cell rate algorithm"): `limit` hits at once, then one
every `period / limit` seconds, which is "`limit` per `period`" without a window edge to
time a burst against. Each key keeps one number, the time its next hit would be on
time, and one upsert both checks and counts a hit, atomically on SQLite and PostgreSQL.

Time is passed in (`now`); stored as seconds since the epoch so the arithmetic is plain
SQL on both databases. Rows whose time has passed say nothing and are purged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import Table, case, delete, select, update
from sqlmodel import Session, col

from drip.clock import Clock
from drip.db import upsert
from drip.models import RateLimit
from drip.settings import Settings

PER_CLIENT = "signup-client"
PER_MAILBOX = "signup-mailbox"
LOGIN = "admin-login"
#: Domains whose mailboxes ignore dots in the local part (Gmail and its old name).
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}
_TABLE: Table = RateLimit.__table__  # type: ignore[attr-defined]


def mailbox_key(address: str) -> str:
    """The inbox an address reaches, as far as drip can tell without asking its server.

    The rule: the whole address lower-cased; in the local part, everything from the
    first "+" dropped (sub-addressing: Gmail, Outlook, Fastmail, iCloud, Proton...);
    for gmail.com and googlemail.com, dots dropped and the domain taken as gmail.com.
    Kept as a SHA-256, so the limit table holds no address.
    """
    local, _, domain = address.strip().lower().rpartition("@")
    domain = domain.rstrip(".")
    local = local.split("+", 1)[0]
    if domain in DOTLESS_DOMAINS:
        local, domain = local.replace(".", ""), DOTLESS_DOMAINS[domain]
    return hashlib.sha256(f"{local}@{domain}".encode()).hexdigest()


@dataclass(frozen=True)
class Rate:
    """`limit` hits at once, then one every `period / limit` seconds."""

    limit: int
    period: float

    @property
    def interval(self) -> float:
        return self.period / self.limit


def hit(session: Session, bucket: str, key: str, rate: Rate, now: datetime) -> bool:
    """Count one hit for `key` if it is within `rate`; False (and nothing counted) if not."""
    t = now.timestamp()
    due = _TABLE.c.at
    after = case((due > t, due), else_=t) + rate.interval
    statement = (
        upsert(session, _TABLE)
        .values(bucket=bucket, key=key, at=t + rate.interval, count=0, expires=t + rate.interval)
        .on_conflict_do_update(
            index_elements=["bucket", "key"],
            set_={"at": after, "expires": after},
            where=after - t <= rate.period + 1e-6,
        )
        .returning(_TABLE.c.at)
    )
    return session.execute(statement).first() is not None


def wait(session: Session, bucket: str, key: str, rate: Rate, now: datetime) -> float:
    """Seconds until one more hit for `key` fits within `rate` (0: it would now)."""
    at = session.execute(
        select(_TABLE.c.at).where(_TABLE.c.bucket == bucket, _TABLE.c.key == key)
    ).scalar_one_or_none()
    if at is None:
        return 0.0
    return max(0.0, float(at) + rate.interval - rate.period - now.timestamp())


class Admission(StrEnum):
    """A signup post's standing: let through, or refused by the client's or the mailbox's limit."""

    admitted = "admitted"
    client = "client"
    mailbox = "mailbox"


@dataclass(frozen=True)
class SignupLimits:
    per_client: Rate
    per_mailbox: Rate

    @classmethod
    def of(cls, settings: Settings) -> SignupLimits:
        return cls(
            per_client=Rate(settings.signups_per_ip_per_minute, 60.0),
            per_mailbox=Rate(settings.signups_per_address_per_hour, 3600.0),
        )

    def admit(self, session: Session, client: str, address: str | None, now: datetime) -> bool:
        """One post from `client`, naming `address` if it was a valid signup: within limits?"""
        return self.verdict(session, client, address, now) == Admission.admitted

    def verdict(
        self, session: Session, client: str, address: str | None, now: datetime
    ) -> Admission:
        """`admit`, saying which limit refused the post, so the page can say why.

        The client is counted first and for every post (typos and bots too); the mailbox
        only for a valid signup that the client's limit let through.
        """
        if not hit(session, PER_CLIENT, client[:64], self.per_client, now):
            return Admission.client
        if address is None:
            return Admission.admitted
        if hit(session, PER_MAILBOX, mailbox_key(address), self.per_mailbox, now):
            return Admission.admitted
        return Admission.mailbox

    def refused_wait(
        self, session: Session, refused: Admission, client: str, address: str | None, now: datetime
    ) -> float:
        """After `verdict` refused a post: in how many seconds the limit that refused it
        lets one more through, so the answer can name the real wait."""
        if refused == Admission.mailbox and address is not None:
            return wait(session, PER_MAILBOX, mailbox_key(address), self.per_mailbox, now)
        return wait(session, PER_CLIENT, client[:64], self.per_client, now)


@dataclass(frozen=True)
class LoginPace:
    """The admin login's pace per client: the n-th attempt without a success since the
    client was forgiven waits `n * step` seconds (at most `max_delay`) after its turn;
    quiet for `forget_after` seconds, a client starts again from the first step. An
    attempt whose turn is more than `max_wait` away is refused unchecked."""

    step: float = 1.0
    max_delay: float = 10.0
    forget_after: float = 900.0
    max_wait: float | None = None

    @property
    def longest_wait(self) -> float:
        """By default six steps: from a fresh start, four attempts sent at once have their
        turns at 0, 1, 3 and 6 steps, and a fifth is refused."""
        return self.max_wait if self.max_wait is not None else 6 * self.step


@dataclass(frozen=True)
class Turn:
    """When an attempt's credentials may be checked, and when a wrong one is answered."""

    check_at: datetime
    answer_at: datetime


def login_turn(session: Session, client: str, clock: Clock, pace: LoginPace) -> Turn | None:
    """Give this attempt its turn, or None when the client already has too many waiting.

    Every attempt counts as a failure until `login_succeeded` says otherwise, so attempts
    sent in parallel, to one process or several, queue one behind another: none is
    checked before the one ahead of it has waited its delay. The time is read once the
    client's row is locked, so attempts' times come in the order of their turns (read
    before, an attempt that waited for the lock would seem to ask from the past).
    """
    key = client[:64]
    # The row, created if new, and locked until commit (an upsert that changes nothing
    # still locks the row it finds on PostgreSQL; SQLite's BEGIN IMMEDIATE locks it all).
    placeholder = clock().timestamp()
    at, count, expires = session.execute(
        upsert(session, _TABLE)
        .values(bucket=LOGIN, key=key, at=placeholder, count=0, expires=placeholder)
        .on_conflict_do_update(index_elements=["bucket", "key"], set_={"count": _TABLE.c["count"]})
        .returning(_TABLE.c.at, _TABLE.c["count"], _TABLE.c.expires)
    ).one()
    now = clock()
    t = now.timestamp()
    count = 0 if t > expires else count
    turn = max(at, t)
    if turn - t > pace.longest_wait:
        return None
    count += 1
    answer = turn + min(count * pace.step, pace.max_delay)
    session.execute(
        update(RateLimit)
        .where(col(RateLimit.bucket) == LOGIN, col(RateLimit.key) == key)
        .values(at=answer, count=count, expires=answer + pace.forget_after)
    )
    return Turn(
        check_at=now + timedelta(seconds=turn - t), answer_at=now + timedelta(seconds=answer - t)
    )


def login_succeeded(session: Session, client: str, now: datetime) -> None:
    """The right credentials: the client starts again from the first step (the row stays,
    as attempts already waiting hold turns on it, until purged)."""
    t = now.timestamp()
    session.execute(
        update(RateLimit)
        .where(col(RateLimit.bucket) == LOGIN, col(RateLimit.key) == client[:64])
        .values(count=0, at=t, expires=t)
    )


def purge(session: Session, now: datetime) -> int:
    """Delete the rows that no longer limit anyone; how many."""
    result = session.execute(delete(RateLimit).where(col(RateLimit.expires) < now.timestamp()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
