"""GET /metrics: closed by default, behind a bearer token, and true to the database."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select
from sqlmodel import col

from drip.db import read_scope
from drip.metrics import smtp_class
from drip.models import OutboxMessage, OutboxStatus
from drip.settings import Settings
from drip.web.app import create_app
from tests.conftest import SettingsFactory
from tests.mailserver import MailServer, Recorder
from tests.processes import queue_lessons, start_worker
from tests.waiting import wait_until

TOKEN = "metrics-token-0123456789"


def scrape(client: TestClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Each metric's samples, keyed by their sorted labels."""
    response = client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def outbox_counts(engine: Engine) -> dict[str, int]:
    with read_scope(engine) as session:
        rows = session.execute(
            select(col(OutboxMessage.status), func.count()).group_by(col(OutboxMessage.status))
        )
        return {str(status): count for status, count in rows}


def scraped_outbox(found: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> dict[str, int]:
    return {dict(labels)["status"]: int(v) for labels, v in found["drip_outbox_messages"].items()}


@pytest.fixture
def metrics_client(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory
) -> TestClient:
    settings = make_settings(database_url, mail_server.port, metrics_token=TOKEN)
    return TestClient(create_app(settings))


def test_metrics_answer_404_until_a_token_is_set(settings: Settings) -> None:
    assert TestClient(create_app(settings)).get("/metrics").status_code == 404


def test_metrics_want_the_bearer_token(metrics_client: TestClient) -> None:
    assert metrics_client.get("/metrics").status_code == 401
    wrong = metrics_client.get("/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in wrong.text
    basic = metrics_client.get("/metrics", headers={"authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401


def test_a_scrape_mid_send_matches_the_database(
    database_url: str,
    engine: Engine,
    recorder: Recorder,
    mail_server: MailServer,
    metrics_client: TestClient,
    make_settings: SettingsFactory,
    tmp_path: Path,
) -> None:
    queue_lessons(engine, 120)
    frozen = threading.Event()
    release = threading.Event()

    def hold_after_forty(envelope: Envelope) -> str | None:
        # Block the sink's loop: every connection waits, so the outbox stands still.
        if len(recorder.raw) >= 40:
            frozen.set()
            release.wait(20)
        return None

    recorder.on_data = hold_after_forty
    worker = start_worker(make_settings(database_url, mail_server.port), tmp_path / "w.log")
    try:
        wait_until(frozen.is_set, 60, "the worker to be mid-send")
        wait_until(
            lambda: outbox_counts(engine).get("sent", 0) >= 40, 30, "the sent to be recorded"
        )
        found = scrape(metrics_client)
        assert scraped_outbox(found) == outbox_counts(engine)
        assert {"sent", "queued"} <= set(scraped_outbox(found))
        recorder.on_data = None
        release.set()
        wait_until(lambda: outbox_counts(engine) == {"sent": 120}, 60, "every message sent")
    finally:
        release.set()
        worker.terminate()
        worker.wait(30)

    found = scrape(metrics_client)
    assert scraped_outbox(found) == {"sent": 120}
    attempts = found["drip_delivery_attempts_last_hour"]
    assert attempts == {(("kind", "lesson"), ("smtp_class", "2xx"), ("status", "sent")): 120}
    assert found["drip_outbox_oldest_due_seconds"][()] == 0
    assert len(found["drip_worker_last_pass_timestamp_seconds"]) == 1
    assert found["drip_subscribers"] == {(("status", "active"),): 120}
    assert found["drip_feedback_percent_7d"] == {
        (("kind", "bounce"),): 0,
        (("kind", "complaint"),): 0,
    }


def test_a_message_left_waiting_shows_its_age(engine: Engine, metrics_client: TestClient) -> None:
    queue_lessons(engine, 1)
    found = scrape(metrics_client)
    assert found["drip_outbox_messages"] == {(("status", OutboxStatus.queued.value),): 1}
    assert found["drip_outbox_oldest_due_seconds"][()] > 0


@pytest.mark.parametrize(
    ("code", "expected"), [(250, "2xx"), (451, "4xx"), (550, "5xx"), (None, "none")]
)
def test_smtp_replies_are_counted_by_class(code: int | None, expected: str) -> None:
    assert smtp_class(code) == expected
