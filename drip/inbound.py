"""`drip inbound`: an SMTP server taking mail for drip's own addresses on DRIP_BOUNCE_DOMAIN.

Run it as the bounce domain's MX (or the target of a relay's forward). It takes
mail only for addresses on DRIP_BOUNCE_DOMAIN whose local part names a route, and
refuses the rest at RCPT, so it is no open sink. Each route gets the message with
the tag from its address (`bounces+TAG@domain`); today there is one, `bounces`:
delivery status notifications, complaint reports and non-standard bounces, read and
recorded by drip.bounces. Another kind of address is one more entry in `ROUTES`.

The reply to DATA is sent only once the message is recorded (or found to prove
nothing), so a 250 means it is in the database; a database error answers 451 and
the sending server tries again later.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from datetime import datetime

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import Engine

from drip import replies, verp
from drip.bounces import take
from drip.clock import Clock, utcnow
from drip.settings import Settings, SettingsError

log = logging.getLogger("drip.inbound")

#: Bounces and complaints are small; a report quoting a whole welcome email with its pack is not.
DATA_SIZE_LIMIT = 10 * 1024 * 1024
#: A bounce goes to one address; a few more are allowed, not one message recorded a thousand times.
MAX_RECIPIENTS = 10

#: A route takes (settings, engine, the address's tag or None, the raw message, now) and
#: says in a few words what became of the message, for the log.
Route = Callable[[Settings, Engine, str | None, bytes, datetime], str]


def _bounce(settings: Settings, engine: Engine, tag: str | None, data: bytes, now: datetime) -> str:
    outcome = take(engine, settings, data, now, source="inbound", envelope_tag=tag)
    return f"bounce or complaint: {outcome}"


#: Routes by the local part before any `+`: `bounces+TAG@DRIP_BOUNCE_DOMAIN`.
ROUTES: dict[str, Route] = {verp.BOUNCES: _bounce, replies.REPLY: replies.route}


def route(address: str, domain: str) -> tuple[Route, str | None] | None:
    """The route for a recipient address and the tag it carries; None if it is not ours."""
    prefix, tag, at = verp.split(address)
    if at != domain:
        return None
    handler = ROUTES.get(prefix)
    return None if handler is None else (handler, tag)


class InboundHandler:
    """aiosmtpd hooks: refuse recipients that are not ours, record what arrives."""

    def __init__(
        self, settings: Settings, engine: Engine, domain: str, clock: Clock = utcnow
    ) -> None:
        self.clock = clock
        self.settings = settings
        self.engine = engine
        self.domain = domain

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if route(address, self.domain) is None:
            return "550 5.1.1 No such user here"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or envelope.content
        if not isinstance(data, bytes):
            data = str(data or "").encode("utf-8", "surrogateescape")
        for address in envelope.rcpt_tos:
            found = route(address, self.domain)
            if found is None:
                continue
            handler, tag = found
            try:
                what = await asyncio.to_thread(
                    handler, self.settings, self.engine, tag, data, self.clock()
                )
            except Exception:
                log.exception("could not record a message for %s", address)
                return "451 4.3.0 Cannot record the message now, try again later"
            log.info("mail for %s from %s: %s", address, envelope.mail_from or "<>", what)
        return "250 OK"


async def serve(settings: Settings, engine: Engine, host: str, port: int) -> asyncio.Server:
    """Start listening; the caller closes the server."""
    domain = settings.bounce_domain
    if not domain:
        raise SettingsError(
            "DRIP_BOUNCE_DOMAIN: not set; drip inbound takes mail for bounces+TAG@ that domain"
        )
    settings.require_secret()
    handler = InboundHandler(settings, engine, domain)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(
            handler,
            hostname=domain,
            ident="drip inbound",
            data_size_limit=DATA_SIZE_LIMIT,
            decode_data=False,
        ),
        host,
        port,
    )


async def run_inbound(
    settings: Settings,
    engine: Engine,
    host: str,
    port: int,
    stop: asyncio.Event | None = None,
    *,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve until `stop` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    server = await serve(settings, engine, host, port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready()
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        server.close()
        await server.wait_closed()
