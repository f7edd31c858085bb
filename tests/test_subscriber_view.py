"""The subscriber list and one subscriber's timeline, on both databases."""

from __future__ import annotations

from sqlalchemy import Engine

from drip.db import read_scope
from drip.settings import Settings
from drip.subscriber_view import SubscriberFilter, list_subscribers, timeline
from tests.factories import subscriber
from tests.outcomes import BUSY, OK, deliver


def test_timeline_holds_every_message_and_attempt(settings: Settings, engine: Engine) -> None:
    sub = subscriber(settings, "tim@example.com")
    deliver(engine, BUSY)
    deliver(engine, OK)
    assert sub.id is not None
    with read_scope(engine) as session:
        items = timeline(session, sub.id)
    assert [i.message.kind for i in items] == ["welcome"]
    assert [a.status for a in items[0].attempts] == ["deferred", "sent"]


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
