"""Fixtures: the real databases (a SQLite file and the local PostgreSQL server) and SMTP."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import psycopg
import pytest
from playwright.sync_api import Browser
from sqlalchemy import Engine, text
from sqlmodel import SQLModel

from drip.db import get_engine, upgrade
from drip.settings import Settings, load_settings
from tests.browser import chromium
from tests.mailserver import MailServer, Recorder, serve

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("DRIP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SECRET = "test-secret-key-0123456789abcdef"
EMAILS = ROOT / "emails"


#: Test tiers, as pytest markers (README: "Running the tests"). A test is marked
#: `database` or `browser` by the fixtures it uses, `process` by its module (it starts
#: drip's own processes), and `unit` when it is none of these.
TIERS = ("database", "process", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {"database_url", "pg_url"}:
            item.add_marker(pytest.mark.database)
        if "browser" in fixtures:
            item.add_marker(pytest.mark.browser)
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)


def _pg_available() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped at the end."""
    problem = _pg_available()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI and does not answer: {problem}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {problem}")
    name = f"drip_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    upgrade(get_engine(url))
    yield url
    get_engine(url).dispose()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def truncate_pg(engine: Engine) -> None:
    tables = ", ".join(t.name for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database test runs on a migrated SQLite file and on the real PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'subscribers.db'}"
        upgrade(get_engine(url))
        return url
    url = request.getfixturevalue("pg_url")
    truncate_pg(get_engine(url))
    return str(url)


@pytest.fixture
def empty_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second database on the same kind of server as `database_url`, with no schema."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'second.db'}"
        return
    name = f"drip_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url.rsplit("/", 1)[0] + f"/{name}"
    yield url
    get_engine(url).dispose()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engine(database_url: str) -> Engine:
    return get_engine(database_url)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Real headless Chromium (Debian's package, driven by Playwright), one per test module:
    Playwright's sync API holds an event loop in this thread while it runs."""
    with chromium() as launched:
        yield launched


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def mail_server(recorder: Recorder) -> Iterator[MailServer]:
    with serve(recorder) as server:
        yield server


class SettingsFactory(Protocol):
    def __call__(self, database_url: str, smtp_port: int, **extra: object) -> Settings: ...


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings for this test: `make_settings(database_url, smtp_port, **overrides)`,
    with the shipped emails, the test secret, no send rate and no .env file."""

    def make(database_url: str, smtp_port: int, **extra: object) -> Settings:
        values: dict[str, object] = {
            "database_url": database_url,
            "smtp_port": smtp_port,
            "secret_key": SECRET,
            "emails_dir": EMAILS,
            "info_pack": EMAILS / "info-pack.pdf",
            "catcher_dir": tmp_path / "mail",
            "send_rate": 0,
            "_env_file": None,
        }
        values.update(extra)
        return load_settings(**values)

    return make


@pytest.fixture
def settings(
    database_url: str, mail_server: MailServer, make_settings: SettingsFactory
) -> Settings:
    return make_settings(database_url, mail_server.port)
