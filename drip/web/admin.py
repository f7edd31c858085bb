"""/admin: the operator's pages (dashboard, funnel, send log, subscribers, caught mail).

Every route goes through `AdminRoute`, which checks HTTP Basic credentials before
FastAPI reads a single parameter, and every POST through the router's CSRF dependency
(`drip.web.security.csrf_required`: a token that is an HMAC of the admin user under a
key made at start), so no page can forget either; drip.web.security puts the headers
on every answer. The routes stay thin: the queries live in
drip.dashboard, drip.funnel, drip.sendlog and drip.subscriber_view, the changes in
drip.operator_actions and drip.subscribers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.templating import Jinja2Templates

from drip import catcher, health, newsletter, replies, steering, testmail
from drip.clicks import how_counted
from drip.clock import utcnow
from drip.course import Course, CourseError, load_course
from drip.dashboard import Dashboard, dashboard
from drip.db import get_engine, read_scope, session_scope
from drip.errors import DripError
from drip.funnel import FINISHED, percent, span
from drip.funnel import funnel as course_funnel
from drip.limits import LoginPace, Turn, login_succeeded, login_turn
from drip.models import (
    FINAL_STATUSES,
    MAX_ID,
    RETRYABLE_STATUSES,
    SUBSCRIBED_STATUSES,
    CourseProgress,
    OutboxMessage,
    QuestionStatus,
    Subscriber,
    SubscriberStatus,
)
from drip.operator_actions import (
    anonymous_address,
    forget_subscriber,
    retry_message,
    subscriber_data,
)
from drip.render import template_names
from drip.sendlog import KINDS, LOG_STATUSES, LogFilter, entries, parse_since
from drip.settings import Settings
from drip.subscriber_view import SubscriberFilter, list_subscribers, timeline, with_actions
from drip.subscribers import leave
from drip.web.chart import funnel_chart, sends_chart
from drip.web.proxies import client_key
from drip.web.security import MAIL_CSP, CsrfRefused, csrf_required

TEMPLATES = Path(__file__).with_name("templates")
CLOSED = "admin is closed: set DRIP_ADMIN_USER and DRIP_ADMIN_PASSWORD"
REALM = 'Basic realm="drip admin"'
PAGE = 50
OUTBOX_SHOWN = 200
#: Row ids in paths and queries: anything beyond what the database can hold is refused
#: (422) before a query is built, rather than failing inside the driver.
RowId = Annotated[int, PathParam(ge=-MAX_ID, le=MAX_ID)]

#: Fixed texts for ?done=...: the page never echoes text from the query string.
DONE = {
    "unsubscribed": "Unsubscribed: nothing more will be sent to them.",
    "deleted": "Personal data deleted; the anonymous counts remain.",
    "retried": "The message is queued again; the next pass sends it.",
    "not-retried": "Nothing to retry: the message is no longer failed or bounced.",
    "resumed": "Newsletter sending resumed; the next pass carries on where it stopped.",
    "not-paused": "Newsletter sending was not paused.",
    "answered": "The answer is queued; the next pass sends it.",
    "already-answered": "That answer was already queued: it is sent once.",
    "marked": "Marked.",
    "test-queued": "The test is queued; the next pass sends it (in the send log as kind test).",
    "course-pause": "Course paused: nothing of it goes until you resume it.",
    "course-resume": "Course resumed: the next lesson goes at its time, then the normal delays.",
    "course-skip": "Skipped: the next lesson takes the skipped one's place.",
    "course-restart": "Course restarted: the first lesson goes next.",
    "course-unchanged": "Nothing to change: the course was already so.",
}


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class AdminGuard:
    """HTTP Basic for one operator, compared in constant time, with attempts paced.

    Each attempt from a client is given a turn in the database (drip.limits.login_turn),
    so the pace holds across every `drip serve` process: its credentials are checked
    at that turn, and a wrong answer comes `n * step` seconds later (up to `max_delay`)
    for the n-th attempt without a success. Attempts sent in parallel therefore queue
    one behind another instead of outrunning the delay, and one whose turn is too far
    off gets 429 without a check. The waits are asyncio sleeps, so other requests are
    served meanwhile; the pace is per client (drip.web.proxies), so an attacker's
    guesses never delay the operator at another address.
    """

    def __init__(self, settings: Settings, step: float = 1.0, max_delay: float = 10.0) -> None:
        self.user = (settings.admin_user or "").encode()
        secret = settings.admin_password.get_secret_value() if settings.admin_password else ""
        self.password = secret.encode()
        self.pace = LoginPace(step=step, max_delay=max_delay)
        self.engine = get_engine(settings.database_url)
        self._csrf_key = secrets.token_bytes(32)

    @property
    def is_open(self) -> bool:
        return bool(self.user and self.password)

    def csrf_token(self) -> str:
        """Tied to the login and to this process: a restart or new user voids old forms."""
        return hmac.new(self._csrf_key, b"csrf:" + self.user, hashlib.sha256).hexdigest()

    def csrf_ok(self, token: str) -> bool:
        return secrets.compare_digest(token.encode(), self.csrf_token().encode())

    def credentials_ok(self, header: str | None) -> bool:
        user, password = b"", b""
        if header and header[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(header[6:].strip(), validate=True).partition(
                    b":"
                )
            except (binascii.Error, ValueError):
                pass
        # Both comparisons always run, on digests of equal length: the time taken tells
        # neither which part was wrong nor how long the real ones are.
        good_user = secrets.compare_digest(_digest(user), _digest(self.user))
        good_password = secrets.compare_digest(_digest(password), _digest(self.password))
        return good_user & good_password

    def _turn(self, client: str) -> Turn | None:
        with session_scope(self.engine) as session:
            return login_turn(session, client, utcnow, self.pace)

    def _succeeded(self, client: str) -> None:
        with session_scope(self.engine) as session:
            login_succeeded(session, client, utcnow())

    async def check(self, request: Request) -> Response | None:
        """None when the request may go on; otherwise the answer to give."""
        if not self.is_open:
            return PlainTextResponse(CLOSED, status_code=503)
        header = request.headers.get("authorization")
        if not header:  # a browser's first bare request: ask, without a wait
            return self._unauthorized()
        client = client_key(request)
        turn = await asyncio.to_thread(self._turn, client)
        if turn is None:
            return PlainTextResponse(
                "429: too many login attempts at once from here; wait and try again",
                status_code=429,
                headers={"Retry-After": str(int(self.pace.max_delay))},
            )
        await _sleep_until(turn.check_at)
        if self.credentials_ok(header):
            await asyncio.to_thread(self._succeeded, client)
            return None
        await _sleep_until(turn.answer_at)
        return self._unauthorized()

    def _unauthorized(self) -> Response:
        return PlainTextResponse(
            "401: the drip admin needs its user name and password",
            status_code=401,
            headers={"WWW-Authenticate": REALM},
        )


async def _sleep_until(moment: datetime) -> None:
    wait = (moment - utcnow()).total_seconds()
    if wait > 0:
        await asyncio.sleep(wait)


def _invalid(exc: RequestValidationError) -> Response:
    """A parameter FastAPI could not read: named with the rule it broke, never echoed."""
    lines = [
        f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg', 'invalid')}"
        for error in exc.errors()
    ]
    return PlainTextResponse("422: " + "; ".join(lines), status_code=422)


def _route_class(guard: AdminGuard, refused_csrf: Callable[[Request], Response]) -> type[APIRoute]:
    class AdminRoute(APIRoute):
        """Credentials first; then a refused CSRF token or an unreadable parameter is
        answered plainly. The headers are drip.web.security's, on every answer."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                refusal = await guard.check(request)
                if refusal is not None:
                    return refusal
                try:
                    return await handler(request)
                except CsrfRefused:
                    return refused_csrf(request)
                except RequestValidationError as exc:
                    return _invalid(exc)

            return guarded

    return AdminRoute


# -- presentation helpers ---------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "never"
    seconds = int(((now or utcnow()) - value).total_seconds())
    if seconds < 0:
        return "in the future"
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return f"{seconds} s ago"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    return env


def _page_link(path: str, params: dict[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


# -- the router -----------------------------------------------------------------------------


def build_admin_router(
    settings: Settings, *, failure_delay: float = 1.0, embed: str = ""
) -> APIRouter:
    """Every /admin page and action; closed (503) until the admin login is set.

    `failure_delay`: the wait after a first wrong password, growing with each next one.
    `embed`: the signup form for the author's own site (drip.web.embed), shown as is.
    """
    guard = AdminGuard(settings, step=failure_delay)
    engine = get_engine(settings.database_url)
    templates = Jinja2Templates(env=_environment())

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("csrf", guard.csrf_token())
        context.setdefault("done", DONE.get(request.query_params.get("done", "")))
        context.setdefault("now", utcnow())
        if "new_questions" not in context:
            with read_scope(engine) as session:
                context["new_questions"] = replies.count_new(session)
        return templates.TemplateResponse(request, f"admin/{name}", context, status_code)

    def problem(request: Request, status_code: int, title: str, text: str) -> HTMLResponse:
        return render(request, "message.html", status_code, title=title, text=text)

    def refused_csrf(request: Request) -> HTMLResponse:
        return problem(
            request,
            403,
            "Form expired",
            "This form is out of date (drip was restarted?). Go back, reload and try again.",
        )

    router = APIRouter(
        prefix="/admin",
        route_class=_route_class(guard, refused_csrf),
        # Every POST carries the form's CSRF token, checked before the route runs.
        dependencies=[Depends(csrf_required(guard.csrf_ok))],
        include_in_schema=False,
    )

    @router.get("", response_class=HTMLResponse)
    def home(request: Request) -> HTMLResponse:
        now = utcnow()
        with read_scope(engine) as session:
            board: Dashboard = dashboard(session, now)
            sender = health.health(settings, session, now)
        return render(
            request,
            "dashboard.html",
            board=board,
            health=sender,
            chart=sends_chart(board.sends_per_day),
            workers_alive=board.workers_alive(),
            subscribers_total=sum(board.subscribers.values()),
            test_emails=template_names(settings.emails_dir),
        )

    @router.post("/send-test", response_model=None)
    def send_test(
        request: Request,
        name: Annotated[str, Form()] = "",
        to: Annotated[str, Form()] = "",
        letter: Annotated[str, Form()] = "",
    ) -> Response:
        """A test send (drip.testmail): an email in emails/ or a pasted newsletter, queued
        for the next pass. Never a file path: the web reads no file it is named."""
        try:
            if letter.strip():
                pasted = newsletter.parse_text(letter, Path("the pasted newsletter"))
                mail = testmail.of_letter(settings, pasted)
            else:
                mail = testmail.of_template(settings, name)
            with session_scope(engine) as session:
                testmail.queue_test(session, settings, mail, to, utcnow())
        except DripError as exc:  # an unknown email, a broken template, a bad address
            return problem(request, 400, "Not sent", f"Not sent: {exc}")
        return RedirectResponse("/admin?done=test-queued", 303)

    @router.post("/newsletters/resume", response_model=None)
    def resume_newsletters() -> Response:
        done = "resumed" if health.resume(engine, utcnow()) else "not-paused"
        return RedirectResponse(f"/admin?done={done}", 303)

    @router.get("/funnel", response_class=HTMLResponse)
    def funnel_page(request: Request) -> HTMLResponse:
        try:
            course = load_course(settings.emails_dir)
        except CourseError as exc:
            return problem(request, 500, "The course file has problems", str(exc))
        with read_scope(engine) as session:
            found = course_funnel(session, course, pack_link=settings.pack_delivery == "link")
        ticks = {"confirm": "confirm", "welcome": "welcome", FINISHED: "finished"}
        lessons = {lesson.slug: f"lesson {n}" for n, lesson in enumerate(course.lessons, 1)}
        chart = funnel_chart(
            [(s.title, ticks.get(s.step) or lessons[s.step], s.reached) for s in found.steps]
        )
        return render(
            request,
            "funnel.html",
            funnel=found,
            chart=chart,
            percent=percent,
            span=span,
            clicks_rule=how_counted(settings.click_delay_seconds).capitalize(),
        )

    @router.get("/embed", response_class=HTMLResponse)
    def embed_page(request: Request) -> HTMLResponse:
        return render(
            request,
            "embed.html",
            snippet=embed,
            origins=settings.cors_origin_list,
            base_url=settings.base_url,
        )

    @router.get("/log", response_class=HTMLResponse)
    def log(
        request: Request,
        email: str = "",
        kind: str = "",
        status: str = "",
        since: str = "",
        before: str = "",
        limit: int = PAGE,
    ) -> HTMLResponse:
        form = {"email": email, "kind": kind, "status": status, "since": since}
        error, rows = None, []
        try:
            when = parse_since(since, utcnow()) if since.strip() else None
        except ValueError:
            error = f"since: not an ISO-8601 time or a span such as 2h: {since!r}"
        if error is None:
            try:
                wanted = LogFilter(
                    email=email, kind=kind, status=status, since=when, limit=limit, before_id=before
                )
                with read_scope(engine) as session:
                    rows = entries(session, wanted)
            except ValueError as exc:
                error = str(exc)
        older = None
        if rows and len(rows) == limit:  # a full page: there may be older entries
            older = _page_link("/admin/log", form | {"before": rows[-1].key, "limit": limit})
        return render(
            request,
            "log.html",
            422 if error else 200,
            rows=rows,
            form=form,
            error=error,
            older=older,
            kinds=KINDS,
            statuses=LOG_STATUSES,
            retryable={str(s) for s in RETRYABLE_STATUSES},
        )

    @router.get("/subscribers", response_class=HTMLResponse)
    def subscribers(
        request: Request,
        q: str = "",
        status: str = "",
        before: Annotated[int | None, Query(ge=-MAX_ID, le=MAX_ID + 1)] = None,
    ) -> HTMLResponse:
        error, rows = None, []
        try:
            wanted = SubscriberFilter(status=status, email_prefix=q, limit=PAGE, before_id=before)
            with read_scope(engine) as session:
                rows = list_subscribers(session, wanted)
        except ValueError as exc:
            error = str(exc)
        older = None
        if len(rows) == PAGE:
            older = _page_link(
                "/admin/subscribers", {"q": q, "status": status, "before": rows[-1].id}
            )
        return render(
            request,
            "subscribers.html",
            422 if error else 200,
            rows=rows,
            q=q,
            status=status,
            statuses=[s.value for s in SubscriberStatus],
            error=error,
            older=older,
        )

    def current_course() -> Course | None:
        try:
            return load_course(settings.emails_dir)
        except CourseError:
            return None

    @router.get("/subscribers/{subscriber_id}", response_class=HTMLResponse)
    def subscriber(request: Request, subscriber_id: RowId) -> HTMLResponse:
        course = current_course()
        with read_scope(engine) as session:
            found = session.get(Subscriber, subscriber_id)
            items = timeline(session, subscriber_id) if found else []
            merged = with_actions(session, subscriber_id, items) if found else []
            progress = session.get(CourseProgress, subscriber_id) if found else None
            asked = replies.asked_by(session, subscriber_id) if found else []
            ahead = steering.upcoming(session, subscriber_id, course) if course and found else []
        numbered = [(course.number_of(lesson.slug), lesson) for lesson in ahead] if course else []
        if found is None:
            return problem(request, 404, "No such subscriber", f"No subscriber #{subscriber_id}.")
        return render(
            request,
            "subscriber.html",
            sub=found,
            items=items,
            entries=merged,
            upcoming=numbered,
            can_steer=progress is not None
            and course is not None
            and found.status == SubscriberStatus.active,
            progress=progress,
            questions=asked,
            retryable={str(s) for s in RETRYABLE_STATUSES},
            final={str(s) for s in FINAL_STATUSES},
            can_leave=found.status in SUBSCRIBED_STATUSES,
            deleted=found.email == anonymous_address(subscriber_id),
        )

    @router.post("/subscribers/{subscriber_id}/unsubscribe", response_model=None)
    def unsubscribe(request: Request, subscriber_id: RowId) -> Response:
        with session_scope(engine) as session:
            found = session.get(Subscriber, subscriber_id)
            if found is None:
                return problem(request, 404, "No such subscriber", f"#{subscriber_id}")
            leave(
                session,
                settings,
                found,
                SubscriberStatus.unsubscribed,
                utcnow(),
                "unsubscribed by the admin",
            )
        return RedirectResponse(f"/admin/subscribers/{subscriber_id}?done=unsubscribed", 303)

    def steer(
        request: Request, subscriber_id: int, action: steering.Action, to: str | None = None
    ) -> Response:
        """One course action from the subscriber's page; the domain says what it did."""
        course = current_course()
        if course is None:
            return problem(
                request, 409, "Not done", "The course file has problems: run drip check."
            )
        try:
            with session_scope(engine) as session:
                found = session.get(Subscriber, subscriber_id)
                if found is None:
                    return problem(request, 404, "No such subscriber", f"#{subscriber_id}")
                done = steering.apply(
                    session, found, action, course, settings, utcnow(), "admin", to or None
                )
        except steering.SteeringError as exc:
            return problem(request, 409, "Not done", f"Not done: {exc}.")
        outcome = f"course-{action}" if done.changed else "course-unchanged"
        return RedirectResponse(f"/admin/subscribers/{subscriber_id}?done={outcome}", 303)

    @router.post("/subscribers/{subscriber_id}/pause", response_model=None)
    def pause_course(request: Request, subscriber_id: RowId) -> Response:
        return steer(request, subscriber_id, "pause")

    @router.post("/subscribers/{subscriber_id}/resume", response_model=None)
    def resume_course(request: Request, subscriber_id: RowId) -> Response:
        return steer(request, subscriber_id, "resume")

    @router.post("/subscribers/{subscriber_id}/skip", response_model=None)
    def skip_lesson(
        request: Request, subscriber_id: RowId, to: Annotated[str, Form(max_length=64)] = ""
    ) -> Response:
        return steer(request, subscriber_id, "skip", to)

    @router.post("/subscribers/{subscriber_id}/restart", response_model=None)
    def restart_course(request: Request, subscriber_id: RowId) -> Response:
        return steer(request, subscriber_id, "restart")

    @router.post("/subscribers/{subscriber_id}/export", response_model=None)
    def export(request: Request, subscriber_id: RowId) -> Response:
        with read_scope(engine) as session:
            data = subscriber_data(session, subscriber_id)
        if data is None:
            return problem(request, 404, "No such subscriber", f"#{subscriber_id}")
        return Response(
            json.dumps(data, indent=2, ensure_ascii=False),
            media_type="application/json",
            headers={
                "Content-Disposition": f'attachment; filename="subscriber-{subscriber_id}.json"'
            },
        )

    @router.post("/subscribers/{subscriber_id}/delete", response_model=None)
    def delete(
        request: Request,
        subscriber_id: RowId,
        sure: Annotated[str, Form()] = "",
    ) -> Response:
        if sure != "yes":
            return problem(
                request, 400, "Not deleted", "Tick the box to confirm the deletion, then retry."
            )
        with session_scope(engine) as session:
            if not forget_subscriber(session, settings, subscriber_id, utcnow()):
                return problem(request, 404, "No such subscriber", f"#{subscriber_id}")
        return RedirectResponse(f"/admin/subscribers/{subscriber_id}?done=deleted", 303)

    @router.post("/messages/{message_id}/retry", response_model=None)
    def retry(request: Request, message_id: RowId) -> Response:
        with session_scope(engine) as session:
            row = session.get(OutboxMessage, message_id)
            if row is None:
                return problem(request, 404, "No such message", f"#{message_id}")
            done = "retried" if retry_message(session, message_id, utcnow()) else "not-retried"
            if row.subscriber_id:
                target = _page_link(f"/admin/subscribers/{row.subscriber_id}", {"done": done})
            else:
                target = _page_link("/admin/log", {"email": row.email, "done": done})
        return RedirectResponse(target, 303)

    def lesson_titles() -> dict[str, str]:
        course = current_course()
        if course is None:
            return {}
        return {
            lesson.template: f"Lesson {n}: {lesson.title}"
            for n, lesson in enumerate(course.lessons, start=1)
        }

    @router.get("/questions", response_class=HTMLResponse)
    def questions(request: Request, status: str = "") -> HTMLResponse:
        statuses = [s.value for s in QuestionStatus]
        if status and status not in statuses:
            return problem(request, 422, "Unknown status", f"status: one of {', '.join(statuses)}")
        with read_scope(engine) as session:
            rows = replies.inbox(session, status)
        return render(
            request,
            "questions.html",
            rows=rows,
            status=status,
            statuses=statuses,
            lessons=lesson_titles(),
        )

    @router.get("/questions/{thread_id}", response_class=HTMLResponse)
    def question(request: Request, thread_id: RowId) -> HTMLResponse:
        with read_scope(engine) as session:
            found = replies.thread(session, thread_id)
        if found is None:
            return problem(request, 404, "No such question", f"No question #{thread_id}.")
        items = [
            {"who": "reader", "at": q.received_at, "text": q.body, "status": ""}
            for q in found.questions
        ] + [
            {
                "who": "author",
                "at": a.created_at,
                "text": a.context.get("answer_text", ""),
                "status": a.status,
            }
            for a in found.answers
        ]
        items.sort(key=lambda item: item["at"])
        return render(
            request,
            "question.html",
            thread=found,
            first=found.questions[0],
            items=items,
            lessons=lesson_titles(),
            nonce=secrets.token_urlsafe(24),
            can_answer=found.subscriber is not None
            and found.subscriber.status == SubscriberStatus.active,
        )

    @router.post("/questions/{thread_id}/mark", response_model=None)
    def mark_question(
        request: Request,
        thread_id: RowId,
        status: Annotated[str, Form()] = "",
    ) -> Response:
        if status not in {s.value for s in QuestionStatus}:
            return problem(request, 422, "Unknown status", "Mark a question new, read or answered.")
        with session_scope(engine) as session:
            if not replies.mark(session, thread_id, QuestionStatus(status)):
                return problem(request, 404, "No such question", f"#{thread_id}")
        return RedirectResponse(f"/admin/questions/{thread_id}?done=marked", 303)

    @router.post("/questions/{thread_id}/answer", response_model=None)
    def answer_question(
        request: Request,
        thread_id: RowId,
        nonce: Annotated[str, Form()] = "",
        text: Annotated[str, Form()] = "",
    ) -> Response:
        try:
            with session_scope(engine) as session:
                queued = replies.answer(
                    session, thread_id, text, nonce, utcnow(), settings.sender_address.domain
                )
        except replies.AnswerRefused as exc:
            return problem(request, 400, "Not sent", f"Not sent: {exc}.")
        done = "answered" if queued else "already-answered"
        return RedirectResponse(f"/admin/questions/{thread_id}?done={done}", 303)

    @router.get("/outbox", response_class=HTMLResponse)
    def outbox(request: Request) -> HTMLResponse:
        rows, total = catcher.newest(settings.catcher_dir, OUTBOX_SHOWN)
        return render(
            request,
            "outbox.html",
            rows=rows,
            total=total,
            shown=OUTBOX_SHOWN,
            directory=str(settings.catcher_dir),
        )

    @router.get("/outbox/{key}", response_class=HTMLResponse)
    def caught(request: Request, key: str) -> HTMLResponse:
        message = catcher.read(settings.catcher_dir, key)
        if message is None:
            return problem(request, 404, "No such message", "It is not in the catcher's mailbox.")
        html = catcher.body(message, "html")
        attachments = [
            {"n": p.n, "filename": p.shown_name, "type": p.type, "size": p.size}
            for p in catcher.parts(message)
            if p.is_attachment
        ]
        response = render(
            request,
            "outbox_message.html",
            key=key,
            subject=catcher.header(message, "Subject"),
            headers=catcher.header_pairs(message),
            # Links in the email open in a new tab rather than inside the frame.
            srcdoc=None if html is None else '<base target="_blank">' + html,
            text=catcher.body(message, "plain"),
            attachments=attachments,
        )
        response.headers["Content-Security-Policy"] = MAIL_CSP
        return response

    @router.get("/outbox/{key}/part/{n}", response_model=None)
    def part(request: Request, key: str, n: int) -> Response:
        message = catcher.read(settings.catcher_dir, key)
        parts = catcher.parts(message) if message is not None else []
        if not 0 <= n < len(parts):
            return problem(request, 404, "No such part", "The message has no such part.")
        chosen = parts[n]
        return Response(
            chosen.payload,
            media_type=chosen.type,
            headers={
                "Content-Disposition": f'attachment; filename="{chosen.download_name}"',
                # Whatever the part is, the browser must not run it as a page of this site.
                "Content-Security-Policy": "sandbox; default-src 'none'",
            },
        )

    return router
