"""`drip worker --processes 2`: a real parent and delivery child against a real SMTP server.

Each message goes once; SIGTERM stops every process; a SIGKILLed parent leaves no child
sending mail; a crashed child is logged and started again.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from drip import settings as settings_module
from drip.cli import app
from drip.db import session_scope
from drip.models import OutboxMessage, OutboxStatus
from drip.sending import processes
from drip.sending.processes import Deliverers
from drip.settings import Settings, SettingsError, cores, load_settings
from tests.conftest import SettingsFactory
from tests.factories import attempts, outbox
from tests.mailserver import Recorder, serve
from tests.processes import queue_lessons, start_worker
from tests.waiting import wait_until


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return state, int(ppid)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped (a container's pid 1 may never reap)."""
    found = _stat(pid)
    return found is not None and found[0] not in "ZX"


def children(pid: int) -> set[int]:
    """The live processes whose parent is `pid`: delivery children and multiprocessing's
    resource tracker."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            if stat[1] == pid and stat[0] not in "ZX":
                found.add(int(entry.name))
    return found


def deliverers(pid: int) -> set[int]:
    """The delivery children of `pid`."""
    found = set()
    for child in children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.add(child)
    return found


def gone(pids: set[int], timeout: float = 10) -> None:
    """Every one of `pids` exits; multiprocessing's resource tracker does so only once it
    sees its parent's end of their pipe close, a moment after the parent exits."""
    wait_until(lambda: not [pid for pid in pids if alive(pid)], timeout, f"{pids} to exit")


def ready(worker: subprocess.Popen[bytes], log: Path, times: int = 1) -> None:
    """Wait until the delivery child has said it is delivering `times` times in all."""

    def died() -> str | None:
        return None if worker.poll() is None else f"exited: {log.read_text()[-2000:]}"

    wait_until(
        lambda: _delivering(log) >= times,
        90,
        "the delivery child",
        abort=died,
    )


def busy(
    worker: subprocess.Popen[bytes], log: Path, engine: Engine, recorder: Recorder
) -> set[str]:
    """Once the child delivers, 1,500 lessons queued and the first 200 arrived: both
    processes are sending. The queued lessons' Message-IDs."""
    ready(worker, log)
    expected = queue_lessons(engine, 1500)
    wait_until(lambda: len(recorder.raw) >= 200, 60, "the first sends")
    return expected


def _delivering(log: Path) -> int:
    return sum(
        1
        for line in log.read_text().splitlines()
        if "[deliverer-1] worker " in line and line.endswith(": delivering")
    )


def stop(worker: subprocess.Popen[bytes], log: Path, sig: int = signal.SIGTERM) -> None:
    worker.send_signal(sig)
    assert worker.wait(60) == 0, log.read_text()[-3000:]


def _all_sent(engine: Engine) -> bool:
    return all(row.status == OutboxStatus.sent for row in outbox(engine))


#: A worker, its output (worker.log), the recording SMTP server's recorder, its settings.
Running = tuple[subprocess.Popen[bytes], Path, Recorder, Settings]
TwoProcesses = Callable[..., AbstractContextManager[Running]]


@pytest.fixture
def two_processes(
    database_url: str, tmp_path: Path, make_settings: SettingsFactory
) -> TwoProcesses:
    """`with two_processes(**settings_changes) as (worker, log, recorder, settings)`:
    `drip worker --processes 2` sending to a recording SMTP server, which stops when the
    block ends. The test stops the worker itself."""

    @contextmanager
    def run(**changes: object) -> Iterator[Running]:
        recorder = Recorder()
        log = tmp_path / "worker.log"
        with serve(recorder) as server:
            settings = make_settings(database_url, server.port, **changes)
            yield start_worker(settings, log, "--processes", "2"), log, recorder, settings

    return run


@pytest.mark.process
def test_two_processes_deliver_each_message_once(
    engine: Engine, two_processes: TwoProcesses
) -> None:
    with two_processes() as (worker, log, recorder, settings):
        try:
            ready(worker, log)  # both idle and polling: the mail is shared from the start
            (child,) = deliverers(worker.pid)
            expected = queue_lessons(engine, 600)
            wait_until(lambda: len(recorder.raw) >= len(expected), 120, "every message")
            wait_until(lambda: _all_sent(engine), 60, "every row recorded as sent")
            helpers = children(worker.pid)
        finally:
            stop(worker, log, signal.SIGINT)  # as SIGTERM: every process stops
    assert not alive(child)  # the parent waited for it
    gone(helpers)
    assert Counter(recorder.message_ids()) == Counter(expected)  # each exactly once
    # Both processes sent: the parent (its pass) and the child.
    senders = {a.worker.split(":")[1] for a in attempts(engine)}
    assert senders == {str(worker.pid), str(child)}
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert f"[deliverer-1] worker {socket.gethostname()}:{child}:" in text  # lines name it


@pytest.mark.process
def test_sigterm_stops_every_process_and_hands_back_the_rest(
    engine: Engine, two_processes: TwoProcesses
) -> None:
    with two_processes(send_rate=100) as (worker, log, recorder, settings):
        try:
            expected = busy(worker, log, engine, recorder)
            helpers = children(worker.pid)
            delivering = deliverers(worker.pid)
            assert delivering
        finally:
            stop(worker, log)
        assert not [pid for pid in delivering if alive(pid)]  # the parent waited for them
        gone(helpers)
    with session_scope(engine) as session:
        rows = list(session.execute(select(OutboxMessage)).scalars())
    # Nothing is left leased to a stopped process: what was not sent is queued for the next.
    assert {r.status for r in rows} <= {OutboxStatus.sent, OutboxStatus.queued}
    assert all(r.leased_by is None for r in rows)
    sent = [r.message_id for r in rows if r.status == OutboxStatus.sent]
    assert Counter(recorder.message_ids()) == Counter(sent)
    assert len(sent) < len(expected)
    text = log.read_text()
    assert "[deliverer-1] worker" in text and text.count("stopped") >= 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.process
def test_a_stuck_child_is_killed_so_the_worker_stops(
    engine: Engine, two_processes: TwoProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that does not stop (here: stopped by SIGSTOP, so SIGTERM waits) is killed
    after DRIP_SMTP_TIMEOUT and 5 s, and the parent still exits cleanly."""
    monkeypatch.setenv("DRIP_SMTP_TIMEOUT", "1")  # start_worker passes the environment on
    with two_processes() as (worker, log, _, _):
        try:
            ready(worker, log)
            [child] = deliverers(worker.pid)
            os.kill(child, signal.SIGSTOP)
            began = time.monotonic()
        finally:
            stop(worker, log)
        assert time.monotonic() - began < 30
        assert not alive(child)
        assert "deliverer-1 did not stop within 6 s: killed" in log.read_text()


@pytest.mark.process
def test_a_killed_parent_leaves_no_child_sending(
    engine: Engine, two_processes: TwoProcesses
) -> None:
    with two_processes(send_rate=100) as (worker, log, recorder, settings):
        try:
            busy(worker, log, engine, recorder)
            helpers = children(worker.pid)
            assert deliverers(worker.pid)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
        # The child sees its pipe from the parent end and stops at once, well within
        # DRIP_SMTP_TIMEOUT's grace.
        gone(helpers, 30)
        after = len(recorder.raw)
        time.sleep(1)
        assert len(recorder.raw) == after  # nobody sends any more
    assert "the parent process is gone" in log.read_text(), log.read_text()[-3000:]


@pytest.mark.process
def test_a_crashed_child_is_logged_and_started_again(
    engine: Engine, two_processes: TwoProcesses
) -> None:
    with two_processes(send_rate=200) as (worker, log, recorder, settings):
        try:
            expected = busy(worker, log, engine, recorder)
            (child,) = deliverers(worker.pid)
            os.kill(child, signal.SIGKILL)
            ready(worker, log, times=2)  # started again, and delivering
            (again,) = deliverers(worker.pid)
            assert again != child
            # Each send reaches the server before its outcome is recorded: once every row
            # is recorded as sent, every message has arrived.
            wait_until(lambda: _all_sent(engine), 120, "every row recorded as sent", every=0.5)
        finally:
            stop(worker, log)
    text = log.read_text()
    assert f"deliverer-1 (pid {child}) exited with code -9 after" in text, text[-3000:]
    assert "deliverer-1: starting it again in 1 s" in text
    # A kill between the server's 250 and the commit may send that message twice: at
    # most one per connection of the killed child.
    received = recorder.message_ids()
    assert set(received) == expected
    assert len(received) - len(expected) <= settings.smtp_concurrency
    senders = {a.worker.split(":")[1] for a in attempts(engine)}
    assert str(again) in senders


@pytest.mark.unit
def test_processes_are_a_number_or_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIP_WORKER_PROCESSES", raising=False)
    monkeypatch.delenv("DRIP_SEND_RATE", raising=False)
    assert load_settings(_env_file=None).worker_processes == "auto"
    # The default rate (10 a second) is one process's easy work: a small server keeps one.
    assert load_settings(_env_file=None).worker_process_count == 1
    monkeypatch.setattr(settings_module, "cores", lambda: 8)
    for rate, count in (("0", 8), ("250", 3), ("100", 1), ("5000", 8)):
        monkeypatch.setenv("DRIP_SEND_RATE", rate)
        assert load_settings(_env_file=None).worker_process_count == count, rate
    monkeypatch.undo()
    monkeypatch.setenv("DRIP_WORKER_PROCESSES", "auto")
    monkeypatch.setenv("DRIP_SEND_RATE", "0")
    assert load_settings(_env_file=None).worker_process_count == cores() >= 1
    monkeypatch.setenv("DRIP_WORKER_PROCESSES", " 3 ")
    assert load_settings(_env_file=None).worker_process_count == 3
    for bad in ("0", "-1", "two", "1.5", ""):
        monkeypatch.setenv("DRIP_WORKER_PROCESSES", bad)
        with pytest.raises(SettingsError, match="DRIP_WORKER_PROCESSES"):
            load_settings(_env_file=None)


@pytest.mark.unit
def test_a_bad_processes_option_is_one_plain_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIP_SECRET_KEY", "x" * 32)
    result = CliRunner().invoke(app, ["worker", "--processes", "0"])
    assert result.exit_code == 2
    assert "--processes" in result.output and "at least 1" in result.output


@pytest.mark.unit
async def test_a_child_that_cannot_be_started_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tries: list[int] = []

    def refuse(self: Deliverers, index: int) -> NoReturn:
        tries.append(index)
        raise OSError("no more processes")

    monkeypatch.setattr(Deliverers, "_spawn", refuse)
    monkeypatch.setattr(processes, "MAX_RESTART_DELAY", 0.05)
    others = Deliverers(load_settings(_env_file=None), 1)
    others.start()
    await asyncio.sleep(0.5)
    others.terminate()
    await asyncio.wait_for(others.wait(), 5)
    assert len(tries) >= 3  # logged, then again after a pause, never given up
    assert "deliverer-1 could not be started" in caplog.text


@pytest.mark.unit
def test_an_orphan_stops_and_leaves_at_once_if_stopping_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The watcher thread of a child whose parent is gone: a wake is passed on, then the
    pipe's end stops the child, and after the grace the process exits whatever it does."""
    exits: list[int] = []
    monkeypatch.setattr(processes.os, "_exit", exits.append)
    reader, writer = multiprocessing.Pipe(duplex=False)
    writer.send_bytes(b"w")
    writer.close()  # the parent is gone
    loop = asyncio.new_event_loop()
    stop, woken = asyncio.Event(), asyncio.Event()
    try:
        processes._watch_parent(reader, loop, stop, woken, 0.01)
        loop.run_until_complete(asyncio.sleep(0))  # the callbacks it scheduled
    finally:
        loop.close()
    assert woken.is_set() and stop.is_set()
    assert exits == [1]
