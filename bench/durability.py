"""What power-loss durability costs on SQLite: synchronous=FULL (drip's) beside NORMAL.

With FULL, SQLite syncs the WAL at every commit, so a signup answered 303 and a 250
recorded as sent survive the machine losing power. Both paths commit in groups (the
signup writer thread, delivery's shared group commit), so the cost should be one sync
per group, not per message. For each setting, on a fresh SQLite file in this process:
- delivery: `Delivery.run()` over an outbox of lessons to the counting sink (as
  bench/send.py's (b)), messages per second;
- signups: 16 clients each storing one signup after another through the web app's
  `signup.Writer` (what `POST /subscribe` awaits before its 303), signups per second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.databases import database
from bench.report import Figure, info
from bench.send import bench_settings, drip_path
from bench.sink import Receiver, sink
from drip import db, signup
from drip.db import get_engine
from drip.web.signup_writer import Writer

BENCH = "durability"
CLIENTS = 16
MODES = ("NORMAL", "FULL")


@contextmanager
def synchronous(mode: str) -> Iterator[None]:
    """Engines made meanwhile (each bench database is a new file) use `mode`."""
    kept = db.SQLITE_SYNCHRONOUS
    db.SQLITE_SYNCHRONOUS = mode
    try:
        yield
    finally:
        db.SQLITE_SYNCHRONOUS = kept


def signups(count: int, port: int) -> float:
    """Signups per second through the web app's writer, CLIENTS at a time."""
    with database("sqlite") as url:
        settings = bench_settings(url, port)
        writer = Writer(get_engine(url), settings)
        forms = [
            signup.check(
                email=f"reader{n}@example.com",
                name="Reader",
                consent=True,
                website="",
                timezone="Europe/Berlin",
                settings=settings,
            ).signup
            for n in range(count)
        ]
        assert all(form is not None for form in forms), "the bench signup did not check"

        async def client(mine: list[signup.Signup]) -> None:
            for form in mine:
                await writer.store(form)

        async def load() -> None:
            shares = [forms[i::CLIENTS] for i in range(CLIENTS)]
            await asyncio.gather(*(client(share) for share in shares))  # type: ignore[arg-type]

        began = time.perf_counter()
        asyncio.run(load())
        return count / (time.perf_counter() - began)


def delivery(box: Receiver, count: int) -> float:
    rate, _ = drip_path(box, "sqlite", count)
    return rate


def run(quick: bool) -> list[Figure]:
    messages = 1_000 if quick else 4_000
    people = 1_000 if quick else 4_000
    figures: list[Figure] = []
    rates: dict[tuple[str, str], float] = {}
    with sink() as box:
        for mode in MODES:
            with synchronous(mode):
                rates["send", mode] = delivery(box, messages)
                rates["signup", mode] = signups(people, box.port)
            figures.append(
                info(
                    BENCH,
                    f"sqlite {mode}: drip delivery, {messages:,} msgs",
                    rates["send", mode],
                    "msg/s",
                )
            )
            figures.append(
                info(
                    BENCH,
                    f"sqlite {mode}: signups stored, {CLIENTS} clients",
                    rates["signup", mode],
                    "signups/s",
                )
            )
    for path in ("send", "signup"):
        ratio = rates[path, "FULL"] / rates[path, "NORMAL"]
        figures.append(info(BENCH, f"{path}: FULL / NORMAL", ratio, "x"))
    return figures
