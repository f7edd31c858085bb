"""The send log's queries on both databases, over rows made by the outbox itself."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from drip import sendlog
from drip.clock import utcnow
from drip.db import read_scope, session_scope
from drip.models import MessageKind
from drip.sending.outbox import NewMessage, dedupe_key, enqueue, enqueue_many
from drip.sendlog import JSON_FIELDS, LogFilter, follow, follow_start
from drip.settings import Settings
from tests.factories import subscriber
from tests.outcomes import BUSY, OK, deliver, read_log


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
        enqueue_many(session, list(messages), "example.com", utcnow())


def test_log_joins_attempts_and_queued_rows_newest_first(engine: Engine) -> None:
    _queue(engine, _message(1), _message(2))
    deliver(engine, BUSY, "reader1@example.com")
    deliver(engine, OK, "reader1@example.com")
    _queue(engine, _message(3))

    log = read_log(engine)
    assert [(e.email, e.status) for e in log] == [
        ("reader3@example.com", "queued"),
        ("reader1@example.com", "sent"),
        ("reader1@example.com", "deferred"),
        ("reader2@example.com", "queued"),  # claimed and handed back: never attempted
    ]
    times = [e.at for e in log]
    assert times == sorted(times, reverse=True)
    sent = log[1]
    assert sent.attempts == 2
    assert log[2].attempts == 1
    assert log[0].attempts == 0
    assert sent.smtp_code == 250
    assert sent.template == "lesson-01"
    assert sent.kind == "lesson"
    assert sent.message_id.startswith("<")
    assert sent.message_id.endswith("@example.com>")
    line = sent.as_json()
    assert tuple(line) == JSON_FIELDS
    assert line["at"].endswith("Z")
    assert line["status"] == "sent"
    assert line["attempts"] == 2


def test_filters_by_email_kind_status_and_time(engine: Engine) -> None:
    _queue(engine, _message(1), _message(2, MessageKind.welcome))
    deliver(engine, OK)
    _queue(engine, _message(3))

    assert {e.email for e in read_log(engine, email="reader2@example.com")} == {
        "reader2@example.com"
    }
    assert [e.kind for e in read_log(engine, kind="welcome")] == ["welcome"]
    assert [e.email for e in read_log(engine, status="queued")] == ["reader3@example.com"]
    assert {e.email for e in read_log(engine, status="sent")} == {
        "reader1@example.com",
        "reader2@example.com",
    }
    latest = read_log(engine)[0].at
    assert [e.email for e in read_log(engine, since=latest)] == ["reader3@example.com"]
    assert read_log(engine, since=latest + timedelta(seconds=1)) == []
    assert read_log(engine, status="bounced") == []


def test_email_filter_finds_a_subscriber_whatever_the_case(
    settings: Settings, engine: Engine
) -> None:
    subscriber(settings, "Ann.Lee@Example.com")
    found = read_log(engine, email="ann.lee@example.COM")
    assert [(e.kind, e.status, e.email) for e in found] == [
        ("welcome", "queued", "Ann.Lee@Example.com")
    ]


def test_keyset_paging_visits_every_entry_once_in_order(engine: Engine) -> None:
    # One enqueue_many gives every row the same created_at: ties must still page cleanly.
    _queue(engine, *(_message(n) for n in range(1, 8)))
    deliver(engine, OK, "reader1@example.com")
    _queue(engine, *(_message(n) for n in range(8, 12)))
    everything = read_log(engine, limit=100)
    assert len(everything) == 11

    seen: list[str] = []
    before = None
    while True:
        page = read_log(engine, limit=4, before_id=before)
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
    deliver(engine, OK)
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
    deliver(engine, OK)
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


def test_enqueue_helper_is_idempotent(engine: Engine) -> None:
    """The log never shows a message twice because it was queued twice."""
    with session_scope(engine) as session:
        assert enqueue(session, _message(1), "example.com", utcnow())
        assert not enqueue(session, _message(1), "example.com", utcnow())
    assert len(read_log(engine)) == 1
