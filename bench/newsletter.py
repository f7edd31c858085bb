"""A newsletter to 10k, 100k and 1M subscribers on PostgreSQL: queuing it, and the worker's
memory while it sends.

For each size (the list grown in place, the outbox emptied between sizes):
- `drip newsletter send FILE` runs as a subprocess: its wall time, rows queued per
  second and peak RSS (the child's VmHWM, read while it runs).
- `drip worker` then runs as a subprocess against the counting SMTP sink, rate limit
  off, for a fixed window after its first message: its send rate and peak RSS. Sending
  all of 1M at a few hundred messages a second would take an hour, so the figure names
  say how many were sent; what is measured is whether memory follows the queue's size
  (it must not: target < 200 MB, and flat from 10k to 1M).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from bench.databases import database
from bench.population import grow, label
from bench.report import Figure, info, under
from bench.sink import Sink, sink
from drip.clock import utcnow
from drip.db import get_engine

BENCH = "newsletter"
ROOT = Path(__file__).resolve().parent.parent
EMAILS = ROOT / "emails"
RSS_TARGET_MB = 200.0
#: "Flat": the worker's peak RSS with 1M queued at most this much above its peak with 10k.
FLAT_TARGET = 1.2
LETTER = """---
subject: Spring update: hips & knees
---
Hello! This month: **three** quick releases for the hips, and a question
from a reader about sciatica.

1. Lie on a ball, find the tender spot, breathe.
2. Hold for thirty seconds.
3. Stretch gently afterwards.

See you next month.
"""


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_mb: float
    output: str


def environment(url: str, smtp_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "DRIP_DATABASE_URL": url,
        "DRIP_SECRET_KEY": "bench-secret-key-0123456789abcdef",
        "DRIP_EMAILS_DIR": str(EMAILS),
        "DRIP_INFO_PACK": str(EMAILS / "info-pack.pdf"),
        "DRIP_SMTP_HOST": "127.0.0.1",
        "DRIP_SMTP_PORT": str(smtp_port),
        "DRIP_SEND_RATE": "0",
        "DRIP_WORKER_INTERVAL": "1",
        "COLUMNS": "200",
    }


def drip(*args: str) -> list[str]:
    return [sys.executable, "-m", "drip.cli", *args]


def peak_rss_mb(pid: int) -> float:
    """The process's own peak RSS so far (VmHWM). Not ru_maxrss: on Linux a child's
    ru_maxrss starts from its parent's peak at fork, here the bench's own memory."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def reap(process: subprocess.Popen[str], timeout: float) -> tuple[int, float]:
    """Wait for the child, reading its peak RSS every 50 ms while it runs."""
    deadline = time.monotonic() + timeout
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, peak_rss_mb(process.pid))
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise TimeoutError(f"{process.args} did not finish in {timeout:.0f} s")
        time.sleep(0.05)
    return process.returncode, peak


def queue_newsletter(env: dict[str, str], letter: Path, timeout: float) -> Run:
    began = time.perf_counter()
    process = subprocess.Popen(
        drip("newsletter", "send", str(letter)),
        env=env,
        cwd=letter.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        code, rss = reap(process, timeout)
    finally:
        if process.returncode is None:
            process.kill()
            process.wait()
    output = process.stdout.read() if process.stdout else ""
    if code != 0:
        raise RuntimeError(f"drip newsletter send failed ({code}): {output}")
    return Run(time.perf_counter() - began, rss, output)


def start_worker(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """`drip worker` as a subprocess, its output kept for an error's message."""
    return subprocess.Popen(
        drip("worker"),
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def send_for(env: dict[str, str], mail: Sink, window: float, cwd: Path) -> tuple[Run, int]:
    """Run `drip worker` until `window` seconds after its first message: (run, sent in window)."""
    process = start_worker(env, cwd)
    try:
        before = mail.received
        deadline = time.monotonic() + 60
        while mail.received == before:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the worker sent nothing")
            time.sleep(0.01)
        began, first = time.perf_counter(), mail.received
        time.sleep(window)
        sent = mail.received - first
        seconds = time.perf_counter() - began
        sending = peak_rss_mb(process.pid)
        process.send_signal(signal.SIGTERM)
        code, rss = reap(process, 60)
        rss = max(rss, sending)
    finally:
        if process.returncode is None:
            process.kill()
            process.wait()
    output = process.stdout.read() if process.stdout else ""
    if code != 0:
        raise RuntimeError(f"drip worker failed ({code}): {output[-2000:]}")
    return Run(seconds, rss, output), sent


def measure(sizes: list[int], window: float) -> list[Figure]:
    figures: list[Figure] = []
    worker_rss: dict[int, float] = {}
    with (
        database("postgresql") as url,
        sink() as mail,
        tempfile.TemporaryDirectory(prefix="drip-bench-") as folder,
    ):
        engine = get_engine(url)
        letter = Path(folder) / "spring.md"
        letter.write_text(LETTER)
        env = environment(url, mail.port)
        for size in grow(engine, "postgresql", sizes, utcnow(), None):
            with engine.begin() as conn:  # each size starts with an empty outbox
                conn.execute(text("TRUNCATE delivery_attempt, outbox, newsletter CASCADE"))
            queued = queue_newsletter(env, letter, timeout=600)
            if f"for {size} subscribers" not in queued.output:
                raise RuntimeError(f"expected {size} queued: {queued.output}")
            run, sent = send_for(env, mail, window, Path(folder))
            worker_rss[size] = run.peak_rss_mb
            name = label(size)
            figures += [
                info(BENCH, f"{name}: queue (drip newsletter send)", queued.seconds, "s"),
                info(BENCH, f"{name}: rows queued per second", size / queued.seconds, "/s"),
                under(
                    BENCH,
                    f"{name}: newsletter send peak RSS",
                    queued.peak_rss_mb,
                    "MB",
                    RSS_TARGET_MB,
                ),
                info(BENCH, f"{name} queued: worker send rate", sent / run.seconds, "msg/s"),
                under(
                    BENCH,
                    f"{name} queued: worker peak RSS, first {sent:,} sent",
                    run.peak_rss_mb,
                    "MB",
                    RSS_TARGET_MB,
                ),
            ]
            print(
                f"  {name}: queued in {queued.seconds:.1f} s ({queued.peak_rss_mb:.0f} MB); "
                f"worker {sent} sent in {run.seconds:.0f} s, {run.peak_rss_mb:.0f} MB"
            )
    small, large = sizes[0], sizes[-1]
    figures.append(
        under(
            BENCH,
            f"worker peak RSS, {label(large)} / {label(small)} queued",
            worker_rss[large] / worker_rss[small],
            "x",
            FLAT_TARGET,
        )
    )
    return figures


def run(quick: bool) -> list[Figure]:
    if quick:
        return measure([10_000, 50_000], window=3)
    return measure([10_000, 100_000, 1_000_000], window=15)
