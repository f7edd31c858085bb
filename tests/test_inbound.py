"""`drip inbound`, the real process, over real SMTP: bounces and complaints are recorded."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from drip.inbound import ROUTES, route
from drip.models import OutboxStatus, SubscriberStatus
from drip.settings import Settings
from tests.conftest import SECRET, SettingsFactory
from tests.factories import lesson_sent, tick
from tests.mailserver import MailServer, Recorder, free_port
from tests.processes import start_inbound
from tests.reports import DOMAIN, arf, dsn, forged_original, states, tagged_address


@pytest.fixture
def bounce_settings(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory
) -> Settings:
    return make_settings(database_url, mail_server.port, bounce_domain=DOMAIN)


@pytest.fixture
def inbound_port(bounce_settings: Settings, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    process = start_inbound(bounce_settings, port, tmp_path / "inbound.log")
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _send(port: int, to: str, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("", [to], data)  # a bounce has the null sender


def test_a_dsn_for_a_lesson_bounces_its_subscriber(
    bounce_settings: Settings, engine: Engine, recorder: Recorder, inbound_port: int
) -> None:
    row, sent_at = lesson_sent(bounce_settings, "gone@example.com")
    report = dsn(to=tagged_address(row), recipient="gone@example.com", original=recorder.raw[-1])
    _send(inbound_port, tagged_address(row), report)  # 250 once recorded
    assert states(engine, row) == (SubscriberStatus.bounced, OutboxStatus.bounced)
    sent = len(recorder.raw)
    tick(bounce_settings, sent_at + timedelta(days=30))
    assert len(recorder.raw) == sent


def test_an_arf_complaint_stops_all_mail(
    bounce_settings: Settings, engine: Engine, recorder: Recorder, inbound_port: int
) -> None:
    row, sent_at = lesson_sent(bounce_settings, "angry@example.com")
    _send(inbound_port, tagged_address(row), arf(to=tagged_address(row), original=recorder.raw[-1]))
    assert states(engine, row) == (SubscriberStatus.complained, OutboxStatus.complained)
    sent = len(recorder.raw)
    tick(bounce_settings, sent_at + timedelta(days=30))
    assert len(recorder.raw) == sent


def test_forged_unsigned_and_foreign_mail_changes_nothing(
    bounce_settings: Settings, engine: Engine, recorder: Recorder, inbound_port: int
) -> None:
    row, _ = lesson_sent(bounce_settings, "target@example.com")
    original = forged_original("target@example.com", row.message_id)
    for to in (
        f"bounces+{row.id}-{'a' * 12}@{DOMAIN}",  # forged signature
        f"bounces+{row.id}@{DOMAIN}",  # unsigned
        f"bounces@{DOMAIN}",  # no tag, none inside
    ):
        _send(inbound_port, to, dsn(to=to, recipient="target@example.com", original=original))
        _send(inbound_port, to, arf(to=to, original=original))
    # Not our domain, or not one of our addresses: refused at RCPT.
    for to in (f"postmaster@{DOMAIN}", "bounces@example.org", f"abuse+1-x@{DOMAIN}"):
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            _send(inbound_port, to, dsn(to=to, recipient="x@example.com", original=original))
    # One message for many addresses is taken for a few, not for a thousand.
    with smtplib.SMTP("127.0.0.1", inbound_port, timeout=30) as client:
        client.ehlo()
        client.mail("")
        codes = [client.rcpt(f"bounces+{n}-{'a' * 12}@{DOMAIN}")[0] for n in range(12)]
    assert codes == [250] * 10 + [452] * 2
    assert states(engine, row) == (SubscriberStatus.active, OutboxStatus.sent)


def test_routes_by_the_local_part_on_the_bounce_domain_only() -> None:
    handler, tag = route(f"Bounces+12-abc@{DOMAIN.upper()}", DOMAIN) or (None, None)
    assert handler is ROUTES["bounces"]
    assert tag == "12-abc"
    assert route(f"bounces@{DOMAIN}", DOMAIN) == (ROUTES["bounces"], None)
    assert route("bounces+12-abc@example.org", DOMAIN) is None
    assert route(f"someone@{DOMAIN}", DOMAIN) is None
    # Readers' replies have their own route (drip.replies).
    assert route(f"reply+12-abc@{DOMAIN}", DOMAIN) == (ROUTES["reply"], "12-abc")


def test_inbound_without_a_bounce_domain_says_so_plainly(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "drip.cli", "inbound"],
        env={"PATH": "/usr/bin:/bin", "DRIP_SECRET_KEY": SECRET},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "drip: DRIP_BOUNCE_DOMAIN: not set; drip inbound takes mail for bounces+TAG@ that domain"
    ]
