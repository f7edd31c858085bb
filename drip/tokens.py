"""Confirmation and unsubscribe tokens.

A token is `SALT.MAC`: the subscriber's random salt, and an HMAC-SHA256 of the salt
and the token's purpose under DRIP_SECRET_KEY. The salt finds the subscriber; the
MAC proves the link came from drip. Unguessable without the key, recomputable when
an email is rendered at send time, and checked against every key in the keyring
(the current one, then DRIP_OLD_SECRET_KEYS), so rotating the key keeps the links
already sent working for as long as the old key is listed.

An unsubscribe link also names the email it came in: `SALT.ID.MAC`, where ID is the
outbox message's id and the MAC covers it too, so leaving is attributed to the lesson
that prompted it (drip.funnel) and nobody can move it onto another message. A
`SALT.MAC` link (mail sent before, the admin's own) still unsubscribes, unattributed.

Links sent before tokens carried their salt are the bare MAC; the database keeps
the SHA-256 of those (never the token), so they still work, and a leaked database
alone yields no working link of either kind.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Purpose = Literal["confirm", "unsubscribe"]
SEPARATOR = "."
#: The most digits a message id in a link may have (a BIGINT has 19): the whole token
#: stays within the 100 characters a route reads.
MAX_MESSAGE_DIGITS = 18


def new_salt() -> str:
    return secrets.token_hex(16)


def _mac(secret: str, salt: str, purpose: Purpose, message: int | None = None) -> str:
    signed = f"{purpose}:{salt}" if message is None else f"{purpose}:{salt}:{message}"
    digest = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_token(secret: str, salt: str, purpose: Purpose, message: int | None = None) -> str:
    """The token put in links: the salt, a dot, its MAC under `secret`; with `message`
    (an outbox id), `SALT.ID.MAC`, the MAC covering the id too."""
    if message is None:
        return f"{salt}{SEPARATOR}{_mac(secret, salt, purpose)}"
    return f"{salt}{SEPARATOR}{message}{SEPARATOR}{_mac(secret, salt, purpose, message)}"


@dataclass(frozen=True)
class Token:
    """A link's token read apart: the salt, the message it names (if any), the MAC."""

    salt: str
    mac: str
    message: int | None = None


def parse_token(token: str) -> Token | None:
    """`SALT.MAC` or `SALT.ID.MAC` read apart; None for a bare (older) token or nonsense."""
    parts = token.split(SEPARATOR)
    if len(parts) == 2 and all(parts):
        return Token(parts[0], parts[1])
    if len(parts) == 3 and all(parts):
        salt, number, mac = parts
        if number.isascii() and number.isdigit() and len(number) <= MAX_MESSAGE_DIGITS:
            return Token(salt, mac, int(number))
    return None


def split_token(token: str) -> tuple[str, str] | None:
    """(salt, MAC) of a `SALT.MAC` token; None for a bare (older) token."""
    parsed = parse_token(token)
    if parsed is None or parsed.message is not None:
        return None
    return parsed.salt, parsed.mac


def verifies(
    keys: Sequence[str], salt: str, purpose: Purpose, mac: str, message: int | None = None
) -> bool:
    """Whether `mac` is the salt's (and message's) MAC under any of `keys`, compared in
    constant time."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(_mac(key, salt, purpose, message).encode(), mac.encode())
    return found


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def legacy_hash(secret: str, salt: str, purpose: Purpose) -> str:
    """The SHA-256 of the bare-MAC token older links carry, as the database keeps it."""
    return hash_token(_mac(secret, salt, purpose))


def token_hashes(secret: str, salt: str) -> tuple[str, str]:
    """(confirm hash, unsubscribe hash) of a salt's bare-MAC tokens (older links)."""
    return legacy_hash(secret, salt, "confirm"), legacy_hash(secret, salt, "unsubscribe")
