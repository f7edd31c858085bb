"""The `drip` command as a user runs it: a real process, plain errors, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from drip import __version__
from drip.settings import Settings
from tests.conftest import ROOT
from tests.factories import outbox, subscriber
from tests.mailserver import Recorder
from tests.processes import command_env

pytestmark = pytest.mark.process


def drip(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DRIP_")}
    return subprocess.run(
        [sys.executable, "-m", "drip.cli", *args],
        env={**clean, **(env or {})},
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _env(settings: Settings) -> dict[str, str]:
    return command_env(settings, DRIP_SEND_RATE="0")


def test_a_broken_setting_stops_any_command_with_one_plain_line(tmp_path: Path) -> None:
    for command in (["check"], ["tick"], ["db", "upgrade"], ["worker"]):
        result = drip(*command, env={"DRIP_SMTP_PORT": "not-a-port"}, cwd=tmp_path)
        assert result.returncode == 2, command
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("drip: DRIP_SMTP_PORT:"), result.stderr
        assert "Traceback" not in result.stderr


def test_db_upgrade_with_the_database_down_says_so_in_one_line(tmp_path: Path) -> None:
    """PostgreSQL not answering (nothing listens on the port), and a SQLite file in a
    folder drip cannot create: one plain line naming the setting, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    for url in (
        "postgresql+psycopg://drip@127.0.0.1:1/drip?connect_timeout=2",
        f"sqlite:///{blocker}/sub/subscribers.db",
    ):
        result = drip("db", "upgrade", env={"DRIP_DATABASE_URL": url}, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("drip: DRIP_DATABASE_URL: cannot reach the database")
        assert "Traceback" not in result.stderr


def test_check_passes_on_the_shipped_course(settings: Settings) -> None:
    drip("db", "upgrade", env=_env(settings))
    result = drip("check", env=_env(settings))
    assert result.returncode == 0, result.stderr
    assert "fine" in result.stdout


def test_check_lists_every_problem(tmp_path: Path) -> None:
    emails = tmp_path / "emails"
    emails.mkdir()
    (emails / "course.toml").write_text(
        '[course]\ntitle = "T"\n[[lesson]]\nslug = "a"\ntitle = "A"\ndelay_days = -1\n'
    )
    (emails / "welcome.html").write_text("{% block subject %}Hi{% endblock %}{{ broken(")
    (emails / "welcome.txt").write_text("hi")
    result = drip(
        "check",
        env={"DRIP_DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "DRIP_EMAILS_DIR": str(emails)},
        cwd=tmp_path,
    )
    assert result.returncode == 1
    report = result.stderr
    for expected in (
        "DRIP_SECRET_KEY",
        "drip db upgrade",
        "confirm.html",
        "welcome.html, line 1",
        "delay_days",
        "a.html is missing",
        "DRIP_INFO_PACK",
    ):
        assert expected in report, (expected, report)


def test_tick_delivers_at_the_given_time(
    settings: Settings, engine: Engine, recorder: Recorder
) -> None:
    subscriber(settings, "ann@example.com")
    result = drip("tick", "--now", "2030-01-01T09:00:00", env=_env(settings))
    assert result.returncode == 0, result.stderr
    assert "1 sent" in result.stdout
    assert len(recorder.wait_for(1)) == 1
    for bad in ("yesterday", "0001-01-01T00:00:00+01:00"):  # the second is before year 1 in UTC
        result = drip("tick", "--now", bad, env=_env(settings))
        assert result.returncode == 2, result.stderr
        assert "--now" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert [r.status for r in outbox(engine)] == ["sent"]


def test_tick_reports_an_unreachable_server_and_keeps_the_mail(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    from tests.mailserver import free_port

    subscriber(settings, "ann@example.com")
    result = drip("tick", env={**_env(settings), "DRIP_SMTP_PORT": str(free_port())})
    assert result.returncode == 1
    assert "cannot connect" in result.stderr
    assert "kept for the next pass" in result.stderr
    assert [r.status for r in outbox(engine)] == ["deferred"]


def test_scheduler_py_runs_the_worker(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scheduler.py")],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("DRIP_")},
            "DRIP_SMTP_PORT": "x",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "DRIP_SMTP_PORT" in result.stderr


def test_version_and_help_without_type_noise() -> None:
    version = drip("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"drip {__version__}"
    for command in ([], ["logs"], ["subscribers", "import"]):  # each has on/off flags
        result = drip(*command, "--help", env={"COLUMNS": "120"})
        assert result.returncode == 0, result.stderr
        assert "<bool>" not in result.stdout, command


def test_make_run_passes_its_args_to_drip_dev() -> None:
    result = subprocess.run(
        ["make", "-n", "run", "ARGS=--port 8001 --minutes-per-day 1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "drip dev --port 8001 --minutes-per-day 1" in result.stdout
