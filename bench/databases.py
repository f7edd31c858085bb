"""Throwaway databases for a benchmark: a SQLite file, or a fresh PostgreSQL database."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from drip.db import get_engine, upgrade

PG_ADMIN = os.environ.get("DRIP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="drip-bench-") as folder:
        url = f"sqlite:///{Path(folder) / 'subscribers.db'}"
        upgrade(get_engine(url))
        yield url
        get_engine(url).dispose()


@contextmanager
def postgres_database() -> Iterator[str]:
    name = f"drip_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        upgrade(get_engine(url))
        yield url
    finally:
        get_engine(url).dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def database(kind: str) -> Iterator[str]:
    """`kind` is "sqlite" or "postgresql"."""
    with sqlite_database() if kind == "sqlite" else postgres_database() as url:
        yield url
