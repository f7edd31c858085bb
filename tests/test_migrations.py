"""Upgrades: a database made by the first release, with real rows, comes up to today's schema."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, func, select

from drip.clock import utcnow
from drip.db import DatabaseError, ensure_schema, get_engine, schema_state, upgrade, upgrade_sql
from drip.sending.tick import run_pass
from tests.conftest import EMAILS, SECRET, SettingsFactory
from tests.mailserver import MailServer, Recorder

FIRST_RELEASE = "0001"


def first_release_database(engine: Engine) -> None:
    """The schema of the first release, holding what it wrote for one reader: confirmed
    three days ago, welcome and lesson 1 sent, lesson 2 due an hour ago."""
    upgrade(engine, FIRST_RELEASE)
    tables = MetaData()
    tables.reflect(engine)
    now = utcnow().replace(tzinfo=None)
    with engine.begin() as conn:
        subscriber = tables.tables["subscriber"]
        subscriber_id = conn.execute(
            subscriber.insert().returning(subscriber.c.id),
            {
                "email": "sam@example.com",
                "email_key": "sam@example.com",
                "name": "Sam Reader",
                "status": "active",
                "timezone": "UTC",
                "created_at": now - timedelta(days=3),
                "consent_at": now - timedelta(days=3),
                "consent_source": "form",
                "consent_ip": "192.0.2.7",
                "confirmed_at": now - timedelta(days=3),
                "token_salt": "0" * 32,
                "confirm_token_hash": "c" * 64,
                "unsubscribe_token_hash": "u" * 64,
            },
        ).scalar_one()
        conn.execute(
            tables.tables["course_progress"].insert(),
            {
                "subscriber_id": subscriber_id,
                "started_at": now - timedelta(days=3),
                "lessons_sent": 1,
                "last_sent_at": now - timedelta(days=2),
                "next_due_at": now - timedelta(hours=1),
            },
        )
        outbox = tables.tables["outbox"]
        lesson_1 = "what-trigger-points-are"
        for n, (kind, template, key, context) in enumerate(
            [
                ("welcome", "welcome", "welcome:subscriber:1", {}),
                (
                    "lesson",
                    f"lesson-01-{lesson_1}",
                    f"lesson:{lesson_1}:subscriber:1",
                    {"slug": lesson_1, "lesson_number": 1, "lesson_total": 8},
                ),
            ],
            start=1,
        ):
            sent = now - timedelta(days=3 - n)
            outbox_id = conn.execute(
                outbox.insert().returning(outbox.c.id),
                {
                    "dedupe_key": key,
                    "kind": kind,
                    "template": template,
                    "subscriber_id": subscriber_id,
                    "email": "sam@example.com",
                    "context": context,
                    "status": "sent",
                    "due_at": sent,
                    "attempts": 1,
                    "last_smtp_code": 250,
                    "message_id": f"<first-release-{n}@localhost>",
                    "created_at": sent,
                    "updated_at": sent,
                    "sent_at": sent,
                },
            ).scalar_one()
            conn.execute(
                tables.tables["delivery_attempt"].insert(),
                {"outbox_id": outbox_id, "at": sent, "status": "sent", "smtp_code": 250},
            )


def test_a_first_release_database_with_rows_upgrades_and_carries_on(
    empty_database_url: str,
    make_settings: SettingsFactory,
    mail_server: MailServer,
    recorder: Recorder,
) -> None:
    engine = get_engine(empty_database_url)
    first_release_database(engine)
    assert schema_state(engine) == "outdated"
    with pytest.raises(DatabaseError, match="run `drip db upgrade`"):
        ensure_schema(engine)

    if empty_database_url.startswith("sqlite"):
        with pytest.raises(DatabaseError, match="take a `drip backup FILE`"):
            upgrade_sql(engine)
    else:
        assert "ALTER TABLE" in upgrade_sql(engine)
    assert schema_state(engine) == "outdated", "--sql runs nothing"

    upgrade(engine)
    assert schema_state(engine) == "current"
    with engine.connect() as conn:
        tables = MetaData()
        tables.reflect(conn)
        counts = {
            name: conn.execute(select(func.count()).select_from(tables.tables[name])).scalar()
            for name in ("subscriber", "course_progress", "outbox", "delivery_attempt")
        }
    assert counts == {"subscriber": 1, "course_progress": 1, "outbox": 2, "delivery_attempt": 2}

    settings = make_settings(empty_database_url, mail_server.port)
    asyncio.run(run_pass(settings))
    assert [m["To"].addresses[0].addr_spec for m in recorder.messages] == ["sam@example.com"]
    with engine.connect() as conn:
        outbox = tables.tables["outbox"]
        newest = conn.execute(
            select(outbox.c.template, outbox.c.status).order_by(outbox.c.id.desc()).limit(1)
        ).one()
    assert tuple(newest) == ("lesson-02-finding-trigger-points", "sent")
    assert upgrade_sql(engine).startswith("-- the database schema is up to date")


@pytest.mark.parametrize(
    "command",
    [["tick"], ["logs"], ["subscribers", "list"], ["newsletter", "send", "--dry-run", "x.md"]],
)
def test_every_command_refuses_an_outdated_schema_and_names_the_fix(
    empty_database_url: str, command: list[str], tmp_path: Path
) -> None:
    first_release_database(get_engine(empty_database_url))
    env = {
        **os.environ,
        "DRIP_DATABASE_URL": empty_database_url,
        "DRIP_SECRET_KEY": SECRET,
        "DRIP_EMAILS_DIR": str(EMAILS),
        "DRIP_INFO_PACK": str(EMAILS / "info-pack.pdf"),
    }
    (tmp_path / "x.md").write_text("---\nsubject: Hello\n---\nHi {{ name }}\n")
    result = subprocess.run(
        [sys.executable, "-m", "drip.cli", *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().endswith("run `drip db upgrade`"), result.stderr
    assert "Traceback" not in result.stderr
