"""One secret key everywhere: found the same way by every command, and checked against
the key the database was used with (drip.keycheck)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import Engine

from drip.keycheck import KeyMismatch, adopt_key, inspect_key, stored_check
from drip.settings import Settings, SettingsError, load_settings
from tests.conftest import SECRET, SettingsFactory
from tests.mailserver import MailServer
from tests.test_cli import drip

OTHER = "another-secret-key-fedcba9876543210"
NEWER = "the-newest-secret-key-0123456789ab"


def test_the_first_start_records_the_key_and_the_same_key_passes(
    settings: Settings, engine: Engine
) -> None:
    assert stored_check(engine) is None
    inspect_key(engine, settings)  # nothing recorded yet: nothing to disagree with
    adopt_key(engine, settings)
    recorded = stored_check(engine)
    assert recorded is not None
    assert SECRET not in recorded
    adopt_key(engine, settings)
    inspect_key(engine, settings)
    assert stored_check(engine) == recorded


def test_another_key_is_refused_in_plain_words(settings: Settings, engine: Engine) -> None:
    adopt_key(engine, settings)
    other = settings.model_copy(
        update={"secret_key": load_settings(_env_file=None, secret_key=OTHER).secret_key}
    )
    for step in (inspect_key, adopt_key):
        with pytest.raises(KeyMismatch) as caught:
            step(engine, other)
        text = str(caught.value)
        assert text.startswith("DRIP_SECRET_KEY: this is not the key this database was used with")
        assert "DRIP_OLD_SECRET_KEYS" in text
        assert OTHER not in text
        assert SECRET not in text


def test_a_rotation_moves_the_record_to_the_new_key(settings: Settings, engine: Engine) -> None:
    adopt_key(engine, settings)
    rotated = load_settings(
        _env_file=None,
        database_url=settings.database_url,
        secret_key=NEWER,
        old_secret_keys=f"{OTHER}, {SECRET}",
    )
    inspect_key(engine, rotated)
    adopt_key(engine, rotated)
    # Now the new key alone is the database's; the retired one alone is refused.
    adopt_key(engine, rotated.model_copy(update={"old_secret_keys": None}))
    with pytest.raises(KeyMismatch):
        inspect_key(engine, settings)


def test_settings_read_the_key_file_when_the_variable_is_unset(tmp_path: Path) -> None:
    key_file = tmp_path / "secret-key"
    with pytest.raises(SettingsError, match="no key file at"):
        load_settings(_env_file=None, secret_key_file=key_file).require_secret()
    key_file.write_text(OTHER + "\n")
    assert load_settings(_env_file=None, secret_key_file=key_file).require_secret() == OTHER
    # The variable wins over the file.
    both = load_settings(_env_file=None, secret_key_file=key_file, secret_key=SECRET)
    assert both.require_secret() == SECRET
    with pytest.raises(SettingsError, match="DRIP_OLD_SECRET_KEYS"):
        load_settings(_env_file=None, secret_key=SECRET, old_secret_keys="short")


def _env(settings: Settings) -> dict[str, str]:
    """A user's environment after `drip dev`: no DRIP_SECRET_KEY, only the key file."""
    return {
        "DRIP_DATABASE_URL": settings.database_url,
        "DRIP_SMTP_PORT": str(settings.smtp_port),
        "DRIP_EMAILS_DIR": str(settings.emails_dir),
        "DRIP_INFO_PACK": str(settings.info_pack),
        "DRIP_SEND_RATE": "0",
    }


def test_every_command_finds_the_key_drip_dev_made(
    mail_server: MailServer, tmp_path: Path, make_settings: SettingsFactory
) -> None:
    """`drip dev` writes .drip/secret-key (0600); check, tick, newsletter send --dry-run and
    subscribers import run beside it with nothing more set. Another key is then refused
    by each of them, in one plain line. (Processes are slow to start: SQLite only; the
    key check itself runs on both databases above.)"""
    from drip.cli import _dev_secret

    settings = make_settings(f"sqlite:///{tmp_path / 'subscribers.db'}", mail_server.port)

    key = _dev_secret(tmp_path / ".drip" / "secret-key")
    mode = stat.S_IMODE(os.stat(tmp_path / ".drip" / "secret-key").st_mode)
    assert mode == 0o600
    assert len(key) >= 32
    assert _dev_secret(tmp_path / ".drip" / "secret-key") == key  # made once, then reused

    env = _env(settings)
    letter = tmp_path / "news.md"
    letter.write_text("---\nsubject: Hello\n---\nHi {{ name }}.\n")
    people = tmp_path / "people.csv"
    people.write_text("email,name\nkim@example.com,Kim\n")
    assert drip("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    runs = [
        ["check"],
        ["tick"],
        ["newsletter", "send", str(letter), "--dry-run"],
        ["subscribers", "import", str(people), "--no-course"],
    ]
    for command in runs:
        result = drip(*command, env=env, cwd=tmp_path)
        assert result.returncode == 0, (command, result.stdout, result.stderr)

    wrong = {**env, "DRIP_SECRET_KEY": OTHER}
    for command in runs:
        result = drip(*command, env=wrong, cwd=tmp_path)
        assert result.returncode != 0, command
        assert "this is not the key this database was used with" in result.stderr, command
        assert "Traceback" not in result.stderr
        assert OTHER not in result.stderr + result.stdout
    # Rotating: the new key set, the old one listed; then the new key alone is the database's.
    rotated = {**wrong, "DRIP_OLD_SECRET_KEYS": key}
    assert drip("tick", env=rotated, cwd=tmp_path).returncode == 0
    assert drip("check", env=wrong, cwd=tmp_path).returncode == 0
