"""Read a bounce or complaint from a raw message, and record it: what every mail route runs.

- Complaint reports (ARF, RFC 5965): a `message/feedback-report` part; `Feedback-Type`
  abuse, fraud, virus or other is a complaint (not-spam and auth-failure are not).
- Delivery status notifications (RFC 3464): a `message/delivery-status` part; a
  recipient block with `Action: failed` is a bounce, hard or soft by its `Status`.
  `delayed`, `delivered`, `relayed` and `expanded` are not bounces.
- Anything else goes to flufl.bounce (Mailman's detectors for the non-standard
  bounces real servers still send); only its permanent failures count: its
  temporary ones are "still trying" warnings, as Mailman treats them.

Which message (so which subscriber) a report is about comes only from a VERP tag
whose signature checks (drip.feedback): the one in the address the report was sent
to, else any found in the report (the original's Return-Path quoted in it, for when
a relay lost the envelope). The addresses the report names are never believed.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from email.message import Message

from flufl.bounce import all_failures
from sqlalchemy import Engine

from drip import verp
from drip.feedback import Event, Kind, Recorded, record_event
from drip.settings import Settings

log = logging.getLogger("drip.bounces")
# flufl.bounce says "Running detector" at INFO for each of its 17 detectors on every message.
logging.getLogger("flufl.bounce").setLevel(logging.WARNING)

#: Feedback types (RFC 5965 and its registry) that are a reader's complaint.
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE = re.compile(r"\b([45]\d\d)\b")
#: A line of an SMTP server's refusal quoted in a non-standard bounce.
_REFUSAL = re.compile(r"\b5\d\d[ -](?:5\.\d{1,3}\.\d{1,3}\b)?.{4,}")
#: RFC 3463 subjects that are about the message or the sending system, not the address:
#: mail system (3), media (6), security or policy (7, often the sender's reputation).
_SOFT_SUBJECTS = frozenset({3, 6, 7})
#: 5.2.2 mailbox full, 5.4.7 delivery time expired: transient causes, reported as final.
_SOFT_DETAILS = frozenset({(2, 2), (4, 7)})


@dataclass(frozen=True)
class Finding:
    """What a report says happened, before it is known which message it is about."""

    kind: Kind
    smtp_code: int | None
    diagnostic: str


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def read(message: Message) -> Finding | None:
    """The bounce or complaint a message reports, or None if it reports neither."""
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/feedback-report":
            return _complaint(part)
        if kind == "message/delivery-status":
            finding, actions = _delivery_status(part)
            if finding is not None or actions:
                return finding
            break  # a report with no recipient actions at all: let the detectors try
    return _non_standard(message)


def severity(status: str | None, smtp_code: int | None) -> Kind:
    """Hard or soft, from an RFC 3463 status (`5.1.1`) or else the SMTP reply code."""
    match = _STATUS.search(status or "")
    if match:
        klass, subject, detail = (int(g) for g in match.groups())
        if klass != 5 or subject in _SOFT_SUBJECTS or (subject, detail) in _SOFT_DETAILS:
            return Kind.soft
        return Kind.hard
    if smtp_code is not None and (400 <= smtp_code < 500 or smtp_code == 552):
        return Kind.soft  # 552: mailbox full (RFC 5321 "exceeded storage allocation")
    return Kind.hard


def _blocks(part: Message) -> list[Message]:
    """The header blocks of a report part, whichever way the parser left them."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = payload if isinstance(payload, str) else ""
    if part.get("Content-Transfer-Encoding", "").lower() in ("base64", "quoted-printable"):
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else text
    return [email.message_from_string(b.strip() + "\n") for b in re.split(r"\n\s*\n", text) if b]


def _clean(value: object) -> str:
    return " ".join(str(value or "").split())


def _complaint(part: Message) -> Finding | None:
    fields: dict[str, str] = {}
    for block in _blocks(part):
        for key, value in block.items():
            fields.setdefault(key.lower(), _clean(value))
    feedback_type = fields.get("feedback-type", "abuse").lower()
    if feedback_type not in COMPLAINT_TYPES:
        return None
    agent = fields.get("user-agent")
    text = f"Feedback-Type: {feedback_type}" + (f" (from {agent})" if agent else "")
    return Finding(Kind.complaint, None, text[:500])


def _delivery_status(part: Message) -> tuple[Finding | None, bool]:
    """The first failed recipient's bounce; and whether any recipient block had an Action."""
    actions = False
    for block in _blocks(part):
        action = _clean(block.get("Action")).lower()
        actions = actions or bool(action)
        if not action.startswith("fail"):  # "failed", and the odd "failure"
            continue
        status = _clean(block.get("Status"))
        diagnostic = _clean(block.get("Diagnostic-Code"))
        reply = diagnostic.partition(";")[2].strip() if ";" in diagnostic else diagnostic
        code_match = _SMTP_CODE.search(reply)
        code = int(code_match[1]) if code_match else None
        # A generic 5.0.0 says less than the server's own words (Gmail's 550 5.7.1 spam block).
        quoted = _STATUS.search(reply)
        if quoted and (not status or status.endswith(".0.0")):
            status = quoted[0]
        text = reply if status and status in reply else f"{status} {reply}".strip()
        return Finding(severity(status, code), code, text[:500]), True
    return None, actions


def _non_standard(message: Message) -> Finding | None:
    try:
        _temporary, permanent = all_failures(message)
    except Exception:
        log.warning("the bounce detectors could not read a message", exc_info=True)
        return None
    if not permanent:
        return None
    for line in _text(message).splitlines():
        match = _REFUSAL.search(line)
        if match:
            words = _clean(match[0])
            code = int(words[:3])
            full = code == 552 or "5.2.2" in words  # over quota: soft, whatever the wording
            return Finding(Kind.soft if full else Kind.hard, code, words[:500])
    return Finding(Kind.hard, None, "permanent failure reported in a non-standard bounce")


def _text(message: Message) -> str:
    """The message's headers and decoded text, nested messages included."""
    chunks: list[str] = []
    for part in message.walk():
        chunks.extend(f"{k}: {v}" for k, v in part.items())
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            chunks.append(payload.decode(part.get_content_charset() or "latin-1", "replace"))
    return "\n".join(chunks)


def candidate_tags(message: Message, domain: str, envelope_tag: str | None = None) -> list[str]:
    """The VERP tags a report could be about, the envelope's first; none is believed yet."""
    found = verp.tags_in(_text(message), domain)
    first = [envelope_tag.lower()] if envelope_tag else []
    return list(dict.fromkeys(first + found))


def take(
    engine: Engine,
    settings: Settings,
    data: bytes,
    now: datetime,
    *,
    source: str,
    envelope_tag: str | None = None,
) -> Recorded:
    """Read a raw report and record it on the message its first valid tag names.

    `recorded` or `duplicate` when it was (or had already been) recorded; `unknown`
    when it reports no bounce or complaint, or names no message drip can prove.
    """
    domain = settings.bounce_domain
    if not domain:
        return Recorded.unknown
    message = parse(data)
    finding = read(message)
    if finding is None:
        return Recorded.unknown
    for tag in candidate_tags(message, domain, envelope_tag):
        event = Event(
            finding.kind,
            source,
            tag=tag,
            smtp_code=finding.smtp_code,
            diagnostic=finding.diagnostic,
        )
        outcome = record_event(engine, settings, event, now)
        if outcome != Recorded.unknown:
            return outcome
    return Recorded.unknown
