"""Webhook rows delivered as HTTP POSTs with httpx, their outcome judged like an SMTP reply.

2xx: sent. 408, 429 and 5xx, a timeout or a refused connection: deferred, retried with
the email's backoff until DRIP_RETRY_LIFETIME_DAYS. Any other 4xx: failed for good
(the receiver refuses this request; sending it again would change nothing). Redirects
are not followed: a webhook URL that moved is a setting to fix, not a place to guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from drip.sending.sender import Outcome, Verdict

#: Seconds for the whole exchange: a receiver slower than this is retried later.
TIMEOUT_SECONDS = 10.0
#: 4xx answers that mean "later", not "never".
RETRY_LATER = frozenset({408, 429})


@dataclass(frozen=True)
class Post:
    """A webhook row made ready to send: where, what, and the signed headers."""

    url: str
    body: bytes
    headers: dict[str, str]


def where(url: str) -> str:
    """The receiver's host and port, for the log: never the credentials a URL may carry."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def judge(code: int, url: str) -> Outcome:
    text = f"HTTP {code} from {where(url)}"
    if 200 <= code < 300:
        return Outcome(Verdict.sent, code, text)
    if 400 <= code < 500 and code not in RETRY_LATER:
        return Outcome(Verdict.failed, code, text)
    return Outcome(Verdict.deferred, code, text)


class Poster:
    """One delivery run's HTTP client, shared by its slots (httpx pools the connections)."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    async def send(self, post: Post) -> Outcome:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False)
        host = where(post.url)
        try:
            response = await self._client.post(post.url, content=post.body, headers=post.headers)
        except httpx.TimeoutException:
            return Outcome(Verdict.deferred, None, f"timed out waiting for {host}")
        except httpx.HTTPError as exc:
            return Outcome(Verdict.deferred, None, f"cannot reach {host} ({type(exc).__name__})")
        return judge(response.status_code, post.url)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
