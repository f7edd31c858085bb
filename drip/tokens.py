"""Confirmation and unsubscribe tokens.

A token is an HMAC of the subscriber's random salt under DRIP_SECRET_KEY: 256 bits,
unguessable without the key, and recomputable when an email is rendered at send
time. The database keeps only the salt and the token's SHA-256, so a leaked
database alone yields no working link.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Literal

Purpose = Literal["confirm", "unsubscribe"]


def new_salt() -> str:
    return secrets.token_hex(16)


def make_token(secret: str, salt: str, purpose: Purpose) -> str:
    digest = hmac.new(secret.encode(), f"{purpose}:{salt}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_hashes(secret: str, salt: str) -> tuple[str, str]:
    """(confirm hash, unsubscribe hash) for a subscriber's salt."""
    return (
        hash_token(make_token(secret, salt, "confirm")),
        hash_token(make_token(secret, salt, "unsubscribe")),
    )
