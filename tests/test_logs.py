"""drip.logs: one line per event, and with DRIP_LOG_FORMAT=json one JSON object a line,
from real `drip worker`, `drip tick` and `drip serve` processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from drip.db import get_engine, read_scope, upgrade
from drip.logs import formatter
from drip.models import OutboxMessage, OutboxStatus
from tests.conftest import EMAILS, SettingsFactory
from tests.mailserver import MailServer
from tests.processes import drip_serve, queue_lessons
from tests.waiting import wait_until

pytestmark = pytest.mark.process

SECRET = "s" * 32
KEYS = {"timestamp", "level", "logger", "event"}


def record(message: str, *, exc: BaseException | None = None) -> logging.LogRecord:
    info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("drip.test", logging.ERROR, __file__, 1, message, (), info)


def parse_lines(text: str, where: str) -> list[dict[str, Any]]:
    """Every line of `text` as a JSON object with the expected keys and a UTC timestamp."""
    lines = text.splitlines()
    assert lines, f"{where} logged nothing"
    parsed = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{where}: not a JSON line: {line!r}\n{text[-3000:]}") from None
        assert isinstance(entry, dict), line
        assert KEYS <= entry.keys(), f"{where}: {line}"
        stamp = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
        assert stamp.utcoffset() == timedelta(0), line
        parsed.append(entry)
    return parsed


def environment(database_url: str, smtp_port: int, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DRIP_")}
    return clean | {
        "DRIP_DATABASE_URL": database_url,
        "DRIP_SMTP_PORT": str(smtp_port),
        "DRIP_SECRET_KEY": SECRET,
        "DRIP_EMAILS_DIR": str(EMAILS),
        "DRIP_INFO_PACK": str(EMAILS / "info-pack.pdf"),
        "DRIP_SEND_RATE": "0",
        "DRIP_WORKER_INTERVAL": "0.2",
        "DRIP_LOG_FORMAT": "json",
        **extra,
    }


def test_json_lines_carry_the_exception() -> None:
    try:
        raise RuntimeError("the SMTP server went away")
    except RuntimeError as exc:
        line = formatter("json").format(record("a pass failed", exc=exc))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["event"] == "a pass failed"
    assert entry["level"] == "error"
    assert entry["logger"] == "drip.test"
    assert "RuntimeError: the SMTP server went away" in entry["exception"]
    assert "Traceback" in entry["exception"]


def test_text_lines_name_the_time_in_utc_the_level_and_the_logger() -> None:
    line = formatter("text").format(record("a pass every 5s"))
    stamp, level, logger, message = line.split(" ", 3)
    assert stamp.endswith("Z") and datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert (level, logger, message) == ("ERROR", "drip.test", "a pass every 5s")


def test_a_bad_log_format_is_one_plain_line(tmp_path: Path, mail_server: MailServer) -> None:
    url = f"sqlite:///{tmp_path / 'drip.db'}"
    env = environment(url, mail_server.port, DRIP_LOG_FORMAT="xml")
    done = subprocess.run(
        [sys.executable, "-m", "drip.cli", "tick"], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "DRIP_LOG_FORMAT" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_json_worker_logs_one_object_a_line(
    tmp_path: Path, mail_server: MailServer, make_settings: SettingsFactory
) -> None:
    url = f"sqlite:///{tmp_path / 'drip.db'}"
    settings = make_settings(url, mail_server.port)
    engine = get_engine(url)
    upgrade(engine)
    queued = queue_lessons(engine, 3)
    stderr = tmp_path / "worker.err"
    with stderr.open("wb") as err, (tmp_path / "worker.out").open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "drip.cli", "worker"],
            env=environment(settings.database_url, settings.smtp_port),
            stdout=out,
            stderr=err,
        )

    def sent() -> bool:
        with read_scope(engine) as session:
            statuses = session.execute(select(OutboxMessage.status)).scalars().all()
        return len(statuses) == len(queued) and all(s == OutboxStatus.sent for s in statuses)

    try:
        wait_until(sent, 60, "the worker to send 3 lessons", abort=lambda: _died(worker))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    entries = parse_lines(stderr.read_text(), "drip worker")
    assert any(e["logger"] == "drip.sending.worker" for e in entries), entries
    assert {e["level"] for e in entries} <= {"debug", "info", "warning", "error", "critical"}


def test_a_json_serve_logs_uvicorn_through_the_same_handler(
    tmp_path: Path, mail_server: MailServer, make_settings: SettingsFactory
) -> None:
    url = f"sqlite:///{tmp_path / 'drip.db'}"
    upgrade(get_engine(url))
    settings = make_settings(url, mail_server.port)
    log = tmp_path / "serve.log"
    with drip_serve(settings, log, DRIP_LOG_FORMAT="json") as base:
        httpx.get(f"{base}/confirm/some-secret-token", timeout=10)
    entries = parse_lines(log.read_text(), "drip serve")
    loggers = {e["logger"] for e in entries}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers, loggers
    access = [e["event"] for e in entries if e["logger"] == "uvicorn.access"]
    assert any("/confirm/[token]" in line for line in access), access
    assert "some-secret-token" not in log.read_text()


def _died(process: subprocess.Popen[bytes]) -> str | None:
    return None if process.poll() is None else f"it exited ({process.returncode})"
