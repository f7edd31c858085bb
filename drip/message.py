"""Build the MIME message for one outbox row, and sign it with DKIM when configured.

The standard library's EmailMessage does the encoding and refuses CR/LF in header
values, so a subscriber's name can never inject a header.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from functools import cache
from pathlib import Path

import dkim

from drip.clock import utcnow
from drip.render import Rendered
from drip.settings import Settings

PACK_FILENAME = "trigger-point-information-pack.pdf"
#: RFC 8058 wants both unsubscribe headers covered by the signature.
DKIM_HEADERS = [
    b"From",
    b"To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"List-Unsubscribe",
    b"List-Unsubscribe-Post",
    b"MIME-Version",
    b"Content-Type",
]


class PackMissing(Exception):
    """The information pack file cannot be read."""


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipient: str
    data: bytes


def recipient_address(email_address: str, name: str) -> Address:
    """The To address, with the name only when it is safe to show in a header."""
    clean = " ".join(name.split())
    try:
        return Address(display_name=clean, addr_spec=email_address)
    except (ValueError, IndexError):
        return Address(addr_spec=email_address)


@cache
def _read_pack(path: Path, mtime: float) -> bytes:
    return path.read_bytes()


def read_pack(path: Path) -> bytes:
    try:
        data = _read_pack(path.resolve(), path.stat().st_mtime)
    except OSError as exc:
        raise PackMissing(f"information pack {path} cannot be read ({exc.strerror})") from None
    if not data.startswith(b"%PDF-"):
        raise PackMissing(f"information pack {path} is not a PDF")
    return data


def build_message(
    settings: Settings,
    rendered: Rendered,
    *,
    to: Address,
    message_id: str,
    unsubscribe_url: str | None,
    attach_pack: bool,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.sender_address
    msg["To"] = to
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = message_id
    if unsubscribe_url:
        msg["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    if attach_pack:
        msg.add_attachment(
            read_pack(settings.info_pack),
            maintype="application",
            subtype="pdf",
            filename=PACK_FILENAME,
        )
    return msg


@cache
def _dkim_key(path: Path) -> bytes:
    return path.read_bytes()


def to_envelope(settings: Settings, msg: EmailMessage) -> Envelope:
    """Serialise with CRLF line ends and, if configured, prepend a DKIM-Signature."""
    data = msg.as_bytes(policy=email.policy.SMTP)
    if settings.dkim_enabled:
        assert settings.dkim_selector and settings.dkim_domain and settings.dkim_private_key
        signature = dkim.sign(
            data,
            settings.dkim_selector.encode(),
            settings.dkim_domain.encode(),
            _dkim_key(settings.dkim_private_key),
            include_headers=[h for h in DKIM_HEADERS if msg[h.decode()] is not None],
        )
        data = signature + data
    to = msg["To"]
    return Envelope(
        sender=settings.sender_address.addr_spec,
        recipient=to.addresses[0].addr_spec,
        data=data,
    )
