"""Signup under load: `POST /subscribe` beside `GET /healthz` of the same real server.

`drip serve` runs as a subprocess (uvicorn, as in production) on a throwaway
database, with the per-IP signup limit raised so the load is not simply refused.
wrk (Debian's `wrk`, with bench/signup.lua giving every request a fresh address)
drives a fixed number of connections, first at the health route, whose rate is the
ceiling of this server on this machine, then at the signup form, each connection
sending its next request as soon as the last is answered; an async httpx client
stands in when wrk is missing. Then, for information, signups paced at half the
health rate: the latency of a server that is not saturated. Only 303 answers count
as signups, and after each run the database must hold exactly those signups, each
with its confirmation email queued: a bench that counted refusals as throughput
would be wrong.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import quantiles

import httpx
from sqlalchemy import func, select

from bench.databases import database
from bench.report import Figure, at_least, info, under
from bench.sink import free_port
from drip.db import get_engine, read_scope
from drip.models import MessageKind, OutboxMessage, Subscriber

BENCH = "signup"
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).with_suffix(".lua")
SECRET = "bench-secret-key-0123456789abcdef"
#: Concurrent connections: a busy moment for one small server (a newsletter link
#: shared widely), well past what a single browser opens.
CONNECTIONS = 16
TARGET_RATIO = 0.5
TARGET_P99_MS = 50.0


@dataclass
class Load:
    """One load run: answers counted by what they were, latency of every answer."""

    route: str
    ok: int
    other: int
    other_status: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    #: Addresses posted but not yet answered when the load stopped (wrk only).
    inflight: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds


@dataclass(frozen=True)
class Durations:
    warmup: float
    health: float
    signup: float
    #: Signups paced at half the health rate; 0 skips it.
    paced: float = 0


FULL = Durations(warmup=3, health=15, signup=20, paced=8)
QUICK = Durations(warmup=1, health=3, signup=4)
POSTGRES = Durations(warmup=2, health=6, signup=8)


def run(quick: bool) -> list[Figure]:
    generator = "wrk" if shutil.which("wrk") else "httpx"
    print(
        f"  signup load generator: {generator}"
        + ("" if generator == "wrk" else " (wrk not found: `apt-get install wrk` for a real load)")
        + f", {CONNECTIONS} connections",
        flush=True,
    )
    figures = _measure("sqlite", generator, QUICK if quick else FULL, targets=True)
    if not quick:
        figures += _measure("postgresql", generator, POSTGRES, targets=False)
    return figures


def _measure(kind: str, generator: str, durations: Durations, *, targets: bool) -> list[Figure]:
    with database(kind) as url, server(url) as base:
        drive = _wrk if generator == "wrk" else _httpx
        drive(base, "signup", "warm", durations.warmup)
        drive(base, "health", "warm", durations.warmup / 2)
        health = drive(base, "health", "health", durations.health)
        signups = drive(base, "signup", "run", durations.signup)
        stored, confirmations, expected = _stored(url, "run", signups)
        paced = None
        if durations.paced and generator == "wrk":
            per_connection = TARGET_RATIO * health.rate / CONNECTIONS
            paced = _wrk(base, "signup", "paced", durations.paced, per_connection)
            more = _stored(url, "paced", paced)
            stored, confirmations, expected = (
                stored + more[0],
                confirmations + more[1],
                expected + more[2],
            )
    label = f"{kind}, {generator}, {CONNECTIONS} conn"
    ratio = signups.rate / health.rate
    print(
        f"  {kind}: health {health.rate:,.0f}/s p99 {health.p99_ms:.1f} ms; "
        f"signup {signups.rate:,.0f}/s p50 {signups.p50_ms:.1f} ms p99 {signups.p99_ms:.1f} ms; "
        f"{signups.ok} answered 303, {signups.other} other (last {signups.other_status}), "
        f"{signups.errors + health.errors} socket errors; stored {stored} subscribers and "
        f"{confirmations} confirmations, expected {expected}",
        flush=True,
    )
    if paced is not None:
        print(
            f"  {kind}: signups paced at {paced.rate:,.0f}/s: p50 {paced.p50_ms:.1f} ms "
            f"p99 {paced.p99_ms:.1f} ms",
            flush=True,
        )
    runs = [signups] if paced is None else [signups, paced]
    honest = (
        stored == expected == confirmations
        and health.other == 0
        and all(r.other == 0 and r.errors == 0 for r in runs)
    )
    figures = [
        info(BENCH, f"health rate ({label})", health.rate, "req/s"),
        info(BENCH, f"health p99 ({kind})", health.p99_ms, "ms"),
        info(BENCH, f"signup rate ({label})", signups.rate, "signups/s"),
        info(BENCH, f"signup p50 ({kind})", signups.p50_ms, "ms"),
        Figure(
            BENCH,
            f"signups stored and confirmations queued ({kind})",
            stored,
            "rows",
            f"= 303 answers ({expected}), none refused",
            honest,
        ),
    ]
    if targets:
        figures += [
            at_least(BENCH, f"signup / health rate ({kind})", ratio, "", TARGET_RATIO),
            under(BENCH, f"signup p99 ({kind})", signups.p99_ms, "ms", TARGET_P99_MS),
        ]
    else:
        figures += [
            info(BENCH, f"signup / health rate ({kind})", ratio, ""),
            info(BENCH, f"signup p99 ({kind})", signups.p99_ms, "ms"),
        ]
    if paced is not None:
        figures.append(
            info(BENCH, f"signup p99, paced at half the health rate ({kind})", paced.p99_ms, "ms")
        )
    return figures


@contextmanager
def server(url: str) -> Iterator[str]:
    """`drip serve` on a free port; yields its base URL once /healthz answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIP_")}
    env.update(
        DRIP_DATABASE_URL=url,
        DRIP_SECRET_KEY=SECRET,
        DRIP_EMAILS_DIR=str(ROOT / "emails"),
        DRIP_INFO_PACK=str(ROOT / "emails" / "info-pack.pdf"),
        # Every request comes from 127.0.0.1: raise the per-IP limit out of the way.
        DRIP_SIGNUPS_PER_IP_PER_MINUTE=str(10**9),
    )
    drip = Path(sys.executable).parent / "drip"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [str(drip), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=tempfile.gettempdir(),  # no .env file of the checkout is read
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_for(base, process, log)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for(base: str, process: subprocess.Popen[bytes], log: object) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)  # type: ignore[attr-defined]
            tail = log.read().decode(errors="replace")[-2000:]  # type: ignore[attr-defined]
            raise RuntimeError(f"drip serve exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("drip serve did not answer /healthz within 60 s")


def _wrk(base: str, route: str, prefix: str, seconds: float, rate: float = 0) -> Load:
    """wrk with one thread per connection, so each thread's in-flight request is known.

    `rate`: requests a second on each connection, or 0 for as fast as answered.
    """
    command = [
        "wrk",
        f"-t{CONNECTIONS}",
        f"-c{CONNECTIONS}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        base,
        "--",
        route,
        prefix,
        f"{rate:.3f}",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(x for x in output.splitlines() if x.startswith("BENCH "))
    data = json.loads(line.removeprefix("BENCH "))
    return Load(
        route=route,
        ok=data["ok"],
        other=data["other"],
        other_status=data["other_status"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=data["errors"],
        inflight=data["inflight"],
    )


def _httpx(base: str, route: str, prefix: str, seconds: float) -> Load:
    """The fallback: CONNECTIONS async clients in a loop; every request is awaited to its answer."""
    return asyncio.run(_httpx_load(base, route, prefix, seconds))


async def _httpx_load(base: str, route: str, prefix: str, seconds: float) -> Load:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    wanted = 200 if route == "health" else 303
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)

    async def loop(client: httpx.AsyncClient, worker: int, deadline: float) -> None:
        nonlocal errors
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            began = time.perf_counter()
            try:
                if route == "health":
                    answer = await client.get("/healthz")
                else:
                    answer = await client.post(
                        "/subscribe",
                        data={
                            "email": f"{prefix}-{worker}-{seq}@bench.example.com",
                            "name": "Bench Reader",
                            "consent": "yes",
                            "website": "",
                            "timezone": "Europe/London",
                        },
                    )
            except httpx.HTTPError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - began)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as client:
        began = time.monotonic()
        deadline = began + seconds
        await asyncio.gather(*(loop(client, n, deadline) for n in range(CONNECTIONS)))
        elapsed = time.monotonic() - began
    cuts = quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    others = {s: n for s, n in statuses.items() if s != wanted}
    return Load(
        route=route,
        ok=statuses.get(wanted, 0),
        other=sum(others.values()),
        other_status=max(others, default=0),
        seconds=elapsed,
        p50_ms=cuts[49] * 1000,
        p90_ms=cuts[89] * 1000,
        p99_ms=cuts[98] * 1000,
        errors=errors,
    )


def _stored(url: str, prefix: str, load: Load) -> tuple[int, int, int]:
    """(subscribers, confirmations queued, expected) for this run's addresses.

    Expected is the 303 answers plus those requests still in flight when wrk
    stopped that the server went on to store (at most one per connection).
    """
    engine = get_engine(url)
    pattern = f"{prefix}-%@bench.example.com"
    previous = None
    for _ in range(50):  # let the last in-flight requests finish
        with read_scope(engine) as session:
            subscribers = session.execute(
                select(func.count()).select_from(Subscriber).where(Subscriber.email.like(pattern))
            ).scalar_one()
            confirmations = session.execute(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.kind == MessageKind.confirm)
                .where(OutboxMessage.email.like(pattern))
            ).scalar_one()
            inflight = session.execute(
                select(func.count())
                .select_from(Subscriber)
                .where(Subscriber.email.in_(load.inflight or [""]))
            ).scalar_one()
        if (subscribers, confirmations, inflight) == previous:
            break
        previous = (subscribers, confirmations, inflight)
        time.sleep(0.2)
    return subscribers, confirmations, load.ok + inflight
