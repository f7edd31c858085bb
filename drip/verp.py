"""VERP: every message's envelope sender names that message, so its bounce finds it.

With DRIP_BOUNCE_DOMAIN set, the outbox row 42 goes out with the envelope sender
`bounces+42-<sig>@<domain>`. A bounce returns to that address whatever the remote
server writes in its body, and the tag says which message (so which subscriber) it
is about. `<sig>` is an HMAC-SHA256 under DRIP_SECRET_KEY over the row id and its
Message-ID, cut to 60 bits: a forger who does not hold the key cannot name anyone's
message, and a tag from an older database whose ids were reused does not match.
Lower-case base32, since some servers change the case of local parts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from sqlmodel import Session

from drip.models import MAX_ID, OutboxMessage

#: The local part of the bounce addresses: `bounces+TAG@domain`.
BOUNCES = "bounces"
SIGNATURE_CHARS = 12  # base32: 60 bits
_TAG = re.compile(rf"(\d{{1,10}})-([a-z2-7]{{{SIGNATURE_CHARS}}})")


def signature(secret: str, outbox_id: int, message_id: str) -> str:
    digest = hmac.new(
        secret.encode(), f"verp:{outbox_id}:{message_id}".encode(), hashlib.sha256
    ).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:SIGNATURE_CHARS]


def make_tag(secret: str, outbox_id: int, message_id: str) -> str:
    return f"{outbox_id}-{signature(secret, outbox_id, message_id)}"


def address(secret: str, domain: str, outbox_id: int, message_id: str) -> str:
    """The envelope sender for one outbox row."""
    return f"{BOUNCES}+{make_tag(secret, outbox_id, message_id)}@{domain}"


def tag_id(tag: str) -> int | None:
    """The outbox id a tag claims to name, or None if it is not a tag's shape at all."""
    match = _TAG.fullmatch(tag.strip().lower())
    if match is None or not 0 < int(match[1]) <= MAX_ID:
        return None
    return int(match[1])


def verify(secret: str, tag: str, outbox_id: int, message_id: str) -> bool:
    """True only if `tag` was made by drip for exactly this row (constant-time compare)."""
    match = _TAG.fullmatch(tag.strip().lower())
    if match is None or int(match[1]) != outbox_id:
        return False
    return hmac.compare_digest(match[2], signature(secret, outbox_id, message_id))


def split(address: str) -> tuple[str, str | None, str]:
    """(`bounces`, `TAG`, `domain`) from `bounces+TAG@domain`; the tag is None without a `+`.

    The local part's prefix is lower-cased for routing; the caller checks the domain.
    """
    addr = address.strip().strip("<>")
    local, _, domain = addr.rpartition("@")
    prefix, plus, tag = local.partition("+")
    return prefix.lower(), (tag if plus else None), domain.lower().rstrip(".")


def tags_in(text: str, domain: str) -> list[str]:
    """Every `bounces+TAG@domain` tag in a text (headers quoted in a report), in order, once."""
    pattern = re.compile(
        rf"{BOUNCES}\+([0-9]{{1,10}}-[a-z2-7]{{{SIGNATURE_CHARS}}})@{re.escape(domain)}\b",
        re.IGNORECASE,
    )
    return list(dict.fromkeys(m.lower() for m in pattern.findall(text)))


def signed_message(session: Session, secret: str, tag: str) -> OutboxMessage | None:
    """The outbox row `tag` names, only if drip signed the tag for exactly that message."""
    ident = tag_id(tag)
    row = session.get(OutboxMessage, ident) if ident is not None else None
    if row is None or row.id is None or not verify(secret, tag, row.id, row.message_id):
        return None
    return row
