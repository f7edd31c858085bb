"""VERP tags: made, verified, found; and the envelope sender every message goes out with."""

from __future__ import annotations

from aiosmtpd.smtp import Envelope
from sqlalchemy import Engine

from drip import verp
from drip.models import MessageKind
from drip.settings import Settings
from tests.conftest import SECRET, SettingsFactory
from tests.factories import outbox, subscriber, tick
from tests.mailserver import MailServer, Recorder

DOMAIN = "bounces.example.com"


def test_a_tag_verifies_only_for_its_own_message_and_key() -> None:
    tag = verp.make_tag(SECRET, 42, "<a@x>")
    assert verp.tag_id(tag) == 42
    assert len(tag.split("-")[1]) == verp.SIGNATURE_CHARS
    assert verp.verify(SECRET, tag, 42, "<a@x>")
    assert verp.verify(SECRET, tag.upper(), 42, "<a@x>")  # servers may change the case
    assert not verp.verify(SECRET, tag, 43, "<a@x>")
    assert not verp.verify(SECRET, tag, 42, "<b@x>")
    assert not verp.verify("another-secret-0123456789", tag, 42, "<a@x>")
    for bad in ("42", "42-", "x-" + tag, tag + "a", "42-" + "a" * 12, "", "-1-abc"):
        assert not verp.verify(SECRET, bad, 42, "<a@x>"), bad


def test_split_and_find_tags() -> None:
    tag = verp.make_tag(SECRET, 7, "<m@x>")
    address = verp.address(SECRET, DOMAIN, 7, "<m@x>")
    assert address == f"bounces+{tag}@{DOMAIN}"
    assert verp.split(f"<{address}>") == ("bounces", tag, DOMAIN)
    assert verp.split("Bounces@Bounces.Example.com.") == ("bounces", None, DOMAIN)
    text = f"Return-Path: <{address.upper()}>\nTo: someone+{tag}@{DOMAIN}\n{address}"
    assert verp.tags_in(text, DOMAIN) == [tag]
    assert verp.tags_in(text, "other.example.com") == []


def test_each_message_goes_out_from_its_own_signed_bounce_address(
    database_url: str,
    recorder: Recorder,
    mail_server: MailServer,
    make_settings: SettingsFactory,
    engine: Engine,
) -> None:
    senders: list[str] = []

    def note(envelope: Envelope) -> None:
        senders.append(str(envelope.mail_from))

    recorder.on_data = note
    settings = make_settings(database_url, mail_server.port, bounce_domain=DOMAIN)
    subscriber(settings, "one@example.com", active=False)
    subscriber(settings, "two@example.com")
    tick(settings)
    rows = sorted(outbox(engine), key=lambda r: r.kind != MessageKind.confirm)
    assert len(senders) == len(rows) == 2
    for row in rows:
        assert row.id is not None
        assert verp.address(SECRET, DOMAIN, row.id, row.message_id) in senders
    # The From header stays the author's; the bounce address rides in a header too.
    assert all(str(m["From"]).endswith("<course@localhost>") for m in recorder.messages)
    assert sorted(str(m["X-Drip-Bounce"]) for m in recorder.messages) == sorted(senders)


def test_without_a_bounce_domain_the_sender_is_the_envelope_sender(
    settings: Settings, recorder: Recorder
) -> None:
    senders: list[str] = []

    def note(envelope: Envelope) -> None:
        senders.append(str(envelope.mail_from))

    recorder.on_data = note
    subscriber(settings, "plain@example.com")
    tick(settings)
    assert senders == ["course@localhost"]
    assert recorder.messages[0]["X-Drip-Bounce"] is None
