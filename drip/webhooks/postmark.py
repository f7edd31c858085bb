"""Postmark bounce and spam-complaint webhooks, proven by HTTP basic auth on the URL.

Postmark signs nothing; its webhook URL carries credentials
(`https://user:password@course.example.com/webhooks/postmark`), which drip checks in
constant time against DRIP_POSTMARK_WEBHOOK_USER and DRIP_POSTMARK_WEBHOOK_PASSWORD.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any

from drip.settings import Settings
from drip.webhooks.events import (
    Batch,
    Malformed,
    ProviderEvent,
    Refused,
    address,
    as_dict,
    message_id,
    message_id_in_headers,
    text,
)

#: Postmark's bounce types that mean the address will never take mail.
HARD = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})
SOFT = frozenset({"SoftBounce", "Transient", "DnsError", "MailboxFull"})


def authenticate(settings: Settings, authorization: str | None) -> None:
    user, password = settings.postmark_webhook_user, settings.postmark_webhook_password
    if not user or password is None:
        raise Refused(403, "DRIP_POSTMARK_WEBHOOK_USER/PASSWORD are not set: webhook closed")
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        raise Refused(401, "credentials required")
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(401, "credentials required") from None
    expected = f"{user}:{password.get_secret_value()}".encode()
    if not hmac.compare_digest(given, expected):
        raise Refused(401, "wrong credentials")


def parse(settings: Settings, authorization: str | None, body: bytes) -> Batch:
    authenticate(settings, authorization)
    try:
        record = json.loads(body)
    except (ValueError, RecursionError):
        raise Malformed("not JSON") from None
    return Batch(events(as_dict(record)))


def events(record: dict[str, Any]) -> list[ProviderEvent]:
    email = address(record.get("Email"))
    if email is None:
        return []
    metadata = as_dict(record.get("Metadata"))
    mid = message_id(metadata.get("message-id")) or message_id_in_headers(record.get("Content"))
    kind = record.get("RecordType")
    bounce_type = record.get("Type")
    if kind == "SpamComplaint" or bounce_type == "SpamComplaint":
        detail = text(f"SpamComplaint {record.get('Description') or ''}")
        return [ProviderEvent("postmark", "complaint", email, mid, None, detail)]
    if kind != "Bounce" or (bounce_type not in HARD and bounce_type not in SOFT):
        return []
    detail = text(f"{bounce_type} {record.get('Description') or ''} {record.get('Details') or ''}")
    hard = bounce_type in HARD
    return [
        ProviderEvent(
            "postmark", "hard_bounce" if hard else "soft_bounce", email, mid, None, detail
        )
    ]
