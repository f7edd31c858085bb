"""Mailgun's failed and complained events, proven by an HMAC under the webhook signing key.

The signature is HMAC-SHA256 of timestamp + token under DRIP_MAILGUN_SIGNING_KEY. A
timestamp more than FRESH_SECONDS from our clock is stale, and a token is accepted once
(kept in `webhook_receipt`), so a captured request cannot be replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

from drip.settings import Settings
from drip.webhooks.events import (
    FRESH_SECONDS,
    Batch,
    Malformed,
    ProviderEvent,
    Refused,
    address,
    as_dict,
    message_id,
    text,
)


def verify(settings: Settings, signature: dict[str, Any], now: datetime) -> str:
    """The token of a valid, fresh signature; raises Refused otherwise."""
    key = settings.mailgun_signing_key
    if key is None:
        raise Refused(403, "DRIP_MAILGUN_SIGNING_KEY is not set: the Mailgun webhook is closed")
    timestamp, token, given = (signature.get(k) for k in ("timestamp", "token", "signature"))
    if not all(isinstance(v, str) and 0 < len(v) <= 200 for v in (timestamp, token, given)):
        raise Refused(403, "no Mailgun signature")
    assert isinstance(timestamp, str) and isinstance(token, str) and isinstance(given, str)
    expected = hmac.new(
        key.get_secret_value().encode(), (timestamp + token).encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
        raise Refused(403, "the Mailgun signature does not verify")
    if not timestamp.isascii() or not timestamp.isdigit():
        raise Refused(403, "the Mailgun timestamp is not a number")
    if abs(now.timestamp() - int(timestamp)) > FRESH_SECONDS:
        raise Refused(403, "the Mailgun signature is stale")
    return token


def parse(settings: Settings, body: bytes, now: datetime) -> Batch:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise Refused(403, "no Mailgun signature") from None
    payload = as_dict(payload)
    token = verify(settings, as_dict(payload.get("signature")), now)
    data = payload.get("event-data")
    if not isinstance(data, dict):
        raise Malformed("no event-data")
    return Batch(events(data), once_key=f"mailgun:{token}")


def events(data: dict[str, Any]) -> list[ProviderEvent]:
    email = address(data.get("recipient"))
    if email is None:
        return []
    message = as_dict(data.get("message"))
    mid = message_id(as_dict(message.get("headers")).get("message-id"))
    sender = address(as_dict(data.get("envelope")).get("sender"))
    event = data.get("event")
    if event == "complained":
        return [ProviderEvent("mailgun", "complaint", email, mid, sender, "complained")]
    if event != "failed":
        return []
    status = as_dict(data.get("delivery-status"))
    hard = data.get("severity") == "permanent"
    detail = text(
        f"{data.get('severity') or ''} {data.get('reason') or ''} {status.get('code') or ''} "
        f"{status.get('message') or status.get('description') or ''}"
    )
    return [
        ProviderEvent(
            "mailgun", "hard_bounce" if hard else "soft_bounce", email, mid, sender, detail
        )
    ]
