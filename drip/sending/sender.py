"""SMTP delivery: one reused connection per slot, outcomes as MTAs judge them.

A `Connection` sends one message at a time, so a worker keeps DRIP_SMTP_CONCURRENCY of
them. aiosmtplib connects, says EHLO, does STARTTLS and AUTH, and says QUIT; each
message's commands and their replies go through drip.sending.smtp_replies (MAIL, RCPT
and DATA in one write when the server offers PIPELINING). A connection is dropped after
any error or a long idle spell (servers drop idle clients and a reused dead socket can
hang), and opened again on the next message.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

import aiosmtplib
from aiosmtplib import SMTPResponse
from aiosmtplib.email import parse_address

from drip.sending.message import Envelope
from drip.sending.smtp_replies import Replies
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
    """One SMTP session, opened on demand and reused for message after message.

    aiosmtplib connects, greets, does STARTTLS and AUTH, and says QUIT; the commands
    of each message go through `Replies`. When the server offers PIPELINING, MAIL,
    RCPT and DATA go in one write and their replies are read together (RFC 2920);
    otherwise one at a time.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._smtp: aiosmtplib.SMTP | None = None
        self._replies: Replies | None = None
        self._pipelining = False
        self._size = False
        self._last_used = 0.0
        #: After `open`: the server may be reading the message's text (QUIT would be text).
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

    async def _ensure(self) -> Replies:
        idle = time.monotonic() - self._last_used > IDLE_RECONNECT_SECONDS
        if self._replies is not None and (idle or not self._replies.is_connected):
            await self.close()
        if self._replies is None:
            smtp = self._smtp = self._client()
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:
                try:
                    await smtp.ehlo()
                except aiosmtplib.SMTPHeloError:
                    if not smtp.is_connected:
                        raise
                    await smtp.helo()
            if smtp.transport is None or smtp.protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            self._pipelining = smtp.supports_extension("pipelining")
            self._size = smtp.supports_extension("size")
            # A stream transport (asyncio's or uvloop's, which is not an asyncio.Transport).
            transport = cast(asyncio.Transport, smtp.transport)
            self._replies = Replies(transport, smtp.protocol)
        return self._replies

    async def send(self, envelope: Envelope) -> Outcome:
        """The whole transaction: `open`, then `finish`."""
        return await self.open(envelope) or await self.finish(envelope)

    async def open(self, envelope: Envelope) -> Outcome | None:
        """MAIL, RCPT and DATA: all of the message but its text and final dot. None when
        the server waits for the text; until `finish` nothing has been delivered, and a
        connection dropped here (`close`) delivers nothing. An Outcome when it went wrong."""
        try:
            replies = await self._ensure()
            self._wire = wire(envelope.data)
            size = b" SIZE=%d" % (len(self._wire) - 3) if self._size else b""
            mail = b"MAIL FROM:" + _address(envelope.sender) + size + b"\r\n"
            rcpt = b"RCPT TO:" + _address(envelope.recipient) + b"\r\n"
            timeout = self.settings.smtp_timeout
            self._in_data = True  # until DATA's reply says otherwise
            if self._pipelining:
                replies.write(mail + rcpt + b"DATA\r\n")
                got = await replies.read(3, timeout)
            else:
                got = []
                for command in (mail, rcpt, b"DATA\r\n"):
                    replies.write(command)
                    got += await replies.read(1, timeout)
                    if got[-1].code not in _EXPECTED[len(got) - 1]:
                        break
            if got[-1].code != 354:
                self._in_data = False
            _check(envelope, got)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an outcome, none escapes
            await self.close()
            return classify_error(exc)
        return None

    async def finish(self, envelope: Envelope) -> Outcome:
        """The text and its final dot: the server's answer is the message's fate."""
        replies = self._replies
        try:
            if replies is None or not self._in_data:
                raise aiosmtplib.SMTPServerDisconnected("the connection was lost before the text")
            replies.write(self._wire)
            [reply] = await replies.read(1, self.settings.smtp_timeout)
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
        replies, self._replies = self._replies, None
        in_data, self._in_data = self._in_data, False
        if smtp is None:
            return
        if in_data:
            smtp.close()
            return
        if replies is not None:
            replies.release()
        try:
            if smtp.is_connected:
                await smtp.quit(timeout=5)
        except Exception:  # noqa: BLE001 - a dead connection needs no goodbye
            smtp.close()


#: The replies that let the next command follow: MAIL, RCPT (251: will forward), DATA.
_EXPECTED = ((250,), (250, 251), (354,))
#: An address that needs no quoting nor checking: printable ASCII, no space or brackets.
_PLAIN_ADDRESS = re.compile(r"[!#-'*-+\--9=?A-Z^-~]+@[!#-'*-+\--9=?A-Z^-~]+")


def _address(address: str) -> bytes:
    """`<address>` for MAIL or RCPT; anything unusual is parsed and checked by aiosmtplib."""
    if _PLAIN_ADDRESS.fullmatch(address) is None:
        address = parse_address(address)
    return b"<" + address.encode("ascii") + b">"


def _check(envelope: Envelope, got: list[SMTPResponse]) -> None:
    """Raise what aiosmtplib raises for the first refusal among MAIL, RCPT and DATA (a DATA
    after a refused RCPT is refused too, RFC 2920: the RCPT's reply is the one that counts)."""
    for step, reply in enumerate(got):
        if reply.code in _EXPECTED[step]:
            continue
        if step == 0:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, envelope.sender)
        if step == 1:
            raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, envelope.recipient)
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    if len(got) < len(_EXPECTED):  # the server hung up after accepting what it answered
        raise aiosmtplib.SMTPServerDisconnected("the server closed the connection")
