"""A newsletter delivered end to end, as a user times it: from `drip newsletter send` to
the last message in the SMTP sink's hands.

For each case, a fresh database with that many subscribers who agreed to newsletters:
`drip newsletter send FILE` queues the letter, then `drip worker` (with
DRIP_WORKER_PROCESSES delivery processes; otherwise default settings, the rate limit
off) runs until the counting sink has every message, and is stopped with SIGTERM.
Every outbox row must end `sent`. Not in `make bench`'s default set: the full run
delivers 100k twice on SQLite and 1M on PostgreSQL, which takes most of an hour here;
`python -m bench campaign` runs it (`--quick`: 10k and 20k).
"""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from bench.databases import database
from bench.newsletter import LETTER, environment, queue_newsletter, reap, start_worker
from bench.population import grow, label
from bench.report import Figure, info
from bench.sink import Sink, sink
from drip.clock import utcnow
from drip.db import get_engine

BENCH = "campaign"


def deliver(env: dict[str, str], mail: Sink, size: int, cwd: Path) -> float:
    """Seconds from `drip worker`'s start until the sink holds `size` more messages."""
    before = mail.received
    began = time.perf_counter()
    process = start_worker(env, cwd)
    try:
        while mail.received < before + size:
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                raise RuntimeError(f"drip worker exited ({process.returncode}): {output[-2000:]}")
            time.sleep(0.02)
        seconds = time.perf_counter() - began
        process.send_signal(signal.SIGTERM)
        code, _ = reap(process, 60)
    finally:
        if process.returncode is None:
            process.kill()
            process.wait()
    if code != 0:
        raise RuntimeError(f"drip worker failed on SIGTERM ({code})")
    return seconds


def campaign(kind: str, size: int, processes: int) -> list[Figure]:
    """Queue and deliver one newsletter to `size` readers on `kind`."""
    with (
        database(kind) as url,
        sink() as mail,
        tempfile.TemporaryDirectory(prefix="drip-bench-") as folder,
    ):
        engine = get_engine(url)
        for _ in grow(engine, kind, [size], utcnow(), None):
            pass
        letter = Path(folder) / "spring.md"
        letter.write_text(LETTER)
        env = environment(url, mail.port) | {"DRIP_WORKER_PROCESSES": str(processes)}
        queued = queue_newsletter(env, letter, timeout=1200)
        seconds = deliver(env, mail, size, Path(folder))
        with engine.connect() as conn:
            sent = conn.execute(text("SELECT count(*) FROM outbox WHERE status = 'sent'")).scalar()
        if sent != size:
            raise RuntimeError(f"{sent} of {size} outbox rows ended sent")
    name = f"{kind} {label(size)}, {processes} process{'es' if processes > 1 else ''}"
    print(f"  {name}: queued in {queued.seconds:.1f} s, delivered in {seconds:.0f} s")
    return [
        info(BENCH, f"{name}: queue", queued.seconds, "s"),
        info(BENCH, f"{name}: deliver", seconds, "s"),
        info(BENCH, f"{name}: rate", size / seconds, "msg/s"),
        info(BENCH, f"{name}: in all", queued.seconds + seconds, "s"),
    ]


def run(quick: bool) -> list[Figure]:
    small, large = (10_000, 20_000) if quick else (100_000, 1_000_000)
    figures: list[Figure] = []
    for processes in (1, 2):
        figures += campaign("sqlite", small, processes)
    figures += campaign("postgresql", large, 2)
    return figures
