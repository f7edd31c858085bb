"""A private Dovecot (Debian's dovecot-imapd and dovecot-pop3d) on loopback, for tests.

Each instance has its own configuration, sockets, log and Maildir under a fresh
directory, plaintext IMAP and POP3 on free loopback ports, and one user. Dovecot
never keeps mail as root, so as root the mail belongs to the `dovecot` user and the
directory is world-traversable (pytest's tmp_path is not); as another user
everything runs as that user.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.mailserver import free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

CONFIG = """\
protocols = imap pop3
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = drip-test-{imap_port}
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
first_valid_uid = 1
{users}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_group} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


@dataclass(frozen=True)
class Dovecot:
    imap_port: int
    pop3_port: int
    user: str
    password: str
    root: Path

    def url(self, scheme: str) -> str:
        port = self.imap_port if scheme.startswith("imap") else self.pop3_port
        folder = "/INBOX" if scheme.startswith("imap") else ""
        return f"{scheme}://{self.user}:{self.password}@127.0.0.1:{port}{folder}"

    def _imap(self, folder: str = "INBOX") -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=10)
        client.login(self.user, self.password)
        status, _ = client.select(f'"{folder}"')
        assert status == "OK", f"no folder {folder}"
        return client

    def deliver(self, raw: bytes) -> None:
        """Put a message in the INBOX, unseen, as a delivery agent would (IMAP APPEND)."""
        client = self._imap()
        try:
            status, _ = client.append("INBOX", "", None, raw)
            assert status == "OK"
        finally:
            client.logout()

    def messages(self, folder: str = "INBOX") -> list[tuple[bytes, bool]]:
        """Every message left in a folder, with whether it is flagged \\Seen."""
        client = self._imap(folder)
        try:
            _, found = client.uid("SEARCH", "ALL")
            result = []
            for uid in (found[0] or b"").split():
                _, parts = client.uid("FETCH", uid.decode(), "(FLAGS BODY.PEEK[])")
                head, raw = next(p for p in parts if isinstance(p, tuple))
                result.append((raw, b"\\Seen" in head))
            return result
        finally:
            client.logout()


def _ready(port: int) -> bool:
    try:
        imaplib.IMAP4("127.0.0.1", port, timeout=2).logout()
        return True
    except OSError:
        return False


@contextmanager
def dovecot(user: str = "bounces", password: str = "s3cret-pw") -> Iterator[Dovecot]:
    root = Path(tempfile.mkdtemp(prefix="drip-dovecot-"))
    root.chmod(0o755)
    (root / "mail").mkdir()
    (root / "state").mkdir()
    (root / "users").write_text(f"{user}:{{PLAIN}}{password}\n")
    if os.getuid() == 0:
        mail_user = mail_group = "dovecot"
        users = ""
        entry = pwd.getpwnam("dovecot")
        os.chown(root / "mail", entry.pw_uid, entry.pw_gid)
    else:
        me = pwd.getpwuid(os.getuid()).pw_name
        mail_user = mail_group = me
        users = f"default_internal_user = {me}\ndefault_login_user = {me}\n"
    imap_port, pop3_port = free_port(), free_port()
    config = root / "dovecot.conf"
    config.write_text(
        CONFIG.format(
            root=root,
            imap_port=imap_port,
            pop3_port=pop3_port,
            users=users,
            mail_user=mail_user,
            mail_group=mail_group,
        )
    )
    # The daemon keeps the descriptors it was given: no pipes, or run() waits for it.
    with (root / "start.log").open("wb") as out:
        subprocess.run([DOVECOT, "-c", str(config)], check=True, stdout=out, stderr=out, timeout=30)
    try:
        deadline = time.monotonic() + 30
        while not _ready(imap_port):
            if time.monotonic() > deadline:
                log = root / "dovecot.log"
                raise AssertionError(f"dovecot did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield Dovecot(imap_port, pop3_port, user, password, root)
    finally:
        subprocess.run(
            [DOVECOT, "-c", str(config), "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        pid_file = root / "run" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)
