"""A counting SMTP sink (aiosmtpd) in its own process, so it does not share a core's GIL
with what is being measured. It accepts everything and keeps only a count."""

from __future__ import annotations

import multiprocessing
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Counter:
    """Counts messages; offers PIPELINING (RFC 2920), which aiosmtpd serves by reading
    commands in order from its stream (tests/test_sender.py checks it does)."""

    def __init__(self, count: Synchronized[int]) -> None:
        self.count = count

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.count.get_lock():
            self.count.value += 1
        return "250 OK"


def _serve(port: int, count: Synchronized[int], ready: Any) -> None:
    from aiosmtpd.controller import Controller

    controller = Controller(_Counter(count), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    while True:
        time.sleep(3600)


class Receiver:
    """An SMTP server the benches send to: this sink, or a real MTA (bench/postfix.py)."""

    port: int
    #: How the server is named when it falls short.
    name = "the sink"

    @property
    def received(self) -> int:
        raise NotImplementedError

    def wait_for(self, total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.received < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} received {self.received} of {total} messages")
            time.sleep(0.01)


@dataclass
class Sink(Receiver):
    port: int
    _count: Synchronized[int]

    @property
    def received(self) -> int:
        return int(self._count.value)


@contextmanager
def sink() -> Iterator[Sink]:
    context = multiprocessing.get_context("spawn")
    count = context.Value("q", 0)
    ready = context.Event()
    port = free_port()
    process = context.Process(target=_serve, args=(port, count, ready), daemon=True)
    process.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the SMTP sink did not start")
        yield Sink(port, count)
    finally:
        process.kill()
        process.join()
