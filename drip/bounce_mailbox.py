"""DRIP_BOUNCE_MAILBOX: an IMAP or POP3 mailbox of bounces and complaints, read each pass.

For a set-up where bounces land in a mailbox (the bounce domain's MX is a hosted
mail service, or a relay forwards them): the worker reads the mailbox at the start
of each pass, hands every message to the same parser and recording step as
`drip inbound`, and deletes only what it has recorded. What it cannot use (a
forged or unsigned report, an auto-reply, anything else) stays for a person to read:
on IMAP it is marked seen and not read again; POP3 has no flags, so it is read again
each pass (keep that mailbox for bounces only).

`imaps://user:pass@host[:port]/FOLDER` or `pop3s://user:pass@host[:port]`; plain
`imap://` and `pop3://` are for loopback tests (`drip check` flags them elsewhere).
User and password are URL-encoded (`%40` for an `@` in the user name).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SCHEMES = {"imaps": 993, "imap": 143, "pop3s": 995, "pop3": 110}


@dataclass(frozen=True)
class MailboxURL:
    scheme: str
    host: str
    port: int
    user: str
    password: str
    folder: str

    @property
    def imap(self) -> bool:
        return self.scheme.startswith("imap")

    @property
    def tls(self) -> bool:
        return self.scheme.endswith("s")

    def __repr__(self) -> str:  # never the password
        return f"MailboxURL({self.scheme}://{self.user}@{self.host}:{self.port}/{self.folder})"

    __str__ = __repr__


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
    if scheme.startswith("pop3") and folder != "INBOX":
        raise ValueError("POP3 has no folders: leave the path out")
    if any(c in folder for c in '\r\n"\\'):
        raise ValueError("the folder name holds a quote, backslash or line break")
    return MailboxURL(
        scheme=scheme,
        host=parts.hostname,
        port=port or SCHEMES[scheme],
        user=unquote(parts.username),
        password=unquote(parts.password),
        folder=folder,
    )
