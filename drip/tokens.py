"""Confirmation and unsubscribe tokens.

A token is `SALT.MAC`: the subscriber's random salt, and an HMAC-SHA256 of the salt
and the token's purpose under DRIP_SECRET_KEY. The salt finds the subscriber; the
MAC proves the link came from drip. Unguessable without the key, recomputable when
an email is rendered at send time, and checked against every key in the keyring
(the current one, then DRIP_OLD_SECRET_KEYS), so rotating the key keeps the links
already sent working for as long as the old key is listed.

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
from typing import Literal

Purpose = Literal["confirm", "unsubscribe"]
SEPARATOR = "."


def new_salt() -> str:
    return secrets.token_hex(16)


def _mac(secret: str, salt: str, purpose: Purpose) -> str:
    digest = hmac.new(secret.encode(), f"{purpose}:{salt}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_token(secret: str, salt: str, purpose: Purpose) -> str:
    """The token put in links: the salt, a dot, its MAC under `secret`."""
    return f"{salt}{SEPARATOR}{_mac(secret, salt, purpose)}"


def split_token(token: str) -> tuple[str, str] | None:
    """(salt, MAC) of a `SALT.MAC` token; None for a bare (older) token."""
    salt, sep, mac = token.partition(SEPARATOR)
    if not sep or not salt or not mac:
        return None
    return salt, mac


def verifies(keys: Sequence[str], salt: str, purpose: Purpose, mac: str) -> bool:
    """Whether `mac` is the salt's MAC under any of `keys`, compared in constant time."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(_mac(key, salt, purpose).encode(), mac.encode())
    return found


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def legacy_hash(secret: str, salt: str, purpose: Purpose) -> str:
    """The SHA-256 of the bare-MAC token older links carry, as the database keeps it."""
    return hash_token(_mac(secret, salt, purpose))


def token_hashes(secret: str, salt: str) -> tuple[str, str]:
    """(confirm hash, unsubscribe hash) of a salt's bare-MAC tokens (older links)."""
    return legacy_hash(secret, salt, "confirm"), legacy_hash(secret, salt, "unsubscribe")
