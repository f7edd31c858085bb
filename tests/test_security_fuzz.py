"""Abuse of every page, on both databases: fuzzed tokens and admin parameters, then each
route of the app with each method, with and without the admin login.

Routes are read from `app.routes`, so a page added later is fuzzed and visited without
anyone remembering to list it here. The promise: never a 5xx (the closed admin's 503
aside), never a fuzzed value echoed as markup, security headers on every answer, and
/admin answering nothing but 401 to a visitor without the login.
"""

from __future__ import annotations

import base64
import itertools
import mailbox
import re
import warnings
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from starlette.exceptions import StarletteDeprecationWarning
from starlette.routing import BaseRoute, Mount

from drip.db import get_engine, read_scope
from drip.models import OutboxMessage, Subscriber
from drip.settings import Settings
from drip.tokens import make_token
from drip.web.admin import CLOSED
from drip.web.app import create_app
from tests.conftest import SettingsFactory
from tests.factories import subscriber, tick
from tests.mailserver import MailServer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

USER, PASSWORD = "admin", "fuzz-admin-password"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
FUZZ = hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

#: Markup that must never come back as it was sent: each is unmistakable in a page.
PAYLOADS = (
    "<script>fuzz()</script>",
    '"><b id=fuzz>',
    "'><i id=fuzz>",
    '" onmouseover="fuzz()',
)
#: Values that broke or nearly broke pages: huge and negative numbers, dates outside
#: what a datetime holds, NUL, the last code point, SQL LIKE wildcards, log keys.
EDGES = (
    "",
    "0",
    "-1",
    "2147483647",
    "2147483648",
    "-2147483649",
    "9223372036854775808",
    "1" + "0" * 40,
    "99999999999d",
    "1e9",
    "NaN",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "2024-13-45",
    "2024-02-30T25:61:00",
    "2h",
    "-2h",
    "\x00",
    "a\x00b@example.com",
    "\U0010ffff",
    "\ud7ff",
    "%_\\",
    "a999999999999999999",
    "q2147483648",
    "a١٢",
    "²",
    "sent",
    "lesson",
    "x" * 5000,
)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
VALUES = st.one_of(
    TEXT,
    st.sampled_from(EDGES),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.datetimes().map(lambda d: d.isoformat()),
    st.builds(lambda text, payload: text + payload, TEXT, st.sampled_from(PAYLOADS)),
)

#: In a path, "/" would make another path and "", "." or ".." would fold it into its parent.
PATH_VALUES = VALUES.filter(lambda v: "/" not in v and v not in ("", ".", ".."))


@dataclass(frozen=True)
class World:
    """A database with something behind every kind of id, and a client for the app."""

    app: FastAPI
    client: TestClient
    settings: Settings
    samples: dict[str, list[str]]


@pytest.fixture
def world(database_url: str, mail_server: MailServer, make_settings: SettingsFactory) -> World:
    settings = make_settings(
        database_url,
        mail_server.port,
        admin_user=USER,
        admin_password=PASSWORD,
        signups_per_ip_per_minute=10**6,
        signups_per_address_per_hour=10**6,
    )
    active = subscriber(settings, "ann@example.com", name="Ann")
    subscriber(settings, "pending@example.com", active=False)
    tick(settings)
    with read_scope(engine_of(settings)) as session:
        message_id = session.execute(select(OutboxMessage.id)).scalars().first()
    secret = settings.require_secret()
    app = create_app(settings)
    samples = {
        "token": [
            make_token(secret, active.token_salt, "unsubscribe"),
            make_token(secret, active.token_salt, "confirm"),
            "forged",
        ],
        "subscriber_id": [str(active.id), "0", "-1", "2147483648", "x"],
        "message_id": [str(message_id), "99999", "-5"],
        "key": [caught_mail(settings.catcher_dir), "no-such-key"],
        "n": ["0", "1", "99", "-1"],
    }
    return World(app, TestClient(app, follow_redirects=False), settings, samples)


def engine_of(settings: Settings) -> Engine:
    return get_engine(settings.database_url)


def caught_mail(directory: Path) -> str:
    """One message in the catcher's Maildir, with an attachment, for the outbox routes."""
    message = EmailMessage()
    message["From"] = "Course <course@localhost>"
    message["To"] = "ann@example.com"
    message["Subject"] = "Welcome"
    message.set_content("Hello")
    message.add_alternative("<p>Hello</p>", subtype="html")
    message.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="p.pdf")
    return mailbox.Maildir(directory, create=True).add(message)


@dataclass(frozen=True)
class Endpoint:
    """A route and the full path it answers on."""

    path: str
    route: APIRoute

    @property
    def methods(self) -> set[str]:
        return set(self.route.methods)

    @property
    def dependant(self) -> Dependant:
        return self.route.dependant


def routes(app: FastAPI) -> list[Endpoint]:
    """Every API route of the app, those of included routers too (FastAPI 0.16x keeps an
    included router as one entry, its routes inside)."""
    found: list[Endpoint] = []

    def walk(entries: list[BaseRoute], prefix: str) -> None:
        for entry in entries:
            if isinstance(entry, APIRoute):
                found.append(Endpoint(prefix + entry.path, entry))
            inner = getattr(entry, "original_router", None)
            if inner is not None:
                walk(inner.routes, prefix + entry.include_context.prefix)  # type: ignore[attr-defined]

    walk(app.routes, "")
    return found


def path_of(route: Endpoint, values: dict[str, str | bytes]) -> str:
    """The route's path with each {param} filled in, percent-encoded as a browser would."""
    return re.sub(r"{(\w+)(:\w+)?}", lambda m: quote(values[m.group(1)], safe=""), route.path)


def assert_secure(response: httpx.Response) -> None:
    headers = response.headers
    assert "default-src" in headers["content-security-policy"], response.request.url
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"


def assert_not_reflected(response: httpx.Response, *values: str | bytes) -> None:
    """A fuzzed value with markup in it never comes back as it was sent."""
    if not response.headers.get("content-type", "").startswith("text/html"):
        return
    for value in values:
        for payload in PAYLOADS:
            if isinstance(value, str) and payload in value:
                assert payload not in response.text, (response.request.url, payload)


def csrf_of(world: World) -> str:
    page = world.client.get(
        f"/admin/subscribers/{world.samples['subscriber_id'][0]}", headers=AUTH
    ).text
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    return found.group(1) if found else ""


# -- tokens -------------------------------------------------------------------------------


def token_routes(app: FastAPI) -> list[tuple[str, Endpoint]]:
    return sorted(
        ((method, r) for r in routes(app) if "{token}" in r.path for method in r.methods),
        key=lambda pair: (pair[1].path, pair[0]),
    )


def test_every_token_route_is_fuzzed(world: World) -> None:
    """The routes below are found, not listed: if a token route is added, it is fuzzed."""
    found = {(method, route.path) for method, route in token_routes(world.app)}
    assert found >= {
        ("GET", "/confirm/{token}"),
        ("POST", "/confirm/{token}"),
        ("GET", "/unsubscribe/{token}"),
        ("POST", "/unsubscribe/{token}"),
    }


@FUZZ
@given(
    data=st.data(),
    token=st.one_of(
        VALUES,
        st.binary(max_size=60),  # sent percent-encoded as they are, UTF-8 or not
        st.text(
            alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
            min_size=43,
            max_size=43,
        ),
    ),
    edit=st.tuples(st.integers(0, 42), st.characters(blacklist_categories=("Cs",))),
    one_click=st.booleans(),
)
def test_fuzzed_tokens_open_nothing(
    world: World, data: st.DataObject, token: str | bytes, edit: tuple[int, str], one_click: bool
) -> None:
    """Any token but the real one is a 404 that echoes nothing and changes nothing: random
    text, raw bytes, well-formed guesses, and the real token with one character changed."""
    real = world.samples["token"][:2]
    mutated = data.draw(st.sampled_from(real))
    at, char = edit
    mutated = mutated[:at] + char + mutated[at + 1 :]
    route_and_method = data.draw(st.sampled_from(token_routes(world.app)))
    method, route = route_and_method
    for candidate in (token, mutated):
        # A "/" makes another path (a 307 to it or its 404), never this route's.
        slash = "/" if isinstance(candidate, str) else b"/"
        assume(candidate not in real and slash not in candidate)
        assume(candidate not in (".", "..", b".", b".."))
        body = b"List-Unsubscribe=One-Click" if one_click else b""
        response = world.client.request(
            method,
            path_of(route, {"token": candidate}),
            content=body if method == "POST" else None,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 404, (method, candidate, response.status_code)
        assert_secure(response)
        assert_not_reflected(response, candidate)
    with read_scope(engine_of(world.settings)) as session:
        statuses = dict(session.execute(select(Subscriber.email, Subscriber.status)).all())
    assert statuses == {"ann@example.com": "active", "pending@example.com": "pending"}


# -- admin parameters ---------------------------------------------------------------------


def admin_routes(app: FastAPI) -> list[tuple[str, Endpoint]]:
    return sorted(
        ((m, r) for r in routes(app) if r.path.startswith("/admin") for m in r.methods),
        key=lambda pair: (pair[1].path, pair[0]),
    )


@FUZZ
@given(data=st.data(), with_csrf=st.booleans())
def test_fuzzed_admin_parameters_never_break_a_page(
    world: World, data: st.DataObject, with_csrf: bool
) -> None:
    """Every admin route, every path and query parameter it declares (filters, pages,
    dates, ids), fed any unicode, huge or negative numbers and malformed dates: no 5xx,
    nothing echoed as markup, and without the login nothing but a plain 401."""
    method, route = data.draw(st.sampled_from(admin_routes(world.app)))
    path_values: dict[str, str | bytes] = {
        p.name: data.draw(PATH_VALUES, label=p.name) for p in route.dependant.path_params
    }
    query = {p.name: data.draw(VALUES, label=p.name) for p in route.dependant.query_params}
    query["done"] = data.draw(VALUES, label="done")
    form = {p.name: data.draw(VALUES, label=p.name) for p in route.dependant.body_params}
    if with_csrf and "csrf" in form:
        form["csrf"] = csrf_of(world)
    url = path_of(route, path_values)
    sent = [*path_values.values(), *query.values(), *form.values()]

    response = world.client.request(method, url, params=query, data=form or None, headers=AUTH)
    assert response.status_code < 500, (method, url, query, form, response.text[:300])
    assert_secure(response)
    assert response.headers["cache-control"] == "no-store"
    assert_not_reflected(response, *sent)

    anonymous = world.client.request(method, url, params=query, data=form or None)
    assert anonymous.status_code == 401
    assert anonymous.text == "401: the drip admin needs its user name and password"
    assert_secure(anonymous)


def test_every_admin_parameter_survives_each_edge_value(world: World) -> None:
    """The edge values above, each in turn in every parameter of every admin route (what
    the fuzzer may not draw in one run): never a 5xx, never a value echoed as markup."""
    csrf = csrf_of(world)
    tried = 0
    for method, route in admin_routes(world.app):
        defaults: dict[str, str | bytes] = {
            p.name: world.samples.get(p.name, ["1"])[0] for p in route.dependant.path_params
        }
        params = [("path", p.name) for p in route.dependant.path_params]
        params += [("query", p.name) for p in route.dependant.query_params]
        for (where, name), value in itertools.product(params, EDGES + PAYLOADS):
            if where == "path" and ("/" in value or value in ("", ".", "..")):
                continue
            path_values = defaults | ({name: value} if where == "path" else {})
            url = path_of(route, path_values)
            query = {name: value} if where == "query" else {}
            form = {"csrf": csrf} if method == "POST" else None
            response = world.client.request(method, url, params=query, data=form, headers=AUTH)
            tried += 1
            assert response.status_code < 500, (method, url, query, response.text[:300])
            assert_secure(response)
            assert_not_reflected(response, value)
    assert tried > 200


# -- every route ---------------------------------------------------------------------------


def fill(route: Endpoint, samples: dict[str, list[str]]) -> list[str]:
    """Each combination of sample values for the route's path parameters; a parameter
    nobody has samples for yet still gets a number and a word."""
    names = [p.name for p in route.dependant.path_params]
    choices = [samples.get(name, ["1", "x"]) for name in names]
    return [
        path_of(route, dict(zip(names, combo, strict=True)))
        for combo in itertools.product(*choices)
    ]


def test_every_route_and_method_answers_without_a_5xx(world: World) -> None:
    """Each route of the app, with each method it accepts and one it does not, with and
    without the admin login: never a 5xx, always the security headers."""
    csrf = csrf_of(world)
    visited = 0
    for route in routes(world.app):
        for url in fill(route, world.samples):
            for method in sorted(route.methods):
                for headers in ({}, AUTH):
                    response = world.client.request(
                        method,
                        url,
                        headers=headers,
                        data={"csrf": csrf, "sure": "yes"} if method == "POST" else None,
                    )
                    visited += 1
                    assert response.status_code < 500, (method, url, response.text[:300])
                    assert_secure(response)
                    if route.path.startswith("/admin"):
                        assert response.headers["cache-control"] == "no-store", url
                        if not headers:
                            assert response.status_code == 401, url
            wrong = "DELETE" if "DELETE" not in route.methods else "PUT"
            refused = world.client.request(wrong, url, headers=AUTH)
            assert refused.status_code == 405, (wrong, url)
            assert_secure(refused)
    assert visited > 50
    # The one mount: static files, and no way out of their folder.
    for path, code in (
        ("/static/site.css", 200),
        ("/static/admin.css", 200),
        ("/static/missing.css", 404),
        ("/static/%2e%2e/app.py", 404),
        ("/static/..%2fapp.py", 404),
    ):
        response = world.client.get(path)
        assert response.status_code == code, path
        assert_secure(response)
    assert [m.path for m in world.app.routes if isinstance(m, Mount)] == ["/static"]
    unknown = world.client.get("/no/such/page")
    assert unknown.status_code == 404
    assert_secure(unknown)


def test_a_closed_admin_answers_every_route_with_the_closed_line(
    settings: Settings,
) -> None:
    """Without an admin login set, every /admin route and method answers 503 with the one
    line that says how to open it (the only 5xx drip gives by design), even with a
    password a visitor made up."""
    app = create_app(settings)
    client = TestClient(app)
    samples = {
        "token": ["x"],
        "subscriber_id": ["1"],
        "message_id": ["1"],
        "key": ["k"],
        "n": ["0"],
    }
    for method, route in admin_routes(app):
        for url in fill(route, samples):
            for headers in ({}, AUTH):
                response = client.request(method, url, headers=headers)
                assert (response.status_code, response.text) == (503, CLOSED), url
                assert_secure(response)


#: Bodies that once broke, or could break, a parser: each with the type it claims.
HOSTILE_BODIES: tuple[tuple[str, bytes], ...] = (
    ("application/json", b"[" * 1000 + b"]" * 1000),  # RecursionError in json
    ("application/json", b'{"a":' * 1000 + b"1" + b"}" * 1000),
    ("application/json", b"[" * 3000),
    ("application/json", b'{"email": ' + b"[" * 2000 + b"]" * 2000 + b"}"),
    ("application/json", b"1" * 5000),  # past int's digit limit
    ("application/json", b'{"email": 1e999, "name": NaN, "consent": Infinity}'),
    ("application/json", b'{"email": {"$ne": 1}, "name": [1], "consent": {}}'),
    ("application/json", b"\xff\xfe\x00"),
    ("application/json; charset=utf-16", '{"email": "a@b.c"}'.encode("utf-16")),
    ("application/json", b'"' + b"\\ud800" * 100 + b'"'),
    ("application/x-www-form-urlencoded", b"email=%ff%fe&name=%&consent=%zz&=&&&"),
    ("application/x-www-form-urlencoded", b"a=" + b"&a=" * 2000),
    ("multipart/form-data", b"--x\r\n"),  # no boundary
    ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n\r\n"),
    ("multipart/form-data; boundary=x", b"garbage without a boundary"),
    ("multipart/form-data; boundary=" + "x" * 300, b"--"),
    ("text/plain", b"\x00" * 100),
    ("application/json", b""),
    ("", b"[[[[[["),
)


def test_no_body_gets_a_5xx_on_any_post_route(world: World) -> None:
    """Every POST route, with and without the login, given each hostile body: a 4xx or
    a page, never a 5xx (a JSON body nested a thousand deep raised RecursionError)."""
    tried = 0
    for route in routes(world.app):
        if "POST" not in route.methods:
            continue
        for url in fill(route, world.samples):
            for headers in ({}, AUTH):
                for content_type, body in HOSTILE_BODIES:
                    response = world.client.post(
                        url, content=body, headers=headers | {"content-type": content_type}
                    )
                    tried += 1
                    assert response.status_code < 500, (url, content_type, body[:40])
                    assert_secure(response)
    assert tried > 100
