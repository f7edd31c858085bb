"""`drip dev`, as `make run` starts it: one process with web, scheduler and mail catcher.

A newcomer's first minutes, end to end: sign up, find the confirmation in the caught
mail, confirm, and receive the welcome email with the information pack, then lessons.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from tests.conftest import EMAILS
from tests.mailserver import free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.process


def _caught(directory: Path) -> list[EmailMessage]:
    box = mailbox.Maildir(directory, create=True)
    messages = []
    for key in box.keys():
        parsed = email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        messages.append(parsed)
    return messages


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    port, smtp_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIP_")}
    env.update(
        DRIP_SMTP_PORT=str(smtp_port),
        DRIP_EMAILS_DIR=str(EMAILS),
        DRIP_INFO_PACK=str(EMAILS / "info-pack.pdf"),
        DRIP_WORKER_INTERVAL="0.5",
        COLUMNS="40",  # a narrow terminal: the banner must not break a URL or the password
    )
    log = tmp_path / "dev.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "drip.cli",
                "dev",
                "--port",
                str(port),
                "--minutes-per-day",
                "0.02",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            assert process.poll() is None, log.read_text()
            return False

    try:
        wait_until(healthy, 60, "drip dev to answer /healthz")
        yield base, tmp_path, process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def test_drip_dev_starts_and_says_where_everything_is(
    dev: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    base, cwd, process = dev
    health = httpx.get(f"{base}/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    lines = (cwd / "dev.log").read_text().splitlines()
    assert any(line.split()[-1:] == [f"{base}/"] for line in lines)
    assert any(line.split()[-1:] == [f"{base}/admin/outbox"] for line in lines)
    password = (cwd / ".drip" / "admin-password").read_text().strip()
    assert f"    password {password}" in lines  # whole, on a line of its own
    assert (cwd / "subscribers.db").is_file()
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0


def test_a_newcomer_sees_the_whole_course_arrive(
    dev: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    base, cwd, _ = dev
    mail = cwd / ".drip" / "mail"
    response = httpx.post(
        f"{base}/subscribe",
        data={"email": "newcomer@example.com", "name": "Nia", "consent": "yes", "website": ""},
    )
    assert response.status_code == 303
    assert response.headers["location"].endswith("/thanks")
    wait_until(lambda: len(_caught(mail)) >= 1, 30, "the confirmation email")
    [confirmation] = _caught(mail)
    assert confirmation["List-Unsubscribe"] is None
    text = confirmation.get_body(("plain",))
    assert text is not None
    link = re.search(r"http://\S+/confirm/\S+", text.get_content())
    assert link is not None
    assert httpx.get(link.group(0)).status_code == 200  # one button, nothing confirmed yet
    assert httpx.post(link.group(0)).status_code == 200
    # One course day lasts about a second: the welcome and every lesson arrive in turn.
    wait_until(lambda: len(_caught(mail)) >= 4, 60, "the welcome and the first lessons")
    attachments = [[p.get_filename() for p in m.iter_attachments()] for m in _caught(mail)]
    assert [a for a in attachments if a] == [["trigger-point-information-pack.pdf"]]
    password = (cwd / ".drip" / "admin-password").read_text().strip()
    outbox = httpx.get(f"{base}/admin/outbox", auth=("admin", password))
    assert outbox.status_code == 200
    assert "newcomer@example.com" in outbox.text
    # The catcher takes each mail quietly: no per-connection SMTP chatter in the output.
    output = (cwd / "dev.log").read_text()
    assert "mail.log" not in output, output


def test_a_busy_port_is_one_plain_line_and_no_running_banner(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIP_")}
    env.update(
        DRIP_SMTP_PORT=str(free_port()),
        DRIP_EMAILS_DIR=str(EMAILS),
        DRIP_INFO_PACK=str(EMAILS / "info-pack.pdf"),
    )
    try:
        result = subprocess.run(
            [sys.executable, "-m", "drip.cli", "dev", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        taken.close()
    assert result.returncode == 2
    assert "running" not in result.stdout
    assert "password" not in result.stdout
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"drip: cannot listen on 127.0.0.1:{port}")
    assert "--port" in line
