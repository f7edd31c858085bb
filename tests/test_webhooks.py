"""Provider webhooks, posted as each provider signs them, with keys made here.

SNS's signing certificate is a self-signed one served on loopback (DRIP_SNS_CERT_ORIGIN);
SendGrid's key pair and Mailgun's signing key are generated per test. A signed event
bounces or marks the subscriber as complained; a forged, unsigned, stale or replayed one
is refused and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from drip import verp
from drip.clock import utcnow
from drip.db import session_scope
from drip.models import OutboxMessage, OutboxStatus, Subscriber, SubscriberStatus
from drip.settings import Settings
from drip.web.app import create_app
from tests.conftest import SECRET
from tests.factories import attempts, outbox, subscriber, tick

TOPIC = "arn:aws:sns:eu-west-1:123456789012:drip-bounces"
MAILGUN_KEY = "key-" + "m" * 32


# -- a loopback web server standing in for sns.<region>.amazonaws.com ------------------


@dataclass
class Files:
    files: dict[str, bytes] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)


@pytest.fixture
def aws() -> Iterator[tuple[str, Files]]:
    served = Files()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.hits.append(self.path)
            body = served.files.get(self.path.split("?")[0])
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


def certificate(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


# -- a subscriber with one message sent ---------------------------------------------------


@dataclass
class World:
    settings: Settings
    engine: Engine
    client: TestClient
    row: OutboxMessage
    sns_key: rsa.RSAPrivateKey
    cert_url: str
    files: Files
    sendgrid_key: ec.EllipticCurvePrivateKey

    def status(self) -> SubscriberStatus:
        with session_scope(self.engine) as session:
            found = session.get(Subscriber, self.row.subscriber_id)
            assert found is not None
            return found.status


@pytest.fixture
def world(settings: Settings, engine: Engine, aws: tuple[str, Files]) -> World:
    origin, files = aws
    sns_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files.files["/SimpleNotificationService-test.pem"] = certificate(sns_key)
    sendgrid_key = ec.generate_private_key(ec.SECP256R1())
    public = sendgrid_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    configured = settings.model_copy(
        update={
            "ses_topic_arns": TOPIC,
            "sns_cert_origin": origin,
            "postmark_webhook_user": "postmark",
            "postmark_webhook_password": "pm-secret-password",
            "mailgun_signing_key": MAILGUN_KEY,
            "sendgrid_public_key": base64.b64encode(public).decode(),
        }
    )
    # model_copy skips validation: make the secrets what the settings would hold.
    from pydantic import SecretStr

    configured.postmark_webhook_password = SecretStr("pm-secret-password")
    configured.mailgun_signing_key = SecretStr(MAILGUN_KEY)
    subscriber(configured, "ann@example.com")
    tick(configured)
    [row] = outbox(engine)
    assert row.status == OutboxStatus.sent
    return World(
        configured,
        engine,
        TestClient(create_app(configured)),
        row,
        sns_key,
        f"{origin}/SimpleNotificationService-test.pem",
        files,
        sendgrid_key,
    )


def unchanged(world: World) -> None:
    assert world.status() == SubscriberStatus.active
    assert [a.status for a in attempts(world.engine)] == [OutboxStatus.sent]


# -- SES through SNS ---------------------------------------------------------------------


def ses_bounce(world: World, bounce_type: str = "Permanent") -> str:
    return json.dumps(
        {
            "notificationType": "Bounce",
            "bounce": {
                "bounceType": bounce_type,
                "bounceSubType": "General",
                "bouncedRecipients": [
                    {"emailAddress": "ann@example.com", "status": "5.1.1", "diagnosticCode": "x"}
                ],
            },
            "mail": {
                "messageId": "0102018-ses-own-id",
                "source": "course@example.com",
                "commonHeaders": {"messageId": world.row.message_id},
            },
        }
    )


def sns(world: World, kind: str = "Notification", version: str = "2", **over: Any) -> bytes:
    message: dict[str, Any] = {
        "Type": kind,
        "MessageId": secrets.token_hex(8),
        "TopicArn": TOPIC,
        "Message": ses_bounce(world),
        "Timestamp": "2026-11-26T09:00:00.000Z",
        "SignatureVersion": version,
        "SigningCertURL": world.cert_url,
    }
    if kind == "Notification":
        message["Subject"] = "Amazon SES Email Event Notification"
    else:
        message["Token"] = secrets.token_hex(16)
        message["SubscribeURL"] = world.cert_url.rsplit("/", 1)[0] + "/confirm?Token=abc"
        message["Message"] = "You have chosen to subscribe to the topic."
    message.update({k: v for k, v in over.items() if k != "key"})
    fields = {
        "Notification": ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
    }.get(kind, ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"])
    canonical = "".join(f"{f}\n{message[f]}\n" for f in fields if f in message)
    key: rsa.RSAPrivateKey = over.get("key", world.sns_key)
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(canonical.encode(), padding.PKCS1v15(), algorithm)
    message.setdefault("Signature", base64.b64encode(signature).decode())
    if "Signature" in over:
        message["Signature"] = over["Signature"]
    return json.dumps(message).encode()


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_ses_bounce_bounces_the_subscriber(world: World, version: str) -> None:
    response = world.client.post("/webhooks/ses", content=sns(world, version=version))
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "recorded": 1}
    assert world.status() == SubscriberStatus.bounced
    logged = attempts(world.engine)[-1]
    assert logged.status == OutboxStatus.bounced
    assert logged.outbox_id == world.row.id
    assert logged.smtp_message is not None
    assert logged.smtp_message.startswith("hard bounce (ses)")
    # The same notification again (SNS retries) records nothing twice.
    again = world.client.post("/webhooks/ses", content=sns(world, version=version))
    assert again.status_code == 200
    assert len(attempts(world.engine)) == 2


def test_a_ses_complaint_marks_the_subscriber_complained(world: World) -> None:
    complaint = json.dumps(
        {
            "notificationType": "Complaint",
            "complaint": {
                "complainedRecipients": [{"emailAddress": "ann@example.com"}],
                "complaintFeedbackType": "abuse",
            },
            "mail": {"commonHeaders": {"messageId": world.row.message_id}},
        }
    )
    response = world.client.post("/webhooks/ses", content=sns(world, Message=complaint))
    assert response.status_code == 200, response.text
    assert world.status() == SubscriberStatus.complained
    assert attempts(world.engine)[-1].status == OutboxStatus.complained


def test_forged_and_unsigned_sns_messages_change_nothing(world: World) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    world.files.hits.clear()
    forged = [
        sns(world, key=stranger),  # signed by someone else's key
        sns(world, Signature=""),  # unsigned
        sns(world, Signature="not base64!"),
        sns(world, TopicArn="arn:aws:sns:eu-west-1:999999999999:theirs"),  # their own topic
        sns(world, SignatureVersion="3"),
        json.dumps({"Type": "Notification", "Message": ses_bounce(world)}).encode(),
    ]
    # A body changed after signing: the bounce now names the message, the signature an old one.
    good = json.loads(sns(world))
    good["Message"] = good["Message"].replace("Permanent", "Permanent ")
    forged.append(json.dumps(good).encode())
    for body in forged:
        response = world.client.post("/webhooks/ses", content=body)
        assert response.status_code == 403, (response.status_code, body[:200])
    unchanged(world)


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/SimpleNotificationService-test.pem",
        "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem",
        "https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem",
        "https://sns.eu-west-1.amazonaws.com/cert.txt",
        "https://sns.eu-west-1.amazonaws.com:8443/cert.pem",
        "file:///etc/passwd",
    ],
)
def test_a_certificate_url_off_aws_is_refused_unfetched(world: World, url: str) -> None:
    response = world.client.post("/webhooks/ses", content=sns(world, SigningCertURL=url))
    assert response.status_code == 403
    unchanged(world)


def test_a_subscription_confirmation_is_confirmed_only_when_signed(world: World) -> None:
    world.files.files["/confirm"] = b"<ConfirmSubscriptionResponse/>"
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = sns(world, kind="SubscriptionConfirmation", key=stranger)
    assert world.client.post("/webhooks/ses", content=forged).status_code == 403
    elsewhere = sns(
        world,
        kind="SubscriptionConfirmation",
        SubscribeURL="https://evil.example.com/confirm?Token=abc",
    )
    assert world.client.post("/webhooks/ses", content=elsewhere).status_code == 403
    assert not [h for h in world.files.hits if h.startswith("/confirm")]
    response = world.client.post(
        "/webhooks/ses", content=sns(world, kind="SubscriptionConfirmation")
    )
    assert response.status_code == 200
    assert response.json() == {"status": "subscribed"}
    assert [h for h in world.files.hits if h.startswith("/confirm")] == ["/confirm?Token=abc"]
    unchanged(world)


def test_the_ses_webhook_is_closed_without_a_topic(world: World) -> None:
    closed = world.settings.model_copy(update={"ses_topic_arns": ""})
    response = TestClient(create_app(closed)).post("/webhooks/ses", content=sns(world))
    assert response.status_code == 403
    unchanged(world)


# -- Postmark ----------------------------------------------------------------------------


def postmark_bounce(kind: str = "HardBounce", **over: Any) -> dict[str, Any]:
    record = {
        "RecordType": "Bounce",
        "Type": kind,
        "TypeCode": 1,
        "Email": "ann@example.com",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Description": "The server was unable to deliver your message",
        "Details": "smtp;550 5.1.1 unknown user",
        "BouncedAt": "2026-11-26T09:00:00Z",
    }
    record.update(over)
    return record


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


def test_a_postmark_hard_bounce_with_credentials_bounces(world: World) -> None:
    content = f"Message-ID: {world.row.message_id}\r\nSubject: x\r\n"
    response = world.client.post(
        "/webhooks/postmark",
        json=postmark_bounce(Content=content),
        headers=basic("postmark", "pm-secret-password"),
    )
    assert response.status_code == 200, response.text
    assert response.json()["recorded"] == 1, response.text
    assert world.status() == SubscriberStatus.bounced


def test_a_postmark_spam_complaint_without_message_id_finds_the_last_message(
    world: World,
) -> None:
    complaint = {"RecordType": "SpamComplaint", "Type": "SpamComplaint", "Email": "Ann@Example.com"}
    response = world.client.post(
        "/webhooks/postmark", json=complaint, headers=basic("postmark", "pm-secret-password")
    )
    assert response.status_code == 200
    assert response.json()["recorded"] == 1
    assert world.status() == SubscriberStatus.complained


def test_postmark_without_the_right_credentials_changes_nothing(world: World) -> None:
    for headers, expected in (
        ({}, 401),
        (basic("postmark", "wrong"), 401),
        (basic("someone", "pm-secret-password"), 401),
        ({"authorization": "Basic !!!"}, 401),
        ({"authorization": "Bearer pm-secret-password"}, 401),
    ):
        response = world.client.post("/webhooks/postmark", json=postmark_bounce(), headers=headers)
        assert response.status_code == expected, headers
    assert response.headers["www-authenticate"].startswith("Basic")
    unchanged(world)


def test_a_soft_bounce_is_logged_and_stops_nothing(world: World) -> None:
    content = f"Message-ID: {world.row.message_id}\r\n"
    response = world.client.post(
        "/webhooks/postmark",
        json=postmark_bounce("SoftBounce", Content=content),
        headers=basic("postmark", "pm-secret-password"),
    )
    assert response.status_code == 200
    assert world.status() == SubscriberStatus.active
    soft = attempts(world.engine)[-1]
    assert soft.status == OutboxStatus.failed
    assert soft.smtp_message is not None
    assert soft.smtp_message.startswith("soft bounce (postmark)")


# -- Mailgun -----------------------------------------------------------------------------


def mailgun(world: World, *, key: str = MAILGUN_KEY, at: datetime | None = None) -> bytes:
    timestamp = str(int((at or utcnow()).timestamp()))
    token = secrets.token_hex(25)
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {
            "signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": {
                "event": "failed",
                "severity": "permanent",
                "reason": "bounce",
                "recipient": "ann@example.com",
                "message": {"headers": {"message-id": world.row.message_id.strip("<>")}},
                "delivery-status": {"code": 550, "message": "5.1.1 no such user"},
            },
        }
    ).encode()


def test_a_signed_mailgun_failure_bounces_once_and_a_replay_is_refused(world: World) -> None:
    body = mailgun(world)
    response = world.client.post("/webhooks/mailgun", content=body)
    assert response.status_code == 200, response.text
    assert response.json()["recorded"] == 1, response.text
    assert world.status() == SubscriberStatus.bounced
    replay = world.client.post("/webhooks/mailgun", content=body)
    assert replay.status_code == 403
    assert "already" in replay.text
    assert len(attempts(world.engine)) == 2


def test_forged_stale_and_unsigned_mailgun_events_change_nothing(world: World) -> None:
    unsigned = json.loads(mailgun(world))
    del unsigned["signature"]
    for body in (
        mailgun(world, key="key-someone-elses"),
        mailgun(world, at=utcnow() - timedelta(hours=1)),
        mailgun(world, at=utcnow() + timedelta(hours=1)),
        json.dumps(unsigned).encode(),
    ):
        assert world.client.post("/webhooks/mailgun", content=body).status_code == 403
    unchanged(world)


# -- SendGrid ----------------------------------------------------------------------------


def sendgrid(
    world: World, events: list[dict[str, Any]], *, key: Any = None, at: datetime | None = None
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(events).encode()
    timestamp = str(int((at or utcnow()).timestamp()))
    signer = key or world.sendgrid_key
    signature = signer.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return body, {
        "x-twilio-email-event-webhook-signature": base64.b64encode(signature).decode(),
        "x-twilio-email-event-webhook-timestamp": timestamp,
        "content-type": "application/json",
    }


def sendgrid_bounce(world: World) -> list[dict[str, Any]]:
    return [
        {"email": "ann@example.com", "event": "delivered", "smtp-id": world.row.message_id},
        {
            "email": "ann@example.com",
            "event": "bounce",
            "type": "bounce",
            "status": "5.1.1",
            "reason": "550 5.1.1 unknown",
            "smtp-id": world.row.message_id,
            "sg_event_id": "x",
        },
    ]


def test_a_signed_sendgrid_bounce_bounces(world: World) -> None:
    body, headers = sendgrid(world, sendgrid_bounce(world))
    response = world.client.post("/webhooks/sendgrid", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["recorded"] == 1, response.text
    assert world.status() == SubscriberStatus.bounced


def test_a_signed_sendgrid_spamreport_is_a_complaint(world: World) -> None:
    events = [{"email": "ann@example.com", "event": "spamreport", "smtp-id": world.row.message_id}]
    body, headers = sendgrid(world, events)
    response = world.client.post("/webhooks/sendgrid", content=body, headers=headers)
    assert response.status_code == 200
    assert world.status() == SubscriberStatus.complained


def test_forged_stale_and_unsigned_sendgrid_events_change_nothing(world: World) -> None:
    events = sendgrid_bounce(world)
    stranger = ec.generate_private_key(ec.SECP256R1())
    body, headers = sendgrid(world, events, key=stranger)
    tampered_body, good_headers = sendgrid(world, events)
    stale_body, stale_headers = sendgrid(world, events, at=utcnow() - timedelta(hours=2))
    attempts_ = [
        (body, headers),
        (tampered_body.replace(b"5.1.1", b"5.1.2"), good_headers),
        (stale_body, stale_headers),
        (tampered_body, {"content-type": "application/json"}),
        (tampered_body, {**good_headers, "x-twilio-email-event-webhook-signature": "%%%"}),
    ]
    for content, sent_headers in attempts_:
        response = world.client.post("/webhooks/sendgrid", content=content, headers=sent_headers)
        assert response.status_code == 403, response.text
    unchanged(world)


# -- every webhook, fed anything -----------------------------------------------------------


def test_no_body_gets_a_5xx_or_changes_anything(world: World) -> None:
    rng = secrets.SystemRandom()
    bodies: list[bytes] = [
        b"",
        b"null",
        b"[]",
        b"{}",
        b'{"Type": "Notification"}',
        b'"string"',
        b"\xff\xfe\x00",
        json.dumps({"signature": {"timestamp": "1", "token": "t", "signature": "s"}}).encode(),
        json.dumps([{"email": None, "event": ["bounce"]}]).encode(),
        b"{" * 5000,
        b"[" * 3000 + b"]" * 3000,  # past the JSON parser's recursion limit
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
        b"1" * 5000,  # past int's digit limit
        os.urandom(2048),
    ]
    bodies += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 400))) for _ in range(20)]
    # Proven requests with bodies no provider sends: 400 at worst, never 5xx.
    signed_junk = [sendgrid(world, [{"event": {"x": 1}}, 7, None])]  # type: ignore[list-item]
    for path in ("/webhooks/ses", "/webhooks/postmark", "/webhooks/mailgun", "/webhooks/sendgrid"):
        for body in bodies:
            response = world.client.post(path, content=body)
            assert response.status_code in (400, 401, 403), (path, response.status_code, body[:40])
        authorised = world.client.post(
            path, content=b"{not json", headers=basic("postmark", "pm-secret-password")
        )
        assert authorised.status_code < 500
    for body, headers in signed_junk:
        response = world.client.post("/webhooks/sendgrid", content=body, headers=headers)
        assert response.status_code == 200
        assert response.json()["recorded"] == 0
    unchanged(world)


def test_a_signed_event_names_its_message_by_verp_tag_and_a_forged_tag_changes_nothing(
    world: World,
) -> None:
    assert world.row.id is not None
    good = verp.address(SECRET, "bounces.example.com", world.row.id, world.row.message_id)
    forged = f"bounces+{world.row.id}-aaaaaaaaaaaa@bounces.example.com"

    def event(sender: str) -> bytes:
        body = json.loads(mailgun(world))
        body["event-data"]["message"]["headers"] = {}  # no Message-ID: the tag must do
        body["event-data"]["envelope"] = {"sender": sender}
        return json.dumps(body).encode()

    refused = world.client.post("/webhooks/mailgun", content=event(forged))
    assert refused.status_code == 200
    assert refused.json()["recorded"] == 0
    unchanged(world)
    taken = world.client.post("/webhooks/mailgun", content=event(good))
    assert taken.status_code == 200
    assert taken.json()["recorded"] == 1
    assert world.status() == SubscriberStatus.bounced
