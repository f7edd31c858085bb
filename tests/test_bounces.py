"""Reading bounces and complaints: RFC 3464, ARF, real MTAs' own formats; what is believed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from drip import verp
from drip.bounces import parse, read, severity, take
from drip.clock import utcnow
from drip.db import session_scope
from drip.feedback import Kind, Recorded
from drip.models import OutboxStatus, Subscriber, SubscriberStatus
from drip.settings import Settings
from tests.conftest import SettingsFactory
from tests.factories import lesson_sent, subscriber
from tests.mailserver import MailServer, Recorder
from tests.reports import DOMAIN, arf, dsn, forged_original, states, tagged_address

SAMPLES = Path(__file__).parent / "data" / "bounces"


@pytest.mark.parametrize(
    ("sample", "kind", "code"),
    [
        ("dsn_10", Kind.hard, 550),  # Postfix DSN, user unknown
        ("simple_42", Kind.soft, 550),  # Gmail's 5.7.1 spam block: about the sender
        ("qmail_05", Kind.hard, 550),  # qmail's own format
        ("yahoo_11", Kind.hard, 550),
        ("microsoft_01", Kind.hard, None),
        ("simple_01", Kind.soft, 552),  # over quota
        ("dsn_05", None, None),  # "delayed": a warning, not a bounce
    ],
)
def test_real_world_bounces_are_read(sample: str, kind: Kind | None, code: int | None) -> None:
    finding = read(parse((SAMPLES / f"{sample}.txt").read_bytes()))
    if kind is None:
        assert finding is None
        return
    assert finding is not None
    assert finding.kind == kind
    assert finding.smtp_code == code


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        ("5.1.1", None, Kind.hard),
        ("5.1.10", None, Kind.hard),
        ("5.2.2", None, Kind.soft),
        ("5.4.7", None, Kind.soft),
        ("5.7.26", None, Kind.soft),
        ("4.2.2", None, Kind.soft),
        ("", 550, Kind.hard),
        ("", 552, Kind.soft),
        ("", 451, Kind.soft),
        (None, None, Kind.hard),
    ],
)
def test_severity(status: str | None, code: int | None, kind: Kind) -> None:
    assert severity(status, code) == kind


def test_an_arf_report_is_a_complaint_and_other_feedback_types_are_not() -> None:
    original = b"From: a@x\r\nTo: b@y\r\nSubject: hi\r\n\r\nhello\r\n"
    assert read(parse(arf(to="x@y", original=original))) is not None
    finding = read(parse(arf(to="x@y", original=original)))
    assert finding is not None
    assert finding.kind == Kind.complaint
    assert "abuse" in finding.diagnostic
    for harmless in ("not-spam", "auth-failure"):
        assert read(parse(arf(to="x@y", original=original, feedback_type=harmless))) is None


def test_mail_that_is_no_report_is_not_read_as_one() -> None:
    vacation = (
        b"From: reader@example.com\r\nTo: bounces@bounces.example.com\r\n"
        b"Subject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\n"
        b"I am away until Monday.\r\n"
    )
    assert read(parse(vacation)) is None


@pytest.fixture
def bounce_settings(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory
) -> Settings:
    return make_settings(database_url, mail_server.port, bounce_domain=DOMAIN)


def test_a_dsn_to_the_tagged_address_bounces_the_subscriber_named_by_the_tag(
    bounce_settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    row, _ = lesson_sent(bounce_settings, "gone@example.com")
    bystander = subscriber(bounce_settings, "bystander@example.com")
    # The report names another subscriber as the failed recipient: that is not believed.
    report = dsn(
        to=tagged_address(row), recipient="bystander@example.com", original=recorder.raw[-1]
    )
    tag = verp.split(tagged_address(row))[1]
    outcome = take(engine, bounce_settings, report, utcnow(), source="inbound", envelope_tag=tag)
    assert outcome == Recorded.recorded
    assert states(engine, row) == (SubscriberStatus.bounced, OutboxStatus.bounced)
    with session_scope(engine) as session:
        other = session.get(Subscriber, bystander.id)
        assert other is not None
        assert other.status == SubscriberStatus.active


def test_when_the_envelope_is_lost_the_quoted_return_path_still_names_the_message(
    bounce_settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    row, _ = lesson_sent(bounce_settings, "lost@example.com")
    report = dsn(
        to="bounces@relay.example.org",
        recipient="lost@example.com",
        original=recorder.raw[-1],
        return_path=tagged_address(row),
    )
    assert take(engine, bounce_settings, report, utcnow(), source="mailbox") == Recorded.recorded
    assert states(engine, row) == (SubscriberStatus.bounced, OutboxStatus.bounced)


def test_when_a_relay_rewrote_the_return_path_the_quoted_header_names_the_message(
    bounce_settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    row, _ = lesson_sent(bounce_settings, "rewritten@example.com")
    complaint = arf(
        to="feedback@relay.example.org",
        original=recorder.raw[-1],  # as sent: X-Drip-Bounce, no Return-Path of ours
        return_path="0100018c-relay-rewrote@amazonses.example",
    )
    assert take(engine, bounce_settings, complaint, utcnow(), source="mailbox") == (
        Recorded.recorded
    )
    assert states(engine, row) == (SubscriberStatus.complained, OutboxStatus.complained)


def test_forged_and_unsigned_reports_change_nothing(
    bounce_settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    row, _ = lesson_sent(bounce_settings, "target@example.com")
    assert row.id is not None
    # The forger knows the address and even the Message-ID, not the secret key.
    original = forged_original("target@example.com", row.message_id)
    forged = f"bounces+{row.id}-{'a' * 12}@{DOMAIN}"
    for to, envelope_tag in [
        (forged, f"{row.id}-{'a' * 12}"),
        (f"bounces+{row.id}@{DOMAIN}", str(row.id)),
        (f"bounces@{DOMAIN}", None),
        ("target@example.com", None),
    ]:
        report = dsn(to=to, recipient="target@example.com", original=original)
        complaint = arf(to=to, original=original, return_path=forged)
        for data in (report, complaint):
            outcome = take(
                engine, bounce_settings, data, utcnow(), source="inbound", envelope_tag=envelope_tag
            )
            assert outcome == Recorded.unknown
    assert states(engine, row) == (SubscriberStatus.active, OutboxStatus.sent)


def test_a_delay_warning_changes_nothing(
    bounce_settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    row, _ = lesson_sent(bounce_settings, "slow@example.com")
    report = dsn(
        to=tagged_address(row),
        recipient="slow@example.com",
        original=recorder.raw[-1],
        action="delayed",
        status="4.4.1",
    )
    assert take(engine, bounce_settings, report, utcnow(), source="inbound") == Recorded.unknown
    assert states(engine, row) == (SubscriberStatus.active, OutboxStatus.sent)
