"""Secrets never printed: DRIP_SECRET_KEY, the admin, SMTP and bounce mailbox passwords stay
out of every command's output and log lines, the send log, /admin and error pages, even
when the SMTP login fails and when a setting is wrong.

Each secret is a canary: a string that could appear nowhere unless the secret leaked.
The SMTP password is also looked for in base64, as AUTH PLAIN and AUTH LOGIN carry it.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.conftest import EMAILS, SettingsFactory
from tests.factories import subscriber
from tests.mailserver import MailServer, Recorder, free_port, serve
from tests.waiting import wait_until

pytestmark = pytest.mark.process

SECRET_KEY = "canary-secret-key-7d41c0e95b"
ADMIN_PASSWORD = "canary-admin-password-3f8a2c"
SMTP_PASSWORD = "canary-smtp-password-91e6b4"
SMTP_USER = "course"
MAILBOX_PASSWORD = "canary-mailbox-password-5b2e7d"


def _b64(raw: str) -> str:
    return base64.b64encode(raw.encode()).decode()


FORMS = (
    SECRET_KEY,
    ADMIN_PASSWORD,
    SMTP_PASSWORD,
    MAILBOX_PASSWORD,
    _b64(SMTP_PASSWORD),  # AUTH LOGIN
    _b64(f"\0{SMTP_USER}\0{SMTP_PASSWORD}"),  # AUTH PLAIN
    _b64(f"admin:{ADMIN_PASSWORD}"),  # HTTP Basic
)


def assert_no_secret(text: str, where: str) -> None:
    found = [form for form in FORMS if form in text]
    assert not found, f"{where} shows {found}:\n{text[-3000:]}"


class FailingLogins:
    """An SMTP server that refuses every login and remembers the passwords it was given."""

    def __init__(self) -> None:
        self.passwords: list[bytes] = []

    def __call__(
        self, server: object, session: object, envelope: object, mechanism: str, data: object
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.passwords.append(data.password)
        return AuthResult(success=False, handled=False)


@pytest.fixture
def refusing_server() -> Iterator[tuple[MailServer, FailingLogins]]:
    logins = FailingLogins()
    with serve(Recorder(), authenticator=logins, auth_require_tls=False) as server:
        yield server, logins


CLOSED_PORT = free_port()


def environment(database_url: str, smtp_port: int, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DRIP_")}
    return clean | {
        "DRIP_DATABASE_URL": database_url,
        "DRIP_SMTP_PORT": str(smtp_port),
        "DRIP_SMTP_USERNAME": SMTP_USER,
        "DRIP_SMTP_PASSWORD": SMTP_PASSWORD,
        "DRIP_SECRET_KEY": SECRET_KEY,
        "DRIP_ADMIN_USER": "admin",
        "DRIP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "DRIP_EMAILS_DIR": str(EMAILS),
        "DRIP_INFO_PACK": str(EMAILS / "info-pack.pdf"),
        "DRIP_SEND_RATE": "0",
        "DRIP_SMTP_TIMEOUT": "3",
        "DRIP_WORKER_INTERVAL": "0.2",
        # A bounce mailbox nobody answers: each pass says it cannot be read.
        "DRIP_BOUNCE_DOMAIN": "bounces.example.com",
        "DRIP_BOUNCE_MAILBOX": f"imap://bounces:{MAILBOX_PASSWORD}@127.0.0.1:{CLOSED_PORT}/INBOX",
        **extra,
    }


def run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drip.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def start(env: dict[str, str], cwd: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "drip.cli", *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_command_page_or_log_shows_a_secret(
    log_format: str,
    tmp_path: Path,
    refusing_server: tuple[MailServer, FailingLogins],
    make_settings: SettingsFactory,
) -> None:
    """check, tick and worker against a server that refuses the SMTP login, then logs,
    then serve with every kind of page: the login really carried the password, and no
    output, log line, send-log entry, page or error page shows any of the three."""
    server, logins = refusing_server
    database_url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    env = environment(database_url, server.port, DRIP_LOG_FORMAT=log_format)
    assert run(env, tmp_path, "db", "upgrade").returncode == 0
    settings = make_settings(database_url, server.port, secret_key=SECRET_KEY)
    ann = subscriber(settings, "ann@example.com")
    outputs: dict[str, str] = {}

    checked = run(env, tmp_path, "check")
    outputs["drip check"] = checked.stdout + checked.stderr
    ticked = run(env, tmp_path, "tick")
    outputs["drip tick"] = ticked.stdout + ticked.stderr
    assert "1 deferred" in ticked.stdout, ticked.stdout + ticked.stderr
    assert "DRIP_BOUNCE_MAILBOX: cannot read imap://bounces@127.0.0.1" in ticked.stderr
    assert SMTP_PASSWORD.encode() in logins.passwords  # the login was tried, and refused

    worker_log = tmp_path / "worker.log"
    worker = start(env, tmp_path, worker_log, "worker")
    tries = len(logins.passwords)
    try:
        # The deferred welcome is not due again for minutes: a new confirmation is.
        subscriber(settings, "bob@example.com", active=False)
        wait_until(lambda: len(logins.passwords) > tries, 30, "the worker's login")
    finally:
        stop(worker)
    outputs["drip worker"] = worker_log.read_text()
    assert "drip.sending.worker" in outputs["drip worker"]  # its log lines are in there

    logs = run(env, tmp_path, "logs", "--json")
    outputs["drip logs --json"] = logs.stdout + logs.stderr
    assert '"status": "deferred"' in logs.stdout, logs.stdout

    port = free_port()
    serve_log = tmp_path / "serve.log"
    web = start(env, tmp_path, serve_log, "serve", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{base}/healthz"), 30, "drip serve")
        login = ("admin", ADMIN_PASSWORD)
        pages = {
            "/admin": login,
            "/admin/log": login,
            "/admin/log?status=deferred": login,
            f"/admin/subscribers/{ann.id}": login,
            "/admin/subscribers": login,
            "/admin/log?since=never": login,  # a 422 with its message
            "/admin/subscribers/99999": login,  # a 404
            "/admin/outbox/nope": login,
            "/confirm/forged": None,
            "/unsubscribe/forged": None,
            "/no/such/page": None,
        }
        with httpx.Client(base_url=base, timeout=10) as client:
            for path, auth in pages.items():
                response = client.get(path, auth=auth)
                assert response.status_code < 500, path
                assert_no_secret(str(response.headers) + response.text, f"GET {path}")
            refused = client.get("/admin", auth=("admin", "not-it"))
            assert refused.status_code == 401
            assert_no_secret(str(refused.headers) + refused.text, "a refused login")
            posted = client.post("/subscribe", data={"email": "nope"})
            assert_no_secret(posted.text, "a refused signup")
    finally:
        stop(web)
    outputs["drip serve"] = serve_log.read_text()
    assert "GET /admin/log" in outputs["drip serve"]  # the access log is in there

    for where, text in outputs.items():
        assert_no_secret(text, where)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(
    ("command", "bad"),
    [
        (["worker"], {"DRIP_SMTP_PORT": "not-a-port"}),
        (["check"], {"DRIP_DATABASE_URL": "mysql://nobody"}),
        (["tick"], {"DRIP_SECRET_KEY": "canary-short"}),  # the secret itself is wrong
        (["serve"], {"DRIP_ADMIN_USER": ""}),  # a password without a user
    ],
)
def test_a_bad_setting_is_named_without_showing_a_secret(
    tmp_path: Path, command: list[str], bad: dict[str, str]
) -> None:
    """The one plain line about a wrong setting names it, and shows none of the secrets,
    the wrong secret key included."""
    env = environment(f"sqlite:///{tmp_path / 'subscribers.db'}", free_port(), **bad)
    result = run(env, tmp_path, *command)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("drip: DRIP_"), result.stderr
    assert_no_secret(result.stdout + result.stderr, f"drip {' '.join(command)}")
    assert "canary-short" not in result.stderr


def test_drip_dev_prints_only_a_password_it_made(tmp_path: Path) -> None:
    """`drip dev` shows the admin password it generates (as the README says), never one the
    operator set, nor the secret key or the SMTP password."""
    port = free_port()
    env = environment(f"sqlite:///{tmp_path / 'subscribers.db'}", free_port())
    log = tmp_path / "dev.log"
    dev = start(env, tmp_path, log, "dev", "--port", str(port))
    try:
        wait_until(lambda: "Ctrl-C stops" in log.read_text(), 30, "drip dev to start")
        # The worker logs its first words after the banner: what it says is checked too.
        wait_until(lambda: "a pass every" in log.read_text(), 30, "drip dev's worker to start")
    finally:
        stop(dev)
    output = log.read_text()
    assert f"http://127.0.0.1:{port}/admin" in output
    assert_no_secret(output, "drip dev")
