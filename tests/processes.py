"""Real drip processes for tests: queue work, start a worker, wait for an outcome."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, select

from drip.clock import utcnow
from drip.db import session_scope
from drip.models import MessageKind, OutboxMessage
from drip.sending.outbox import NewMessage, dedupe_key, enqueue_many
from drip.settings import Settings
from tests.conftest import SECRET
from tests.factories import many_active
from tests.mailserver import free_port
from tests.waiting import wait_until


def queue_lessons(engine: Engine, count: int) -> set[str]:
    subs = many_active(engine, count)
    with session_scope(engine) as session:
        enqueue_many(
            session,
            [
                NewMessage(
                    kind=MessageKind.lesson,
                    template="lesson-01-what-trigger-points-are",
                    email=s.email,
                    dedupe_key=dedupe_key(MessageKind.lesson, s.id, "what-trigger-points-are"),
                    due_at=utcnow(),
                    subscriber_id=s.id,
                    context={
                        "slug": "what-trigger-points-are",
                        "lesson_number": 1,
                        "lesson_total": 8,
                    },
                )
                for s in subs
            ],
            "localhost",
            utcnow(),
        )
        return set(session.execute(select(OutboxMessage.message_id)).scalars())


def command_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The DRIP_* variables that point a drip command at these settings (database, SMTP
    server, secret, course, pack and send rate), `extra` on top."""
    return {
        "DRIP_DATABASE_URL": settings.database_url,
        "DRIP_SMTP_PORT": str(settings.smtp_port),
        "DRIP_SECRET_KEY": settings.require_secret(),
        "DRIP_EMAILS_DIR": str(settings.emails_dir),
        "DRIP_INFO_PACK": str(settings.info_pack),
        "DRIP_SEND_RATE": str(settings.send_rate),
        **extra,
    }


def start_worker(settings: Settings, log: Path, *options: str) -> subprocess.Popen[bytes]:
    """A real `drip worker` (with `options`) on these settings, its output to `log`."""
    env = {
        **os.environ,
        "DRIP_DATABASE_URL": settings.database_url,
        "DRIP_SMTP_PORT": str(settings.smtp_port),
        "DRIP_SECRET_KEY": SECRET,
        "DRIP_EMAILS_DIR": str(settings.emails_dir),
        "DRIP_INFO_PACK": str(settings.info_pack),
        "DRIP_WORKER_INTERVAL": "0.2",
        "DRIP_LEASE_SECONDS": "3",
        "DRIP_SEND_RATE": str(settings.send_rate),
        # One process, whose crashes and races these tests count; with no rate, `auto`
        # would start one per core (tests/test_worker_processes.py passes --processes).
        "DRIP_WORKER_PROCESSES": "1",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "drip.cli", "worker", *options], env=env, stdout=out, stderr=out
        )


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def serving(
    command: list[str],
    health: str,
    log: Path,
    *,
    stop: signal.Signals = signal.SIGTERM,
    **popen: Any,
) -> Iterator[None]:
    """Run `command` (its output to `log`) until `health` answers 200, for the block;
    then stop it with `stop`, and kill it if it has not gone within 20 s."""
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **popen)
    try:
        wait_until(  # generous: on a busy shared machine start-up alone can take 30 s
            lambda: _answers(health),
            90,
            Path(command[0]).name,
            abort=lambda: (
                None
                if process.poll() is None
                else f"it exited ({process.returncode}): {log.read_text()[-2000:]}"
            ),
        )
        yield
    finally:
        process.send_signal(stop)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextmanager
def drip_serve(settings: Settings, log: Path, **env: str) -> Iterator[str]:
    """A real `drip serve` process on a free loopback port; yields its base URL.

    Its settings are those given, plus `env` (DRIP_* variables) on top.
    """
    port = free_port()
    environment = {
        **os.environ,
        "DRIP_DATABASE_URL": settings.database_url,
        "DRIP_SMTP_PORT": str(settings.smtp_port),
        "DRIP_SECRET_KEY": settings.require_secret(),
        "DRIP_EMAILS_DIR": str(settings.emails_dir),
        "DRIP_INFO_PACK": str(settings.info_pack),
        "DRIP_CATCHER_DIR": str(settings.catcher_dir),
        **env,
    }
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "drip.cli", "serve", "--port", str(port)]
    with serving(command, f"{base}/healthz", log, env=environment, cwd=log.parent):
        yield base


def start_inbound(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`drip inbound` on 127.0.0.1:`port`, on the test's database, secret and bounce domain."""
    assert settings.secret_key is not None
    assert settings.bounce_domain
    env = {
        **os.environ,
        "DRIP_DATABASE_URL": settings.database_url,
        "DRIP_SECRET_KEY": settings.secret_key.get_secret_value(),
        "DRIP_BOUNCE_DOMAIN": settings.bounce_domain,
        "DRIP_EMAILS_DIR": str(settings.emails_dir),
        "DRIP_INFO_PACK": str(settings.info_pack),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "drip.cli", "inbound", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=out,
            cwd=log.parent,
        )
    wait_until(lambda: _listening(port) or process.poll() is not None, 30, "drip inbound")
    if process.poll() is not None:
        raise AssertionError(f"drip inbound exited: {log.read_text()}")
    return process


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
