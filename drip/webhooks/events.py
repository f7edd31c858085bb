"""What a provider's webhook says happened, once its signature has been checked."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from drip.errors import DripError

Kind = Literal["hard_bounce", "soft_bounce", "complaint"]
#: A signed request's timestamp may be this far from our clock (Mailgun, SendGrid).
FRESH_SECONDS = 600
_MESSAGE_ID = re.compile(r"^Message-ID:[ \t]*(<[^<>\s]{1,240}>)", re.I | re.M)


class Refused(DripError):
    """The request proves nothing: answered with `status` (401 or 403) and changes nothing."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Malformed(DripError):
    """Signed, but not a body this provider sends: answered 400, changes nothing."""


@dataclass(frozen=True)
class ProviderEvent:
    """One bounce or complaint for one recipient, as the provider's signed body states it."""

    provider: str
    kind: Kind
    recipient: str
    #: The Message-ID header drip gave the message, with its angle brackets, if the
    #: provider reports it; else the message is found by recipient.
    message_id: str | None
    #: The envelope sender the provider saw: a VERP address names the message.
    envelope_sender: str | None
    detail: str


@dataclass(frozen=True)
class Batch:
    events: list[ProviderEvent]
    #: A value that must never be accepted twice (Mailgun's token), or None.
    once_key: str | None = None


def message_id(value: object) -> str | None:
    """A Message-ID as drip writes it, `<...>`, from a provider's field (brackets optional)."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > 248 or any(c.isspace() for c in value):
        return None
    core = value.removeprefix("<").removesuffix(">")
    if not core or "<" in core or ">" in core:
        return None
    return f"<{core}>"


def message_id_in_headers(text: object) -> str | None:
    """The Message-ID of the original message quoted in a bounce's text, if any."""
    if not isinstance(text, str):
        return None
    found = _MESSAGE_ID.search(text)
    return found.group(1) if found else None


def text(value: object, limit: int = 500) -> str:
    """A provider's free text, flattened to one bounded line for the send log."""
    if value is None:
        return ""
    flat = " ".join(str(value).split())
    return flat[:limit]


def address(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if "@" not in value or len(value) > 320 or any(c.isspace() for c in value):
        return None
    return value.removeprefix("<").removesuffix(">")


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
