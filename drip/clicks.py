"""Clicks on lesson links, counted honestly (DRIP_CLICK_TRACKING, off by default).

With tracking on, each http(s) link of a lesson (HTML and text parts, drip's own
pages excepted) becomes `{DRIP_BASE_URL}/c/{token}`. The token carries the outbox
row, the link's number, the message's number of links and the original URL, signed
with an HMAC under DRIP_SECRET_KEY: it needs no stored link, a changed byte makes it
unknown (404), and it can only ever lead to the URL drip put in the lesson, never to
one a visitor chose (no open redirect).

Every request to a link is kept (raw), with `human` decided when it is recorded:
not human if it is a HEAD, came within DRIP_CLICK_DELAY_SECONDS of the lesson being
sent, looks like a scanner (drip.scanners: its user agent or network), or completes a
burst in which every link of the message was fetched within ALL_AT_ONCE, which then
marks the whole burst. No address or user agent is stored, and there is no open pixel.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlmodel import Session, col

from drip import scanners
from drip.db import for_update
from drip.models import Click, MessageKind, OutboxMessage
from drip.templating import Rendered

#: All of a message's links fetched within this span: a scanner, not a reader.
ALL_AT_ONCE = timedelta(seconds=3)
ROUTE = "/c/"

_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_TEXT_URL = re.compile(r"""https?://[^\s<>"'\]\[]+""")
_TRAILING = ".,;:!?)"


@dataclass(frozen=True)
class Link:
    outbox_id: int
    index: int
    #: How many distinct links the message has: "all of them at once" needs it.
    count: int
    url: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _mac(secret: str, payload: str) -> str:
    digest = hmac.new(secret.encode(), f"click:{payload}".encode(), hashlib.sha256).digest()
    return _b64(digest[:16])


def make_token(secret: str, link: Link) -> str:
    payload = f"{link.outbox_id}.{link.index}.{link.count}.{_b64(link.url.encode())}"
    return f"{payload}.{_mac(secret, payload)}"


def read_token(keys: Sequence[str], token: str) -> Link | None:
    """The link a token signed under any of `keys` names; None if it is not one.
    Punctuation a mail program took into the link from the text around it is dropped."""
    payload, dot, mac = token.rstrip(_TRAILING).rpartition(".")
    parts = payload.split(".")
    if not dot or len(parts) != 4 or not all(p.isascii() and p.isdigit() for p in parts[:3]):
        return None
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(_mac(key, payload).encode(), mac.encode("utf-8", "replace"))
    if not valid:
        return None
    try:
        url = base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    if not url.startswith(("http://", "https://")):
        return None
    return Link(int(parts[0]), int(parts[1]), int(parts[2]), url)


def _tracked(url: str, base_url: str) -> bool:
    """Links to other sites; drip's own pages (unsubscribe above all) stay as they are."""
    return url.startswith(("http://", "https://")) and not url.startswith(f"{base_url}/")


def _text_urls(text: str) -> list[tuple[int, int, str]]:
    found = []
    for match in _TEXT_URL.finditer(text):
        url = match.group(0).rstrip(_TRAILING)
        found.append((match.start(), match.start() + len(url), url))
    return found


def track_links(rendered: Rendered, base_url: str, secret: str, outbox_id: int) -> Rendered:
    """The lesson with every outside link going through a signed redirect."""
    in_text = _text_urls(rendered.text)
    urls: list[str] = []
    for match in _HREF.finditer(rendered.html):
        url = html.unescape(match.group(3).strip())
        if _tracked(url, base_url) and url not in urls:
            urls.append(url)
    for _, _, url in in_text:
        if _tracked(url, base_url) and url not in urls:
            urls.append(url)
    if not urls:
        return rendered
    redirect = {
        url: f"{base_url}{ROUTE}{make_token(secret, Link(outbox_id, n, len(urls), url))}"
        for n, url in enumerate(urls)
    }

    def in_html(match: re.Match[str]) -> str:
        url = html.unescape(match.group(3).strip())
        if url not in redirect:
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{html.escape(redirect[url])}{match.group(2)}"

    text, end = [], 0
    for start, stop, url in in_text:
        if url in redirect:
            text += [rendered.text[end:start], redirect[url]]
            end = stop
    text.append(rendered.text[end:])
    return replace(rendered, html=_HREF.sub(in_html, rendered.html), text="".join(text))


def judge(
    method: str,
    user_agent: str | None,
    address: str | None,
    sent_at: datetime | None,
    now: datetime,
    delay: timedelta,
) -> str:
    """Why this request is not a reader's click ("" when nothing says so)."""
    if method.upper() != "GET":
        return "head"
    if sent_at is None or now - sent_at < delay:
        return "early"
    if scanners.scanner_user_agent(user_agent) or scanners.scanner_address(address):
        return "scanner"
    return ""


def record(
    session: Session,
    link: Link,
    *,
    method: str,
    user_agent: str | None,
    address: str | None,
    now: datetime,
    delay: timedelta,
) -> Click | None:
    """Keep one request to a tracked link, judged; None if its message is not a lesson.

    The message's row is locked first, so clicks on one message are judged one after
    another and a burst of them is seen whole whatever their order.
    """
    row = session.execute(
        for_update(
            session,
            select(
                col(OutboxMessage.id), col(OutboxMessage.kind), col(OutboxMessage.sent_at)
            ).where(col(OutboxMessage.id) == link.outbox_id),
        )
    ).first()
    if row is None or row.kind != MessageKind.lesson:
        return None
    reason = judge(method, user_agent, address, row.sent_at, now, delay)
    click = Click(
        outbox_id=link.outbox_id,
        link=link.index,
        at=now,
        method=method.upper()[:8],
        human=not reason,
        reason=reason,
    )
    session.add(click)
    session.flush()
    if link.count >= 2:
        since = now - ALL_AT_ONCE
        recent = (col(Click.outbox_id) == link.outbox_id, col(Click.at) >= since)
        fetched = session.execute(
            select(func.count(func.distinct(col(Click.link)))).where(*recent)
        ).scalar_one()
        if fetched >= link.count:
            session.execute(
                update(Click)
                .where(*recent, col(Click.human))
                .values(human=False, reason="burst")
                .execution_options(synchronize_session=False)
            )
            if click.human:  # a click already judged keeps its first reason
                click.human, click.reason = False, "burst"
    return click


def how_counted(delay_seconds: float) -> str:
    """What the reports say about the human count: the filter, in plain words."""
    return (
        "a click counts as a reader's unless it is a HEAD request, came within "
        f"{delay_seconds:g} seconds of the lesson being sent, looks like a mail scanner "
        f"(user agent or network), or is one of all a message's links fetched within "
        f"{ALL_AT_ONCE.seconds} seconds"
    )


@dataclass(frozen=True)
class ClickCounts:
    #: Every request to the lesson's links, scanners and all.
    raw: int
    #: Those judged a reader's.
    human: int
    #: Messages (readers) with at least one human click.
    readers: int


def click_counts(session: Session) -> dict[str, ClickCounts]:
    """Raw and human clicks per lesson template, for the funnel and `drip stats`."""
    template = col(OutboxMessage.template)
    human = col(Click.human)
    rows = session.execute(
        select(
            template,
            func.count(),
            func.count().filter(human),
            func.count(func.distinct(col(Click.outbox_id))).filter(human),
        )
        .join(OutboxMessage, col(OutboxMessage.id) == col(Click.outbox_id))
        .group_by(template)
    ).all()
    return {str(t): ClickCounts(int(r), int(h), int(n)) for t, r, h, n in rows}


def clicks_of(session: Session, subscriber_id: int) -> list[Click]:
    """Every recorded click on mail to one subscriber (their data export), oldest first."""
    return list(
        session.execute(
            select(Click)
            .join(OutboxMessage, col(OutboxMessage.id) == col(Click.outbox_id))
            .where(col(OutboxMessage.subscriber_id) == subscriber_id)
            .order_by(col(Click.at), col(Click.id))
        ).scalars()
    )
