"""The mail catcher: what /admin/outbox lists and shows, kept where only its owner reads."""

from __future__ import annotations

import mailbox
import os
import stat
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

from drip import catcher
from tests.mailserver import free_port


def _catch(directory: Path, subject: str, attachment: bytes | None = None) -> str:
    message = EmailMessage()
    message["To"] = "ann@example.com"
    message["Subject"] = subject
    message["Date"] = "Sun, 01 Mar 2026 09:00:00 +0000"
    message.set_content("plain words")
    message.add_alternative("<p>rich words</p>", subtype="html")
    if attachment is not None:
        message.add_attachment(
            attachment, maintype="application", subtype="pdf", filename="../pack?.pdf"
        )
    return str(catcher.caught_box(directory).add(message))


def test_the_list_is_newest_first_and_says_how_many(tmp_path: Path) -> None:
    for n in range(3):
        _catch(tmp_path, f"message {n}")
    rows, total = catcher.newest(tmp_path, limit=2)
    assert total == 3
    assert len(rows) == 2
    assert {row.to for row in rows} == {"ann@example.com"}


def test_a_message_reads_with_its_bodies_and_attachments(tmp_path: Path) -> None:
    key = _catch(tmp_path, "with a pack", attachment=b"%PDF-1.4 tiny")
    message = catcher.read(tmp_path, key)
    assert message is not None
    assert catcher.body(message, "plain") == "plain words\n"
    assert catcher.body(message, "html") == "<p>rich words</p>\n"
    [pdf] = [part for part in catcher.parts(message) if part.is_attachment]
    assert pdf.payload == b"%PDF-1.4 tiny"
    assert pdf.type == "application/pdf"
    assert pdf.download_name == "pack_.pdf"


def test_an_unknown_key_is_none_and_an_empty_folder_is_made_whole(tmp_path: Path) -> None:
    empty = tmp_path / "mail"
    empty.mkdir()
    assert catcher.read(empty, "no-such-key") is None
    assert catcher.newest(empty, 10) == ([], 0)
    assert isinstance(catcher.caught_box(empty), mailbox.Maildir)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_caught_mail_is_kept_in_a_private_maildir(tmp_path: Path) -> None:
    kept = os.umask(0o022)
    try:
        directory = tmp_path / ".drip" / "mail"
        port = free_port()
        box = catcher.start_catcher(directory, "127.0.0.1", port)
        try:
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = "a@example.com", "b@x.org", "Hi"
            message.set_content("caught")
            await aiosmtplib.send(message, hostname="127.0.0.1", port=port)
        finally:
            box.stop()
    finally:
        os.umask(kept)
    for folder in (directory, directory / "tmp", directory / "new", directory / "cur"):
        assert _mode(folder) == 0o700, folder
    assert len(catcher.caught_box(directory)) == 1


def test_an_open_maildir_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "mail"
    for sub in ("tmp", "new", "cur"):
        (directory / sub).mkdir(parents=True)
    for folder in (directory, *directory.iterdir()):
        folder.chmod(0o755)
    catcher.caught_box(directory)
    assert {_mode(f) for f in (directory, *directory.iterdir())} == {0o700}
