"""Deliver the outbox: claim due rows, render, send over SMTP, record each attempt.

The one path every email takes. A row is claimed with a lease and rendered then,
seconds before it is sent, not when it was queued (so an unsubscribe or a fixed
template counts until the claim). It is sent on one of DRIP_SMTP_CONCURRENCY
reused connections, and its outcome and send-log row are committed before that
connection sends again (the connections share one group commit). A crash between
the 250 and that commit is the only way to send twice, and it can only affect the
one message in flight on each connection.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

import markdown
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from drip.clock import Clock
from drip.course import Course, CourseError, load_course
from drip.db import read_scope, session_scope
from drip.models import (
    MessageKind,
    Newsletter,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
)
from drip.pack_link import pack_url
from drip.progress import Pace, after_send
from drip.render import RenderError, render_email
from drip.sending.message import Envelope, PackMissing, Unaddressable, compose
from drip.sending.outbox import Result, claim, record, release
from drip.sending.ratelimit import Limiter
from drip.sending.sender import Connection, Outcome, Verdict
from drip.settings import Settings
from drip.subscribers import leave
from drip.tokens import make_token

#: A claimed row with its message ready to send, or the reason it must not be sent.
Claimed = tuple[OutboxMessage, Envelope | Result]
#: Do not start a send with less than this share of the lease left (at most 30 s):
#: another worker may take the row once it runs out.
LEASE_MARGIN = 0.2
#: Rows claimed per connection at a time: fewer claim round trips (the claim's latency
#: was what held PostgreSQL back), yet each row is read and rendered seconds before it goes.
CLAIM_PER_SLOT = 8


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


def retry_or_give_up(
    settings: Settings, row: OutboxMessage, outcome: Outcome, now: datetime
) -> Result:
    """Exponential backoff with jitter, as Postfix does; failed once the lifetime is spent."""
    lifetime = timedelta(days=settings.retry_lifetime_days)
    if now - row.created_at >= lifetime:
        message = (
            f"gave up after {row.attempts} attempts over {lifetime.days} days: {outcome.message}"
        )
        return Result(OutboxStatus.failed, outcome.code, message)
    minutes = min(
        settings.retry_first_minutes * 2 ** max(row.attempts - 1, 0), settings.retry_max_hours * 60
    )
    delay = timedelta(minutes=minutes * random.uniform(0.8, 1.2))
    return Result(OutboxStatus.deferred, outcome.code, outcome.message, now + delay)


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
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.worker = worker
        self.clock = clock
        self.stop = stop or asyncio.Event()
        self.report = DeliveryReport()
        self.limiter = Limiter(engine, settings.send_rate, clock, chunk=settings.smtp_concurrency)
        self.secret = settings.require_secret()
        self.pace = Pace(settings.minutes_per_day)
        self._in_hand: set[int] = set()
        self._newsletters: dict[int, dict[str, Any]] = {}
        self._pending: list[tuple[OutboxMessage, Result, asyncio.Future[None]]] = []
        self._committing = False

    @cached_property
    def course(self) -> Course | None:
        try:
            return load_course(self.settings.emails_dir)
        except CourseError:
            return None

    async def run(self) -> DeliveryReport:
        slots = self.settings.smtp_concurrency
        # One batch waits in the queue while the next is claimed and rendered.
        queue: asyncio.Queue[Claimed | None] = asyncio.Queue(maxsize=slots * CLAIM_PER_SLOT)
        try:
            # A failure in one task cancels the others, so nothing waits on a dead queue.
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._produce(queue, slots))
                for _ in range(slots):
                    tasks.create_task(self._consume(queue))
        finally:
            await asyncio.to_thread(
                release, self.engine, self.worker, list(self._in_hand), self.clock()
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
        try:
            while (item := await queue.get()) is not None:
                if not self.stop.is_set():
                    await self._deliver(connection, *item)
        finally:
            await connection.close()

    async def _deliver(
        self, connection: Connection, row: OutboxMessage, prepared: Envelope | Result
    ) -> None:
        if isinstance(prepared, Envelope):
            await self.limiter.acquire()
            if self.stop.is_set() or self._lease_short(row):
                return  # left in hand: released at the end, claimed afresh
            outcome = await connection.send(prepared)
            result = self._judge(row, outcome)
            if outcome.throttle:
                await self.limiter.pause(self.settings.throttle_seconds, outcome.message)
            if outcome.verdict == Verdict.deferred and outcome.code is None:
                self._halt(outcome.message)
        else:
            result = prepared
        await self._commit(row, result)

    async def _commit(self, row: OutboxMessage, result: Result) -> None:
        """Record a result before this connection sends again: a group commit.

        Whoever finds no commit under way commits everything pending, so the slots
        share one transaction yet each waits for its own result to be durable. That
        keeps the crash window to the one message per connection. A database error is
        every waiting slot's error; anything else fails this slot's task, and the task
        group cancels the others.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, result, done))
        if not self._committing:
            self._committing = True
            try:
                while self._pending:
                    batch, self._pending = self._pending, []
                    try:
                        await asyncio.to_thread(self._finish, [(r, res) for r, res, _ in batch])
                    except SQLAlchemyError as exc:
                        for *_, future in batch:
                            future.set_exception(exc)
                    else:
                        for *_, future in batch:
                            future.set_result(None)
            finally:
                self._committing = False
        await done

    def _lease_short(self, row: OutboxMessage) -> bool:
        margin = timedelta(seconds=min(self.settings.lease_seconds * LEASE_MARGIN, 30))
        return row.lease_until is not None and row.lease_until - self.clock() < margin

    def _halt(self, reason: str) -> None:
        """The server cannot be reached: stop this run rather than defer every message in turn."""
        self.report.halted = reason
        self.stop.set()

    def _judge(self, row: OutboxMessage, outcome: Outcome) -> Result:
        if outcome.verdict == Verdict.sent:
            return Result(OutboxStatus.sent, outcome.code, outcome.message)
        if outcome.verdict == Verdict.bounced:
            return Result(OutboxStatus.bounced, outcome.code, outcome.message)
        return retry_or_give_up(self.settings, row, outcome, self.clock())

    # -- database work, run in a thread -------------------------------------------

    def _claim(self, limit: int) -> list[Claimed]:
        """Lease due rows, read their subscribers (and newsletters) in one go, and render them.

        One thread hand-off per batch, not per message; the batch is a few messages
        per connection, so each is still rendered moments before it is sent.
        """
        lease = timedelta(seconds=self.settings.lease_seconds)
        rows = claim(self.engine, self.worker, self.clock(), limit, lease)
        if not rows:
            return []
        self._in_hand.update(r.id for r in rows if r.id is not None)
        wanted = {r.subscriber_id for r in rows if r.subscriber_id is not None}
        with read_scope(self.engine) as session:
            found = session.execute(select(Subscriber).where(col(Subscriber.id).in_(wanted)))
            subscribers = {s.id: s for s in found.scalars()}
            for letter_id in {r.newsletter_id for r in rows} - {None} - self._newsletters.keys():
                self._load_newsletter(session, letter_id)  # type: ignore[arg-type]
        return [(r, self._prepare(r, subscribers.get(r.subscriber_id))) for r in rows]

    def _prepare(self, row: OutboxMessage, subscriber: Subscriber | None) -> Envelope | Result:
        """Render and build the message, or say why it must not be sent."""
        if subscriber is None:
            return Result(OutboxStatus.skipped, None, "the subscriber was deleted")
        wanted = (
            SubscriberStatus.pending if row.kind == MessageKind.confirm else SubscriberStatus.active
        )
        if subscriber.status != wanted:
            return Result(OutboxStatus.skipped, None, f"the subscriber is {subscriber.status}")
        context = self._context(row, subscriber)
        try:
            rendered = render_email(self.settings.emails_dir, row.template, context)
            return compose(
                self.settings,
                rendered,
                email=row.email,
                name=subscriber.name,
                message_id=row.message_id,
                unsubscribe_url=context["unsubscribe_url"],
                attach_pack=row.kind == MessageKind.welcome
                and self.settings.pack_delivery == "attach",
                now=self.clock(),
            )
        except RenderError as exc:
            return Result(OutboxStatus.failed, None, f"template error: {exc}")
        except (Unaddressable, ValueError) as exc:
            return Result(OutboxStatus.failed, None, f"cannot build the message: {exc}")
        except PackMissing as exc:
            return retry_or_give_up(
                self.settings, row, Outcome(Verdict.deferred, None, str(exc)), self.clock()
            )

    def _context(self, row: OutboxMessage, subscriber: Subscriber) -> dict[str, Any]:
        base = self.settings.base_url
        unsubscribe = make_token(self.secret, subscriber.token_salt, "unsubscribe")
        context: dict[str, Any] = {
            "name": subscriber.name,
            "email": subscriber.email,
            "base_url": base,
            "course_title": self.course.title if self.course else "",
            "pack_url": None,
            "unsubscribe_url": None
            if row.kind == MessageKind.confirm
            else f"{base}/unsubscribe/{unsubscribe}",
        }
        if row.kind == MessageKind.welcome and self.settings.pack_delivery == "link":
            assert subscriber.id is not None
            context["pack_url"] = pack_url(base, self.secret, subscriber.id, subscriber.token_salt)
        if row.kind == MessageKind.confirm:
            confirm = make_token(self.secret, subscriber.token_salt, "confirm")
            context["confirm_url"] = f"{base}/confirm/{confirm}"
        if row.newsletter_id is not None:
            context.update(self._newsletters[row.newsletter_id])
        context.update(row.context)
        return context

    def _load_newsletter(self, session: Session, newsletter_id: int) -> None:
        letter = session.get(Newsletter, newsletter_id)
        body = letter.body_markdown if letter else ""
        self._newsletters[newsletter_id] = {
            "subject": letter.subject if letter else "",
            "content_html": markdown.markdown(body),
            "content_text": body,
        }

    def _finish(self, results: list[tuple[OutboxMessage, Result]]) -> None:
        """Record attempts and everything that follows from them, in one transaction.

        A sent course email schedules the next lesson; a bounce suppresses the address.
        """
        now = self.clock()
        with session_scope(self.engine) as session:
            moved = record(session, results, self.worker, now)
            followed = [
                (r, res) for r, res in results if r.id in moved and r.subscriber_id is not None
            ]
            course_sent = [
                r.subscriber_id
                for r, res in followed
                if res.status == OutboxStatus.sent
                and r.kind in (MessageKind.welcome, MessageKind.lesson)
            ]
            if course_sent and self.course is not None:
                after_send(session, course_sent, now, self.course, self.pace)  # type: ignore[arg-type]
            for row, result in followed:
                if result.status == OutboxStatus.bounced:
                    self._suppress(session, row, result, now)
        for row, result in results:
            self._in_hand.discard(row.id)
            self.report.add(result.status)

    def _suppress(
        self, session: Session, row: OutboxMessage, result: Result, now: datetime
    ) -> None:
        subscriber = session.get(Subscriber, row.subscriber_id)
        if subscriber is not None:
            reason = f"suppressed after a bounce: {result.smtp_code} {result.smtp_message}"
            leave(session, subscriber, SubscriberStatus.bounced, now, reason)
