"""Real SMTP servers on loopback for tests: a recording sink and fault handlers.

Codes are named so tests read as protocol, not as numbers (after aiosmtpd's testing module).
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPProtocol
from aiosmtpd.smtp import Envelope, Session

from tests.waiting import wait_until

OK = "250 OK"
SERVICE_NOT_AVAILABLE = "421 4.3.2 Service not available, closing channel"
MAILBOX_BUSY = "451 4.3.0 Requested action aborted: local error, try again later"
THROTTLED = "454 4.7.0 Throttling: too many messages, slow down"
NO_SUCH_USER = "550 5.1.1 No such user here"
MAILBOX_FULL = "552 5.2.2 Mailbox full"


def with_pipelining(responses: list[str]) -> list[str]:
    """An EHLO reply's lines with 250-PIPELINING before the last."""
    return [*responses[:-1], "250-PIPELINING", responses[-1]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Recorder:
    """Keeps every accepted message; `replies` scripts the answers to DATA, then 250 for ever."""

    replies: list[str] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    #: Offer RFC 2920 PIPELINING in the EHLO reply (aiosmtpd reads commands in order either way).
    pipelining: bool = False
    #: Refuse these senders at MAIL, these recipients at RCPT, with the reply given.
    refused: dict[str, str] = field(default_factory=dict)
    _parsed: list[EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_data: Callable[[Envelope], str | None] | None = None

    async def handle_EHLO(
        self,
        server: SMTPProtocol,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return with_pipelining(responses) if self.pipelining else responses

    async def handle_MAIL(
        self,
        server: SMTPProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if address in self.refused:
            return self.refused[address]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return OK

    async def handle_RCPT(
        self,
        server: SMTPProtocol,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.refused:
            return self.refused[address]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return OK

    async def handle_DATA(self, server: SMTPProtocol, session: Session, envelope: Envelope) -> str:
        with self.lock:
            if self.on_data is not None:
                custom = self.on_data(envelope)
                if custom is not None:
                    return custom
            if self.replies:
                reply = self.replies.pop(0)
                if not reply.startswith("250"):
                    return reply
            raw = envelope.original_content or envelope.content
            assert isinstance(raw, bytes)
            self.raw.append(raw)  # parsed only when a test looks, to keep the sink fast
            return OK

    @property
    def messages(self) -> list[EmailMessage]:
        with self.lock:
            for data in self.raw[len(self._parsed) :]:
                message = email.message_from_bytes(data, policy=email.policy.default)
                assert isinstance(message, EmailMessage)
                self._parsed.append(message)
            return list(self._parsed)

    def message_ids(self) -> list[str]:
        parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
        with self.lock:
            return [str(parser.parsebytes(data)["Message-ID"]) for data in self.raw]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        wait_until(lambda: len(self.raw) >= count, timeout, f"{count} messages", every=0.02)
        return self.messages


@dataclass
class MailServer:
    host: str
    port: int
    handler: Any
    #: SMTP sessions open now: 0 once every client's connection has been closed and handled.
    sessions: list[int] = field(default_factory=lambda: [0])

    @property
    def open_sessions(self) -> int:
        return self.sessions[0]


class _CountingController(Controller):
    """A Controller whose SMTP sessions count themselves in and out."""

    def __init__(self, handler: Any, sessions: list[int], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sessions = sessions

    def factory(self) -> SMTPProtocol:
        sessions = self.sessions

        class Counted(SMTPProtocol):
            def connection_made(self, transport: Any) -> None:
                sessions[0] += 1
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                super().connection_lost(error)
                sessions[0] -= 1

        return Counted(self.handler, **self.SMTP_kwargs)


@contextmanager
def serve(handler: Any, port: int | None = None, **kwargs: Any) -> Iterator[MailServer]:
    """Run `handler` in a real aiosmtpd server on 127.0.0.1 for the block's duration."""
    port = port or free_port()
    server = MailServer("127.0.0.1", port, handler)
    controller = _CountingController(
        handler, server.sessions, hostname="127.0.0.1", port=port, **kwargs
    )
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


@contextmanager
def silent_server() -> Iterator[MailServer]:
    """A server that accepts connections and never says a word: the client must time out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield MailServer("127.0.0.1", listener.getsockname()[1], None)
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
