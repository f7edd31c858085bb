"""Delivery against its ceiling: drip's real path beside a bare aiosmtplib loop.

(a) the ceiling: the same messages, already built, sent by a bare aiosmtplib loop with
reused connections and no database, at its best over 4, 8 and 16 connections;
(b) drip's path in this process: claim from the outbox, render, build, send, record,
with the rate limit off; drip's CPU per message is split by phase: each phase's own
thread CPU time (`time.thread_time`, so a loaded machine slows it less than wall time),
and what is left of the process's CPU is the SMTP client and the event loop;
(c) `drip worker` with its default settings (the rate limit off), whose ratio to (a)
is the target. All send to the same server (the counting aiosmtpd sink in its own
process, then a private Postfix), in the same run. Then `drip worker --processes N`
(N = 1, 2) drains one outbox on each database: how delivery scales with processes.

The receiving server and the database run on this machine too, so (a) and (c) share its
cores with them: the machine's CPU per message (all processes, from /proc/stat) during
(a) and (c) shows what each costs the machine, and so the highest ratio c/a it allows.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiosmtplib
from sqlalchemy import func, insert, select

from bench.databases import database
from bench.postfix import Unavailable, postfix
from bench.report import Figure, at_least, info, under
from bench.sink import Receiver, sink
from drip.clock import utcnow
from drip.db import get_engine, session_scope
from drip.models import CourseProgress, MessageKind, OutboxMessage, OutboxStatus, Subscriber
from drip.sending import delivery as delivery_module
from drip.sending import prepare as prepare_module
from drip.sending.delivery import Delivery
from drip.sending.message import Envelope
from drip.sending.outbox import NewMessage, dedupe_key, enqueue_many
from drip.settings import Settings, cores

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 4
LESSON = "lesson-02-finding-trigger-points"
SECRET = "bench-secret-key-0123456789abcdef"
TARGET_RATIO = 0.9
TARGET_CPU_MS = 1.0
#: The bare loop's connection counts: the ceiling is the best of them.
CEILING_CONNECTIONS = (CONCURRENCY, 2 * CONCURRENCY, 4 * CONCURRENCY)
#: Phases timed on their own; "SMTP client and event loop" is the rest of the process's CPU.
PHASES = ("claim and read", "render", "compose", "record")


def bench_settings(url: str, port: int) -> Settings:
    return Settings(
        database_url=url,
        smtp_port=port,
        smtp_concurrency=CONCURRENCY,
        send_rate=0,
        secret_key=SECRET,
        emails_dir=ROOT / "emails",
        info_pack=ROOT / "emails" / "info-pack.pdf",
        _env_file=None,  # type: ignore[call-arg]
    )


def seed(url: str, count: int) -> None:
    """`count` active subscribers one lesson into the course, each with the next lesson queued."""
    engine = get_engine(url)
    now = utcnow()
    with session_scope(engine) as session:
        session.execute(
            insert(Subscriber),
            [
                {
                    "email": f"reader{n}@example.com",
                    "email_key": f"reader{n}@example.com",
                    "name": f"Reader {n}",
                    "status": "active",
                    "timezone": "Europe/Berlin",
                    "created_at": now,
                    "confirmed_at": now,
                    "token_salt": f"{n:032x}",
                    "confirm_token_hash": f"c{n:063x}",
                    "unsubscribe_token_hash": f"u{n:063x}",
                }
                for n in range(count)
            ],
        )
        ids = list(session.execute(select(Subscriber.id).order_by(Subscriber.id)).scalars())
        session.execute(
            insert(CourseProgress),
            [
                {"subscriber_id": i, "started_at": now, "lessons_sent": 2, "last_sent_at": now}
                for i in ids
            ],
        )
        enqueue_many(
            session,
            [
                NewMessage(
                    kind=MessageKind.lesson,
                    template=LESSON,
                    email=f"reader{n}@example.com",
                    dedupe_key=dedupe_key(MessageKind.lesson, i, "finding-trigger-points"),
                    due_at=now - timedelta(seconds=1),
                    subscriber_id=i,
                    context={
                        "slug": "finding-trigger-points",
                        "lesson_number": 2,
                        "lesson_total": 8,
                    },
                )
                for n, i in enumerate(ids)
            ],
            "bench.example.com",
            now,
        )


def sent(url: str) -> int:
    with session_scope(get_engine(url)) as session:
        query = select(func.count()).where(OutboxMessage.status == OutboxStatus.sent)
        return int(session.execute(query).scalar_one())


def envelopes(settings: Settings, count: int) -> list[Envelope]:
    """The messages drip would send, built once by drip itself, for the bare loop."""
    delivery = Delivery(settings, get_engine(settings.database_url), worker="bench", clock=utcnow)
    built = [prepared for _, prepared in delivery._claim(count)]
    assert all(isinstance(e, Envelope) for e in built), "the bench lesson did not render"
    return built  # type: ignore[return-value]


async def bare_loop(port: int, messages: list[Envelope], connections: int) -> None:
    queue: asyncio.Queue[Envelope] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)

    async def slot() -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as smtp:
            while not queue.empty():
                e = queue.get_nowait()
                await smtp.sendmail(e.sender, [e.recipient], e.data)

    await asyncio.gather(*(slot() for _ in range(connections)))


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy so far, all cores and processes
    (/proc/stat: everything but idle and I/O wait), or NaN where there is no /proc."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return math.nan
    ticks = [int(t) for t in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Drain:
    """Messages per second, and the machine's CPU milliseconds per message meanwhile."""

    rate: float
    cpu_ms: float


def ceiling(box: Receiver, count: int) -> Drain:
    """The bare loop at its best over CEILING_CONNECTIONS (messages built untimed, from a
    throwaway SQLite outbox): drip is compared with the most this server takes from a
    client, not with a loop held to drip's own concurrency."""
    with database("sqlite") as url:
        seed(url, count)
        messages = envelopes(bench_settings(url, box.port), count)
    drains = []
    for connections in CEILING_CONNECTIONS:
        before = box.received
        busy = machine_busy()
        began = time.perf_counter()
        asyncio.run(bare_loop(box.port, messages, connections))
        elapsed = time.perf_counter() - began
        box.wait_for(before + count, 30)
        drains.append(Drain(count / elapsed, (machine_busy() - busy) * 1000 / count))
    return max(drains, key=lambda d: d.rate)


def _timed(spent: dict[str, float], phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[phase] = spent.get(phase, 0.0) + time.thread_time() - began

    return timed


@contextmanager
def phases() -> Iterator[dict[str, float]]:
    """CPU seconds per phase of drip's delivery while the block runs (see the docstring)."""
    spent: dict[str, float] = {}
    patched = [
        (delivery_module.Delivery, "_claim", "claim and read"),
        (delivery_module.Delivery, "_finish", "record"),
        (prepare_module, "render_email", "render"),
        (prepare_module, "compose", "compose"),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patched]
    for owner, name, phase in patched:
        setattr(owner, name, _timed(spent, phase, getattr(owner, name)))
    began = time.process_time()
    try:
        yield spent
    finally:
        total = time.process_time() - began
        for owner, name, original in originals:
            setattr(owner, name, original)
        # _claim's own figure includes the rendering and composing it calls.
        spent["claim and read"] = (
            spent.get("claim and read", 0.0) - spent.get("render", 0.0) - spent.get("compose", 0.0)
        )
        spent["SMTP client and event loop"] = total - sum(spent[p] for p in PHASES if p in spent)
        spent["total"] = total


def drip_path(box: Receiver, kind: str, count: int) -> tuple[float, dict[str, float]]:
    """Messages per second of drip's delivery, in this process, claim to send log, and
    its CPU milliseconds per message by phase."""
    with database(kind) as url:
        seed(url, count)
        settings = bench_settings(url, box.port)
        delivery = Delivery(settings, get_engine(url), worker="bench", clock=utcnow)
        with phases() as spent:
            began = time.perf_counter()
            report = asyncio.run(delivery.run())
            elapsed = time.perf_counter() - began
        if report.total != count or sent(url) != count:
            raise RuntimeError(f"drip sent {sent(url)} of {count}: {report.counts}")
    return count / elapsed, {phase: s * 1000 / count for phase, s in spent.items()}


def _environment(url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "DRIP_DATABASE_URL": url,
        "DRIP_SMTP_PORT": str(port),
        "DRIP_SMTP_CONCURRENCY": str(CONCURRENCY),
        "DRIP_SEND_RATE": "0",
        "DRIP_SECRET_KEY": SECRET,
        "DRIP_EMAILS_DIR": str(ROOT / "emails"),
    }


def worker_processes(box: Receiver, kind: str, processes: int | None, count: int) -> Drain:
    """One `drip worker --processes N` draining one outbox (None: its default, `auto`,
    which with the rate off is one process per core).

    The outbox is filled once every process is up and polling, and the drain is timed from
    the first message to the last, so start-up is not counted; then SIGTERM stops it.
    """
    with database(kind) as url, tempfile.TemporaryDirectory(prefix="drip-bench-") as folder:
        env = {**_environment(url, box.port), "DRIP_WORKER_INTERVAL": "0.1"}
        command = [sys.executable, "-m", "drip.cli", "worker"]
        if processes is not None:
            command += ["--processes", str(processes)]
        processes = processes or cores()
        log = Path(folder) / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(command, env=env, stdout=out, stderr=out)
        try:
            _wait_for_log(worker, log, "a pass every", 1)
            _wait_for_log(worker, log, ": delivering", processes - 1)
            before = box.received
            seed(url, count)
            box.wait_for(before + 1, 60)
            busy = machine_busy()
            began = time.perf_counter()
            box.wait_for(before + count, 600)
            elapsed = time.perf_counter() - began
            busy = machine_busy() - busy
            worker.send_signal(signal.SIGTERM)
            if worker.wait(timeout=60) != 0:
                raise RuntimeError(f"drip worker exited with {worker.returncode}")
        finally:
            worker.kill()
            worker.wait()
        if sent(url) != count:
            raise RuntimeError(f"drip worker --processes {processes} sent {sent(url)} of {count}")
    return Drain((count - 1) / elapsed, busy * 1000 / (count - 1))


def _wait_for_log(worker: subprocess.Popen[bytes], log: Path, text: str, times: int) -> None:
    deadline = time.monotonic() + 90
    while log.read_text().count(text) < times:
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"drip worker did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)


def processes_figures(box: Receiver, count: int) -> list[Figure]:
    """`drip worker --processes N`, N = 1 and 2, on both databases."""
    figures: list[Figure] = []
    for kind in ("sqlite", "postgresql"):
        alone = worker_processes(box, kind, 1, count).rate
        two = worker_processes(box, kind, 2, count).rate
        name = f"drip worker --processes {{}} on {kind}, {count:,} msgs"
        figures.append(info("send", name.format(1), alone, "msg/s"))
        figures.append(info("send", name.format(2), two, "msg/s"))
        figures.append(info("send", f"--processes 2 vs 1 on {kind}", two / alone, "x"))
    return figures


def compare(box: Receiver, server: str, count: int) -> list[Figure]:
    """The bare loop and drip's path on both databases, against one server."""
    bare = ceiling(box, count)
    top = bare.rate
    figures = [
        info(
            "send",
            f"(a) bare aiosmtplib to {server}, best of {CEILING_CONNECTIONS} connections",
            top,
            "msg/s",
        ),
        info("send", f"  machine CPU per message, (a) and {server}", bare.cpu_ms, "ms"),
    ]
    for kind in ("sqlite", "postgresql"):
        rate, cpu = drip_path(box, kind, count)
        figures.append(info("send", f"(b) drip, one process, on {kind} to {server}", rate, "msg/s"))
        figures.append(info("send", f"ratio b/a on {kind} to {server}", rate / top, ""))
        default = worker_processes(box, kind, None, count)
        name = f"(c) drip worker, default settings ({cores()} processes), on {kind} to {server}"
        figures.append(info("send", name, default.rate, "msg/s"))
        figures.append(
            at_least(
                "send", f"ratio c/a on {kind} to {server}", default.rate / top, "", TARGET_RATIO
            )
        )
        name = f"  machine CPU per message, (c), {server} and {kind}"
        figures.append(info("send", name, default.cpu_ms, "ms"))
        # All cores busy at (c)'s cost per message: the most (c) could reach here.
        bound = cores() * 1000 / default.cpu_ms / top
        figures.append(info("send", f"  ratio c/a with every core busy, {kind}", bound, ""))
        if server == "aiosmtpd":  # CPU is drip's own, whoever receives: counted once
            total = cpu.pop("total")
            figures.append(under("send", f"CPU per message on {kind}", total, "ms", TARGET_CPU_MS))
            figures += [info("send", f"  {phase} on {kind}", ms, "ms") for phase, ms in cpu.items()]
    return figures


def run(quick: bool) -> list[Figure]:
    count = 2_000 if quick else 10_000
    scaling = 2_000 if quick else 5_000
    figures: list[Figure] = []
    with sink() as box:
        figures += compare(box, "aiosmtpd", count)
        figures += processes_figures(box, scaling)
    try:
        with postfix() as mta:
            figures += compare(mta, "postfix", count)
    except Unavailable as exc:
        print(f"  send: no Postfix comparison: {exc}")
    return figures
