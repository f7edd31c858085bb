"""The data model: subscribers, their course progress, the outbox and its send log.

Every email is first an `OutboxMessage` row with a unique `dedupe_key`, so queuing
the same email twice is impossible and a crash at any point leaves a row to retry.
A worker claims a row by setting `status='sending'` with a lease (`lease_until`, on
the database's clock); the indexed `next_attempt_at` answers "what is due now" for
fresh and deferred rows, and a row whose lease ran out is due again at once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlmodel import Field, SQLModel

from drip.clock import utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (SQLite has no time zones) and hands back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use drip.clock.utcnow()")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def _when(*, index: bool = False, nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), index=index, nullable=nullable))


class SubscriberStatus(StrEnum):
    pending = "pending"
    active = "active"
    unsubscribed = "unsubscribed"
    bounced = "bounced"
    complained = "complained"


#: Subscribers who may still be sent mail: waiting to confirm, or on the list.
SUBSCRIBED_STATUSES = (SubscriberStatus.pending, SubscriberStatus.active)
#: Addresses nothing may go to, not even a test: they bounced or complained.
SUPPRESSED = (SubscriberStatus.bounced, SubscriberStatus.complained)


class MessageKind(StrEnum):
    confirm = "confirm"
    welcome = "welcome"
    lesson = "lesson"
    newsletter = "newsletter"
    #: The author's answer to a reader's reply (drip.replies), sent like any other email.
    answer = "answer"
    #: `drip send-test`: one email to one address, marked as a test, outside the course
    #: and the statistics (drip.testmail).
    test = "test"
    #: Not an email: an event POSTed to a DRIP_WEBHOOK_URLS receiver (drip.hooks), through
    #: the same outbox, leases and retries; never counted as mail.
    webhook = "webhook"


#: Every kind that is an email (all but webhook rows): what mail counts count.
EMAIL_KINDS = tuple(kind for kind in MessageKind if kind != MessageKind.webhook)


#: The largest row id (ids are 32-bit integers on PostgreSQL): a bigger one names no
#: row, and must not reach the database, where it is an error rather than "not found".
MAX_ID = 2**31 - 1


class OutboxStatus(StrEnum):
    queued = "queued"
    sending = "sending"
    sent = "sent"
    deferred = "deferred"
    failed = "failed"
    bounced = "bounced"
    #: Delivered, then reported as spam by its reader (a feedback report or webhook).
    complained = "complained"
    skipped = "skipped"


#: Statuses a message never leaves (but for an operator's retry of a RETRYABLE one).
FINAL_STATUSES = frozenset(
    {
        OutboxStatus.sent,
        OutboxStatus.failed,
        OutboxStatus.bounced,
        OutboxStatus.complained,
        OutboxStatus.skipped,
    }
)
#: Statuses a worker may still act on: waiting for their first or next attempt.
PENDING_STATUSES = (OutboxStatus.queued, OutboxStatus.deferred)
#: Statuses of a message that is due or being sent and not yet out: how long mail waits.
UNSENT_STATUSES = (*PENDING_STATUSES, OutboxStatus.sending)
#: Statuses an operator may queue again.
RETRYABLE_STATUSES = (OutboxStatus.failed, OutboxStatus.bounced)
#: Messages not attempted yet (claimed counts as not yet: the send log shows `queued`).
NOT_TRIED_STATUSES = (OutboxStatus.queued, OutboxStatus.sending)


class Subscriber(SQLModel, table=True):
    __tablename__ = "subscriber"
    #: The funnel's signups and confirmations per source, read from the index alone.
    __table_args__ = (Index("ix_subscriber_source_confirmed", "source", "confirmed_at", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_column=Column(String(320), nullable=False))
    #: Lower-cased address: the unique key, so Ann@x.org and ann@x.org are one subscriber.
    email_key: str = Field(sa_column=Column(String(320), nullable=False, unique=True))
    name: str = Field(default="", max_length=100)
    status: SubscriberStatus = Field(
        default=SubscriberStatus.pending, sa_column=Column(String(16), nullable=False, index=True)
    )
    timezone: str = Field(default="UTC", max_length=64)
    #: Indexed, as confirmed_at: /metrics counts the last day's signups and confirmations.
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True)
    )
    consent_at: datetime | None = _when()
    consent_source: str = Field(default="", max_length=64)
    #: Which page or form the signup came from: the form's hidden `source` field, else
    #: the path of the page that posted it (its Referer); "" when neither was given.
    source: str = Field(
        default="", sa_column=Column(String(200), nullable=False, server_default="")
    )
    #: Newsletters too, not only the course: a separate, unticked choice on the form.
    newsletter: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    #: When and where the newsletter choice was last made (form and page, or import file).
    newsletter_at: datetime | None = _when()
    newsletter_source: str = Field(
        default="", sa_column=Column(String(200), nullable=False, server_default="")
    )
    #: What a repeated signup asked for (name, newsletter, source), applied only when
    #: its confirmation link is followed, so nobody can change a subscriber by typing
    #: their address into the form. None when no such signup waits.
    pending_signup: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    consent_ip: str | None = Field(default=None, max_length=64)
    confirmed_at: datetime | None = _when(index=True)
    unsubscribed_at: datetime | None = _when()
    #: The outbox id of the email whose unsubscribe link they left through; NULL when
    #: unknown: a link naming no message, the admin's button. No foreign key: the record
    #: of where they left outlives the message.
    unsubscribed_via: int | None = Field(default=None)
    #: That email's funnel step (a lesson's slug, `welcome`, `newsletter`...), kept
    #: beside it so the funnel counts leavers per step from this column's index alone.
    unsubscribed_step: str | None = Field(
        default=None, sa_column=Column(String(64), nullable=True, index=True)
    )
    confirm_sent_at: datetime | None = _when()
    #: Random salt; a token is the salt and an HMAC of it under DRIP_SECRET_KEY (drip.tokens).
    token_salt: str = Field(max_length=64, index=True)
    #: The confirmation token's own salt, renewed when a confirmation is asked for again
    #: after leaving, so an old link no longer works; NULL: the token comes from token_salt.
    confirm_salt: str | None = Field(default=None, max_length=64, index=True)
    confirm_token_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    unsubscribe_token_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))


class CourseProgress(SQLModel, table=True):
    """Where a subscriber stands in the course; `next_due_at` is what a pass looks up."""

    __tablename__ = "course_progress"
    #: The funnel's finishers, their median time to finish and their sources (drip.funnel).
    __table_args__ = (
        Index("ix_course_progress_finished", "finished_at", "started_at", "subscriber_id"),
    )

    subscriber_id: int = Field(foreign_key="subscriber.id", primary_key=True, ondelete="CASCADE")
    started_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    lessons_sent: int = Field(default=0)
    last_sent_at: datetime | None = _when()
    #: When the next lesson may be queued; NULL while one is in flight or the course is done.
    next_due_at: datetime | None = _when(index=True)
    finished_at: datetime | None = _when()
    #: Set while the author holds this reader's course (drip.steering): nothing of it goes.
    paused_at: datetime | None = _when()
    #: How many times the course was started: a restart sends the lessons again, and
    #: their dedupe keys name the round (drip.progress.lesson_key).
    course_round: int = Field(
        default=1, sa_column=Column(Integer, nullable=False, server_default="1")
    )


class CourseAction(SQLModel, table=True):
    """The author steering one reader's course (pause, resume, skip, restart), for the
    subscriber's timeline; drip.steering writes it."""

    __tablename__ = "course_action"

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscriber.id", index=True, ondelete="CASCADE")
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    #: `pause`, `resume`, `skip` or `restart`.
    action: str = Field(sa_column=Column(String(16), nullable=False))
    #: What it did, in words: the lessons held, skipped or due next.
    detail: str = Field(default="", max_length=500)
    #: Where the author did it: `cli` or `admin`.
    source: str = Field(default="", max_length=16)


class Newsletter(SQLModel, table=True):
    __tablename__ = "newsletter"

    id: int | None = Field(default=None, primary_key=True)
    #: SHA-256 of the source file: sending the same file again resumes, never duplicates.
    digest: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    subject: str = Field(max_length=200)
    #: The Markdown body, a Jinja2 template rendered per reader (drip.newsletter_body).
    body_markdown: str
    #: The inbox's preview line (front matter `preheader:`), also a template; "" for none.
    preheader: str = Field(
        default="", sa_column=Column(String(300), nullable=False, server_default="")
    )
    #: When it was scheduled for (`newsletter send --at`); NULL: at once.
    send_at: datetime | None = _when()
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    #: Highest subscriber id queued so far, so a crashed run resumes where it stopped.
    queued_through: int = Field(default=0)
    finished_at: datetime | None = _when()


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_subscriber_kind", "subscriber_id", "kind"),
        Index("ix_outbox_status_next", "status", "next_attempt_at"),
        # The send log: queued rows newest first, and the kind filter (drip.sendlog).
        Index("ix_outbox_status_created", "status", "created_at"),
        Index("ix_outbox_kind_created", "kind", "created_at"),
        # The funnel: course mail counted per step and status from the index alone, an
        # index of few distinct keys that PostgreSQL stores deduplicated (small, quick to
        # walk); and each subscriber's confirmations, the one step that may repeat.
        Index("ix_outbox_funnel", "kind", "template", "status"),
        Index(
            "ix_outbox_confirm_subscriber",
            "subscriber_id",
            "status",
            sqlite_where=text("kind = 'confirm'"),
            postgresql_where=text("kind = 'confirm'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    #: e.g. "lesson:3:subscriber:42"; unique, so the same email is never queued twice.
    dedupe_key: str = Field(sa_column=Column(String(200), nullable=False, unique=True))
    kind: MessageKind = Field(sa_column=Column(String(16), nullable=False))
    template: str = Field(max_length=100)
    subscriber_id: int | None = Field(
        default=None, foreign_key="subscriber.id", ondelete="SET NULL"
    )
    #: The recipient at queue time; kept so the log still reads after the subscriber changes.
    email: str = Field(sa_column=Column(String(320), nullable=False, index=True))
    newsletter_id: int | None = Field(default=None, foreign_key="newsletter.id")
    #: What went out: a short hash of the template's sources when it was last rendered
    #: for sending (drip.versions), so a lesson fixed mid-course shows which text who got.
    version: str | None = Field(default=None, max_length=16)
    #: Extra template variables (lesson number, total...), fixed at queue time.
    context: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: OutboxStatus = Field(
        default=OutboxStatus.queued, sa_column=Column(String(16), nullable=False)
    )
    due_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    #: When the row is due: its send or retry time (while sending, the lease decides too).
    next_attempt_at: datetime | None = _when(index=True)
    attempts: int = Field(default=0)
    lease_until: datetime | None = _when()
    leased_by: str | None = Field(default=None, max_length=100)
    last_smtp_code: int | None = None
    last_smtp_message: str | None = Field(default=None, max_length=1000)
    #: Indexed: a provider's webhook names the message by it (drip.feedback).
    message_id: str = Field(sa_column=Column(String(250), nullable=False, index=True))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    sent_at: datetime | None = _when()


class DeliveryAttempt(SQLModel, table=True):
    """One row per attempt (or skip): the send log."""

    __tablename__ = "delivery_attempt"
    #: The log filtered by status, newest first, and the dashboard's counts per status.
    __table_args__ = (Index("ix_delivery_attempt_status_at", "status", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    outbox_id: int = Field(foreign_key="outbox.id", index=True, ondelete="CASCADE")
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    status: OutboxStatus = Field(sa_column=Column(String(16), nullable=False))
    smtp_code: int | None = None
    smtp_message: str | None = Field(default=None, max_length=1000)
    worker: str | None = Field(default=None, max_length=100)


class FeedbackEvent(SQLModel, table=True):
    """A bounce or complaint about one message, whichever way it came in (drip.feedback).

    One row per message and kind, so a report delivered twice counts once; soft
    bounces are counted here per subscriber, and the sender's health read from here.
    The diagnostic text (which may quote the address) is kept only in the send log.
    """

    __tablename__ = "feedback_event"
    __table_args__ = (
        UniqueConstraint("outbox_id", "kind"),
        Index("ix_feedback_event_subscriber_kind_at", "subscriber_id", "kind", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    outbox_id: int = Field(foreign_key="outbox.id", ondelete="CASCADE")
    subscriber_id: int | None = Field(
        default=None, foreign_key="subscriber.id", ondelete="SET NULL"
    )
    #: `hard`, `soft` or `complaint`.
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    #: Where it came from: `smtp` (refused at send time), `inbound`, `mailbox`, a provider...
    source: str = Field(max_length=32)
    smtp_code: int | None = None


class SendBudget(SQLModel, table=True):
    """The shared token bucket behind DRIP_SEND_RATE, and the throttle a 421 sets for everyone."""

    __tablename__ = "send_budget"

    name: str = Field(primary_key=True, max_length=32)
    tokens: float = 0.0
    refilled_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    paused_until: datetime | None = _when()
    pause_reason: str | None = Field(default=None, max_length=1000)


class WorkerHeartbeat(SQLModel, table=True):
    """The last pass of each worker, so the dashboard shows a stopped scheduler at once."""

    __tablename__ = "worker_heartbeat"

    worker: str = Field(primary_key=True, max_length=100)
    last_pass_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    queued: int = 0
    delivered: int = 0


class PackDownload(SQLModel, table=True):
    """One GET of the information pack through a signed link (DRIP_PACK_DELIVERY=link)."""

    __tablename__ = "pack_download"

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int | None = Field(
        default=None, foreign_key="subscriber.id", ondelete="SET NULL", index=True
    )
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))


class Click(SQLModel, table=True):
    """One request to a lesson's tracked link (DRIP_CLICK_TRACKING, drip.clicks).

    Raw: every GET and HEAD is a row. `human` is decided when the click is recorded
    (`reason` says why not: `head`, `early`, `scanner`, `burst`), and a click that
    completes a burst of all a message's links turns the burst's earlier clicks
    non-human too. Neither the address nor the user agent is kept: only the verdict.
    """

    __tablename__ = "click"
    __table_args__ = (Index("ix_click_outbox_at", "outbox_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    outbox_id: int = Field(foreign_key="outbox.id", ondelete="CASCADE")
    #: Which link of the message (0-based, in order of first appearance).
    link: int
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    method: str = Field(max_length=8)
    human: bool = Field(sa_column=Column(Boolean, nullable=False))
    reason: str = Field(default="", max_length=32)


class WebhookReceipt(SQLModel, table=True):
    """A signed webhook's one-time value (Mailgun's token), kept while its timestamp is
    fresh, so the same signed request cannot be replayed."""

    __tablename__ = "webhook_receipt"

    key: str = Field(primary_key=True, max_length=200)
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))


class SendingHold(SQLModel, table=True):
    """Newsletter sending paused by sender health (bounce or complaint rate over its limit).

    One row per kind of mail held (today only "newsletter"). `resumed_at` is the
    operator's resume: the rates are then judged only on events after it, so the same
    old bounces do not pause sending again at once.
    """

    __tablename__ = "sending_hold"

    name: str = Field(primary_key=True, max_length=32)
    paused_at: datetime | None = _when()
    reason: str | None = Field(default=None, max_length=1000)
    resumed_at: datetime | None = _when()


class RateLimit(SQLModel, table=True):
    """One client's or one mailbox's standing against a limit (drip.limits), shared by
    every web process. Times are seconds since the epoch: the arithmetic stays in SQL."""

    __tablename__ = "rate_limit"

    bucket: str = Field(primary_key=True, max_length=16)
    key: str = Field(primary_key=True, max_length=64)
    #: The limit's clock: when the key's next hit would be on time (signups), or when
    #: its next login attempt may be checked (admin).
    at: float
    #: Login attempts without a success since the key was last forgiven.
    count: int = 0
    #: After this the row says nothing the absence of a row would not; then it is purged.
    expires: float = Field(index=True)


class Alert(SQLModel, table=True):
    """One watched condition: raised while `raised_at` is set (drip.alerts)."""

    __tablename__ = "alert"

    name: str = Field(primary_key=True, max_length=32)
    raised_at: datetime | None = _when()
    detail: str | None = Field(default=None, max_length=1000)


class QuestionStatus(StrEnum):
    new = "new"
    read = "read"
    answered = "answered"


class Question(SQLModel, table=True):
    """A reader's reply to one of drip's emails: the author's questions inbox (drip.replies).

    Tied to the subscriber and to the outbox row it answers (so the lesson); replies to
    an answer join the first question's thread. `message_id` is the reply's own
    Message-ID, unique, so a reply delivered twice is kept once.
    """

    __tablename__ = "question"
    __table_args__ = (Index("ix_question_status_received", "status", "received_at"),)

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int | None = Field(
        default=None, foreign_key="subscriber.id", ondelete="CASCADE", index=True
    )
    #: The email this replies to; its template names the lesson.
    outbox_id: int | None = Field(default=None, foreign_key="outbox.id", ondelete="SET NULL")
    template: str = Field(default="", max_length=100)
    #: The first question of the thread (itself for a new thread).
    thread_id: int | None = Field(default=None, index=True)
    message_id: str = Field(sa_column=Column(String(250), nullable=False, unique=True))
    from_address: str = Field(sa_column=Column(String(320), nullable=False))
    subject: str = Field(default="", max_length=300)
    body: str = Field(default="")
    status: QuestionStatus = Field(
        default=QuestionStatus.new, sa_column=Column(String(16), nullable=False)
    )
    received_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    answered_at: datetime | None = _when()


class Meta(SQLModel, table=True):
    """Facts about this database itself, one value per name (e.g. the secret key's check)."""

    __tablename__ = "meta"

    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=500)
