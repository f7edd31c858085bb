"""DRIP_BOUNCE_MAILBOX against a real Dovecot: a pass reads, records and deletes only that."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from drip.bounce_mailbox import MailboxError, drain, parse_url, setting_problems
from drip.models import OutboxStatus, SubscriberStatus
from drip.settings import Settings, SettingsError, load_settings
from tests.conftest import SECRET, SettingsFactory
from tests.dovecot import Dovecot, dovecot
from tests.factories import lesson_sent, tick
from tests.mailserver import MailServer, Recorder, free_port
from tests.reports import DOMAIN, arf, dsn, forged_original, states, tagged_address

VACATION = (
    b"From: reader@example.com\r\nTo: bounces@bounces.example.com\r\n"
    b"Subject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nAway until Monday.\r\n"
)


@pytest.fixture
def mailbox() -> Iterator[Dovecot]:
    with dovecot() as server:
        yield server


MailboxSettings = Callable[[str], Settings]


@pytest.fixture
def with_mailbox(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory
) -> MailboxSettings:
    """Settings with the bounce domain and DRIP_BOUNCE_MAILBOX set to a URL."""
    return lambda url: make_settings(
        database_url, mail_server.port, bounce_domain=DOMAIN, bounce_mailbox=url
    )


@pytest.mark.parametrize("scheme", ["imap", "pop3"])
def test_a_dsn_in_the_mailbox_bounces_its_subscriber_and_only_it_is_deleted(
    scheme: str,
    database_url: str,
    mail_server: MailServer,
    recorder: Recorder,
    with_mailbox: MailboxSettings,
    engine: Engine,
    mailbox: Dovecot,
) -> None:
    settings = with_mailbox(mailbox.url(scheme))
    row, sent_at = lesson_sent(settings, "gone@example.com")
    original = recorder.raw[-1]
    kept, _ = lesson_sent(settings, "kept@example.com")
    forged = f"bounces+{kept.id}-{'a' * 12}@{DOMAIN}"
    mailbox.deliver(dsn(to=tagged_address(row), recipient="gone@example.com", original=original))
    mailbox.deliver(
        dsn(to=forged, recipient="kept@example.com", original=forged_original("kept@example.com"))
    )
    mailbox.deliver(VACATION)

    report = tick(settings, sent_at + timedelta(minutes=5))
    assert report.mailbox is not None
    assert report.mailbox_error is None
    assert (report.mailbox.read, report.mailbox.recorded, report.mailbox.left) == (3, 1, 2)
    assert states(engine, row) == (SubscriberStatus.bounced, OutboxStatus.bounced)
    assert states(engine, kept) == (SubscriberStatus.active, OutboxStatus.sent)
    left = mailbox.messages()
    assert len(left) == 2
    assert not any(tagged_address(row).encode() in raw for raw, _ in left)
    if scheme == "imap":
        # What drip could not use is marked read, left for a person, and not read again.
        assert all(seen for _, seen in left)
        again = tick(settings, sent_at + timedelta(minutes=10))
        assert again.mailbox is not None
        assert again.mailbox.read == 0


def test_recorded_mail_can_be_moved_to_a_folder_instead(
    database_url: str,
    mail_server: MailServer,
    recorder: Recorder,
    with_mailbox: MailboxSettings,
    engine: Engine,
    mailbox: Dovecot,
) -> None:
    url = mailbox.url("imap") + "?processed=drip%20recorded"
    settings = with_mailbox(url)
    row, sent_at = lesson_sent(settings, "moved@example.com")
    mailbox.deliver(
        dsn(to=tagged_address(row), recipient="moved@example.com", original=recorder.raw[-1])
    )
    mailbox.deliver(VACATION)
    for minutes in (5, 10):  # the second pass finds the folder already there
        report = tick(settings, sent_at + timedelta(minutes=minutes))
        assert report.mailbox_error is None
    assert states(engine, row) == (SubscriberStatus.bounced, OutboxStatus.bounced)
    [(vacation, _)] = mailbox.messages()
    assert b"Out of office" in vacation
    [(moved, _)] = mailbox.messages("drip recorded")
    assert tagged_address(row).encode() in moved


def test_an_arf_complaint_in_the_mailbox_stops_all_mail(
    database_url: str,
    mail_server: MailServer,
    recorder: Recorder,
    with_mailbox: MailboxSettings,
    engine: Engine,
    mailbox: Dovecot,
) -> None:
    settings = with_mailbox(mailbox.url("imap"))
    row, sent_at = lesson_sent(settings, "angry@example.com")
    # A feedback loop writes to its own address; the original's Return-Path names the message.
    mailbox.deliver(
        arf(to="fbl@example.com", original=recorder.raw[-1], return_path=tagged_address(row))
    )
    sent = len(recorder.raw)
    report = tick(settings, sent_at + timedelta(days=30))
    assert report.mailbox is not None
    assert report.mailbox.recorded == 1
    assert states(engine, row) == (SubscriberStatus.complained, OutboxStatus.complained)
    assert len(recorder.raw) == sent
    assert mailbox.messages() == []


def test_a_mailbox_that_cannot_be_read_holds_up_no_mail_and_hides_the_password(
    database_url: str, mail_server: MailServer, recorder: Recorder, with_mailbox: MailboxSettings
) -> None:
    from tests.factories import subscriber

    url = f"imap://bounces:hunter2-secret@127.0.0.1:{free_port()}/INBOX"
    settings = with_mailbox(url)
    subscriber(settings, "still@example.com")
    report = tick(settings)
    assert report.mailbox is None
    assert report.mailbox_error is not None
    assert "cannot read imap://bounces@127.0.0.1" in report.mailbox_error
    assert "hunter2" not in report.mailbox_error
    assert len(recorder.wait_for(1)) == 1


def test_wrong_credentials_are_named_without_the_password(mailbox: Dovecot) -> None:
    url = parse_url(mailbox.url("imap").replace(mailbox.password, "wrong-pass-x"))
    with pytest.raises(MailboxError) as caught:
        drain(url, lambda raw: True, timeout=10)
    assert "wrong-pass-x" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "imaps://me%40example.com:p%2Fw@mail.example.com/Bounces",
            ("imaps", 993, "me@example.com", "p/w", "Bounces"),
        ),
        ("pop3s://u:p@pop.example.com", ("pop3s", 995, "u", "p", "INBOX")),
        ("imaps://u:p@h/INBOX?processed=Done", ("imaps", 993, "u", "p", "INBOX")),
        ("imap://u:p@127.0.0.1:1143", ("imap", 1143, "u", "p", "INBOX")),
    ],
)
def test_mailbox_urls(url: str, expected: tuple[str, int, str, str, str]) -> None:
    parsed = parse_url(url)
    assert (parsed.scheme, parsed.port, parsed.user, parsed.password, parsed.folder) == expected
    assert parsed.password not in repr(parsed) or parsed.password == "p"


@pytest.mark.parametrize(
    "url",
    [
        "https://u:pw-xyz@h/",
        "imaps://h/INBOX",
        "imaps://u@h/INBOX",
        "pop3s://u:pw-xyz@h/Folder",
        "pop3s://u:pw-xyz@h?processed=Done",
        "imaps://u:pw-xyz@h/INBOX?processed=INBOX",
        "imaps://u:pw-xyz@h/INBOX?move=Done",
        "imaps://u:pw-xyz@h:99999/",
        "imaps://u:pw-xyz@/INBOX",
    ],
)
def test_a_bad_mailbox_url_stops_at_start_naming_the_setting_not_the_password(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(bounce_mailbox=url, _env_file=None)
    message = str(caught.value)
    assert message.startswith("DRIP_BOUNCE_MAILBOX: ")
    assert "pw-xyz" not in message


def test_check_names_a_password_sent_in_clear_and_a_mailbox_without_verp() -> None:
    def problems(**values: str) -> list[str]:
        return setting_problems(load_settings(_env_file=None, secret_key=SECRET, **values))

    assert problems(bounce_domain=DOMAIN, bounce_mailbox="imaps://u:pw-xyz@mail.example.com") == []
    assert problems(bounce_domain=DOMAIN, bounce_mailbox="imap://u:pw-xyz@127.0.0.1:1143") == []
    [clear] = problems(bounce_domain=DOMAIN, bounce_mailbox="pop3://u:pw-xyz@mail.example.com")
    assert clear.startswith("DRIP_BOUNCE_MAILBOX: pop3:// sends the password in clear")
    assert "pw-xyz" not in clear
    [no_verp] = problems(bounce_mailbox="imaps://u:pw-xyz@mail.example.com")
    assert "DRIP_BOUNCE_DOMAIN is not" in no_verp


def test_drip_check_refuses_a_bad_mailbox_url_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "drip.cli", "check"],
        env={"PATH": "/usr/bin:/bin", "DRIP_BOUNCE_MAILBOX": "imap://mail.example.com/INBOX"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "drip: DRIP_BOUNCE_MAILBOX: needs a user and a password: "
        "imap://user:password@mail.example.com"
    ]
