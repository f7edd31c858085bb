"""The security policy of every answer the web app gives, public pages and /admin alike.

One middleware, `SecurityHeaders`, outermost, puts the policy's headers on every
response: pages, redirects, 413s, 404s and the 500 of an unexpected error, which it
answers itself (a plain page, never a traceback) before letting the error go on to
the server's log. The policy:
- every answer: a Content-Security-Policy with no inline script, no framing, no
  sniffing, no referrer; HSTS when DRIP_BASE_URL is https;
- /admin: a stricter CSP, never cached, isolated from other origins;
- pages whose URL carries a token (confirm, unsubscribe, the pack link): never cached;
- a redirect never sends the browser to the host the request named: an absolute
  Location on that host becomes a path, so a forged Host header goes nowhere.
A route may set its own Content-Security-Policy (the caught-mail page needs inline
styles); what a response already carries is left as it is.

Admin forms are checked by `csrf_required`, one FastAPI dependency on the admin router.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from drip.errors import DripError

PUBLIC_CSP = (
    "default-src 'self'; img-src 'self' data:; frame-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
ADMIN_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
#: A caught email's page: its HTML, shown in a sandboxed srcdoc frame that inherits this
#: policy, needs inline styles. The frame runs no script (no allow-scripts); the only
#: script allowed is drip's own file (static/admin-mail.js), which sizes the frame to
#: the email.
MAIL_CSP = (
    "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "script-src 'self'; form-action 'self'; frame-ancestors 'none'"
)
EVERY_ANSWER = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
ADMIN_ONLY = {
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
#: Paths whose URL carries a subscriber's token: the page must not stay in any cache.
TOKEN_PATHS = ("/confirm/", "/unsubscribe/", "/pack/")
HSTS = "max-age=31536000"
ERROR_TEXT = b"Something went wrong on our side. Please try again in a few minutes."


def is_admin(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/")


def policy(path: str, *, https: bool) -> dict[str, str]:
    """The headers every answer to `path` carries (lower-case names)."""
    headers = dict(EVERY_ANSWER)
    if is_admin(path):
        headers["content-security-policy"] = ADMIN_CSP
        headers.update(ADMIN_ONLY)
    else:
        headers["content-security-policy"] = PUBLIC_CSP
        if path.startswith(TOKEN_PATHS):
            headers["cache-control"] = "no-store"
    if https:
        headers["strict-transport-security"] = HSTS
    return headers


def _local(location: bytes, host: bytes) -> bytes:
    """`location` as a path when it names the request's own host (or any host at all
    while none was given): never an absolute URL built from the Host header."""
    parts = urlsplit(location.decode("latin-1"))
    if not parts.netloc or (host and parts.netloc.encode("latin-1").lower() != host.lower()):
        return location
    path = parts.path if parts.path.startswith("/") else "/" + parts.path
    path = "/" + path.lstrip("/")  # never "//host": a path, not a scheme-relative URL
    return (path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")


class SecurityHeaders:
    """The policy's headers on every answer, and a plain 500 of its own on an error."""

    def __init__(self, app: ASGIApp, https: bool = False) -> None:
        self.app = app
        self.https = https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = policy(scope.get("path", ""), https=self.https)
        host = dict(scope.get("headers", [])).get(b"host", b"")
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers = [
                    (k, _local(v, host)) if k.lower() == b"location" else (k, v) for k, v in headers
                ]
                headers += [
                    (k.encode(), v.encode()) for k, v in wanted.items() if k.encode() not in present
                ]
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_secured)
        except Exception:
            if not started:
                await send_secured(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                    }
                )
                await send_secured({"type": "http.response.body", "body": ERROR_TEXT})
            raise  # on to the server's error log; the client already has its answer


class CsrfRefused(DripError):
    """An admin form came without the right CSRF token."""


def csrf_required(
    token_ok: Callable[[str], bool],
) -> Callable[[Request], Coroutine[Any, Any, None]]:
    """A dependency for a router: every POST must carry a form field `csrf` that
    `token_ok` accepts, else `CsrfRefused` is raised before the route runs."""

    async def check(request: Request) -> None:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return
        try:
            form = await request.form()
        except Exception:  # noqa: BLE001 - an unreadable body carries no token
            raise CsrfRefused from None
        token = form.get("csrf")
        if not isinstance(token, str) or not token_ok(token):
            raise CsrfRefused

    return check
