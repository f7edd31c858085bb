"""The information pack as a signed link (DRIP_PACK_DELIVERY=link) instead of an attachment.

The link is `{DRIP_BASE_URL}/pack/{subscriber id}.{HMAC}`: the HMAC, under
DRIP_SECRET_KEY, covers the subscriber's id and random salt, so a link cannot be
guessed or moved to another subscriber, needs no stored token, and dies with an
erased subscriber. Each download through it is counted (`pack_download`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlmodel import Session, col

from drip.models import PackDownload, Subscriber


def _signature(secret: str, subscriber_id: int, salt: str) -> str:
    digest = hmac.new(
        secret.encode(), f"pack:{subscriber_id}:{salt}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def pack_token(secret: str, subscriber_id: int, salt: str) -> str:
    return f"{subscriber_id}.{_signature(secret, subscriber_id, salt)}"


def pack_url(base_url: str, secret: str, subscriber_id: int, salt: str) -> str:
    return f"{base_url}/pack/{pack_token(secret, subscriber_id, salt)}"


def subscriber_for(session: Session, keys: Sequence[str], token: str) -> Subscriber | None:
    """The subscriber a pack token signed under any of `keys` names (the current key,
    then DRIP_OLD_SECRET_KEYS, so a rotation keeps sent links working); None otherwise."""
    number, dot, signature = token.partition(".")
    if not dot or not number.isascii() or not number.isdigit() or len(number) > 18:
        return None
    subscriber = session.get(Subscriber, int(number))
    if subscriber is None or subscriber.id is None:
        return None
    given = signature.encode("utf-8", "replace")
    valid = False
    for key in keys:
        expected = _signature(key, subscriber.id, subscriber.token_salt)
        valid |= hmac.compare_digest(expected.encode(), given)
    return subscriber if valid else None


def record_download(session: Session, subscriber_id: int, now: datetime) -> None:
    session.add(PackDownload(subscriber_id=subscriber_id, at=now))


def download_count(session: Session, since: datetime | None = None) -> int:
    query = select(func.count()).select_from(PackDownload)
    if since is not None:
        query = query.where(col(PackDownload.at) >= since)
    return int(session.execute(query).scalar_one())
