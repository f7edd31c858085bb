"""SMTP delivery with aiosmtplib: one reused connection per slot, outcomes as MTAs judge them.

An `SMTP` object sends one message at a time, so a worker keeps
DRIP_SMTP_CONCURRENCY of them. A connection is dropped after any error or a long
idle spell (servers drop idle clients and a reused dead socket can hang), and
opened again on the next message.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from enum import StrEnum

import aiosmtplib

from drip.sending.message import Envelope
from drip.settings import Settings

IDLE_RECONNECT_SECONDS = 60.0
_BARE_LINE_ENDS = re.compile(rb"\r\n|\r|\n")


def wire(data: bytes) -> bytes:
    """A message as DATA carries it: CRLF line ends, a leading dot doubled (RFC 5321
    4.5.2), the final dot. drip composes CRLF already, so the usual case is a scan."""
    bare = data.replace(b"\r\n", b"")
    if b"\r" in bare or b"\n" in bare:
        data = _BARE_LINE_ENDS.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class Verdict(StrEnum):
    sent = "sent"
    deferred = "deferred"
    bounced = "bounced"
    #: Refused for good, but not about a mailbox: a webhook receiver's 4xx (drip.sending.post).
    failed = "failed"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    code: int | None
    message: str
    #: The server asks every sender to slow down (421, a throttling reply).
    throttle: bool = False


def _is_throttle(code: int | None, text: str) -> bool:
    lowered = text.lower()
    return code == 421 or (
        code is not None
        and 400 <= code < 500
        and any(w in lowered for w in ("throttl", "rate limit", "too many", "slow down"))
    )


def classify_error(exc: BaseException) -> Outcome:
    """Turn an aiosmtplib error into sent/deferred/bounced.

    Only a 5xx answer about the recipient or the message bounces; a refused sender,
    failed login or broken TLS is our own configuration and is retried, so a
    mistake in settings never suppresses the whole list.
    """
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        recipient = isinstance(exc, aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPDataError)
        return _by_code(exc.code, exc.message, recipient_error=recipient)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return Outcome(Verdict.deferred, None, f"timed out waiting for the SMTP server ({exc})")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return Outcome(Verdict.deferred, None, f"the SMTP server closed the connection ({exc})")
    if isinstance(exc, aiosmtplib.SMTPConnectError | OSError):
        return Outcome(Verdict.deferred, None, f"cannot connect to the SMTP server ({exc})")
    return Outcome(Verdict.deferred, None, f"{type(exc).__name__}: {exc}")


def _by_code(code: int | None, text: str, *, recipient_error: bool) -> Outcome:
    text = " ".join(str(text).split())
    if code is not None and 500 <= code < 600 and recipient_error:
        return Outcome(Verdict.bounced, code, text)
    return Outcome(Verdict.deferred, code, text, throttle=_is_throttle(code, text))


class Connection:
    """One SMTP session, opened on demand and reused for message after message."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._smtp: aiosmtplib.SMTP | None = None
        self._last_used = 0.0
        #: After `open`: the server reads the message's text until its final dot.
        self._in_data = False
        self._wire = b""

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        password = s.smtp_password.get_secret_value() if s.smtp_password else None
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=password,
            use_tls=s.smtp_security == "tls",
            start_tls=True if s.smtp_security == "starttls" else False,
            timeout=s.smtp_timeout,
            local_hostname="localhost",
        )

    async def _ensure(self) -> aiosmtplib.SMTP:
        idle = time.monotonic() - self._last_used > IDLE_RECONNECT_SECONDS
        if self._smtp is not None and (idle or not self._smtp.is_connected):
            await self.close()
        if self._smtp is None:
            smtp = self._client()
            await smtp.connect()
            self._smtp = smtp
        return self._smtp

    async def send(self, envelope: Envelope) -> Outcome:
        """The whole transaction: `open`, then `finish`."""
        return await self.open(envelope) or await self.finish(envelope)

    async def open(self, envelope: Envelope) -> Outcome | None:
        """MAIL, RCPT and DATA: all of the message but its text and final dot. None when
        the server waits for the text; until `finish` nothing has been delivered, and a
        connection dropped here (`close`) delivers nothing. An Outcome when it went wrong."""
        try:
            smtp = await self._ensure()
            self._wire = wire(envelope.data)
            options = [f"SIZE={len(self._wire) - 3}"] if smtp.supports_extension("size") else []
            await smtp.mail(envelope.sender, options=options)
            await smtp.rcpt(envelope.recipient)
            reply = await smtp.execute_command(b"DATA")
            if reply.code != 354:
                raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an outcome, none escapes
            await self.close()
            return classify_error(exc)
        self._in_data = True
        return None

    async def finish(self, envelope: Envelope) -> Outcome:
        """The text and its final dot: the server's answer is the message's fate."""
        smtp = self._smtp
        try:
            if smtp is None or smtp.protocol is None or not self._in_data:
                raise aiosmtplib.SMTPServerDisconnected("the connection was lost before the text")
            smtp.protocol.write(self._wire)
            reply = await smtp.protocol.read_response(timeout=self.settings.smtp_timeout)
            self._in_data = False
            if reply.code != 250:
                raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an outcome, none escapes
            await self.close()
            return classify_error(exc)
        self._last_used = time.monotonic()
        return Outcome(Verdict.sent, 250, " ".join(reply.message.split()))

    async def close(self) -> None:
        """QUIT, or drop the connection mid-message (after `open`): the server then
        discards the message it was being given."""
        smtp, self._smtp = self._smtp, None
        in_data, self._in_data = self._in_data, False
        if smtp is None:
            return
        if in_data:
            smtp.close()
            return
        try:
            if smtp.is_connected:
                await smtp.quit(timeout=5)
        except Exception:  # noqa: BLE001 - a dead connection needs no goodbye
            smtp.close()
