"""SMTP replies read straight off the transport, several at a time (RFC 2920 PIPELINING).

aiosmtplib pairs one reply with one command, and its protocol parses a single reply
per arrival of data, so it cannot read the replies to commands written together.
Once aiosmtplib has connected, said EHLO and done STARTTLS and AUTH, `Replies`
takes the transport over for the commands of each message; `release` gives it back
for QUIT. One timer per wait, not a task: this is the per-message hot path.
"""

from __future__ import annotations

import asyncio

from aiosmtplib import (
    SMTPReadTimeoutError,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
)

#: Longer than any sane reply line: a server streaming without line ends is cut off.
MAX_LINE = 8192


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(SMTPReadTimeoutError("Timed out waiting for server response"))


class Replies(asyncio.Protocol):
    """The transport's protocol between commands written with `write` and their replies."""

    def __init__(self, transport: asyncio.Transport, previous: asyncio.BaseProtocol) -> None:
        self.transport = transport
        self._previous = previous
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        #: Replies parsed and not yet read.
        self._replies: list[SMTPResponse] = []
        self._lines: list[bytes] = []
        self._wanted = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        transport.set_protocol(self)

    @property
    def is_connected(self) -> bool:
        return self._error is None and not self.transport.is_closing()

    def release(self) -> None:
        """Give the transport back to aiosmtplib (for QUIT); unread replies are dropped."""
        if not self.transport.is_closing():
            self.transport.set_protocol(self._previous)

    def write(self, data: bytes) -> None:
        if not self.is_connected:
            raise SMTPServerDisconnected("Connection lost")
        self.transport.write(data)

    async def read(self, count: int, timeout: float | None) -> list[SMTPResponse]:
        """The next `count` replies, in order, within `timeout` seconds in all; fewer when
        the server hung up after them (a 421 to RCPT, then the close: that reply is what
        the caller judges the message by, as it would one command at a time)."""
        if len(self._replies) < count and self._error is None:
            waiter = self._waiter = self._loop.create_future()
            self._wanted = count
            timer = None if timeout is None else self._loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            except SMTPServerDisconnected:
                if not self._replies:
                    raise
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        if not self._replies and self._error is not None:
            raise self._error
        got, self._replies = self._replies[:count], self._replies[count:]
        return got

    # -- asyncio.Protocol ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        try:
            while (end := buffer.find(b"\n", start)) != -1:
                line = bytes(buffer[start:end])
                start = end + 1
                self._line(line)
            if len(buffer) - start > MAX_LINE:
                raise SMTPResponseException(-1, "Response too long")
        except SMTPResponseException as exc:
            self._fail(exc)
            self.transport.close()
            return
        finally:
            del buffer[:start]
        waiter = self._waiter
        if waiter is not None and len(self._replies) >= self._wanted and not waiter.done():
            waiter.set_result(None)

    def _line(self, line: bytes) -> None:
        try:
            code = int(line[:3])
        except ValueError:
            text = line.decode("utf-8", errors="ignore")
            raise SMTPResponseException(-1, f"Malformed SMTP response line: {text}") from None
        self._lines.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] != b"-":
            message = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
            self._lines = []
            self._replies.append(SMTPResponse(code, message))

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SMTPServerDisconnected("Connection lost"))
        self._previous.connection_lost(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._error)
