"""Building messages: headers, parts, no header injection, DKIM that verifies."""

from __future__ import annotations

import base64
import email
import email.policy
import subprocess
from pathlib import Path

import dkim
import pytest

from drip.message import build_message, recipient_address, to_envelope
from drip.render import Rendered
from drip.settings import Settings, load_settings

RENDERED = Rendered(subject="Lesson 1 of 8: Trigger points", html="<p>Hi</p>", text="Hi\n")


def _settings(tmp_path: Path, **extra: object) -> Settings:
    pack = tmp_path / "pack.pdf"
    pack.write_bytes(b"%PDF-1.4\n%test\n")
    return load_settings(
        _env_file=None,
        secret_key="x" * 32,
        info_pack=pack,
        sender="Course <course@example.org>",
        **extra,
    )


def test_a_name_cannot_inject_headers() -> None:
    to = recipient_address("ann@example.com", "Ann\r\nBcc: victim@example.com")
    msg = build_message(
        load_settings(_env_file=None),
        RENDERED,
        to=to,
        message_id="<1@example.org>",
        unsubscribe_url=None,
        attach_pack=False,
    )
    data = msg.as_bytes(policy=email.policy.SMTP)
    assert b"\r\nBcc:" not in data
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Bcc"] is None
    assert parsed["To"].addresses[0].addr_spec == "ann@example.com"


def test_the_message_carries_every_part_and_header(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    msg = build_message(
        settings,
        RENDERED,
        to=recipient_address("ann@example.com", "Ann"),
        message_id="<1@example.org>",
        unsubscribe_url="https://course.example.org/unsubscribe/T",
        attach_pack=True,
    )
    envelope = to_envelope(settings, msg)
    assert envelope.sender == "course@example.org" and envelope.recipient == "ann@example.com"
    parsed = email.message_from_bytes(envelope.data, policy=email.policy.default)
    types = [p.get_content_type() for p in parsed.walk()]
    assert types == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "application/pdf",
    ]
    for header in ("From", "To", "Subject", "Date", "Message-ID"):
        assert parsed[header], header
    assert parsed["List-Unsubscribe"] == "<https://course.example.org/unsubscribe/T>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


@pytest.fixture
def dkim_key(tmp_path: Path) -> tuple[Path, bytes]:
    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return key, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def test_dkim_signature_covers_the_unsubscribe_headers_and_verifies(
    tmp_path: Path, dkim_key: tuple[Path, bytes]
) -> None:
    key, record = dkim_key
    settings = _settings(
        tmp_path, dkim_domain="example.org", dkim_selector="drip", dkim_private_key=key
    )
    msg = build_message(
        settings,
        RENDERED,
        to=recipient_address("ann@example.com", "Ann"),
        message_id="<1@example.org>",
        unsubscribe_url="https://course.example.org/unsubscribe/T",
        attach_pack=True,
    )
    data = to_envelope(settings, msg).data
    assert data.startswith(b"DKIM-Signature:")
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    signed = str(parsed["DKIM-Signature"]).replace(" ", "").replace("\r\n", "")
    signed_headers = next(p for p in signed.split(";") if p.strip().startswith("h=")).lower()
    for header in (
        "from",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ):
        assert header in signed_headers.split("=", 1)[1].split(":"), header

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"drip._domainkey.example.org."
        return record

    assert dkim.verify(data, dnsfunc=dns)
    assert not dkim.verify(data.replace(b"Lesson 1", b"Lesson 2"), dnsfunc=dns)
