"""SQLite writers taking turns: the turn is held exactly while a TAKE_TURNS write
transaction is, whichever way it ends, and never by anything else."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from drip import db
from drip.db import READ_ONLY, get_engine, upgrade
from drip.turns import TAKE_TURNS


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Engine:
    engine = get_engine(f"sqlite:///{tmp_path / 'subscribers.db'}")
    upgrade(engine)
    return engine


@pytest.fixture
def impatient_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """A database whose writers give up on SQLite's lock after 50 ms, not 30 s."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 50)
    engine = get_engine(f"sqlite:///{tmp_path / 'impatient.db'}")
    upgrade(engine)
    return engine


def _turn_taken(engine: Engine) -> bool:
    """Whether some writer holds the database's turn: the lock file's flock, asked for
    on a file of its own, as another process would."""
    path = f"{engine.url.database}-writers"
    if not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it the lock, if it was ours
    return False


@contextmanager
def _writing(engine: Engine) -> Iterator[None]:
    with engine.execution_options(**{TAKE_TURNS: True}).connect() as conn:
        with conn.begin():
            conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
            yield


def test_a_write_holds_its_turn_until_it_commits(sqlite_engine: Engine) -> None:
    with _writing(sqlite_engine):
        assert _turn_taken(sqlite_engine)
    assert not _turn_taken(sqlite_engine)
    assert os.stat(f"{sqlite_engine.url.database}-writers").st_mode & 0o077 == 0


def test_a_write_gives_its_turn_back_when_it_fails(sqlite_engine: Engine) -> None:
    with pytest.raises(RuntimeError), _writing(sqlite_engine):
        raise RuntimeError("rolled back")
    assert not _turn_taken(sqlite_engine)


def test_a_connection_closed_mid_write_gives_its_turn_back(sqlite_engine: Engine) -> None:
    conn = sqlite_engine.execution_options(**{TAKE_TURNS: True}).connect()
    conn.begin()
    assert _turn_taken(sqlite_engine)
    conn.close()  # back to the pool, which rolls back
    assert not _turn_taken(sqlite_engine)


def test_only_take_turns_writers_take_a_turn(sqlite_engine: Engine) -> None:
    with sqlite_engine.connect() as conn, conn.begin():
        conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
        assert not _turn_taken(sqlite_engine)
    reader = sqlite_engine.execution_options(**{TAKE_TURNS: True, READ_ONLY: True})
    with reader.connect() as conn, conn.begin():
        assert not _turn_taken(sqlite_engine)


def test_a_begin_that_times_out_gives_its_turn_back(impatient_engine: Engine) -> None:
    engine = impatient_engine
    other = sqlite3.connect(str(engine.url.database), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a writer outside drip, that takes no turn
    conn = engine.execution_options(**{TAKE_TURNS: True}).connect()  # kept, as delivery's is
    try:
        with pytest.raises(OperationalError, match="locked"):
            conn.begin()
        assert not _turn_taken(engine)
    finally:
        conn.close()
        other.execute("ROLLBACK")
        other.close()


@pytest.mark.parametrize("spelling", ["the same engine", "a path spelled otherwise"])
def test_a_second_write_in_the_same_thread_does_not_wait_on_itself(
    impatient_engine: Engine, spelling: str
) -> None:
    """It meets SQLite's busy timeout, as it did before turns, instead of hanging; also
    through a second engine whose URL names the same file another way."""
    engine = impatient_engine
    path = Path(str(engine.url.database))
    second = engine
    if spelling != "the same engine":
        second = get_engine(f"sqlite:///{path.parent}/./{path.name}")
    errors: list[BaseException] = []

    def nested() -> None:
        try:
            with _writing(engine), _writing(second):
                pass
        except OperationalError as exc:
            errors.append(exc)

    thread = threading.Thread(target=nested, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the second write waited for its own thread's turn"
    assert errors and "locked" in str(errors[0])
    assert not _turn_taken(engine)


_OTHER_WRITER = """
import sys, time
from sqlalchemy import text
from drip import db
from drip.turns import TAKE_TURNS
db.BUSY_TIMEOUT_MS = 50  # SQLite's own wait alone would give up at once
engine = db.get_engine(sys.argv[1]).execution_options(**{TAKE_TURNS: True})
print("waiting", flush=True)
began = time.monotonic()
with engine.begin() as conn:
    conn.execute(text("INSERT INTO sending_hold (name, reason) VALUES ('other', 'x')"))
print(f"{time.monotonic() - began:.3f}", flush=True)
"""


def test_another_process_writes_once_the_turn_is_given_back(sqlite_engine: Engine) -> None:
    """It waits on the turn, not on SQLite's lock: so however long the holder takes
    (here ten times the other's busy timeout), it writes as soon as the turn is back."""
    url = sqlite_engine.url.render_as_string(hide_password=False)
    with _writing(sqlite_engine):
        child = subprocess.Popen(
            [sys.executable, "-c", _OTHER_WRITER, url],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "waiting"
        threading.Event().wait(0.5)  # ten times SQLite's busy timeout in the child
        assert child.poll() is None, "the other writer did not wait for its turn"
    waited = float(child.stdout.readline())
    assert child.wait(30) == 0
    assert waited >= 0.5
    with sqlite_engine.connect() as conn:
        assert conn.execute(text("SELECT reason FROM sending_hold WHERE name = 'other'")).one()
