"""drip's web app under uvicorn, as `drip serve` and `drip dev` run it.

- HTTP/1.1 is parsed by h11, the request head bounded at `MAX_HEAD` bytes: a longer
  one is answered 400 and the connection closed, where uvicorn's default parser
  (httptools) would buffer a header of any size.
- A request's head must arrive whole within DRIP_HEADER_TIMEOUT seconds (10) of its
  first byte, or of the connection: a client dribbling its headers is cut off.
- uvicorn's loggers are left to drip.logs: the same handler and format (text or JSON)
  as every other line drip logs.
- The access log never shows a token: the part of a /confirm/, /unsubscribe/ or /pack/
  path after the prefix is logged as `[token]`.
- X-Forwarded-For is read by drip itself, only from DRIP_TRUSTED_PROXIES
  (drip.web.proxies), never by uvicorn, which would believe any loopback peer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from drip.settings import Settings
from drip.web.security import TOKEN_PATHS

#: The most a request line and its headers may take together.
MAX_HEAD = 16 * 1024
_TOKEN = re.compile("^(" + "|".join(re.escape(p) for p in TOKEN_PATHS) + r")[^/?#\s]+")


def redact(path: str) -> str:
    """`path` with the token of a token route replaced."""
    return _TOKEN.sub(r"\1[token]", path)


class RedactTokens(logging.Filter):
    """On uvicorn's access log: the request path (an argument of the record) redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_access_log() -> None:
    """Put RedactTokens on uvicorn's access logger, once."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())


class TimedHeadProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is too slow."""

    head_timeout = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_clock()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._start_head_clock()  # the first byte of a next request on this connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._stop_head_clock()  # the head is in (or the request failed): not ours now

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def _start_head_clock(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closed a connection whose request head was too slow")
            self.transport.close()


def server_config(
    app: Any, settings: Settings, *, host: str, port: int, log_level: str = "info"
) -> uvicorn.Config:
    redact_access_log()
    protocol = type("DripHTTP", (TimedHeadProtocol,), {"head_timeout": settings.header_timeout})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        h11_max_incomplete_event_size=MAX_HEAD,
        proxy_headers=False,
        server_header=False,
        log_config=None,  # its loggers reach the root handler drip.logs set up
        log_level=log_level,
    )
