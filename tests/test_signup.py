"""The signup rules, without HTTP: checking, normalising, subscribing, confirming, leaving."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from drip import signup
from drip.clock import utcnow
from drip.db import session_scope
from drip.models import MessageKind, OutboxMessage, OutboxStatus, Subscriber, SubscriberStatus
from drip.settings import Settings, load_settings
from drip.subscribers import activate, add_subscriber
from drip.tokens import make_token

SETTINGS = load_settings(_env_file=None, default_timezone="Europe/London")


def _check(**fields: object) -> signup.Checked:
    values: dict[str, object] = {
        "email": "ann@example.com",
        "name": "Ann",
        "consent": True,
        "website": "",
        "timezone": "America/New_York",
    }
    values.update(fields)
    return signup.check(settings=SETTINGS, **values)  # type: ignore[arg-type]


def test_a_good_signup_is_normalised() -> None:
    checked = _check(email="  Ann@EXAMPLE.com ", name="  Ann   Marie ")
    assert checked.errors == {}
    assert checked.signup is not None
    assert checked.signup.email == "Ann@example.com"
    assert checked.signup.name == "Ann Marie"
    assert checked.signup.timezone == "America/New_York"


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"email": ""}, "email"),
        ({"email": "not-an-address"}, "email"),
        ({"email": "a@b"}, "email"),
        ({"email": "x" * 250 + "@example.com"}, "email"),
        ({"email": "ann@example.com\r\nBcc: x@example.com"}, "email"),
        ({"name": "Ann\r\nBcc: victim@example.com"}, "name"),
        ({"name": "<script>alert(1)</script>"}, "name"),
        ({"name": "Ann\x00"}, "name"),
        ({"name": "A" * 101}, "name"),
        ({"consent": False}, "consent"),
    ],
)
def test_each_problem_is_named_under_its_field(fields: dict[str, object], field: str) -> None:
    checked = _check(**fields)
    assert checked.signup is None
    assert field in checked.errors
    assert checked.errors[field].endswith(".")


@pytest.mark.parametrize("address", ["jörg@example.com", "用户@example.com", "anné@b.org"])
def test_a_mailbox_name_beyond_ascii_is_refused_with_a_reason(address: str) -> None:
    """drip sends without SMTPUTF8, so such an address would fail every email: refused at
    signup (and import) in plain words; a non-ASCII domain is fine (sent as IDNA)."""
    checked = _check(email=address)
    assert checked.signup is None
    assert "before the @" in checked.errors["email"]
    fine = _check(email="joerg@bücher.example")
    assert fine.signup is not None
    assert fine.signup.email == "joerg@bücher.example"


def test_the_honeypot_is_answered_like_success_and_stores_nothing() -> None:
    checked = _check(website="http://spam.example")
    assert checked.bot
    assert checked.signup is None
    assert checked.errors == {}


@pytest.mark.parametrize("zone", ["", "Mars/Olympus", "../../etc/passwd", "x" * 200])
def test_an_unknown_time_zone_falls_back_to_the_default(zone: str) -> None:
    checked = _check(timezone=zone)
    assert checked.signup is not None
    assert checked.signup.timezone == "Europe/London"


def _outbox(engine: Engine) -> list[OutboxMessage]:
    with session_scope(engine) as session:
        return list(session.execute(select(OutboxMessage).order_by(OutboxMessage.id)).scalars())


def _signup(email: str = "ann@example.com") -> signup.Signup:
    return signup.Signup(email=email, name="Ann", timezone="UTC")


def test_subscribe_confirm_and_leave(settings: Settings, engine: Engine) -> None:
    now = utcnow()
    with session_scope(engine) as session:
        signup.subscribe(session, settings, _signup(), now)
        signup.subscribe(session, settings, _signup("ANN@example.com"), now)  # same person
    assert [r.kind for r in _outbox(engine)] == [MessageKind.confirm]
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber)).scalar_one()
        token = make_token(settings.require_secret(), sub.token_salt, "confirm")
        assert signup.confirm(session, settings, token + "x", now, "198.51.100.7") == "unknown"
        assert signup.confirm(session, settings, token, now, "198.51.100.7") == "confirmed"
        assert signup.confirm(session, settings, token, now, "198.51.100.7") == "already"
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber)).scalar_one()
        assert sub.status == SubscriberStatus.active
        assert sub.consent_ip == "198.51.100.7"
        assert sub.consent_at is not None
    assert [r.kind for r in _outbox(engine)] == [MessageKind.confirm, MessageKind.welcome]
    with session_scope(engine) as session:
        leave_token = make_token(settings.require_secret(), sub.token_salt, "unsubscribe")
        assert signup.unsubscribe(session, settings, leave_token, now) is True
        assert signup.unsubscribe(session, settings, leave_token, now) is True
        assert signup.unsubscribe(session, settings, "nonsense", now) is False
    rows = _outbox(engine)
    assert rows[1].status == OutboxStatus.skipped


def _mark_sent(engine: Engine) -> None:
    """As if the worker had sent every queued email (and the reader lost them)."""
    with session_scope(engine) as session:
        for row in session.execute(select(OutboxMessage)).scalars():
            if row.status == OutboxStatus.queued:
                row.status = OutboxStatus.sent
                session.add(row)


def test_signing_up_again_after_the_first_mail_was_lost_sends_another_at_once(
    settings: Settings, engine: Engine
) -> None:
    """The same minute is fine: nothing about the hour silently drops a second signup. One
    still waiting to go out answers for a signup made meanwhile (a double click)."""
    now = utcnow()
    with session_scope(engine) as session:
        signup.subscribe(session, settings, _signup(), now)
        signup.subscribe(session, settings, _signup(), now)  # the first is still on its way
    assert len(_outbox(engine)) == 1
    for _ in range(3):  # each one was sent and lost: each signup gets a new one
        _mark_sent(engine)
        with session_scope(engine) as session:
            signup.subscribe(session, settings, _signup(), now)
    rows = _outbox(engine)
    assert [r.kind for r in rows] == [MessageKind.confirm] * 4
    assert [r.status for r in rows] == [OutboxStatus.sent] * 3 + [OutboxStatus.queued]


def test_unsubscribe_then_sign_up_again_in_the_same_minute_gets_a_confirmation(
    settings: Settings, engine: Engine
) -> None:
    now = utcnow()
    signup.store(engine, settings, _signup(), now)
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber)).scalar_one()
        secret = settings.require_secret()
        confirm_token = make_token(secret, sub.token_salt, "confirm")
        assert signup.confirm(session, settings, confirm_token, now, None) == "confirmed"
    _mark_sent(engine)
    with session_scope(engine) as session:
        leave = make_token(secret, sub.token_salt, "unsubscribe")
        assert signup.unsubscribe(session, settings, leave, now)
    signup.store(engine, settings, _signup(), now)
    confirms = [r for r in _outbox(engine) if r.kind == MessageKind.confirm]
    assert [r.status for r in confirms] == [OutboxStatus.sent, OutboxStatus.queued]


def test_the_name_changes_only_when_the_new_signup_is_confirmed(
    settings: Settings, engine: Engine
) -> None:
    """Anyone can type an address into the form: what they ask for waits for its link."""
    now = utcnow()
    signup.store(engine, settings, _signup(), now)
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber)).scalar_one()
        token = make_token(settings.require_secret(), sub.token_salt, "confirm")
        assert signup.confirm(session, settings, token, now, None) == "confirmed"
    _mark_sent(engine)
    later = now + timedelta(minutes=5)
    again = signup.Signup(
        email="ann@example.com", name="Mallory", timezone="UTC", newsletter=True, source="/blog"
    )
    signup.store(engine, settings, again, later)
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber)).scalar_one()
        assert sub.name == "Ann"
        assert sub.newsletter is False
        assert sub.status == "active"
        assert sub.pending_signup is not None
        assert sub.pending_signup["name"] == "Mallory"
    assert [r.kind for r in _outbox(engine)][-1] == MessageKind.confirm  # the answer
    with session_scope(engine) as session:
        assert signup.confirm(session, settings, token, later, None) == "updated"
        assert signup.confirm(session, settings, token, later, None) == "already"
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber)).scalar_one()
        assert sub.name == "Mallory"
        assert sub.newsletter is True
        assert sub.pending_signup is None
        assert sub.newsletter_at == later
        assert sub.newsletter_source == "/blog"
        assert sub.source == "/blog"
    # The course did not start again.
    assert [r.kind for r in _outbox(engine)].count(MessageKind.welcome) == 1


def test_newsletter_consent_is_recorded_with_its_time_and_source(
    settings: Settings, engine: Engine
) -> None:
    now = utcnow()
    people = [
        signup.Signup("ann@example.com", "Ann", "UTC", newsletter=True, source="/posts/knees"),
        signup.Signup("bob@example.com", "Bob", "UTC"),
    ]
    signup.store_many(engine, settings, people, now)
    with session_scope(engine) as session:
        ann, bob = session.execute(select(Subscriber).order_by(Subscriber.id)).scalars()
    assert (ann.newsletter, ann.newsletter_at, ann.newsletter_source) == (
        True,
        now,
        "/posts/knees",
    )
    assert ann.source == "/posts/knees"
    assert ann.consent_source == "web"
    assert (bob.newsletter, bob.newsletter_at, bob.newsletter_source) == (False, None, "")


def test_the_source_is_the_field_else_the_referers_path() -> None:
    assert signup.clean_source("  blog sidebar ") == "blog sidebar"
    assert signup.clean_source("", "https://blog.example/posts/knees?utm=x#top") == "/posts/knees"
    assert signup.clean_source("form-a", "https://blog.example/other") == "form-a"
    assert signup.clean_source("", "javascript:alert(1)") == ""
    assert signup.clean_source("a\r\nb\x00c") == "abc"
    assert len(signup.clean_source("x" * 500)) == signup.SOURCE_MAX


def test_an_old_confirmation_link_expires(settings: Settings, engine: Engine) -> None:
    then = utcnow() - timedelta(hours=settings.confirm_ttl_hours + 1)
    with session_scope(engine) as session:
        signup.subscribe(session, settings, _signup(), then)
        sub = session.execute(select(Subscriber)).scalar_one()
        token = make_token(settings.require_secret(), sub.token_salt, "confirm")
        assert signup.confirm(session, settings, token, utcnow(), None) == "expired"
        # Signing up again sends a fresh confirmation and the link works again.
        signup.subscribe(session, settings, _signup(), utcnow())
        assert signup.confirm(session, settings, token, utcnow(), None) == "confirmed"


def test_names_are_tidied_and_tabs_or_separators_refused() -> None:
    checked = _check(name="\u00a0Ann\u2003Marie ")
    assert checked.signup is not None
    assert checked.signup.name == "Ann Marie"
    for bad in ("Ann\tMarie", "Ann\u2028Marie", "Ann\u200bMarie", "Ann\x1b[31m"):
        assert "name" in _check(name=bad).errors


def test_the_same_new_address_at_once_is_one_subscriber(settings: Settings, engine: Engine) -> None:
    now = utcnow()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(signup.store, engine, settings, _signup(), now) for _ in range(4)]
        for future in futures:
            future.result(timeout=30)
    with session_scope(engine) as session:
        assert len(list(session.execute(select(Subscriber)).scalars())) == 1
    assert [r.kind for r in _outbox(engine)] == [MessageKind.confirm]


def test_confirming_twice_at_once_starts_the_course_once(
    settings: Settings, engine: Engine
) -> None:
    now = utcnow()
    signup.store(engine, settings, _signup(), now)
    with session_scope(engine) as session:
        sub = session.execute(select(Subscriber)).scalar_one()
    token = make_token(settings.require_secret(), sub.token_salt, "confirm")

    def click() -> str:
        with session_scope(engine) as session:
            return signup.confirm(session, settings, token, utcnow(), "192.0.2.1")

    with ThreadPoolExecutor(4) as pool:
        outcomes = sorted(f.result(timeout=30) for f in [pool.submit(click) for _ in range(4)])
    assert outcomes == ["already"] * 3 + ["confirmed"]
    assert [r.kind for r in _outbox(engine)] == [MessageKind.confirm, MessageKind.welcome]


def test_coming_back_after_unsubscribing_needs_a_fresh_confirmation(
    settings: Settings, engine: Engine
) -> None:
    now = utcnow()
    with session_scope(engine) as session:
        sub, _ = add_subscriber(
            session, settings, email="ann@example.com", source="test", now=utcnow()
        )
        activate(session, settings, sub, now)
        leave_token = make_token(settings.require_secret(), sub.token_salt, "unsubscribe")
        assert signup.unsubscribe(session, settings, leave_token, now)
    signup.store(engine, settings, _signup(), now)
    with session_scope(engine) as session:
        assert session.execute(select(Subscriber)).scalar_one().status == "pending"
    kinds = [(r.kind, r.status) for r in _outbox(engine)]
    assert kinds == [
        (MessageKind.welcome, OutboxStatus.skipped),
        (MessageKind.confirm, OutboxStatus.queued),
    ]
