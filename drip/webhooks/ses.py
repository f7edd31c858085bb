"""Amazon SES bounces and complaints, delivered by SNS: every message signed by AWS.

SNS signs a canonical string of the message's fields (SignatureVersion 1: RSA with
SHA-1, 2: RSA with SHA-256) with the key of the certificate at `SigningCertURL`.
That URL must be https on an `sns.<region>.amazonaws.com` host, or under
DRIP_SNS_CERT_ORIGIN (set only by tests, which serve their own certificate on
loopback). The TopicArn must be one of DRIP_SES_TOPIC_ARNS: anyone can own an SNS
topic and have AWS sign for it. A SubscriptionConfirmation is confirmed by fetching
its SubscribeURL, checked the same way, only once all of that holds.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import urllib.request
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from drip.settings import Settings
from drip.webhooks.events import (
    Batch,
    Malformed,
    ProviderEvent,
    Refused,
    address,
    as_dict,
    message_id,
    text,
)

AWS_HOST = re.compile(r"^sns\.[a-z0-9-]{1,40}\.amazonaws\.com(\.cn)?$")
FETCH_SECONDS = 5.0
MAX_CERTIFICATE = 16 * 1024
_CONFIRMATION_FIELDS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION_FIELDS,
    "UnsubscribeConfirmation": _CONFIRMATION_FIELDS,
}


def trusted_url(settings: Settings, url: object, *, certificate: bool) -> str:
    """`url` if it is AWS's (https, sns.<region>.amazonaws.com) or under the test origin."""
    if not isinstance(url, str) or len(url) > 2000:
        raise Refused(403, "no signing certificate URL")
    origin = settings.sns_cert_origin
    if origin and url.startswith(origin.rstrip("/") + "/"):
        return url
    parts = urlsplit(url)
    if parts.scheme != "https" or not AWS_HOST.match(parts.hostname or "") or parts.port:
        raise Refused(403, "the certificate URL is not an AWS SNS https URL")
    if certificate and not parts.path.endswith(".pem"):
        raise Refused(403, "the certificate URL is not a .pem file")
    return url


class Certificates:
    """Signing certificates fetched once per URL (a few; AWS rotates them rarely)."""

    def __init__(self, size: int = 16) -> None:
        self._keys: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    def key(self, url: str) -> rsa.RSAPublicKey:
        with self._lock:
            if url in self._keys:
                self._keys.move_to_end(url)
                return self._keys[url]
        try:
            with urllib.request.urlopen(url, timeout=FETCH_SECONDS) as response:
                pem = response.read(MAX_CERTIFICATE + 1)
        except (OSError, ValueError) as exc:
            raise Refused(403, f"the signing certificate could not be fetched ({exc})") from None
        if len(pem) > MAX_CERTIFICATE:
            raise Refused(403, "the signing certificate is too large")
        try:
            public = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError:
            raise Refused(403, "the signing certificate is not a PEM certificate") from None
        if not isinstance(public, rsa.RSAPublicKey):
            raise Refused(403, "the signing certificate holds no RSA key")
        with self._lock:
            self._keys[url] = public
            while len(self._keys) > self._size:
                self._keys.popitem(last=False)
        return public


def canonical(message: dict[str, Any]) -> bytes:
    fields = _SIGNED_FIELDS.get(str(message.get("Type")))
    if fields is None:
        raise Refused(403, "not an SNS message type")
    lines: list[str] = []
    for name in fields:
        value = message.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise Refused(403, f"the signed field {name} is missing")
        lines += [name, value]
    return ("\n".join(lines) + "\n").encode("utf-8")


def verify(settings: Settings, certificates: Certificates, message: dict[str, Any]) -> None:
    """Raise Refused unless AWS signed `message` for one of our topics."""
    allowed = settings.ses_topic_arn_list
    if not allowed:
        raise Refused(403, "DRIP_SES_TOPIC_ARNS is not set: the SES webhook is closed")
    if message.get("TopicArn") not in allowed:
        raise Refused(403, "not one of our SNS topics")
    version = message.get("SignatureVersion")
    algorithm: hashes.HashAlgorithm
    if version == "1":
        algorithm = hashes.SHA1()
    elif version == "2":
        algorithm = hashes.SHA256()
    else:
        raise Refused(403, "unknown SNS SignatureVersion")
    try:
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(403, "the signature is not base64") from None
    data = canonical(message)
    url = trusted_url(settings, message.get("SigningCertURL"), certificate=True)
    key = certificates.key(url)
    try:
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise Refused(403, "the SNS signature does not verify") from None


def confirm_subscription(settings: Settings, message: dict[str, Any]) -> None:
    """Visit the SubscribeURL of a verified confirmation for one of our topics."""
    url = trusted_url(settings, message.get("SubscribeURL"), certificate=False)
    try:
        with urllib.request.urlopen(url, timeout=FETCH_SECONDS) as response:
            response.read(64 * 1024)
    except (OSError, ValueError) as exc:
        raise Malformed(f"the subscription could not be confirmed ({exc})") from None


def parse(settings: Settings, certificates: Certificates, body: bytes) -> Batch | str:
    """A verified notification's events, or a word for what else was done ("subscribed")."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        raise Refused(403, "not an SNS message") from None
    if not isinstance(message, dict):
        raise Refused(403, "not an SNS message")
    verify(settings, certificates, message)
    kind = message["Type"]
    if kind == "SubscriptionConfirmation":
        confirm_subscription(settings, message)
        return "subscribed"
    if kind == "UnsubscribeConfirmation":
        return "unsubscribed"
    try:
        notification = json.loads(message["Message"])
    except (ValueError, RecursionError):
        raise Malformed("the SNS Message is not SES JSON") from None
    return Batch(events(as_dict(notification)))


def events(notification: dict[str, Any]) -> list[ProviderEvent]:
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = as_dict(notification.get("mail"))
    mid = message_id(as_dict(mail.get("commonHeaders")).get("messageId"))
    if mid is None:
        for header in mail.get("headers") or []:
            header = as_dict(header)
            if str(header.get("name", "")).lower() == "message-id":
                mid = message_id(header.get("value"))
    sender = address(mail.get("source"))
    found: list[ProviderEvent] = []
    if kind == "Bounce":
        bounce = as_dict(notification.get("bounce"))
        hard = bounce.get("bounceType") == "Permanent"
        for recipient in bounce.get("bouncedRecipients") or []:
            recipient = as_dict(recipient)
            email = address(recipient.get("emailAddress"))
            if email is None:
                continue
            detail = text(
                f"{bounce.get('bounceType')}/{bounce.get('bounceSubType')} "
                f"{recipient.get('status') or ''} {recipient.get('diagnosticCode') or ''}"
            )
            found.append(
                ProviderEvent(
                    "ses", "hard_bounce" if hard else "soft_bounce", email, mid, sender, detail
                )
            )
    elif kind == "Complaint":
        complaint = as_dict(notification.get("complaint"))
        detail = text(f"complaint {complaint.get('complaintFeedbackType') or ''}")
        for recipient in complaint.get("complainedRecipients") or []:
            email = address(as_dict(recipient).get("emailAddress"))
            if email is not None:
                found.append(ProviderEvent("ses", "complaint", email, mid, sender, detail))
    return found
