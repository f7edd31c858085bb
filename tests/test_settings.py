"""Settings: the documented variables, and one plain line for anything wrong."""

from __future__ import annotations

import pytest

from drip.settings import SettingsError, load_settings


def test_defaults_serve_drip_dev() -> None:
    settings = load_settings(_env_file=None)
    assert settings.database_url == "sqlite:///subscribers.db"
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_security) == (
        "127.0.0.1",
        1025,
        "none",
    )
    assert settings.sender_address.addr_spec == "course@localhost"
    assert settings.base_url == "http://127.0.0.1:8000"
    assert settings.send_rate == 10
    assert settings.smtp_concurrency == 4
    assert str(settings.info_pack) == "emails/info-pack.pdf"
    assert settings.admin_user is None
    assert settings.secret_key is None


def test_environment_and_dotenv_are_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    with open(".env", "w") as env:
        env.write("DRIP_SMTP_HOST=smtp.example.com\nDRIP_SEND_RATE=2.5\n")
    monkeypatch.setenv("DRIP_SMTP_PORT", "587")
    settings = load_settings()
    assert (settings.smtp_host, settings.smtp_port, settings.send_rate) == (
        "smtp.example.com",
        587,
        2.5,
    )


@pytest.mark.parametrize(
    "variable, value, named",
    [
        ("DRIP_SMTP_PORT", "seventy", "DRIP_SMTP_PORT"),
        ("DRIP_SMTP_PORT", "70000", "DRIP_SMTP_PORT"),
        ("DRIP_SMTP_SECURITY", "ssl", "DRIP_SMTP_SECURITY"),
        ("DRIP_DATABASE_URL", "mysql://x", "DRIP_DATABASE_URL"),
        ("DRIP_SENDER", "nobody", "DRIP_SENDER"),
        ("DRIP_BASE_URL", "example.com", "DRIP_BASE_URL"),
        ("DRIP_SEND_RATE", "-1", "DRIP_SEND_RATE"),
        ("DRIP_DEFAULT_TIMEZONE", "Mars/Base", "DRIP_DEFAULT_TIMEZONE"),
        ("DRIP_DKIM_DOMAIN", "example.com", "DRIP_DKIM_SELECTOR"),
        ("DRIP_ADMIN_USER", "me", "DRIP_ADMIN_PASSWORD"),
    ],
)
def test_a_bad_setting_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert named in message
    assert "\n" not in message


def test_secret_key_is_required_outside_dev() -> None:
    with pytest.raises(SettingsError, match="DRIP_SECRET_KEY"):
        load_settings(_env_file=None).require_secret()
    assert load_settings(_env_file=None, secret_key="s" * 32).require_secret() == "s" * 32


def test_secrets_are_not_printed() -> None:
    settings = load_settings(_env_file=None, smtp_password="hunter2-secret", secret_key="k" * 32)
    assert "hunter2-secret" not in repr(settings)
    assert "k" * 32 not in str(settings)
