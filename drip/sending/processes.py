"""`drip worker --processes N`: the scheduler's process and N-1 that only deliver.

A process renders, signs and sends one message at a time in Python, so a machine with
several cores sends faster with several processes on one outbox. They need nothing from
each other: the outbox's leases give each row to one of them, and DRIP_SEND_RATE is one
database row they all take from (drip.sending.ratelimit). A child runs Delivery over the
outbox, then waits DRIP_WORKER_INTERVAL seconds or until woken, and again.

Children are started with multiprocessing's spawn context: a fresh interpreter that
inherits no engine, connection or lock from the parent. Each holds the read end of a
pipe whose write end only the parent holds, and a thread in the child reads it:

- a message on it wakes the child: the parent sends one once a pass has queued what is due;
- end of file means the parent is gone, however it died (SIGKILL included): the child
  stops as SIGTERM stops it, and exits at once if that takes longer than `stop_grace`.
  The thread does not need the child's event loop, so a stuck child is not left behind.

SIGTERM or SIGINT to the parent sends SIGTERM to every child and waits for them: each
finishes the messages on the wire and hands the rest back, as a single worker does; one
that has not stopped after `stop_grace` is killed. A child that exits on its own (a
crash, the OOM killer) is logged with its exit code and started again after a pause that
doubles with each crash in a row, from 1 s to a minute, so one that cannot start does not
spin; the parent's passes go on meanwhile. Children log to the same stderr, each line
naming the child.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from drip.clock import utcnow
from drip.db import get_engine
from drip.logs import configure as configure_logs
from drip.sending.delivery import Delivery, worker_name
from drip.settings import Settings

log = logging.getLogger("drip.sending.processes")

#: A child that ran this long before it exited was not crashing in a loop.
HEALTHY_AFTER = 60.0
#: The longest pause before a crashed child is started again.
MAX_RESTART_DELAY = 60.0
_SPAWN = multiprocessing.get_context("spawn")


def stop_grace(settings: Settings) -> float:
    """How long an orphaned child may take to finish what is on the wire: one SMTP reply."""
    return settings.smtp_timeout + 5.0


@dataclass
class _Child:
    name: str
    process: BaseProcess
    wake: Connection


class Deliverers:
    """The parent's side: `count` delivery children, kept running until `terminate`."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self._children: dict[int, _Child] = {}
        self._keepers: list[asyncio.Task[None]] = []
        self._halt = asyncio.Event()

    def start(self) -> None:
        self._keepers = [
            asyncio.create_task(self._keep(index)) for index in range(1, self.count + 1)
        ]

    def wake(self) -> None:
        """Ask every child for a delivery run now (after a pass queued what is due)."""
        for child in list(self._children.values()):
            try:
                child.wake.send_bytes(b"w")
            except OSError:  # a full pipe: a wake is pending already; a dead child: restarted
                pass

    def terminate(self) -> None:
        """SIGTERM to every child; none is started again."""
        self._halt.set()
        for child in self._children.values():
            if child.process.exitcode is None:
                child.process.terminate()

    async def wait(self) -> None:
        """Until every child has exited (after `terminate`). One still running after
        `stop_grace` (one SMTP reply and then some) is stuck: it is killed, so it cannot
        keep the worker from stopping."""
        if not self._keepers:
            return
        grace = stop_grace(self.settings)
        _, running = await asyncio.wait(self._keepers, timeout=grace)
        if running:
            for child in self._children.values():
                if child.process.exitcode is None:
                    log.error("%s did not stop within %g s: killed", child.name, grace)
                    child.process.kill()
            await asyncio.gather(*running)

    def _spawn(self, index: int) -> _Child:
        name = f"deliverer-{index}"
        reader, writer = _SPAWN.Pipe(duplex=False)
        process = _SPAWN.Process(
            target=deliver_in_child, args=(self.settings, name, reader), name=name, daemon=True
        )
        process.start()
        reader.close()
        os.set_blocking(writer.fileno(), False)  # a wake never blocks the parent's loop
        return _Child(name, process, writer)

    async def _keep(self, index: int) -> None:
        crashes = 0
        while not self._halt.is_set():
            began = time.monotonic()
            try:
                child = self._children[index] = self._spawn(index)
            except Exception:  # no process now (out of memory, of pids): try again later
                log.exception("deliverer-%d could not be started", index)
            else:
                log.info("%s started (pid %s)", child.name, child.process.pid)
                code = await _exited(child.process)
                child.wake.close()
                if self._halt.is_set():
                    if code not in (0, -signal.SIGTERM):
                        log.warning("%s stopped with exit code %s", child.name, code)
                    return
                log.error(
                    "%s (pid %s) exited with code %s after %.0f s",
                    child.name,
                    child.process.pid,
                    code,
                    time.monotonic() - began,
                )
            crashes = 1 if time.monotonic() - began >= HEALTHY_AFTER else crashes + 1
            delay = min(2.0 ** (crashes - 1), MAX_RESTART_DELAY)
            log.warning("deliverer-%d: starting it again in %g s", index, delay)
            try:
                await asyncio.wait_for(self._halt.wait(), delay)
            except TimeoutError:
                pass


async def _exited(process: BaseProcess) -> int | None:
    """Wait, without a thread, for `process` to exit; its exit code (-N: killed by signal N)."""
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    sentinel = process.sentinel

    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(sentinel, readable)
    try:
        await gone
    finally:
        loop.remove_reader(sentinel)
    process.join()
    return process.exitcode


# -- the child's side --------------------------------------------------------------


class _Named(logging.Filter):
    """Prefixes each line with the child's name, so interleaved lines tell who wrote them."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.tag = f"[{name}] "

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.tag):
            record.msg, record.args = self.tag + message, None
        return True


def deliver_in_child(settings: Settings, name: str, wake: Connection) -> None:
    """A child's whole life: deliver until SIGTERM, SIGINT or its parent is gone."""
    configure_logs(settings.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Named(name))
    try:
        asyncio.run(deliver_until_stopped(settings, wake))
    except KeyboardInterrupt:  # a Ctrl-C to the process group before the handlers were set
        pass


async def deliver_until_stopped(settings: Settings, wake: Connection) -> None:
    loop = asyncio.get_running_loop()
    stop, woken = asyncio.Event(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    threading.Thread(
        target=_watch_parent,
        args=(wake, loop, stop, woken, stop_grace(settings)),
        name="parent-watch",
        daemon=True,
    ).start()
    engine = get_engine(settings.database_url)
    name = worker_name()
    log.info("worker %s: delivering", name)
    try:
        while not stop.is_set():
            woken.clear()
            try:
                delivery = Delivery(settings, engine, worker=name, clock=utcnow, stop=stop)
                report = await delivery.run()
            except Exception:  # logged; the next run tries again, as a failed pass does
                log.exception("delivery run failed")
            else:
                if report.total or report.halted:
                    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
                    halted = f"; stopped early: {report.halted}" if report.halted else ""
                    log.info("delivered: %s%s", counts or "nothing", halted)
            await _first(stop, woken, settings.worker_interval)
    finally:
        engine.dispose()
        log.info("worker %s stopped", name)


async def _first(stop: asyncio.Event, woken: asyncio.Event, timeout: float) -> None:
    """Until stopped, woken, or `timeout` seconds."""
    waits = {asyncio.create_task(stop.wait()), asyncio.create_task(woken.wait())}
    _, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _watch_parent(
    wake: Connection,
    loop: asyncio.AbstractEventLoop,
    stop: asyncio.Event,
    woken: asyncio.Event,
    grace: float,
) -> None:
    """In a thread: pass the parent's wakes on; when the pipe ends, the parent is gone,
    so stop, and leave at once if stopping takes longer than `grace` seconds."""
    try:
        while True:
            wake.recv_bytes()
            loop.call_soon_threadsafe(woken.set)
    except (EOFError, OSError):
        pass
    except RuntimeError:  # a wake for a loop already closed: this child is exiting anyway
        return
    try:
        loop.call_soon_threadsafe(stop.set)
    except RuntimeError:  # the loop is closed: this child is exiting anyway
        return
    log.warning("the parent process is gone: stopping")
    time.sleep(grace)
    log.error("still running %g s after the parent was gone: exiting now", grace)
    os._exit(1)
