"""DRIP_BOUNCE_MAILBOX: an IMAP or POP3 mailbox of bounces and complaints, read each pass.

For a set-up where bounces land in a mailbox (the bounce domain's MX is a hosted
mail service, or a relay forwards them): the worker reads the mailbox at the start
of each pass, hands every message to the same parser and recording step as
`drip inbound`, and deletes only what it has recorded (on IMAP, with
`?processed=FOLDER`, moves it there instead). What it cannot use (a
forged or unsigned report, an auto-reply, anything else) stays for a person to read:
on IMAP it is marked seen and not read again; POP3 has no flags, so it is read again
each pass (keep that mailbox for bounces only).

`imaps://user:pass@host[:port]/FOLDER` or `pop3s://user:pass@host[:port]`; plain
`imap://` and `pop3://` are for loopback tests (`drip check` flags them elsewhere).
User and password are URL-encoded (`%40` for an `@` in the user name).
"""

from __future__ import annotations

import imaplib
import poplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from drip.errors import DripError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from drip.settings import Settings

SCHEMES = {"imaps": 993, "imap": 143, "pop3s": 995, "pop3": 110}
#: Messages read in one pass at most; the rest wait for the next pass.
MAX_PER_PASS = 200


@dataclass(frozen=True)
class MailboxURL:
    scheme: str
    host: str
    port: int
    user: str
    password: str
    folder: str
    #: IMAP: move what was recorded to this folder instead of deleting it (`?processed=F`).
    processed: str | None = None

    @property
    def imap(self) -> bool:
        return self.scheme.startswith("imap")

    @property
    def tls(self) -> bool:
        return self.scheme.endswith("s")

    def __str__(self) -> str:  # never the password
        folder = f"/{self.folder}" if self.imap else ""
        return f"{self.scheme}://{self.user}@{self.host}:{self.port}{folder}"

    def __repr__(self) -> str:
        return f"MailboxURL({self})"


def parse_url(text: str) -> MailboxURL:
    """The mailbox a URL names; ValueError saying what is wrong (never quoting the password)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ValueError(
            "must be a URL such as imaps://user:password@host/INBOX (the port is not a number)"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError("must start with imaps://, pop3s:// (or imap://, pop3:// on loopback)")
    if not parts.hostname:
        raise ValueError(f"names no host: use {scheme}://user:password@host")
    if not parts.username or parts.password is None:
        raise ValueError(f"needs a user and a password: {scheme}://user:password@{parts.hostname}")
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"processed"}
    if unknown:
        raise ValueError(
            f"unknown option {sorted(unknown)[0]!r}; the one option is ?processed=FOLDER"
        )
    processed = query["processed"][-1] if "processed" in query else None
    if scheme.startswith("pop3") and (folder != "INBOX" or processed is not None):
        raise ValueError("POP3 has no folders: leave the path and ?processed= out")
    for name in (folder, processed or ""):
        if any(c in name for c in '\r\n"\\'):
            raise ValueError("a folder name holds a quote, backslash or line break")
    if processed is not None and (not processed.strip() or processed == folder):
        raise ValueError("?processed= must name another folder")
    return MailboxURL(
        scheme=scheme,
        host=parts.hostname,
        port=port or SCHEMES[scheme],
        user=unquote(parts.username),
        password=unquote(parts.password),
        folder=folder,
        processed=processed,
    )


class MailboxError(DripError):
    """The mailbox cannot be read; the message says why, never with the password."""


@dataclass
class MailboxReport:
    read: int = 0
    recorded: int = 0
    #: Read but not recorded (no report, or one that proves nothing): left in the mailbox.
    left: int = 0


#: Reads one raw message; True once it is recorded (or was before), so it may go.
Take = Callable[[bytes], bool]


def drain(url: MailboxURL, take: Take, timeout: float, limit: int = MAX_PER_PASS) -> MailboxReport:
    """Read up to `limit` messages, deleting those `take` recorded."""
    try:
        return _imap(url, take, timeout, limit) if url.imap else _pop3(url, take, timeout, limit)
    except (OSError, imaplib.IMAP4.error, poplib.error_proto) as exc:
        reason = str(exc).replace(url.password, "***") if url.password else str(exc)
        raise MailboxError(f"DRIP_BOUNCE_MAILBOX: cannot read {url}: {reason}") from None


def _imap(url: MailboxURL, take: Take, timeout: float, limit: int) -> MailboxReport:
    if url.tls:
        client: imaplib.IMAP4 = imaplib.IMAP4_SSL(
            url.host, url.port, ssl_context=ssl.create_default_context(), timeout=timeout
        )
    else:
        client = imaplib.IMAP4(url.host, url.port, timeout=timeout)
    report = MailboxReport()
    try:
        client.login(url.user, url.password)
        status, _ = client.select(_quoted(url.folder))
        if status != "OK":
            raise MailboxError(f"DRIP_BOUNCE_MAILBOX: no folder {url.folder!r} on {url.host}")
        if url.processed:
            client.create(_quoted(url.processed))  # "already exists" is an answer, not an error
        # Unseen only: what drip read and could not use is marked seen and left for a person.
        _, found = client.uid("SEARCH", "UNSEEN", "UNDELETED")
        uids = [u.decode("ascii") for u in (found[0] or b"").split()[:limit]] if found else []
        for uid in uids:
            _, parts = client.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((p[1] for p in parts if isinstance(p, tuple)), None)
            if not isinstance(raw, bytes):
                continue
            report.read += 1
            if take(raw):
                if url.processed:
                    status, _ = client.uid("COPY", uid, _quoted(url.processed))
                    if status != "OK":
                        raise MailboxError(
                            f"DRIP_BOUNCE_MAILBOX: cannot move mail to {url.processed!r}"
                        )
                client.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
                report.recorded += 1
            else:
                client.uid("STORE", uid, "+FLAGS.SILENT", "(\\Seen)")
                report.left += 1
        if report.recorded:
            client.expunge()
        client.close()
    finally:
        try:
            client.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
    return report


def _pop3(url: MailboxURL, take: Take, timeout: float, limit: int) -> MailboxReport:
    if url.tls:
        client: poplib.POP3 = poplib.POP3_SSL(
            url.host, url.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        client = poplib.POP3(url.host, url.port, timeout=timeout)
    report = MailboxReport()
    try:
        client.user(url.user)
        client.pass_(url.password)
        count, _ = client.stat()
        for number in range(1, min(count, limit) + 1):
            _, lines, _ = client.retr(number)
            report.read += 1
            if take(b"\r\n".join(lines) + b"\r\n"):
                client.dele(number)
                report.recorded += 1
            else:
                report.left += 1
        client.quit()  # deletions take effect here; a dropped session deletes nothing
    except BaseException:
        client.close()
        raise
    return report


def _quoted(folder: str) -> str:
    return f'"{folder}"'


def read_bounce_mailbox(settings: Settings, engine: Engine, now: datetime) -> MailboxReport | None:
    """One pass over DRIP_BOUNCE_MAILBOX (None when unset): what the worker runs each pass."""
    if settings.bounce_mailbox is None:
        return None
    from drip.bounces import take
    from drip.feedback import Recorded

    url = parse_url(settings.bounce_mailbox.get_secret_value())

    def record(raw: bytes) -> bool:
        return take(engine, settings, raw, now, source="mailbox") != Recorded.unknown

    return drain(url, record, settings.smtp_timeout)


def setting_problems(settings: Settings) -> list[str]:
    """What `drip check` can tell about the bounce settings without reaching the mailbox."""
    from drip.deliverability import is_loopback

    found: list[str] = []
    if settings.bounce_mailbox is not None:
        url = parse_url(settings.bounce_mailbox.get_secret_value())
        if not url.tls and not is_loopback(url.host):
            found.append(
                f"DRIP_BOUNCE_MAILBOX: {url.scheme}:// sends the password in clear to "
                f"{url.host}; use {url.scheme}s://"
            )
        if not settings.bounce_domain:
            found.append(
                "DRIP_BOUNCE_MAILBOX is set but DRIP_BOUNCE_DOMAIN is not: without VERP "
                "addresses no bounce in it can be tied to a message"
            )
    return found
