"""One SMTP connection against a real aiosmtpd sink: what DATA carries, and a message
whose final dot never went is not delivered (what pipelining relies on). Each test runs
with the server offering RFC 2920 PIPELINING and without."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from drip.sending.message import Envelope
from drip.sending.sender import Connection, Outcome, Verdict, wire
from drip.settings import Settings
from tests.conftest import SettingsFactory
from tests.mailserver import MAILBOX_BUSY, NO_SUCH_USER, OK, MailServer, Recorder, serve
from tests.waiting import wait_until

SENDER_REFUSED = "550 5.7.1 Sender refused"
TEXT = b"Subject: dots\r\nMessage-ID: <dots@example.com>\r\n\r\n.first\r\nmiddle\r\n..two\r\nlast"


def sent_on_one_connection(settings: Settings, envelopes: list[Envelope]) -> list[Outcome]:
    """`envelopes` sent one after another on one connection, which is then closed."""

    async def send() -> list[Outcome]:
        connection = Connection(settings)
        try:
            return [await connection.send(envelope) for envelope in envelopes]
        finally:
            await connection.close()

    return asyncio.run(send())


@pytest.fixture
def settings(tmp_path: Path, mail_server: MailServer, make_settings: SettingsFactory) -> Settings:
    """Sending to the test server; the database is never opened (SQLite, not both kinds)."""
    return make_settings(f"sqlite:///{tmp_path / 'd.db'}", mail_server.port)


@pytest.fixture(params=[True, False], ids=["pipelining", "one-by-one"])
def pipelining(request: pytest.FixtureRequest, recorder: Recorder) -> bool:
    recorder.pipelining = bool(request.param)
    return recorder.pipelining


def test_the_text_arrives_as_composed_leading_dots_and_all(
    settings: Settings,
    recorder: Recorder,
    pipelining: bool,
) -> None:
    envelope = Envelope("from@example.com", "to@example.com", TEXT)
    [outcome] = sent_on_one_connection(settings, [envelope])
    assert outcome.verdict == Verdict.sent
    recorder.wait_for(1)
    assert recorder.raw == [TEXT + b"\r\n"]


def test_a_connection_closed_before_the_final_dot_delivers_nothing(
    mail_server: MailServer,
    settings: Settings,
    recorder: Recorder,
    pipelining: bool,
) -> None:
    envelope = Envelope("from@example.com", "to@example.com", TEXT)

    async def open_then_close() -> None:
        connection = Connection(settings)
        assert await connection.open(envelope) is None  # the server waits for the text
        await connection.close()
        again = Connection(settings)
        try:
            assert (await again.send(envelope)).verdict == Verdict.sent
        finally:
            await again.close()

    asyncio.run(open_then_close())
    wait_until(lambda: mail_server.open_sessions == 0, 10, "both sessions closed")
    assert recorder.raw == [TEXT + b"\r\n"]  # the second send only


def test_refusals_are_judged_by_the_command_refused_and_the_connection_goes_on(
    settings: Settings,
    recorder: Recorder,
    pipelining: bool,
) -> None:
    """A refused RCPT bounces (5xx) or defers (4xx) by its own reply, not by DATA's 503 that
    follows it when pipelined; a refused sender defers; the next message still goes."""
    recorder.refused = {
        "gone@example.com": NO_SUCH_USER,
        "busy@example.com": MAILBOX_BUSY,
        "banned@example.com": SENDER_REFUSED,
    }
    recorder.replies = [OK, MAILBOX_BUSY]  # the first DATA is taken, the second deferred

    def envelope(to: str, sender: str = "from@example.com") -> Envelope:
        return Envelope(sender, to, TEXT)

    outcomes = sent_on_one_connection(
        settings,
        [
            envelope(to, sender)
            for to, sender in [
                ("gone@example.com", "from@example.com"),
                ("busy@example.com", "from@example.com"),
                ("ann@example.com", "banned@example.com"),
                ("ann@example.com", "from@example.com"),
                ("bob@example.com", "from@example.com"),
                ("cy@example.com", "from@example.com"),
            ]
        ],
    )
    assert [(o.verdict, o.code) for o in outcomes] == [
        (Verdict.bounced, 550),
        (Verdict.deferred, 451),
        (Verdict.deferred, 550),  # our sender refused: retried, not bounced
        (Verdict.sent, 250),
        (Verdict.deferred, 451),
        (Verdict.sent, 250),
    ]
    assert outcomes[0].message == "5.1.1 No such user here"
    recorder.wait_for(2)
    assert recorder.raw == [TEXT + b"\r\n"] * 2


def test_messages_follow_each_other_on_one_connection(
    mail_server: MailServer,
    settings: Settings,
    recorder: Recorder,
    pipelining: bool,
) -> None:
    texts = [TEXT.replace(b"dots@", b"%d@" % n) for n in range(20)]

    envelopes = [Envelope("f@example.com", "t@example.com", t) for t in texts]
    outcomes = sent_on_one_connection(settings, envelopes)
    assert [o.verdict for o in outcomes] == [Verdict.sent] * 20
    recorder.wait_for(20)
    assert recorder.raw == [t + b"\r\n" for t in texts]
    wait_until(lambda: mail_server.open_sessions == 0, 10, "the session closed")


def test_wire_form() -> None:
    assert wire(b"a\r\n.b") == b"a\r\n..b\r\n.\r\n"
    assert wire(b".a\nb\rc") == b"..a\r\nb\r\nc\r\n.\r\n"


class _Stalling(Recorder):
    """Takes its time over one recipient: longer than the client waits."""

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address == "slow@example.com":
            await asyncio.sleep(3)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.mark.parametrize("offer", [True, False], ids=["pipelining", "one-by-one"])
def test_a_reply_that_never_comes_times_out_and_delivers_nothing(
    tmp_path: Path, make_settings: SettingsFactory, offer: bool
) -> None:
    recorder = _Stalling(pipelining=offer)
    with serve(recorder) as server:
        settings = make_settings(f"sqlite:///{tmp_path / 'd.db'}", server.port, smtp_timeout=0.5)

        async def send_two() -> list[Outcome]:
            connection = Connection(settings)
            try:
                first = await connection.send(Envelope("f@example.com", "ann@example.com", TEXT))
                began = time.monotonic()
                late = await connection.send(Envelope("f@example.com", "slow@example.com", TEXT))
                assert time.monotonic() - began < 2
                return [first, late]
            finally:
                await connection.close()

        first, late = asyncio.run(send_two())
        assert first.verdict == Verdict.sent
        assert (late.verdict, late.code) == (Verdict.deferred, None)
        assert "timed out" in late.message
        wait_until(lambda: server.open_sessions == 0, 10, "the session closed")
    assert recorder.raw == [TEXT + b"\r\n"]


class _HangingUp(Recorder):
    """Answers one recipient with 421 and closes the connection at once."""

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address == "busy@example.com":
            await server.push("421 4.7.0 Too many connections, try again later")
            server.transport.close()
            return "421 4.7.0 closing"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.mark.parametrize("offer", [True, False], ids=["pipelining", "one-by-one"])
def test_a_421_before_the_server_hangs_up_defers_and_throttles(
    tmp_path: Path, make_settings: SettingsFactory, offer: bool
) -> None:
    """The refusal that came before the close is the message's fate, whether MAIL, RCPT
    and DATA went together or one by one: deferred on its code, and a throttle."""
    recorder = _HangingUp(pipelining=offer)
    with serve(recorder) as server:
        settings = make_settings(f"sqlite:///{tmp_path / 'd.db'}", server.port)

        envelope = Envelope("f@example.com", "busy@example.com", TEXT)
        [outcome] = sent_on_one_connection(settings, [envelope])
    assert (outcome.verdict, outcome.code, outcome.throttle) == (Verdict.deferred, 421, True)
    assert "try again later" in outcome.message
    assert recorder.raw == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost: (certificate, key)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_messages_go_over_tls_and_the_session_ends_with_quit(
    tmp_path: Path,
    make_settings: SettingsFactory,
    pipelining: bool,
    recorder: Recorder,
    certificate: tuple[Path, Path],
    security: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The commands of each message go over the TLS transport aiosmtplib set up, and the
    transport goes back to aiosmtplib for QUIT."""
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts it as a CA
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tls: dict[str, Any] = (
        {"tls_context": context, "require_starttls": True}
        if security == "starttls"
        else {"ssl_context": context}
    )
    quits: list[str] = []

    class Quitting(Recorder):
        async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
            quits.append("QUIT")
            return "221 Bye"

    handler = Quitting(pipelining=pipelining)
    with serve(handler, **tls) as server:
        settings = make_settings(
            f"sqlite:///{tmp_path / 'd.db'}",
            server.port,
            smtp_host="localhost",
            smtp_security=security,
        )

        envelope = Envelope("from@example.com", "to@example.com", TEXT)
        outcomes = sent_on_one_connection(settings, [envelope] * 3)
        assert [o.verdict for o in outcomes] == [Verdict.sent] * 3
        handler.wait_for(3)
        # (aiosmtpd counts a session twice after STARTTLS: wait for its QUIT instead)
        wait_until(lambda: bool(quits), 10, "QUIT")
    assert handler.raw == [TEXT + b"\r\n"] * 3
    assert quits == ["QUIT"]
