"""The local mail catcher of `drip dev`: an aiosmtpd server that keeps every message.

Messages go into a Maildir (one file each, safe across processes), which the
admin's /admin/outbox page reads. Nothing is relayed anywhere.
"""

from __future__ import annotations

import mailbox
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class MaildirHandler:
    def __init__(self, directory: Path) -> None:
        directory.parent.mkdir(parents=True, exist_ok=True)  # Maildir makes cur/new/tmp itself
        self.maildir = mailbox.Maildir(directory, create=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or envelope.content
        assert isinstance(data, bytes)
        self.maildir.add(data)
        return "250 Message caught by drip dev"


def start_catcher(directory: Path, host: str, port: int) -> Controller:
    """Start the catcher in its own thread; the caller stops it."""
    controller = Controller(MaildirHandler(directory), hostname=host, port=port)
    controller.start()
    return controller
