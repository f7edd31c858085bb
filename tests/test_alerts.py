"""Alerts to a webhook receiver on loopback: once per incident, once more when it clears."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from drip import alerts
from drip.clock import utcnow
from drip.db import read_scope
from drip.models import WorkerHeartbeat
from drip.sending.tick import run_pass
from drip.settings import Settings
from tests.conftest import SettingsFactory
from tests.mailserver import MailServer, free_port
from tests.processes import drip_serve, queue_lessons, start_worker
from tests.waiting import wait_until

AFTER = timedelta(minutes=15)


@dataclass
class Receiver:
    """A webhook endpoint on loopback that keeps every JSON body it is sent."""

    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    #: Answers to give before answering 200.
    failures: list[int] = field(default_factory=list)

    def states(self) -> list[tuple[str, str]]:
        return [(p["alert"], p["status"]) for p in self.posts]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    port = free_port()
    found = Receiver(f"http://127.0.0.1:{port}/hooks/drip")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            with lock:
                status = found.failures.pop(0) if found.failures else 200
                if status == 200:
                    found.posts.append(json.loads(body))
                    found.paths.append(self.path)
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


def worker_passed(engine: Engine) -> bool:
    with read_scope(engine) as session:
        return session.execute(select(func.count()).select_from(WorkerHeartbeat)).scalar() != 0


@pytest.fixture
def watched(
    database_url: str, mail_server: MailServer, receiver: Receiver, make_settings: SettingsFactory
) -> Settings:
    return make_settings(database_url, mail_server.port, alert_webhook=receiver.url)


def test_a_stopped_worker_raises_one_alert_and_one_cleared_when_it_is_back(
    watched: Settings, engine: Engine, receiver: Receiver
) -> None:
    start = utcnow()
    asyncio.run(run_pass(watched, start))
    assert receiver.posts == []

    later = start + AFTER + timedelta(minutes=1)
    assert [n.name for n in alerts.check(watched, engine, later)] == ["worker_stopped"]
    assert alerts.check(watched, engine, later + timedelta(minutes=5)) == []
    assert receiver.states() == [("worker_stopped", "firing")]
    assert "the last scheduler pass ended at" in receiver.posts[0]["detail"]

    asyncio.run(run_pass(watched, later + timedelta(minutes=6)))  # the worker is back
    assert receiver.states() == [("worker_stopped", "firing"), ("worker_stopped", "resolved")]
    assert receiver.posts[1]["title"].endswith("(cleared)")


def test_processes_noticing_at_once_send_one_alert(
    watched: Settings, engine: Engine, receiver: Receiver
) -> None:
    start = utcnow()
    asyncio.run(run_pass(watched, start))
    later = start + AFTER + timedelta(minutes=1)
    with ThreadPoolExecutor(4) as pool:
        sent = list(pool.map(lambda _: alerts.check(watched, engine, later), range(4)))
    assert sum(len(s) for s in sent) == 1
    assert receiver.states() == [("worker_stopped", "firing")]


def test_an_alert_the_receiver_refused_is_sent_again(
    watched: Settings, engine: Engine, receiver: Receiver
) -> None:
    start = utcnow()
    asyncio.run(run_pass(watched, start))
    receiver.failures = [500]
    later = start + AFTER + timedelta(minutes=1)
    assert alerts.check(watched, engine, later) == []
    assert receiver.posts == []
    assert [n.name for n in alerts.check(watched, engine, later)] == ["worker_stopped"]


def test_mail_left_waiting_and_a_failing_smtp_server_are_alerts(
    database_url: str, engine: Engine, receiver: Receiver, make_settings: SettingsFactory
) -> None:
    refused = make_settings(database_url, free_port(), alert_webhook=receiver.url)
    queue_lessons(engine, 2)
    start = utcnow()
    asyncio.run(run_pass(refused, start))  # nothing listens: every attempt is deferred
    later = start + AFTER + timedelta(minutes=1)
    asyncio.run(run_pass(refused, later))
    raised = dict(receiver.states())
    assert raised == {"queue_stuck": "firing", "smtp_failing": "firing"}
    failing = next(p for p in receiver.posts if p["alert"] == "smtp_failing")
    assert "was deferred" in failing["detail"]


def test_the_payload_suits_slack_ntfy_and_generic_receivers() -> None:
    notice = alerts.Notice("queue_stuck", True, "the oldest due message has waited", utcnow())
    body = notice.payload("drip-alerts")
    assert body["text"].startswith("drip: mail is waiting to be sent.")  # Slack
    assert body["topic"] == "drip-alerts"  # ntfy, from https://ntfy.sh/#drip-alerts
    assert {"title", "message", "tags"} <= set(body)  # ntfy
    assert (body["alert"], body["status"]) == ("queue_stuck", "firing")
    datetime.fromisoformat(str(body["at"]))


def test_no_webhook_no_alerts(settings: Settings, engine: Engine) -> None:
    asyncio.run(run_pass(settings, utcnow()))
    assert alerts.check(settings, engine, utcnow() + timedelta(days=1)) == []


def test_drip_serve_notices_a_stopped_worker_and_the_worker_clears_it(
    watched: Settings, engine: Engine, receiver: Receiver, tmp_path: Path
) -> None:
    """Real processes: `drip serve` watches; a `drip worker` is stopped, then started."""
    environment = {"DRIP_ALERT_WEBHOOK": receiver.url, "DRIP_ALERT_AFTER_MINUTES": "0.05"}
    os.environ.update(environment)  # start_worker passes os.environ on
    try:
        worker = start_worker(watched, tmp_path / "worker.log")
        wait_until(lambda: worker_passed(engine), 30, "the worker's first pass")
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        with drip_serve(watched, tmp_path / "serve.log", **environment):
            wait_until(
                lambda: ("worker_stopped", "firing") in receiver.states(),
                30,
                "drip serve to raise the alert",
            )
            worker = start_worker(watched, tmp_path / "worker.log")
            try:
                wait_until(
                    lambda: ("worker_stopped", "resolved") in receiver.states(),
                    30,
                    "the worker to clear it",
                )
            finally:
                worker.terminate()
                worker.wait(30)
    finally:
        for name in environment:
            os.environ.pop(name, None)
    # Once each (the worker stopped again at the end may have raised it anew since).
    assert receiver.states()[:2] == [("worker_stopped", "firing"), ("worker_stopped", "resolved")]
    assert receiver.paths[0] == "/hooks/drip"
