"""The web app: signup, confirmation, unsubscribe, health, and /admin.

Routes are thin: the rules live in drip.signup and drip.subscribers. Every page is
rendered with autoescaping, and every response carries the headers of
drip.web.security: no framing, no sniffing, no script or style not served by drip.
"""

from __future__ import annotations

import asyncio
import gc
import html
import math
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jinja2
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from drip import alerts, clicks, figure, pack_link, signup
from drip.clock import Clock, utcnow
from drip.course import CourseError, load_course
from drip.db import get_engine, read_scope, session_scope
from drip.identity import identity
from drip.limits import Admission, SignupLimits
from drip.pace import Pace
from drip.sending.message import PACK_FILENAME
from drip.settings import Settings, SettingsError
from drip.web import embed
from drip.web.admin import build_admin_router
from drip.web.metrics import build_metrics_router
from drip.web.proxies import ClientAddress, client_ip, client_key
from drip.web.security import SecurityHeaders
from drip.web.signup_writer import Writer
from drip.web.webhooks import MAX_WEBHOOK_BODY, build_webhook_router

HERE = Path(__file__).parent
MAX_BODY = 8 * 1024


class Guard:
    """Bounds request bodies (413; webhooks get more room); drip.web.security adds the headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        as_json = headers.get(b"content-type", b"").startswith(b"application/json")
        declared = headers.get(b"content-length")
        limit = MAX_WEBHOOK_BODY if scope["path"].startswith("/webhooks/") else MAX_BODY
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(send, as_json)
            return
        body, more = b"", True
        while more:  # read the (small) body up front, so a liar about its length is caught too
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await _too_large(send, as_json)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Send, as_json: bool) -> None:
    text = "The request is too large."
    response: Response = (
        JSONResponse({"error": text}, status_code=413)
        if as_json
        else PlainTextResponse(text + " Please go back and shorten what you typed.", 413)
    )
    await response({"type": "http"}, _nothing, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


def wait_in_words(seconds: float) -> str:
    """'a minute', '12 minutes', 'an hour': how long to wait, rounded up to the minute."""
    minutes = max(1, math.ceil(seconds / 60))
    if minutes == 1:
        return "a minute"
    if minutes >= 60:
        return "an hour"
    return f"{minutes} minutes"


def _course_facts(settings: Settings) -> dict[str, Any]:
    """What the pages say about the course and its author, from course.toml and the
    settings, so the copy stays true (also under drip dev --minutes-per-day)."""
    try:
        course = load_course(settings.emails_dir)
    except CourseError:  # `drip check` names the problem; the pages still work
        facts: dict[str, Any] = {
            "course_title": "Trigger Point Relief",
            "lesson_total": 9,
            "course_weeks": 3,
            "course_span": "about 3 weeks",
            "first_lesson": "soon",
        }
    else:
        days = [int(str(item["day"])) for item in course.schedule()] or [1]
        pace = Pace(settings.minutes_per_day)
        facts = {
            "course_title": course.title,
            "lesson_total": course.total,
            "course_weeks": max(1, round(days[-1] / 7)),
            "course_span": pace.span(days[-1]),
            "first_lesson": pace.after(days[0]),
        }
    facts.update(identity(settings, facts["course_title"]).context())
    # The privacy note says what is counted and shared, as the settings have it.
    facts["click_tracking"] = settings.click_tracking
    facts["webhooks"] = bool(settings.webhook_url_list)
    facts["click_prefix"] = f"{settings.base_url}/c/"
    return facts


class _PublicPages(jinja2.FileSystemLoader):
    """The author's page templates (DRIP_EMAILS_DIR/pages/NAME.html), never the admin's."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        if template.startswith("admin/"):
            raise jinja2.TemplateNotFound(template)
        return super().get_source(environment, template)


def page_templates(settings: Settings) -> Jinja2Templates:
    """The public pages' templates: a file in emails/pages/ overrides the packaged one."""
    loader = jinja2.ChoiceLoader(
        [
            _PublicPages(str(settings.emails_dir / "pages")),
            jinja2.FileSystemLoader(str(HERE / "templates")),
        ]
    )
    env = jinja2.Environment(loader=loader, autoescape=True)
    return Jinja2Templates(env=env)


def _lifespan(
    settings: Settings, engine: Engine
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        """Move what start-up built out of the cycle collector's way, and watch for alerts.

        Modules, routes, templates and the ORM's mappers live as long as the process, yet
        every full collection walks them all, pausing the event loop several times a
        minute under signups (BENCHMARKS.md). Frozen, a full collection walks only what
        came after. The alert watch notices when no worker is left (drip.alerts).
        """
        gc.freeze()
        if settings.alert_webhook is None:
            yield
            return
        watcher = asyncio.create_task(alerts.watch(settings, engine))
        try:
            yield
        finally:
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher

    return lifespan


def create_app(settings: Settings, *, clock: Clock = utcnow) -> FastAPI:
    """The whole web app for these settings; no module-level state, so tests build many.
    `clock`: the time clicks are judged by (a test's travelling clock).

    Rate limits live in the database (drip.limits), shared by every process. Behind a
    reverse proxy, list it in DRIP_TRUSTED_PROXIES so the client's address,
    not the proxy's, is what gets limited and recorded (drip.web.proxies).
    """
    engine = get_engine(settings.database_url)
    templates = page_templates(settings)
    facts = _course_facts(settings)
    limits = SignupLimits.of(settings)
    writer = Writer(engine, settings, limits=limits)
    try:  # the keys signed pack links may carry (serve refuses to start without a good one)
        keys = settings.secret_keys()
    except SettingsError:
        keys = []

    app = FastAPI(
        docs_url=None, redoc_url=None, openapi_url=None, lifespan=_lifespan(settings, engine)
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origin_list,
        allow_methods=["POST"],
        allow_headers=["content-type"],
    )
    app.add_middleware(Guard)
    app.add_middleware(ClientAddress, trusted=settings.trusted_proxy_networks)
    # Outermost, so every answer has the headers, a 500 from any layer below included.
    app.add_middleware(SecurityHeaders, https=settings.base_url.startswith("https://"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(build_admin_router(settings, embed=embed.snippet(settings.base_url, facts)))
    app.include_router(build_webhook_router(settings, engine))
    app.include_router(build_metrics_router(settings, engine))

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.update(facts)
        return templates.TemplateResponse(request, name, context, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Unknown URLs get the styled page; a JSON client gets JSON, as before."""
        accept = request.headers.get("accept", "")
        if exc.status_code != 404 or ("json" in accept and "html" not in accept):
            return await http_exception_handler(request, exc)
        return _not_found(request, link_path=False)

    @app.get("/", response_class=HTMLResponse)
    def form(request: Request) -> HTMLResponse:
        values = {
            "email": "",
            "name": "",
            "consent": False,
            "newsletter": False,
            "timezone": "",
            "source": request.query_params.get("source", "")[: signup.SOURCE_MAX],
        }
        return page(request, "signup.html", values=values, errors={})

    @app.post("/subscribe", response_model=None)
    async def subscribe(request: Request) -> Response:
        wants_json = request.headers.get("content-type", "").startswith("application/json")
        fields = await _fields(request, wants_json)
        if fields is not None:  # no `source` field: the posting page (its Referer) names it
            referer = request.headers.get("referer", "")
            fields["source"] = signup.clean_source(fields["source"], referer)
        checked = None if fields is None else signup.check(settings=settings, **fields)
        # Every post counts against the client (bots, typos and honeypot hits too); a
        # valid one also against the mailbox it names. In the database: every process.
        item = checked.signup if checked is not None else None
        verdict = await writer.store(item, client_key(request))
        if verdict != Admission.admitted:  # name the limit that refused it, and its real wait
            address = item.email if item is not None else None
            seconds = await run_in_threadpool(refused_wait, verdict, client_key(request), address)
            return _slow_down(request, wants_json, verdict, seconds)
        if fields is None or checked is None:
            return JSONResponse({"errors": {"form": "The request body is not valid."}}, 400)
        if checked.errors:
            if wants_json:
                return JSONResponse({"errors": checked.errors}, status_code=422)
            return page(request, "signup.html", 422, values=fields, errors=checked.errors)
        if wants_json:  # the embed's script shows `message` in place of the form
            return JSONResponse({"status": "ok", "message": thanks_text()}, status_code=202)
        return RedirectResponse("/thanks", status_code=303)

    def refused_wait(refused: Admission, client: str, address: str | None) -> float:
        with read_scope(engine) as session:
            return limits.refused_wait(session, refused, client, address, utcnow())

    def _slow_down(
        request: Request, wants_json: bool, limit: Admission, seconds: float
    ) -> Response:
        """429 naming the real wait of the limit that was spent (drip.limits), and Retry-After."""
        wait = wait_in_words(seconds)
        headers = {"retry-after": str(max(1, math.ceil(seconds)))}
        per_hour = settings.signups_per_address_per_hour
        if wants_json and limit == Admission.mailbox:  # the same for every address: it tells nobody
            text_ = (  # who is on the list, and says why no confirmation email follows
                f"This address has been signed up {per_hour} times in the last hour, so we "
                "haven't sent another confirmation email. Please look for the ones already "
                f"sent (also in spam or promotions), or try again in {wait}."
            )
            return JSONResponse({"errors": {"email": text_}}, status_code=429, headers=headers)
        if wants_json:
            text_ = f"Too many signups just now. Please try again in {wait}."
            return JSONResponse({"errors": {"form": text_}}, status_code=429, headers=headers)
        response = page(
            request, "slow-down.html", 429, limit=limit.value, wait=wait, per_hour=per_hour
        )
        response.headers.update(headers)
        return response

    def thanks_text() -> str:
        """What /thanks says, as plain text: the author's thanks.html (if overridden) is
        also what the embed's script shows in place of the form."""
        template = templates.env.get_template("thanks.html")
        body = template.blocks.get("body")
        if body is None:
            return "Thank you. Please check your inbox."
        marked_up = "".join(body(template.new_context(dict(facts))))
        return " ".join(html.unescape(re.sub(r"<[^>]*>", " ", marked_up)).split())

    @app.get("/thanks", response_class=HTMLResponse)
    def thanks(request: Request) -> HTMLResponse:
        return page(request, "thanks.html")

    @app.get("/privacy", response_class=HTMLResponse)
    def privacy(request: Request) -> HTMLResponse:
        return page(request, "privacy.html")

    @app.get("/confirm/{token}", response_class=HTMLResponse)
    def confirm_page(request: Request, token: str) -> HTMLResponse:
        # Changes nothing: mail scanners fetch every link of a message, and a GET that
        # confirmed recorded their address as the reader's consent. The button POSTs.
        with read_scope(engine) as session:
            state = signup.confirmation_state(session, settings, token[:100], utcnow())
        if state == signup.Confirmation.ready:
            return page(request, "confirm.html", token=token)
        return confirmed(request, state)

    @app.post("/confirm/{token}", response_class=HTMLResponse)
    def confirm(request: Request, token: str) -> HTMLResponse:
        # The token in the URL is the credential (no cookie to ride on); refusing posts
        # from other sites keeps a page elsewhere from confirming a link it learnt.
        if _cross_site(request, settings):
            return page(request, "confirm-elsewhere.html", 403)
        with session_scope(engine) as session:
            outcome = signup.confirm(session, settings, token[:100], utcnow(), client_ip(request))
        return confirmed(request, outcome)

    def confirmed(request: Request, outcome: signup.Confirmation) -> HTMLResponse:
        if outcome == signup.Confirmation.confirmed:
            return page(request, "confirmed.html")
        if outcome == signup.Confirmation.updated:  # a repeat signup's choices, now applied
            return page(request, "choices-saved.html")
        if outcome == signup.Confirmation.already:
            return page(request, "already-confirmed.html")
        if outcome == signup.Confirmation.expired:
            return page(request, "expired.html", 410)
        return _not_found(request)

    def _not_found(request: Request, link_path: bool = True) -> HTMLResponse:
        return page(request, "not-found.html", 404, link_path=link_path)

    @app.get("/unsubscribe/{token}", response_class=HTMLResponse)
    def unsubscribe_page(request: Request, token: str) -> HTMLResponse:
        with read_scope(engine) as session:
            link = signup.unsubscribe_link(session, settings, token[:100])
        if link == signup.UnsubscribeLink.unknown:
            return _not_found(request)
        if link == signup.UnsubscribeLink.done:  # a second visit: nothing left to ask
            return page(request, "unsubscribed.html")
        return page(request, "unsubscribe.html", token=token)

    @app.post("/unsubscribe/{token}", response_class=HTMLResponse)
    def unsubscribe(request: Request, token: str) -> HTMLResponse:
        # Also the RFC 8058 one-click POST (body List-Unsubscribe=One-Click, no cookies):
        # the unguessable token in the URL is the credential, so no CSRF token is needed.
        with session_scope(engine) as session:
            done = signup.unsubscribe(session, settings, token[:100], utcnow())
        if not done:
            return _not_found(request)
        return page(request, "unsubscribed.html")

    @app.get("/pack/{token}", response_model=None)
    def pack(request: Request, token: str) -> Response:
        """The information pack, to the holder of a signed link (DRIP_PACK_DELIVERY=link)."""
        if not keys:  # no key, no valid signature: never HMAC under an empty key
            return _not_found(request)
        with session_scope(engine) as session:
            found = pack_link.subscriber_for(session, keys, token[:100])
            if found is None or found.id is None:
                return _not_found(request)
            if not settings.info_pack.is_file():
                return page(request, "pack-unavailable.html", 503)
            pack_link.record_download(session, found.id, utcnow())
        return FileResponse(
            settings.info_pack,
            media_type="application/pdf",
            filename=PACK_FILENAME,
            headers={"cache-control": "private, no-store"},
        )

    @app.api_route("/c/{token}", methods=["GET", "HEAD"], response_model=None)
    def click(request: Request, token: str) -> Response:
        """A lesson's tracked link (DRIP_CLICK_TRACKING): counted, judged, then on its way.
        Only a URL drip signed leads anywhere; anything else is not found."""
        link = clicks.read_token(keys, token[:4000]) if keys else None
        if link is None:
            return _not_found(request)
        if settings.click_tracking:
            with session_scope(engine) as session:
                clicks.record(
                    session,
                    link,
                    method=request.method,
                    user_agent=request.headers.get("user-agent"),
                    address=client_ip(request),
                    now=clock(),
                    delay=timedelta(seconds=settings.click_delay_seconds),
                )
        return RedirectResponse(link.url, 302, headers={"cache-control": "no-store"})

    @app.get("/pictures/{name}.png", response_model=None)
    def picture(request: Request, name: str) -> Response:
        """The course's pictures (lesson 4 shows the gluteus minimus), drawn by drip.figure."""
        if name not in figure.FIGURES:
            return _not_found(request)
        return Response(
            figure.png(name),
            media_type="image/png",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            # Read-only: on SQLite it must not queue behind a worker's write lock.
            with read_scope(engine) as session:
                session.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - any failure means the database does not answer
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    return app


def _cross_site(request: Request, settings: Settings) -> bool:
    """Whether a browser says this request came from another site's page.

    `Sec-Fetch-Site` where the browser sends it (every current one does); else an
    `Origin` that is neither DRIP_BASE_URL's nor the host asked for. `Origin: null` is
    what Chromium sends for our own form under `Referrer-Policy: no-referrer`, so it
    proves nothing either way. A client that sends neither (curl, a script, an old
    browser) is not a cross-site page, and is let through.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return False
    base = urlsplit(settings.base_url)
    if origin == f"{base.scheme}://{base.netloc}":
        return False
    return urlsplit(origin).netloc != request.headers.get("host", "")


async def _fields(request: Request, wants_json: bool) -> dict[str, Any] | None:
    """The form's fields as strings, from a form post or a JSON body; None if unreadable."""
    if wants_json:
        try:
            data = await request.json()
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the stack
            return None
        if not isinstance(data, dict):
            return None
    elif request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        # What the form sends: parsed as Starlette's form parser does (split on "&",
        # "+" and %XX decoded, blanks kept, the last of a repeated field wins), in a
        # third of the time; the body is at most MAX_BODY, already read by Guard.
        body = (await request.body()).decode("latin-1")
        data = dict(parse_qsl(body, keep_blank_values=True))
    else:
        data = dict(await request.form())

    def text_of(key: str) -> str:
        value = data.get(key, "")
        return value if isinstance(value, str) else ""

    def ticked(key: str) -> bool:
        value = data.get(key)
        return value is True or (
            isinstance(value, str) and value.lower() in ("yes", "on", "true", "1")
        )

    return {
        "email": text_of("email"),
        "name": text_of("name"),
        "consent": ticked("consent"),
        "newsletter": ticked("newsletter"),
        "website": text_of("website"),
        "timezone": text_of("timezone"),
        "source": text_of("source"),
    }
