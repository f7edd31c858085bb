"""`drip check --smtp` against real aiosmtpd servers: what they offer, whether the login works."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from drip.sending.probe import probe
from drip.settings import Settings
from tests.conftest import EMAILS, SECRET, SettingsFactory
from tests.mailserver import MailServer, Recorder, free_port, serve

PASSWORD = "s3cret-pass"


def authenticator(
    server: object, session: object, envelope: object, mechanism: str, data: object
) -> AuthResult:
    assert isinstance(data, LoginPassword)
    ok = data.login == b"course" and data.password == PASSWORD.encode()
    # handled=False: aiosmtpd answers a refusal with 535 (by default it stays silent).
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def auth_server() -> Iterator[MailServer]:
    with serve(Recorder(), authenticator=authenticator, auth_require_tls=False) as server:
        yield server


def settings_for(make_settings: SettingsFactory, port: int, **extra: object) -> Settings:
    return make_settings("sqlite:///unused.db", port, **extra)


def test_a_good_login_is_reported(auth_server: MailServer, make_settings: SettingsFactory) -> None:
    found = asyncio.run(
        probe(
            settings_for(
                make_settings, auth_server.port, smtp_username="course", smtp_password=PASSWORD
            )
        )
    )
    assert found.problems == []
    assert "STARTTLS not offered" in found.found
    assert any(line.startswith("AUTH ") and "LOGIN" in line for line in found.found)
    assert found.found[-1] == "login as course accepted"


def test_a_wrong_password_is_named_without_showing_it(
    auth_server: MailServer, make_settings: SettingsFactory
) -> None:
    found = asyncio.run(
        probe(
            settings_for(
                make_settings, auth_server.port, smtp_username="course", smtp_password="wrong-pass"
            )
        )
    )
    assert len(found.problems) == 1
    assert "the login as course was refused (535" in found.problems[0]
    assert "wrong-pass" not in " ".join(found.problems + found.found)


def test_starttls_wanted_but_not_offered(
    mail_server: MailServer, make_settings: SettingsFactory
) -> None:
    found = asyncio.run(
        probe(settings_for(make_settings, mail_server.port, smtp_security="starttls"))
    )
    assert found.problems == ["DRIP_SMTP_SECURITY=starttls, but the server does not offer STARTTLS"]


def test_a_user_set_where_no_auth_is_offered(
    mail_server: MailServer, make_settings: SettingsFactory
) -> None:
    found = asyncio.run(
        probe(
            settings_for(
                make_settings, mail_server.port, smtp_username="course", smtp_password=PASSWORD
            )
        )
    )
    assert "no AUTH offered" in found.found
    assert found.problems[0].startswith("DRIP_SMTP_USERNAME is set, but the server offers no AUTH")


def test_nobody_listening(make_settings: SettingsFactory) -> None:
    found = asyncio.run(probe(settings_for(make_settings, free_port())))
    assert len(found.problems) == 1
    assert found.problems[0].startswith("DRIP_SMTP_HOST: cannot connect to 127.0.0.1:")


def test_drip_check_smtp(auth_server: MailServer, database_url: str) -> None:
    env = {
        **os.environ,
        "DRIP_DATABASE_URL": database_url,
        "DRIP_SECRET_KEY": SECRET,
        "DRIP_EMAILS_DIR": str(EMAILS),
        "DRIP_INFO_PACK": str(EMAILS / "info-pack.pdf"),
        "DRIP_SMTP_PORT": str(auth_server.port),
        "DRIP_SMTP_USERNAME": "course",
    }

    def check(password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "drip.cli", "check", "--smtp"],
            env={**env, "DRIP_SMTP_PASSWORD": password},
            capture_output=True,
            text=True,
            timeout=120,
        )

    good = check(PASSWORD)
    assert "✓ login as course accepted" in good.stdout, good.stdout + good.stderr
    bad = check("wrong-pass")
    assert bad.returncode == 1
    assert "✗ DRIP_SMTP_USERNAME/DRIP_SMTP_PASSWORD: the login as course was refused" in bad.stderr
    assert "wrong-pass" not in bad.stdout + bad.stderr
