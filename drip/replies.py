"""Readers' replies: the author's questions inbox, and the answers that go back.

A lesson or newsletter carries `Reply-To: reply+TAG@DRIP_BOUNCE_DOMAIN`, the TAG
naming that very message (signed like the VERP tags of drip.verp, so nobody can
file a question under someone else's name). `drip inbound` hands each message for a
`reply+` address to `take()`: auto-replies and out-of-office notes are recognised
(RFC 3834 `Auto-Submitted` and the usual non-standard headers) and dropped; a real
reply becomes a `Question` tied to its subscriber and to the lesson it answers, and
a reply to one of the author's answers joins that thread. The author answers from
/admin; the answer is an outbox row like every other email (logged, retried,
never sent twice: its dedupe key carries the form's one-time nonce).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parseaddr

from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from drip import verp
from drip.db import session_scope
from drip.errors import DripError
from drip.models import (
    MessageKind,
    OutboxMessage,
    Question,
    QuestionStatus,
    Subscriber,
    SubscriberStatus,
)
from drip.sending.outbox import NewMessage, enqueue
from drip.settings import Settings

#: The local part of reply addresses: `reply+TAG@bounce-domain`.
REPLY = "reply"
#: Kept of a reply's text; the rest (long quotes, signatures) is cut.
MAX_BODY = 20_000
ANSWER_TEMPLATE = "answer"
#: The answer a form may carry, and the one-time nonce that makes a double post harmless.
MAX_ANSWER = 20_000
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")

#: Given a reply address's tag, the outbox row it names, or None if it is not drip's.
Resolve = Callable[[Session, str], OutboxMessage | None]

#: The kinds of email whose replies reach the author: the lessons, newsletters and answers.
REPLY_KINDS = frozenset({MessageKind.lesson, MessageKind.newsletter, MessageKind.answer})


def reply_address(secret: str, domain: str, outbox_id: int, message_id: str) -> str:
    """The Reply-To of one message: its VERP tag (drip.verp) under `reply+`."""
    return f"{REPLY}+{verp.make_tag(secret, outbox_id, message_id)}@{domain}"


def signed(secret: str) -> Resolve:
    """Resolve a tag only if drip signed it for exactly that message (drip.verp.verify)."""

    def resolve(session: Session, tag: str) -> OutboxMessage | None:
        return verp.signed_message(session, secret, tag)

    return resolve


def route(settings: Settings, engine: Engine, tag: str | None, data: bytes, now: datetime) -> str:
    """drip inbound's route for `reply+TAG@DRIP_BOUNCE_DOMAIN` (drip.inbound.ROUTES)."""
    resolve = signed(settings.require_secret())
    with session_scope(engine) as session:
        intake = take(session, data, tag, resolve=resolve, now=now)
    return f"reply {intake.outcome}" + (f": {intake.reason}" if intake.reason else "")


_AUTO_SUBJECT = re.compile(
    r"^\s*(out of (the )?office|automatic reply|auto(matic)?[ -]?(reply|response)|"
    r"autoreply|abwesenheit|absence|away from (my|the) (desk|office)|on vacation)\b",
    re.IGNORECASE,
)


def automatic(message: EmailMessage, envelope_sender: str | None = None) -> str | None:
    """Why `message` was sent by a machine (an auto-reply, a list, a bounce), or None.

    RFC 3834: `Auto-Submitted` other than `no`. Then what Exchange, Gmail and the
    common vacation programs add: `X-Autoreply`, `X-Autorespond`, `Precedence:
    auto_reply|bulk|junk|list`, `X-Auto-Response-Suppress`, a list's `List-Id`; an
    empty envelope sender or a delivery report (bounces go to drip.verp's addresses,
    not here); and, last, an out-of-office subject line.
    """
    auto = str(message.get("Auto-Submitted", "")).strip().lower()
    if auto and auto.split(";")[0].strip() != "no":
        return f"Auto-Submitted: {auto}"
    for header in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Auto-Response-Suppress"):
        if message.get(header) is not None:
            return f"{header} present"
    precedence = str(message.get("Precedence", "")).strip().lower()
    if precedence in {"auto_reply", "bulk", "junk", "list"}:
        return f"Precedence: {precedence}"
    if message.get("List-Id") is not None:
        return "List-Id present: a mailing list, not a reader"
    if envelope_sender is not None and envelope_sender.strip("<> ") == "":
        return "empty envelope sender"
    if message.get_content_type() == "multipart/report":
        return "a delivery or feedback report"
    if _AUTO_SUBJECT.search(str(message.get("Subject", ""))):
        return "an out-of-office subject"
    return None


_QUOTE_HEAD = re.compile(r"^\s*(On .{0,200} wrote:|-----\s*Original Message\s*-----)\s*$", re.I)


def reply_text(message: EmailMessage) -> str:
    """The reader's own words: the plain part (or the HTML's text), quotes cut off."""
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        text = str(part.get_content())
    except (LookupError, ValueError):
        return ""
    if part.get_content_type() == "text/html":
        text = re.sub(r"<(br|/p|/div)[^>]*>", "\n", text, flags=re.I)
        text = re.sub(r"<[^>]+>", "", text)
    kept: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if _QUOTE_HEAD.match(line) or line.startswith(">"):
            break
        kept.append(line.rstrip())
    return "\n".join(kept).strip()[:MAX_BODY]


@dataclass(frozen=True)
class Intake:
    """What became of one message: `kept` (a question), or why it was not."""

    outcome: str  # kept, duplicate, automatic, unknown
    reason: str = ""
    question_id: int | None = None


def take(
    session: Session,
    raw: bytes,
    tag: str | None,
    *,
    resolve: Resolve,
    now: datetime,
    envelope_sender: str | None = None,
) -> Intake:
    """File one message sent to `reply+TAG@...`; never raises on what a stranger sends."""
    if not tag:
        return Intake("unknown", "no tag: not a reply to one of drip's emails")
    row = resolve(session, tag)
    if row is None or row.subscriber_id is None:
        return Intake("unknown", "the tag names no message of drip's")
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    if why := automatic(message, envelope_sender):
        return Intake("automatic", why)
    message_id = str(message.get("Message-ID", "")).strip()[:250] or f"<no-id-{now.timestamp()}>"
    known = session.execute(
        select(col(Question.id)).where(col(Question.message_id) == message_id)
    ).scalar_one_or_none()
    if known is not None:
        return Intake("duplicate", "already filed", known)
    thread_id: int | None = None
    template = row.template
    if row.kind == MessageKind.answer:
        thread_id = row.context.get("thread_id")
        template = str(row.context.get("lesson_template", template))
    question = Question(
        subscriber_id=row.subscriber_id,
        outbox_id=row.id,
        template=template,
        thread_id=thread_id,
        message_id=message_id,
        from_address=parseaddr(str(message.get("From", "")))[1][:320] or row.email,
        subject=" ".join(str(message.get("Subject", "")).split())[:300],
        body=reply_text(message),
        received_at=now,
    )
    session.add(question)
    session.flush()
    if question.thread_id is None:
        question.thread_id = question.id
    return Intake("kept", "", question.id)


# -- the author's side ------------------------------------------------------------------


@dataclass(frozen=True)
class Thread:
    questions: list[Question]
    answers: list[OutboxMessage]
    subscriber: Subscriber | None


def inbox(session: Session, status: str = "", limit: int = 100) -> list[Question]:
    """The newest question of each thread first; `status` filters (new, read, answered)."""
    query = select(Question).order_by(col(Question.received_at).desc(), col(Question.id).desc())
    if status:
        query = query.where(col(Question.status) == QuestionStatus(status))
    return list(session.execute(query.limit(limit)).scalars())


def count_new(session: Session) -> int:
    """Questions not yet read: the number beside Questions in the admin's menu."""
    return int(
        session.execute(
            select(func.count())
            .select_from(Question)
            .where(col(Question.status) == QuestionStatus.new)
        ).scalar_one()
    )


def asked_by(session: Session, subscriber_id: int) -> list[Question]:
    """One subscriber's questions, oldest first (their page in /admin, their data export)."""
    return list(
        session.execute(
            select(Question)
            .where(col(Question.subscriber_id) == subscriber_id)
            .order_by(col(Question.id))
        ).scalars()
    )


def thread(session: Session, thread_id: int) -> Thread | None:
    questions = list(
        session.execute(
            select(Question).where(col(Question.thread_id) == thread_id).order_by(col(Question.id))
        ).scalars()
    )
    if not questions:
        return None
    answers = list(
        session.execute(
            select(OutboxMessage)
            .where(col(OutboxMessage.kind) == MessageKind.answer)
            .where(col(OutboxMessage.dedupe_key).like(f"answer:thread-{thread_id}:%"))
            .order_by(col(OutboxMessage.id))
        ).scalars()
    )
    first = questions[0]
    subscriber = session.get(Subscriber, first.subscriber_id) if first.subscriber_id else None
    return Thread(questions, answers, subscriber)


def mark(session: Session, thread_id: int, status: QuestionStatus) -> int:
    """Mark every question of a thread read, new or answered; returns how many."""
    found = list(
        session.execute(select(Question).where(col(Question.thread_id) == thread_id)).scalars()
    )
    for question in found:
        question.status = status
    return len(found)


class AnswerRefused(DripError):
    """The answer cannot be sent; the message says why in one line."""


def answer(
    session: Session, thread_id: int, text: str, nonce: str, now: datetime, msgid_domain: str
) -> bool:
    """Queue the author's answer to a thread; False if this form was already sent."""
    text = text.replace("\r\n", "\n").strip()
    if not text:
        raise AnswerRefused("the answer is empty")
    if len(text) > MAX_ANSWER:
        raise AnswerRefused(f"the answer is longer than {MAX_ANSWER} characters")
    if not _NONCE.fullmatch(nonce):
        raise AnswerRefused("the form is incomplete; reload the page and try again")
    found = thread(session, thread_id)
    if found is None or found.subscriber is None or found.subscriber.id is None:
        raise AnswerRefused("no such question, or its reader was deleted")
    if found.subscriber.status != SubscriberStatus.active:
        raise AnswerRefused(f"the reader is {found.subscriber.status}: nothing can be sent")
    last = found.questions[-1]
    subject = last.subject or "Your question"
    queued = enqueue(
        session,
        NewMessage(
            kind=MessageKind.answer,
            template=ANSWER_TEMPLATE,
            email=found.subscriber.email,
            dedupe_key=f"answer:thread-{thread_id}:{nonce}",
            due_at=now,
            subscriber_id=found.subscriber.id,
            context={
                "thread_id": thread_id,
                "in_reply_to": last.message_id,
                "lesson_template": last.template,
                "question_subject": subject
                if subject.lower().startswith("re:")
                else f"Re: {subject}",
                "question_text": last.body,
                "answer_text": text,
            },
        ),
        msgid_domain,
        now,
    )
    if queued:
        for question in found.questions:
            question.status = QuestionStatus.answered
            question.answered_at = question.answered_at or now
    return queued
