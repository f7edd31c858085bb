"""drip.web.security: one policy of headers on every answer, errors and redirects included."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from drip.settings import Settings
from drip.tokens import make_token
from drip.web.app import create_app
from drip.web.security import ADMIN_CSP, HSTS, PUBLIC_CSP, _local
from tests.conftest import SettingsFactory
from tests.factories import subscriber

ADMIN = {"admin_user": "admin", "admin_password": SecretStr("correct horse battery")}
LOGIN = {"Authorization": "Basic " + base64.b64encode(b"admin:correct horse battery").decode()}


def _client(settings: Settings, **changes: object) -> TestClient:
    app = create_app(settings.model_copy(update={**ADMIN, **changes}))
    return TestClient(app, follow_redirects=False, raise_server_exceptions=False)


def _assert_policy(response: object, csp: str) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    assert headers["content-security-policy"] == csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"


def test_a_500_carries_the_headers_and_no_traceback(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """Real faults: a database without its tables behind a public page, and a caught-mail
    folder that is a file behind /admin/outbox."""
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    blocked = tmp_path / "mail"
    blocked.write_text("not a folder")
    settings = make_settings(f"sqlite:///{empty}", 1, catcher_dir=blocked)
    client = _client(settings)
    public = client.get("/unsubscribe/" + "x" * 30)
    assert public.status_code == 500
    _assert_policy(public, PUBLIC_CSP)
    assert "Traceback" not in public.text
    assert "sqlite" not in public.text.lower()
    admin = client.get("/admin/outbox", headers=LOGIN)
    assert admin.status_code == 500
    _assert_policy(admin, ADMIN_CSP)
    assert admin.headers["cache-control"] == "no-store"
    assert "Traceback" not in admin.text
    assert "mail" not in admin.text


def test_hsts_only_when_the_base_url_is_https(settings: Settings) -> None:
    secure = _client(settings, base_url="https://course.example.com")
    for path in ("/", "/healthz", "/confirm/x", "/admin"):
        assert secure.get(path).headers["strict-transport-security"] == HSTS
    plain = _client(settings, base_url="http://127.0.0.1:8000")
    assert "strict-transport-security" not in plain.get("/").headers


def test_pages_that_carry_a_token_are_never_cached(settings: Settings) -> None:
    sub = subscriber(settings, "ann@example.com", active=False)
    secret = settings.require_secret()
    assert sub.token_salt is not None
    client = _client(settings)
    unsubscribe = make_token(secret, sub.token_salt, "unsubscribe")
    confirm = make_token(secret, sub.token_salt, "confirm")
    for response in (
        client.get(f"/confirm/{confirm}"),
        client.get(f"/unsubscribe/{unsubscribe}"),
        client.post(f"/unsubscribe/{unsubscribe}"),
        client.get("/confirm/forged-token"),
    ):
        assert response.status_code < 500
        assert response.headers["cache-control"] == "no-store", response.request.url
        _assert_policy(response, PUBLIC_CSP)
    assert "cache-control" not in client.get("/").headers


@pytest.mark.parametrize("path", ["/privacy/", "/admin/", "/admin/log/", "/thanks/?a=b"])
def test_a_redirect_never_names_the_host_the_request_gave(settings: Settings, path: str) -> None:
    client = _client(settings)
    response = client.get(path, headers={"Host": "evil.example", **LOGIN})
    assert response.status_code in (307, 308), response.status_code
    location = response.headers["location"]
    # A path on this site (never "//host", which a browser would read as another host).
    assert location.startswith("/"), location
    assert not location.startswith("//"), location
    assert location == path.replace("/?", "?").rstrip("/")
    _assert_policy(response, ADMIN_CSP if path.startswith("/admin") else PUBLIC_CSP)


def test_a_location_on_the_requests_host_becomes_a_path_never_a_host() -> None:
    assert _local(b"http://evil.example//other.example/x?q=1", b"evil.example") == (
        b"/other.example/x?q=1"
    )
    assert _local(b"https://EVIL.example:8443/a", b"evil.example:8443") == b"/a"
    assert _local(b"/thanks", b"evil.example") == b"/thanks"
    assert _local(b"https://elsewhere.example/a", b"evil.example") == (
        b"https://elsewhere.example/a"
    )
