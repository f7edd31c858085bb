"""One SMTP connection against a real aiosmtpd sink: what DATA carries, and a message
whose final dot never went is not delivered (what pipelining relies on)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drip.sending.message import Envelope
from drip.sending.sender import Connection, Verdict, wire
from tests.conftest import SettingsFactory
from tests.mailserver import MailServer, Recorder
from tests.waiting import wait_until

TEXT = b"Subject: dots\r\nMessage-ID: <dots@example.com>\r\n\r\n.first\r\nmiddle\r\n..two\r\nlast"


def test_the_text_arrives_as_composed_leading_dots_and_all(
    tmp_path: Path, mail_server: MailServer, recorder: Recorder, make_settings: SettingsFactory
) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'd.db'}", mail_server.port)

    async def send() -> Verdict:
        connection = Connection(settings)
        try:
            envelope = Envelope("from@example.com", "to@example.com", TEXT)
            return (await connection.send(envelope)).verdict
        finally:
            await connection.close()

    assert asyncio.run(send()) == Verdict.sent
    recorder.wait_for(1)
    assert recorder.raw == [TEXT + b"\r\n"]


def test_a_connection_closed_before_the_final_dot_delivers_nothing(
    tmp_path: Path, mail_server: MailServer, recorder: Recorder, make_settings: SettingsFactory
) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'd.db'}", mail_server.port)
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


def test_wire_form() -> None:
    assert wire(b"a\r\n.b") == b"a\r\n..b\r\n.\r\n"
    assert wire(b".a\nb\rc") == b"..a\r\nb\r\nc\r\n.\r\n"
