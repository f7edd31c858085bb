"""The send log's queries on both databases, over rows made by the outbox itself."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from drip import sendlog
from drip.clock import utcnow
from drip.db import read_scope, session_scope
from drip.models import (
    CourseProgress,
    DeliveryAttempt,
    MessageKind,
    OutboxMessage,
    OutboxStatus,
    Subscriber,
    SubscriberStatus,
    WorkerHeartbeat,
)
from drip.outbox import (
    NewMessage,
    Result,
    claim,
    dedupe_key,
    enqueue,
    enqueue_many,
    record,
    release,
)
from drip.sendlog import (
    CONTRACT_FIELDS,
    LogEntry,
    LogFilter,
    SubscriberFilter,
    dashboard,
    entries,
    follow,
    follow_start,
    forget_subscriber,
    list_subscribers,
    retry_message,
    subscriber_data,
    timeline,
)
from drip.settings import Settings
from tests import mailserver
from tests.factories import outbox, subscriber, tick
from tests.mailserver import Recorder

LEASE = timedelta(minutes=5)
OK = Result(OutboxStatus.sent, 250, "2.0.0 OK")
BUSY = Result(OutboxStatus.deferred, 451, "4.3.0 try again later")


def _message(n: int, kind: MessageKind = MessageKind.lesson, sub: int | None = None) -> NewMessage:
    return NewMessage(
        kind=kind,
        template="welcome" if kind == MessageKind.welcome else f"lesson-{n:02d}",
        email=f"reader{n}@example.com",
        dedupe_key=dedupe_key(kind, n, "x"),
        due_at=utcnow(),
        subscriber_id=sub,
    )


def _queue(engine: Engine, *messages: NewMessage) -> None:
    with session_scope(engine) as session:
        enqueue_many(session, list(messages), "example.com")


def _deliver(engine: Engine, result: Result, email: str | None = None) -> list[OutboxMessage]:
    """Claim what is due, record `result` for it (or only for `email`'s), hand back the rest."""
    rows = claim(engine, "w1", utcnow() + timedelta(seconds=1), 100, LEASE)
    done = [r for r in rows if email is None or r.email == email]
    with session_scope(engine) as session:
        for row in done:
            retry_now = Result(result.status, result.smtp_code, result.smtp_message, utcnow())
            record(session, [(row, retry_now)], "w1")
    release(engine, "w1", [r.id for r in rows if r not in done and r.id is not None])
    return done


def _log(engine: Engine, **kw: object) -> list[LogEntry]:
    with read_scope(engine) as session:
        return entries(session, LogFilter(**kw))  # type: ignore[arg-type]


def test_log_joins_attempts_and_queued_rows_newest_first(engine: Engine) -> None:
    _queue(engine, _message(1), _message(2))
    _deliver(engine, BUSY, "reader1@example.com")
    _deliver(engine, OK, "reader1@example.com")
    _queue(engine, _message(3))

    log = _log(engine)
    assert [(e.email, e.status) for e in log] == [
        ("reader3@example.com", "queued"),
        ("reader1@example.com", "sent"),
        ("reader1@example.com", "deferred"),
        ("reader2@example.com", "queued"),  # claimed and handed back: never attempted
    ]
    times = [e.at for e in log]
    assert times == sorted(times, reverse=True)
    sent = log[1]
    assert sent.attempts == 2 and log[2].attempts == 1 and log[0].attempts == 0
    assert sent.smtp_code == 250 and sent.template == "lesson-01" and sent.kind == "lesson"
    assert sent.message_id.startswith("<") and sent.message_id.endswith("@example.com>")
    line = sent.contract()
    assert tuple(line) == CONTRACT_FIELDS
    assert line["at"].endswith("Z") and line["status"] == "sent" and line["attempts"] == 2


def test_filters_by_email_kind_status_and_time(engine: Engine) -> None:
    _queue(engine, _message(1), _message(2, MessageKind.welcome))
    _deliver(engine, OK)
    _queue(engine, _message(3))

    assert {e.email for e in _log(engine, email="reader2@example.com")} == {"reader2@example.com"}
    assert [e.kind for e in _log(engine, kind="welcome")] == ["welcome"]
    assert [e.email for e in _log(engine, status="queued")] == ["reader3@example.com"]
    assert {e.email for e in _log(engine, status="sent")} == {
        "reader1@example.com",
        "reader2@example.com",
    }
    latest = _log(engine)[0].at
    assert [e.email for e in _log(engine, since=latest)] == ["reader3@example.com"]
    assert _log(engine, since=latest + timedelta(seconds=1)) == []
    assert _log(engine, status="bounced") == []


def test_email_filter_finds_a_subscriber_whatever_the_case(
    settings: Settings, engine: Engine
) -> None:
    subscriber(settings, "Ann.Lee@Example.com")
    found = _log(engine, email="ann.lee@example.COM")
    assert [(e.kind, e.status, e.email) for e in found] == [
        ("welcome", "queued", "Ann.Lee@Example.com")
    ]


def test_keyset_paging_visits_every_entry_once_in_order(engine: Engine) -> None:
    # One enqueue_many gives every row the same created_at: ties must still page cleanly.
    _queue(engine, *(_message(n) for n in range(1, 8)))
    _deliver(engine, OK, "reader1@example.com")
    _queue(engine, *(_message(n) for n in range(8, 12)))
    everything = _log(engine, limit=100)
    assert len(everything) == 11

    seen: list[str] = []
    before = None
    while True:
        page = _log(engine, limit=4, before_id=before)
        if not page:
            break
        seen += [e.key for e in page]
        before = page[-1].key
    assert seen == [e.key for e in everything]
    assert len(set(seen)) == len(seen)


def test_bad_filters_are_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        LogFilter(kind="spam")
    with pytest.raises(ValueError, match="status"):
        LogFilter(status="sending")
    with pytest.raises(ValueError, match="limit"):
        LogFilter(limit=0)
    with pytest.raises(ValueError, match="log entry"):
        LogFilter(before_id="x1")


def test_follow_shows_each_new_entry_once(engine: Engine) -> None:
    _queue(engine, _message(1))
    with read_scope(engine) as session:
        state = follow_start(session)
        assert follow(session, LogFilter(), state) == []
    _queue(engine, _message(2))
    with read_scope(engine) as session:
        new = follow(session, LogFilter(), state)
    assert [(e.email, e.status) for e in new] == [("reader2@example.com", "queued")]
    _deliver(engine, OK)
    with read_scope(engine) as session:
        new = follow(session, LogFilter(), state)
        assert [(e.email, e.status, e.attempts) for e in new] == [
            ("reader1@example.com", "sent", 1),
            ("reader2@example.com", "sent", 1),
        ]
        assert follow(session, LogFilter(), state) == []
        assert follow(session, LogFilter(status="sent"), follow_start(session)) == []


def test_follow_reads_a_burst_in_windows_and_moves_on_past_rows_it_filters_out(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sendlog, "FOLLOW_LOOKBACK", 2)  # windows of 3 rows: batch 1 + 2 again
    with read_scope(engine) as session:
        everything, only_bounces = follow_start(session), follow_start(session)
    _queue(engine, *(_message(n) for n in range(1, 8)))
    _deliver(engine, OK)
    shown: list[str] = []
    with read_scope(engine) as session:
        for _ in range(20):  # a tiny batch: the burst arrives over several polls
            shown += [e.key for e in follow(session, LogFilter(), everything, batch=1)]
        assert follow(session, LogFilter(status="bounced"), only_bounces) == []
    # Sent before the first poll, so never seen as queued: seven attempts, each once, in order.
    assert shown == [f"a{n}" for n in range(1, 8)]
    # Nothing matched, yet the marks moved to the newest rows: the next poll reads little.
    assert only_bounces.attempt_id == everything.attempt_id
    assert only_bounces.outbox_id == everything.outbox_id


def test_timeline_holds_every_message_and_attempt(settings: Settings, engine: Engine) -> None:
    sub = subscriber(settings, "tim@example.com")
    _deliver(engine, BUSY)
    _deliver(engine, OK)
    assert sub.id is not None
    with read_scope(engine) as session:
        items = timeline(session, sub.id)
    assert [i.message.kind for i in items] == ["welcome"]
    assert [a.status for a in items[0].attempts] == ["deferred", "sent"]


def _bounce(recorder: Recorder, address: str) -> None:
    """The real SMTP server refuses `address` for good."""
    recorder.on_data = lambda env: mailserver.NO_SUCH_USER if address in env.rcpt_tos else None


def test_dashboard_counts(settings: Settings, engine: Engine, recorder: Recorder) -> None:
    subscriber(settings, "a@example.com")
    subscriber(settings, "b@example.com")
    subscriber(settings, "c@example.com", active=False)
    _bounce(recorder, "b@example.com")
    tick(settings)
    subscriber(settings, "d@example.com", active=False)
    now = utcnow()
    with session_scope(engine) as session:
        session.add(WorkerHeartbeat(worker="old", last_pass_at=now - timedelta(hours=1)))
    with read_scope(engine) as session:
        board = dashboard(session, now)
    assert board.today == {"sent": 2, "deferred": 0, "failed": 0, "bounced": 1}
    assert board.last_30_days == board.today
    assert board.subscribers["active"] == 1 and board.subscribers["bounced"] == 1
    assert board.subscribers["pending"] == 2 and board.subscribers["unsubscribed"] == 0
    assert len(board.sends_per_day) == 30 and board.sends_per_day[-1] == (now.date(), 2)
    assert sum(n for _, n in board.sends_per_day) == 2
    assert dict(board.progress) == {0: 1} and board.finished == 0 and board.stopped == 1
    assert board.waiting == 1  # d's confirmation
    names = [w.worker for w in board.workers]
    assert names[-1] == "old" and len(names) == 2 and board.workers_alive()


def test_subscriber_list_filters_by_prefix_and_status_and_pages(
    settings: Settings, engine: Engine
) -> None:
    for name in ("ann", "anna", "bob", "an_x"):
        subscriber(settings, f"{name}@example.com", active=name != "bob")
    with read_scope(engine) as session:
        by_prefix = list_subscribers(session, SubscriberFilter(email_prefix="AN"))
        assert [s.email for s in by_prefix] == [
            "an_x@example.com",
            "anna@example.com",
            "ann@example.com",
        ]
        literal = list_subscribers(session, SubscriberFilter(email_prefix="an_"))
        assert [s.email for s in literal] == ["an_x@example.com"]
        pending = list_subscribers(session, SubscriberFilter(status="pending"))
        assert [s.email for s in pending] == ["bob@example.com"]
        first = list_subscribers(session, SubscriberFilter(limit=3))
        rest = list_subscribers(session, SubscriberFilter(limit=3, before_id=first[-1].id))
    assert [s.email for s in first + rest] == [
        "an_x@example.com",
        "bob@example.com",
        "anna@example.com",
        "ann@example.com",
    ]


def test_retry_requeues_failed_or_bounced_but_never_a_row_in_flight(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    sub = subscriber(settings, "gone@example.com")
    _bounce(recorder, "gone@example.com")
    tick(settings)
    [bounced] = outbox(engine)
    assert bounced.id is not None and bounced.status == OutboxStatus.bounced
    with session_scope(engine) as session:
        assert session.get(Subscriber, sub.id).status == SubscriberStatus.bounced  # type: ignore[union-attr]
        assert retry_message(session, bounced.id, utcnow()) is True
    with session_scope(engine) as session:
        row = session.get(OutboxMessage, bounced.id)
        assert row is not None and row.status == OutboxStatus.queued
        # The bounce suppressed the subscriber; the retry lets them back in.
        assert session.get(Subscriber, sub.id).status == SubscriberStatus.active  # type: ignore[union-attr]
    [claimed] = claim(engine, "w2", utcnow() + timedelta(seconds=1), 10, LEASE)
    with session_scope(engine) as session:
        assert retry_message(session, bounced.id, utcnow()) is False  # sending: untouched
        assert retry_message(session, 999_999, utcnow()) is False
    with session_scope(engine) as session:
        row = session.get(OutboxMessage, bounced.id)
        assert row is not None and row.status == OutboxStatus.sending and row.leased_by == "w2"
        record(session, [(claimed, OK)], "w2")
    with session_scope(engine) as session:
        assert retry_message(session, bounced.id, utcnow()) is False  # sent: untouched
    statuses = [e.status for e in _log(engine)]
    assert statuses == ["sent", "bounced"]


def test_forget_wipes_personal_data_and_keeps_counts(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    sub = subscriber(settings, "Private.Person@example.com", name="Pat Private")
    recorder.on_data = lambda env: "550 5.1.1 <Private.Person@example.com>: no such user"
    tick(settings)
    assert sub.id is not None
    with read_scope(engine) as session:
        before = dashboard(session, utcnow())
        exported = subscriber_data(session, sub.id)
    assert exported is not None
    assert exported["subscriber"]["email"] == "Private.Person@example.com"
    assert exported["messages"][0]["attempts"][0]["smtp_code"] == 550
    assert "token" not in str(exported)

    with session_scope(engine) as session:
        assert forget_subscriber(session, sub.id, utcnow()) is True
    with read_scope(engine) as session:
        row = session.get(Subscriber, sub.id)
        assert row is not None
        assert row.email == row.email_key == f"deleted-{sub.id}@invalid" and row.name == ""
        assert row.consent_ip is None and row.token_salt != sub.token_salt
        assert row.unsubscribe_token_hash != sub.unsubscribe_token_hash
        texts = [
            str(v)
            for m in session.execute(select(OutboxMessage)).scalars()
            for v in (m.email, m.last_smtp_message)
        ]
        texts += [str(a.smtp_message) for a in session.execute(select(DeliveryAttempt)).scalars()]
        assert texts and not any("private" in t.lower() for t in texts)
        assert session.get(CourseProgress, sub.id) is not None
        after = dashboard(session, utcnow())
    assert after.today == before.today and after.sends_per_day == before.sends_per_day
    assert _log(engine, email="Private.Person@example.com") == []
    assert [e.status for e in _log(engine, email=f"deleted-{sub.id}@invalid")] == ["bounced"]


def test_enqueue_helper_is_idempotent(engine: Engine) -> None:
    """The log never shows a message twice because it was queued twice."""
    with session_scope(engine) as session:
        assert enqueue(session, _message(1), "example.com")
        assert not enqueue(session, _message(1), "example.com")
    assert len(_log(engine)) == 1
