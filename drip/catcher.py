"""The local mail catcher of `drip dev`: an aiosmtpd server that keeps every message.

Messages go into a Maildir (one file each, safe across processes). The read side
below is what the admin's /admin/outbox pages show. Nothing is relayed anywhere.
"""

from __future__ import annotations

import mailbox
import re
import stat
import unicodedata
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class MaildirHandler:
    def __init__(self, directory: Path) -> None:
        self.maildir = caught_box(directory)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or envelope.content
        assert isinstance(data, bytes)
        self.maildir.add(data)
        return "250 Message caught by drip dev"


def start_catcher(directory: Path, host: str, port: int) -> Controller:
    """Start the catcher in its own thread; the caller stops it."""
    controller = Controller(MaildirHandler(directory), hostname=host, port=port)
    controller.start()
    return controller


# -- reading what was caught ------------------------------------------------------------


@dataclass(frozen=True)
class Caught:
    """One caught message as the list shows it."""

    key: str
    date: str
    to: str
    subject: str


@dataclass(frozen=True)
class Part:
    """A leaf of a caught message: an attachment or a body part."""

    n: int
    filename: str
    type: str
    payload: bytes
    #: Marked as an attachment, or carrying a file name: listed as one.
    is_attachment: bool

    @property
    def size(self) -> int:
        return len(self.payload)

    @property
    def shown_name(self) -> str:
        return self.filename or f"part-{self.n}"

    @property
    def download_name(self) -> str:
        """The file name reduced to safe characters, or part-N."""
        return _SAFE_NAME.sub("_", self.filename).strip("._") or f"part-{self.n}"


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def caught_box(directory: Path) -> mailbox.Maildir:
    """The catcher's Maildir; made whole if missing (Maildir(create=True) alone leaves an
    existing but empty folder without its tmp/new/cur). It and its folders are its
    owner's only (0700): made so, or tightened."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    for folder in (directory, *(directory / sub for sub in ("tmp", "new", "cur"))):
        folder.mkdir(mode=0o700, exist_ok=True)
        if stat.S_IMODE(folder.stat().st_mode) & 0o077:
            folder.chmod(0o700)
    return mailbox.Maildir(directory, create=False)


def _delivered_at(key: str) -> float:
    """Maildir names start with the delivery time in seconds."""
    try:
        return float(key.split(".", 1)[0])
    except ValueError:
        return 0.0


def newest(directory: Path, limit: int) -> tuple[list[Caught], int]:
    """The `limit` newest caught messages (headers only), and how many there are."""
    box = caught_box(directory)
    keys = sorted(box.keys(), key=_delivered_at, reverse=True)
    parser = BytesHeaderParser(policy=policy.default)
    rows = []
    for key in keys[:limit]:
        try:
            with box.get_file(key) as handle:
                headers = parser.parse(handle)  # type: ignore[arg-type]
        except (KeyError, FileNotFoundError):
            continue  # removed meanwhile
        rows.append(
            Caught(
                key=key,
                date=header(headers, "Date"),
                to=header(headers, "To"),
                subject=header(headers, "Subject"),
            )
        )
    return rows, len(keys)


def _printable(text: str) -> str:
    """Control characters (a decoded CR LF, an escape) shown as U+FFFD, never passed on."""
    return "".join("\ufffd" if unicodedata.category(c) == "Cc" else c for c in text)


def header_pairs(message: Message) -> list[tuple[str, str]]:
    """Every header as (name, readable text): decoded where the email package can, else
    the raw value as it came. A header it refuses (an encoded word that decodes to a line
    break inside an address raises ValueError) must not break the page that lists it."""
    pairs = []
    for name, raw in message.raw_items():
        try:
            value = str(message.policy.header_fetch_parse(name, raw))
        except Exception:  # noqa: BLE001 - any parser failure: show the raw text instead
            value = str(raw)
        pairs.append((name, _printable(value)))
    return pairs


def header(message: Message, name: str) -> str:
    """One header as `header_pairs` reads it; "" if the message has none."""
    wanted = name.lower()
    return next((value for key, value in header_pairs(message) if key.lower() == wanted), "")


def read(directory: Path, key: str) -> EmailMessage | None:
    """One caught message, parsed; None if there is no such key."""
    try:
        with caught_box(directory).get_file(key) as handle:
            message = BytesParser(policy=policy.default).parse(handle)  # type: ignore[arg-type]
    except (KeyError, FileNotFoundError):
        return None
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage, subtype: str) -> str | None:
    """The text of the message's `subtype` body ("html" or "plain"), if it has a readable one."""
    part = message.get_body(preferencelist=(subtype,))
    if part is None:
        return None
    try:
        return str(part.get_content())
    except (LookupError, ValueError):
        return None


def parts(message: Message) -> list[Part]:
    """Every leaf of the message, numbered in order, with a file name safe to offer."""
    leaves = [part for part in message.walk() if not part.is_multipart()]
    found = []
    for n, leaf in enumerate(leaves):
        payload = leaf.get_payload(decode=True)
        filename = leaf.get_filename() or ""
        found.append(
            Part(
                n=n,
                filename=filename,
                type=leaf.get_content_type(),
                payload=payload if isinstance(payload, bytes) else b"",
                is_attachment=leaf.get_content_disposition() == "attachment" or bool(filename),
            )
        )
    return found
