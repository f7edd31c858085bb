"""Compose the MIME message for one outbox row, and sign it with DKIM when configured.

Every drip email has one of two shapes: text and HTML alternatives, and on the
welcome the PDF pack beside them. So it is composed straight to bytes with the
standard library's codecs (quoted-printable, base64, RFC 2047 encoded words)
rather than through EmailMessage, whose general builder and generator were most of a
worker's time (the figures are in BENCHMARKS.md). Header values are refused if they
hold a line break, so a name or subject can never inject a header.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, formataddr
from functools import cache, lru_cache
from pathlib import Path
from typing import cast

import dkim
import idna

from drip.errors import DripError
from drip.settings import Settings
from drip.templating import Rendered

PACK_FILENAME = "trigger-point-information-pack.pdf"
CRLF = "\r\n"
#: Signed when present; RFC 8058 wants both unsubscribe headers covered by the signature.
DKIM_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
)


class PackMissing(DripError):
    """The information pack file cannot be read."""


class Unaddressable(DripError):
    """The address cannot be written in a message without SMTPUTF8."""


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipient: str
    data: bytes


def ascii_address(address: str) -> str:
    """The address with its domain in IDNA (punycode); a non-ASCII mailbox name is refused."""
    local, _, domain = address.rpartition("@")
    if not local or not local.isascii():
        raise Unaddressable(f"{address}: the mailbox name is not plain ASCII (needs SMTPUTF8)")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise Unaddressable(f"{address}: the domain is not valid ({exc})") from None
    return f"{local}@{domain}"


def _checked(value: str, header: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"the {header} header may not contain a line break")
    return value


def _encoded(value: str, header: str) -> str:
    """An unstructured header value: as is when short and ASCII, else folded RFC 2047 words."""
    if _checked(value, header).isascii() and len(value) + len(header) < 76:
        return value
    charset = "us-ascii" if value.isascii() else "utf-8"
    return Header(value, charset, header_name=header).encode(linesep=CRLF)


def mailbox(name: str, address: str, header: str = "To") -> str:
    """`Name <addr>` with the name quoted or encoded as needed; whitespace runs become one space.

    A name that holds "=?" is always written as our own encoded words: otherwise a
    visitor's `=?utf-8?q?...?=` would reach the reader's mail client as an encoded word,
    which decodes to any text (line breaks, markup), quoted or not. Encoded by us, it
    decodes to exactly the characters the visitor typed.
    """
    clean = " ".join(name.split())
    if not clean:
        return address
    if clean.isascii() and "=?" not in clean:
        return formataddr((clean, address))
    encoded = Header(_checked(clean, header), "utf-8", header_name=header).encode(linesep=CRLF)
    return f"{encoded} <{address}>"


def _whole_quoted_printable(text: str) -> str:
    body = binascii.b2a_qp(text.replace("\r\n", "\n").encode("utf-8"), istext=True)
    return body.decode("ascii").replace("\n", CRLF)


#: Lines already encoded. Most lines of an email are its template's, the same in every
#: reader's copy; cleared when full, so a long run's readers' own lines do not pile up.
_LINES: dict[str, str] = {}
_LINES_KEPT = 4096


def _line(line: str) -> str:
    """One line and its line break, quoted-printable: as encoding the whole text writes
    it, since b2a_qp starts each line afresh and looks no further than its line break."""
    encoded = _LINES.get(line)
    if encoded is None:
        if len(_LINES) >= _LINES_KEPT:
            _LINES.clear()
        body = binascii.b2a_qp(line.encode("utf-8") + b"\n", istext=True)
        encoded = _LINES[line] = body.decode("ascii").replace("\n", CRLF)
    return encoded


def _quoted_printable(text: str) -> str:
    """`text` quoted-printable with CRLF line ends, line by line from `_LINES`."""
    if "\r" in text:  # a CR could make b2a_qp choose CRLF line ends for the whole text
        return _whole_quoted_printable(text)
    *lines, last = text.split("\n")
    known = list(map(_LINES.get, lines))  # most lines, at C speed
    encoded = known
    if None in known:
        encoded = [e or _line(line) for e, line in zip(known, lines, strict=True)]
    if last:
        encoded.append(_whole_quoted_printable(last))
    return "".join(cast(list[str], encoded))


def _text_part(subtype: str, text: str) -> str:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"{CRLF}'
        f"Content-Transfer-Encoding: quoted-printable{CRLF}{CRLF}"
        f"{_quoted_printable(text)}"
    )


def _multipart(subtype: str, parts: list[str]) -> str:
    # "=_" cannot occur in quoted-printable or base64 text, so no body can hold the
    # boundary, and it needs no randomness; the subtype keeps nested parts apart.
    boundary = f"=_drip_{subtype}"
    body = "".join(f"--{boundary}{CRLF}{part}{CRLF}" for part in parts)
    return (
        f'Content-Type: multipart/{subtype}; boundary="{boundary}"{CRLF}{CRLF}'
        f"{body}--{boundary}--{CRLF}"
    )


@cache
def _pack_part(path: Path, mtime: float) -> str:
    data = path.read_bytes()
    if not data.startswith(b"%PDF-"):
        raise PackMissing(f"information pack {path} is not a PDF")
    encoded = binascii.b2a_base64(data, newline=False).decode("ascii")
    lines = CRLF.join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    return (
        f'Content-Type: application/pdf; name="{PACK_FILENAME}"{CRLF}'
        f'Content-Disposition: attachment; filename="{PACK_FILENAME}"{CRLF}'
        f"Content-Transfer-Encoding: base64{CRLF}{CRLF}{lines}{CRLF}"
    )


def pack_part(path: Path) -> str:
    """The PDF pack as a MIME part, encoded once for as long as the file is unchanged."""
    try:
        return _pack_part(path.resolve(), path.stat().st_mtime)
    except OSError as exc:
        raise PackMissing(f"information pack {path} cannot be read ({exc.strerror})") from None


def check_pack(path: Path) -> None:
    """Check the pack can be attached; raises PackMissing saying why not."""
    pack_part(path)


def compose(
    settings: Settings,
    rendered: Rendered,
    *,
    email: str,
    name: str,
    message_id: str,
    unsubscribe_url: str | None,
    attach_pack: bool,
    now: datetime,
    bounce_address: str | None = None,
    reply_to: str | None = None,
    in_reply_to: str | None = None,
    headers: dict[str, str] | None = None,
) -> Envelope:
    """The whole message, CRLF line ends, DKIM-signed when configured; dated `now`.

    `bounce_address`, the VERP address the delivery gives with DRIP_BOUNCE_DOMAIN
    (drip.verp), is the envelope sender (MAIL FROM, the Return-Path) instead of the
    sender's address, and is repeated in an `X-Drip-Bounce` header: a relay that
    rewrites the Return-Path (SES, Gmail) keeps the header, and a report quoting the
    original's headers still names the message.
    `reply_to`: where a reader's reply goes (drip.replies' address for this message);
    `in_reply_to`: the Message-ID this one answers, so mail clients thread them.
    `headers`: more headers, e.g. a test send's `X-Drip-Test` (drip.testmail).
    """
    recipient = ascii_address(email)
    sender = settings.sender_address
    extra = headers or {}
    headers = {
        "From": mailbox(sender.display_name, sender.addr_spec, "From"),
        "To": mailbox(name, recipient),
        "Subject": _encoded(rendered.subject, "Subject"),
        "Date": _date(now.replace(microsecond=0)),
        "Message-ID": _checked(message_id, "Message-ID"),
    }
    if reply_to:
        headers["Reply-To"] = _checked(reply_to, "Reply-To")
    if in_reply_to:
        headers["In-Reply-To"] = _checked(in_reply_to, "In-Reply-To")
        headers["References"] = headers["In-Reply-To"]
    if unsubscribe_url:
        headers["List-Unsubscribe"] = _checked(f"<{unsubscribe_url}>", "List-Unsubscribe")
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    if bounce_address:
        headers["X-Drip-Bounce"] = _checked(bounce_address, "X-Drip-Bounce")
    for key, value in extra.items():
        headers[key] = _checked(value, key)
    headers["MIME-Version"] = "1.0"
    body = _multipart(
        "alternative", [_text_part("plain", rendered.text), _text_part("html", rendered.html)]
    )
    if attach_pack:
        body = _multipart("mixed", [body, pack_part(settings.info_pack)])
    head = "".join(f"{key}: {value}{CRLF}" for key, value in headers.items())
    data = (head + body).encode("ascii")
    if settings.dkim_enabled:
        signed = [h for h in DKIM_HEADERS if h in headers] + ["Content-Type"]
        data = _sign(settings, data, signed)
    return Envelope(sender=bounce_address or sender.addr_spec, recipient=recipient, data=data)


@lru_cache(maxsize=4)
def _date(now: datetime) -> str:
    """The Date header, made once per second of sending."""
    return format_datetime(now)


@cache
def _dkim_key(path: Path) -> bytes:
    return path.read_bytes()


def _sign(settings: Settings, data: bytes, signed: list[str]) -> bytes:
    assert settings.dkim_selector and settings.dkim_domain and settings.dkim_private_key
    signature = dkim.sign(
        data,
        settings.dkim_selector.encode(),
        settings.dkim_domain.encode(),
        _dkim_key(settings.dkim_private_key),
        include_headers=[h.encode() for h in signed],
    )
    return bytes(signature) + data
