"""Alerts that do not depend on the mail path: a JSON POST to DRIP_ALERT_WEBHOOK.

A warning sent by email cannot say that email is broken, so drip tells the operator
through a webhook (ntfy, Slack or any receiver of JSON). Every process that checks
(each scheduler pass, and the web app every minute, which notices when no worker is
left) judges the conditions from the database. An incident is a row of `alert`,
raised and cleared with a conditional UPDATE: whichever process notices first sends
it, once, and once more when it clears. A POST that fails undoes its change, so the
next check tries again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from drip import health
from drip.clock import Clock, utcnow
from drip.db import insert_ignoring, read_scope, session_scope
from drip.health import WINDOW, Limits, MailOnly, rates_since
from drip.models import (
    Alert,
    DeliveryAttempt,
    OutboxStatus,
    WorkerHeartbeat,
)
from drip.settings import Settings

log = logging.getLogger(__name__)
POST_TIMEOUT = 10.0

#: Every condition drip watches, and what it is called in the alert.
TITLES = {
    "worker_stopped": "no worker is running",
    "queue_stuck": "mail is waiting to be sent",
    "smtp_failing": "the SMTP server keeps failing",
    "bounces_high": "hard bounces over the limit",
    "complaints_high": "spam complaints over the limit",
}


@dataclass(frozen=True)
class Notice:
    """One alert raised or cleared, as the webhook receives it."""

    name: str
    firing: bool
    detail: str
    at: datetime

    def payload(self, topic: str | None) -> dict[str, object]:
        state = "firing" if self.firing else "resolved"
        title = f"drip: {TITLES[self.name]}" + ("" if self.firing else " (cleared)")
        text = f"{title}. {self.detail}"
        body: dict[str, object] = {
            "text": text,  # Slack and most receivers
            "title": title,  # ntfy
            "message": self.detail,  # ntfy
            "tags": ["warning" if self.firing else "white_check_mark"],  # ntfy
            "alert": self.name,
            "status": state,
            "detail": self.detail,
            "at": self.at.isoformat(),
        }
        if topic:
            body["topic"] = topic
        return body


def conditions(settings: Settings, session: Session, now: datetime) -> dict[str, str | None]:
    """Each watched condition: a sentence saying what is wrong, or None when it is fine."""
    after = timedelta(minutes=settings.alert_after_minutes)
    found: dict[str, str | None] = dict.fromkeys(TITLES)

    last_pass = session.execute(select(func.max(col(WorkerHeartbeat.last_pass_at)))).scalar()
    mail = MailOnly.of(session)
    oldest_due = health.oldest_due(session, mail, now)
    if last_pass is not None and last_pass <= now - after:
        found["worker_stopped"] = f"the last scheduler pass ended at {_when(last_pass)}"
    elif last_pass is None and oldest_due is not None and oldest_due <= now - after:
        found["worker_stopped"] = "no worker has ever finished a pass, and mail is due"
    if oldest_due is not None and oldest_due <= now - after:
        found["queue_stuck"] = f"the oldest due message has waited since {_when(oldest_due)}"

    found["smtp_failing"] = _smtp_failing(session, mail, now, after)

    rates, limits = rates_since(session, now - WINDOW), Limits.of(settings)
    if rates.bounces_over(limits):
        found["bounces_high"] = (
            f"{rates.bounce_percent:.2f}% of {rates.delivered} messages in 7 days bounced "
            f"(limit {settings.max_bounce_percent:g}%)"
        )
    if rates.complaints_over(limits):
        found["complaints_high"] = (
            f"{rates.complaint_percent:.2f}% of {rates.delivered} messages in 7 days were "
            f"reported as spam (limit {settings.max_complaint_percent:g}%)"
        )
    return found


def _smtp_failing(session: Session, mail: MailOnly, now: datetime, after: timedelta) -> str | None:
    """Failing for `after`: deferrals throughout, the first of them at least `after` ago,
    and not one message accepted since."""
    status = col(DeliveryAttempt.status)
    at = col(DeliveryAttempt.at)
    last_sent = session.execute(
        mail.attempts(select(func.max(at))).where(status == OutboxStatus.sent)
    ).scalar()
    failures = mail.attempts(select(func.min(at), func.max(at))).where(
        status == OutboxStatus.deferred
    )
    if last_sent is not None:
        failures = failures.where(at > last_sent)
    first, latest = session.execute(failures).one()
    if first is None or latest is None or first > now - after or latest < now - after:
        return None
    reply = session.execute(
        mail.attempts(select(col(DeliveryAttempt.smtp_message)))
        .where(status == OutboxStatus.deferred)
        .order_by(at.desc())
        .limit(1)
    ).scalar()
    return f"every attempt since {_when(first)} was deferred; the last said: {reply or 'nothing'}"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def check(settings: Settings, engine: Engine, now: datetime) -> list[Notice]:
    """Judge every condition; raise or clear incidents; POST what changed. Returns what
    was announced (nothing when DRIP_ALERT_WEBHOOK is unset)."""
    if settings.alert_webhook is None:
        return []
    with read_scope(engine) as session:
        found = conditions(settings, session, now)
    announced: list[Notice] = []
    for name, detail in found.items():
        notice = _flip(engine, name, detail, now)
        if notice is None:
            continue
        if _post(settings.alert_webhook, notice):
            announced.append(notice)
        else:
            _undo(engine, notice)
    return announced


def _flip(engine: Engine, name: str, detail: str | None, now: datetime) -> Notice | None:
    """Move the incident `name` to the state `detail` says, unless a process did already."""
    firing = detail is not None
    with session_scope(engine) as session:
        session.execute(insert_ignoring(session, Alert).values(name=name))
        raised_at = col(Alert.raised_at)
        stmt = update(Alert).where(col(Alert.name) == name)
        if firing:
            stmt = stmt.where(raised_at.is_(None)).values(raised_at=now, detail=detail)
        else:
            stmt = stmt.where(raised_at.is_not(None)).values(raised_at=None)
        if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
            return None
    return Notice(name, firing, detail or "it is fine again", now)


def _undo(engine: Engine, notice: Notice) -> None:
    """The POST failed: put the incident back, so the next check announces it again."""
    with session_scope(engine) as session:
        session.execute(
            update(Alert)
            .where(col(Alert.name) == notice.name)
            .values(raised_at=None if notice.firing else notice.at)
        )


def _post(url: str, notice: Notice) -> bool:
    parts = urlsplit(url)
    topic = parts.fragment or None  # ntfy: https://ntfy.sh/#mytopic posts to the root
    target = urlunsplit(parts._replace(fragment=""))
    body = json.dumps(notice.payload(topic)).encode()
    request = urllib.request.Request(
        target, data=body, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=POST_TIMEOUT) as response:
            status: int = response.status
            ok = 200 <= status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("alert %s could not be posted (%s); will try again", notice.name, exc)
        return False
    if not ok:
        log.warning("alert %s: the webhook answered %s; will try again", notice.name, status)
    else:
        log.info("alert %s %s posted", notice.name, "raised" if notice.firing else "cleared")
    return ok


async def watch(settings: Settings, engine: Engine, clock: Clock = utcnow) -> None:
    """The web app's check, so an alert goes out when no worker is left to send it."""
    every = min(60.0, settings.alert_after_minutes * 60 / 3)
    while True:
        try:
            await asyncio.to_thread(check, settings, engine, clock())
        except SQLAlchemyError as exc:
            log.warning("alert check failed, the database did not answer: %s", exc)
        await asyncio.sleep(every)
