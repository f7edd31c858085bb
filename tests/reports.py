"""Bounce and complaint reports as real MTAs and mailbox providers write them, for tests.

A delivery status notification (RFC 3464) as Postfix sends it, and a complaint
report (ARF, RFC 5965) as a feedback loop sends it, each quoting the original; the
tagged address a report goes to, and what the report did to message and subscriber.
"""

from __future__ import annotations

from email.utils import format_datetime, make_msgid

from sqlalchemy import Engine

from drip import verp
from drip.clock import utcnow
from drip.db import session_scope
from drip.models import OutboxMessage, OutboxStatus, Subscriber, SubscriberStatus
from tests.conftest import SECRET

#: DRIP_BOUNCE_DOMAIN in these tests.
DOMAIN = "bounces.example.com"


def tagged_address(row: OutboxMessage) -> str:
    """The VERP address `row` went out with: where its bounces come back to."""
    assert row.id is not None
    return verp.address(SECRET, DOMAIN, row.id, row.message_id)


def states(engine: Engine, row: OutboxMessage) -> tuple[SubscriberStatus, OutboxStatus]:
    """The subscriber's status and the message's, as they are now."""
    with session_scope(engine) as session:
        sub = session.get(Subscriber, row.subscriber_id)
        message = session.get(OutboxMessage, row.id)
        assert sub is not None
        assert message is not None
        return sub.status, message.status


def _headers(original: bytes) -> str:
    head = original.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    return head.decode("ascii", "replace").replace("\r\n", "\n")


def dsn(
    *,
    to: str,
    recipient: str,
    original: bytes,
    status: str = "5.1.1",
    action: str = "failed",
    diagnostic: str | None = None,
    return_path: str | None = None,
) -> bytes:
    """A Postfix-style DSN sent to `to` (the envelope sender), quoting the original's headers.

    `return_path` adds the Return-Path a delivering server writes on the original.
    """
    reply = diagnostic or f"smtp; 550 {status} <{recipient}>: Recipient address rejected"
    quoted = (f"Return-Path: <{return_path}>\n" if return_path else "") + _headers(original)
    boundary = "dsn-boundary-1"
    text = f"""\
Return-Path: <>
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Date: {format_datetime(utcnow())}
Message-ID: {make_msgid(domain="mx.example.net")}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.net.
I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
Arrival-Date: {format_datetime(utcnow())}

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822; {recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mailbox.example.net
Diagnostic-Code: {reply}

--{boundary}
Content-Type: text/rfc822-headers

{quoted}
--{boundary}--
"""
    return text.replace("\n", "\r\n").encode("ascii")


def arf(
    *, to: str, original: bytes, feedback_type: str = "abuse", return_path: str | None = None
) -> bytes:
    """A complaint report (ARF) from a mailbox provider's feedback loop, with the original."""
    boundary = "arf-boundary-1"
    body = original.decode("ascii", "replace").replace("\r\n", "\n")
    if return_path:
        body = f"Return-Path: <{return_path}>\n{body}"
    text = f"""\
From: feedbackloop@fbl.example.net
To: {to}
Subject: FW: complaint about a message you sent
Date: {format_datetime(utcnow())}
Message-ID: {make_msgid(domain="fbl.example.net")}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

This is an email abuse report for an email message received from IP
192.0.2.1 on {format_datetime(utcnow())}.

--{boundary}
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: ExampleFBL/1.0
Version: 1
Original-Mail-From: <{return_path or to}>
Arrival-Date: {format_datetime(utcnow())}
Source-IP: 192.0.2.1

--{boundary}
Content-Type: message/rfc822
Content-Disposition: inline

{body}
--{boundary}--
"""
    return text.replace("\n", "\r\n").encode("ascii", "replace")


def forged_original(recipient: str, message_id: str = "<forged@attacker.example>") -> bytes:
    """What a forger can write: an "original" to a subscriber, without drip's signed tag."""
    return (
        f"From: Trigger Point Course <course@localhost>\r\nTo: {recipient}\r\n"
        f"Subject: Lesson 1\r\nMessage-ID: {message_id}\r\n\r\nHello\r\n"
    ).encode()
