"""Deliver the outbox: claim due rows, render, send over SMTP, record each attempt.

The one path every email takes. A row is claimed with a lease and rendered then,
seconds before it is sent, not when it was queued (so an unsubscribe or a fixed
template counts until the claim). It is sent on one of DRIP_SMTP_CONCURRENCY
reused connections, and its outcome and send-log row are committed before that
connection sends again (the connections share one group commit). A crash between
the 250 and that commit is the only way to send twice, and it can only affect the
one message in flight on each connection. Meanwhile the connection starts its next
message (MAIL, RCPT, DATA): only the final dot, which delivers it, waits for the commit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Collection
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property

from sqlalchemy import Connection as DatabaseConnection
from sqlalchemy import Engine, bindparam, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlmodel import col

from drip import health
from drip.clock import Clock
from drip.course import Course, CourseError, load_course
from drip.db import in_process, read_scope
from drip.followup import follow_up
from drip.models import (
    EMAIL_KINDS,
    MessageKind,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
)
from drip.pace import Pace
from drip.sending.message import Envelope
from drip.sending.outbox import Result, claim, record, release, renew, retry_or_give_up
from drip.sending.post import Post, Poster
from drip.sending.prepare import Preparer
from drip.sending.ratelimit import Limiter
from drip.sending.sender import Connection, Outcome, Verdict
from drip.settings import Settings
from drip.turns import TAKE_TURNS

#: A claimed row with its message ready to send, or the reason it must not be sent.
Claimed = tuple[OutboxMessage, Envelope | Post | Result]
#: Do not start a send with less than this share of the lease left (at most 30 s):
#: another worker may take the row once it runs out.
LEASE_MARGIN = 0.2
#: Rows claimed per connection at a time: fewer claim round trips (a claim's latency
#: can starve the connections), yet each row is read and rendered seconds before it goes.
CLAIM_PER_SLOT = 8
#: How often a long delivery run judges sender health again (drip.health).
HEALTH_EVERY = timedelta(seconds=60)
#: How long a group commit waits for the other slots' results (seconds): shorter than
#: the MAIL, RCPT and DATA round trips the slots make meanwhile.
COMMIT_WINDOW = 0.003
#: Leases in hand are renewed this many times per lease: a live worker never loses a row.
RENEWALS_PER_LEASE = 3

log = logging.getLogger("drip.sending.delivery")
#: The claimed rows' subscribers: built once, each claim binds its ids.
_SUBSCRIBERS = select(Subscriber).where(col(Subscriber.id).in_(bindparam("ids", expanding=True)))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{random.randrange(16**4):04x}"


@dataclass
class DeliveryReport:
    counts: dict[str, int] = field(default_factory=dict)
    halted: str | None = None

    def add(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Delivery:
    """One delivery run of one worker, until nothing due is left or `stop` is set."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        worker: str,
        clock: Clock,
        stop: asyncio.Event | None = None,
        only: Collection[int] | None = None,
    ) -> None:
        self.settings = settings
        #: Deliver none but these rows (`drip send-test` sends its own message at once).
        self.only = only
        self.engine = engine
        #: The run's writes (claims, commits, leases): on SQLite they take turns with the
        #: other delivery processes' instead of polling for the lock (drip.turns).
        self._writes = engine.execution_options(**{TAKE_TURNS: True})
        self.worker = worker
        self.clock = clock
        self.stop = stop or asyncio.Event()
        self.report = DeliveryReport()
        self.limiter = Limiter(engine, settings.send_rate, clock, chunk=settings.smtp_concurrency)
        settings.require_secret()  # missing, it stops the run here, not at the first message
        self.pace = Pace(settings.minutes_per_day)
        self.poster = Poster()
        #: Per row in hand: when its lease runs out, on this process's monotonic clock.
        self._lease_ends: dict[int, float] = {}
        self._pending: list[tuple[OutboxMessage, Result, asyncio.Future[None]]] = []
        self._committing = False
        #: The connection group commits run on, held for the run (one commit at a time):
        #: no pool checkout, and on PostgreSQL no ping, per commit (`_finish`).
        self._recorder: DatabaseConnection | None = None
        #: On SQLite, group commits run on the loop's thread, not handed to one (`_finish`).
        self._inline = in_process(engine)
        #: Set once every slot's result is pending: the commit need not wait longer.
        self._all_in: asyncio.Future[None] | None = None
        self._judged_at: datetime | None = None
        #: The SMTP server could not be reached: no more mail this run, webhooks go on.
        self._mail_down = False

    @cached_property
    def course(self) -> Course | None:
        try:
            return load_course(self.settings.emails_dir)
        except CourseError:
            return None

    @cached_property
    def preparer(self) -> Preparer:
        return Preparer(self.settings, self.course, self.clock)

    async def run(self) -> DeliveryReport:
        slots = self.settings.smtp_concurrency
        # One batch waits in the queue while the next is claimed and rendered.
        queue: asyncio.Queue[Claimed | None] = asyncio.Queue(maxsize=slots * CLAIM_PER_SLOT)
        over = asyncio.Event()
        keeper = asyncio.create_task(self._keep_leases(over))
        try:
            # A failure in one task cancels the others, so nothing waits on a dead queue.
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._produce(queue, slots))
                for _ in range(slots):
                    tasks.create_task(self._consume(queue))
        finally:
            over.set()
            await keeper
            await self.poster.close()
            if self._recorder is not None:  # every commit is over: the slots waited for theirs
                await asyncio.to_thread(self._recorder.close)
            await asyncio.to_thread(
                release, self._writes, self.worker, list(self._lease_ends), self.clock()
            )
        return self.report

    async def _produce(self, queue: asyncio.Queue[Claimed | None], slots: int) -> None:
        while not self.stop.is_set():
            batch = await asyncio.to_thread(self._claim, slots * CLAIM_PER_SLOT)
            if not batch:
                break
            for item in batch:
                await queue.put(item)
        for _ in range(slots):
            await queue.put(None)

    async def _consume(self, queue: asyncio.Queue[Claimed | None]) -> None:
        connection = Connection(self.settings)
        #: The commit of this slot's last result: its next final dot waits for it.
        recording: asyncio.Task[None] | None = None
        try:
            while (item := await queue.get()) is not None:
                if not self.stop.is_set():
                    recording = await self._deliver(connection, *item, recording)
            await self._settled(recording)
        finally:
            if recording is not None and not recording.done():
                await asyncio.wait([recording])  # a cancelled slot leaves its commit running
            if recording is not None and recording.done() and not recording.cancelled():
                recording.exception()  # raised above or in a sibling's failure: not lost
            await connection.close()

    @staticmethod
    async def _settled(recording: asyncio.Task[None] | None) -> None:
        """Wait until the last result is committed; its error is this slot's error. Shielded:
        a slot cancelled while it waits does not cancel the group commit others wait on."""
        if recording is not None:
            await asyncio.shield(recording)

    async def _deliver(
        self,
        connection: Connection,
        row: OutboxMessage,
        prepared: Envelope | Post | Result,
        recording: asyncio.Task[None] | None,
    ) -> asyncio.Task[None] | None:
        """Send one row and start committing its result; returns that commit, which the
        slot's next message waits for before its final dot (`_mail`)."""
        if isinstance(prepared, Envelope):
            outcome = await self._mail(connection, row, prepared, recording)
            if outcome is None:
                return recording  # left in hand: released at the end, claimed afresh
            result = self._judge(row, outcome)
            if outcome.throttle:
                await self.limiter.pause(self.settings.throttle_seconds, outcome.message)
            if outcome.verdict == Verdict.deferred and outcome.code is None:
                self._halt(outcome.message)
        elif isinstance(prepared, Post):
            await self._settled(recording)
            # Not an email: DRIP_SEND_RATE does not apply, and a receiver that is down
            # defers its own rows without halting the run (as an SMTP server down does).
            if self.stop.is_set() or self._lease_short(row):
                return None
            result = self._judge(row, await self.poster.send(prepared))
        else:
            await self._settled(recording)
            result = prepared
        return asyncio.create_task(self._commit(row, result))

    async def _mail(
        self,
        connection: Connection,
        row: OutboxMessage,
        envelope: Envelope,
        recording: asyncio.Task[None] | None,
    ) -> Outcome | None:
        """Send an email, all but its final dot while the slot's last result commits, the
        dot only once it has: so a crash still sends at most one message twice per
        connection. None when it must not go now (the row stays in hand)."""
        if self._mail_down:
            return None
        await self.limiter.acquire()
        if self.stop.is_set() or self._mail_down or self._lease_short(row):
            return None
        failed = await connection.open(envelope)
        await self._settled(recording)
        if failed is not None:
            return failed
        if self.stop.is_set() or self._mail_down or self._lease_short(row):
            await connection.close()  # mid-message: the server discards it
            return None
        return await connection.finish(envelope)

    async def _commit(self, row: OutboxMessage, result: Result) -> None:
        """Record a result before this connection sends again: a group commit.

        Whoever finds no commit under way commits everything pending (after giving the
        other slots' results a moment to join: `_gather`), so the slots share one
        transaction yet each waits for its own result to be durable before its next
        final dot. That keeps the crash window to the one message per connection. A
        database error is every waiting slot's error; anything else fails this slot's
        task, and the task group cancels the others.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((row, result, done))
        full = self._all_in
        if full is not None and len(self._pending) >= self.settings.smtp_concurrency:
            _resolve(full)
        if not self._committing:
            self._committing = True
            try:
                while self._pending:
                    await self._gather(loop)
                    batch, self._pending = self._pending, []
                    results = [(r, res) for r, res, _ in batch]
                    try:
                        if self._inline:
                            self._finish(results)
                        else:
                            await asyncio.to_thread(self._finish, results)
                    except SQLAlchemyError as exc:
                        for *_, future in batch:
                            future.set_exception(exc)
                    else:
                        for *_, future in batch:
                            future.set_result(None)
            finally:
                self._committing = False
        await done

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the other slots' results COMMIT_WINDOW to join this commit, unless every
        slot's is in. The slots do not idle meanwhile: each is sending its next envelope,
        which waits only for its final dot (`_mail`), and one commit for four results
        costs about what one costs for one."""
        if len(self._pending) >= self.settings.smtp_concurrency:
            return
        full = self._all_in = loop.create_future()
        timer = loop.call_later(COMMIT_WINDOW, _resolve, full)
        try:
            await full
        finally:
            timer.cancel()
            self._all_in = None

    async def _keep_leases(self, over: asyncio.Event) -> None:
        """Renew the leases of the rows in hand a few times per lease until the run is over.

        Without it a send, or the commit of its outcome, that outlasts the lease lets
        another worker take the row and send it again; with it only a dead or stalled
        worker's rows run out.
        """
        every = self.settings.lease_seconds / RENEWALS_PER_LEASE
        while True:
            try:
                await asyncio.wait_for(over.wait(), every)
                return
            except TimeoutError:
                pass
            held = set(self._lease_ends)
            if held:
                await asyncio.to_thread(self._renew, held)

    def _renew(self, held: set[int]) -> None:
        ends = time.monotonic() + self.settings.lease_seconds
        try:
            kept = renew(
                self._writes, self.worker, held, timedelta(seconds=self.settings.lease_seconds)
            )
        except SQLAlchemyError as exc:
            # The old leases stand, and no send starts near their end (_lease_short).
            log.warning("could not renew the leases in hand: %s", exc.__class__.__name__)
            return
        for row_id in kept & self._lease_ends.keys():
            self._lease_ends[row_id] = ends

    def _lease_short(self, row: OutboxMessage) -> bool:
        """Too little of the lease left to start a send. Timed from just before the claim
        on this process's monotonic clock: the lease itself runs on the database's clock,
        which this worker's wall clock (or `drip tick --now`) need not agree with."""
        margin = min(self.settings.lease_seconds * LEASE_MARGIN, 30)
        ends = self._lease_ends.get(row.id or 0)
        return ends is not None and ends - time.monotonic() < margin

    def _halt(self, reason: str) -> None:
        """The server cannot be reached: no more mail this run, rather than defer every
        message in turn. Webhook rows are not mail and go on (`_held`)."""
        self.report.halted = reason
        self._mail_down = True

    def _judge(self, row: OutboxMessage, outcome: Outcome) -> Result:
        if outcome.verdict == Verdict.sent:
            return Result(OutboxStatus.sent, outcome.code, outcome.message)
        if outcome.verdict == Verdict.bounced:
            return Result(OutboxStatus.bounced, outcome.code, outcome.message)
        if outcome.verdict == Verdict.failed:
            return Result(OutboxStatus.failed, outcome.code, outcome.message)
        return retry_or_give_up(self.settings, row, outcome.code, outcome.message, self.clock())

    # -- database work ------------------------------------------------------------

    def _claim(self, limit: int) -> list[Claimed]:
        """Lease due rows, read their subscribers (and newsletters) in one go, and render them.

        One thread hand-off per batch, not per message; the batch is a few messages
        per connection, so each is still rendered moments before it is sent.
        """
        lease = timedelta(seconds=self.settings.lease_seconds)
        ends = time.monotonic() + self.settings.lease_seconds
        rows = claim(self._writes, self.worker, self.clock(), limit, lease, self._held(), self.only)
        if not rows:
            return []
        self._lease_ends.update((r.id, ends) for r in rows if r.id is not None)
        wanted = {r.subscriber_id for r in rows if r.subscriber_id is not None}
        with read_scope(self.engine) as session:
            found = session.execute(_SUBSCRIBERS, {"ids": list(wanted)})
            subscribers = {s.id: s for s in found.scalars()}
            self.preparer.load_newsletters(session, (r.newsletter_id for r in rows))
        return [(r, self.preparer.prepare(r, subscribers.get(r.subscriber_id))) for r in rows]

    def _held(self) -> frozenset[MessageKind]:
        """Kinds sender health holds back (judged afresh at most once a minute of sending),
        and every kind of mail once the SMTP server proved unreachable in this run."""
        now = self.clock()
        if self._judged_at is None or now - self._judged_at >= HEALTH_EVERY:
            self._judged_at = now
            health.judge(self.settings, self.engine, now)
        with read_scope(self.engine) as session:
            held = health.held_kinds(session)
        return held | frozenset(EMAIL_KINDS) if self._mail_down else held

    def _finish(self, results: list[tuple[OutboxMessage, Result]]) -> None:
        """Record attempts and everything that follows from them, in one transaction.

        A sent course email schedules the next lesson; a bounce suppresses the address.
        On SQLite it runs on the event loop's own thread (`_inline`): the slots whose
        results it commits wait for it anyway, and handing a few local statements to a
        thread, and the GIL back and forth, cost more CPU than the statements did
        (BENCHMARKS.md). A server's round trips would hold up the loop: a thread.
        On the connection held for the run's commits: one found dead before the commit
        (the server restarted since the last one) wrote nothing, and the transaction
        runs once more on a fresh one, as the pool's ping at checkout would have had it.
        """
        now = self.clock()
        for fresh in (False, True):
            conn = self._recorder
            if conn is None or conn.invalidated or fresh:
                if conn is not None:
                    conn.close()
                conn = self._recorder = self._writes.connect()
            transaction = conn.begin()
            try:
                # A bare connection, not a session: the hot path is a few prepared statements.
                moved = record(conn, results, self.worker, now)
                # A row missing from `moved` lost its lease: whoever holds it now follows up.
                held = [(row, result) for row, result in results if row.id in moved]
                follow_up(conn, self.settings, held, now, self.course, self.pace)
            except BaseException as exc:
                transaction.rollback()
                if fresh or not (isinstance(exc, DBAPIError) and exc.connection_invalidated):
                    raise
                continue
            try:
                transaction.commit()  # a connection lost here may have committed: no retry
            except BaseException:
                # Its failed transaction would stay on the held connection until a rollback:
                # let it go (closing rolls back), and the next commit opens another.
                self._recorder = None
                with suppress(SQLAlchemyError):
                    conn.close()
                raise
            break
        for row, result in results:
            self._lease_ends.pop(row.id or 0, None)
            self.report.add(result.status)
