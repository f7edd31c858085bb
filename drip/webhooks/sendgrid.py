"""SendGrid's signed event webhook: ECDSA (P-256, SHA-256) over timestamp + raw body.

The key is the verification key SendGrid shows for the webhook (base64 DER, or PEM),
set as DRIP_SENDGRID_PUBLIC_KEY. A timestamp more than FRESH_SECONDS from our clock is
stale.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from functools import cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

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

SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"


@cache
def public_key(value: str) -> ec.EllipticCurvePublicKey:
    """The verification key from its setting; raises ValueError when it is not one."""
    value = value.strip()
    if value.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(value.encode())
    else:
        key = serialization.load_der_public_key(base64.b64decode(value, validate=True))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve public key")
    return key


def verify(
    settings: Settings, signature: str | None, timestamp: str | None, body: bytes, now: datetime
) -> None:
    if not settings.sendgrid_public_key:
        raise Refused(403, "DRIP_SENDGRID_PUBLIC_KEY is not set: the SendGrid webhook is closed")
    if not signature or not timestamp or len(timestamp) > 20 or len(signature) > 200:
        raise Refused(403, "no SendGrid signature")
    try:
        der = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(403, "the SendGrid signature is not base64") from None
    key = public_key(settings.sendgrid_public_key)
    try:
        key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise Refused(403, "the SendGrid signature does not verify") from None
    if not timestamp.isascii() or not timestamp.isdigit():
        raise Refused(403, "the SendGrid timestamp is not a number")
    if abs(now.timestamp() - int(timestamp)) > FRESH_SECONDS:
        raise Refused(403, "the SendGrid signature is stale")


def parse(
    settings: Settings, signature: str | None, timestamp: str | None, body: bytes, now: datetime
) -> Batch:
    verify(settings, signature, timestamp, body, now)
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise Malformed("not JSON") from None
    if not isinstance(payload, list):
        raise Malformed("not a list of events")
    found: list[ProviderEvent] = []
    for item in payload:
        found.extend(events(as_dict(item)))
    return Batch(found)


def events(item: dict[str, Any]) -> list[ProviderEvent]:
    email = address(item.get("email"))
    if email is None:
        return []
    mid = message_id(item.get("smtp-id"))
    event = item.get("event")
    if event == "spamreport":
        return [ProviderEvent("sendgrid", "complaint", email, mid, None, "spamreport")]
    if event != "bounce":
        return []
    hard = item.get("type", "bounce") == "bounce"
    detail = text(
        f"{item.get('type') or 'bounce'} {item.get('status') or ''} {item.get('reason') or ''}"
    )
    return [
        ProviderEvent(
            "sendgrid", "hard_bounce" if hard else "soft_bounce", email, mid, None, detail
        )
    ]
