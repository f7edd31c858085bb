"""A real MTA as the other side: a private Postfix instance on loopback that discards.

Debian's Postfix, in a configuration of its own under a temporary folder (the system's
instance, if any, is left alone): smtpd on a free port of 127.0.0.1, every message
queued as Postfix always does (written and synced), then handed to the `discard`
transport. What it received is counted from its own log. `make bench` installs the
package when it can; without it (or without root, which Postfix needs to start), the
bench says so and compares against the aiosmtpd sink alone.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.sink import Receiver, free_port

MASTER_CF = Path("/etc/postfix/master.cf")


class Unavailable(Exception):
    """Postfix cannot run here; the message says why."""


MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = bench.localhost
mydestination =
mynetworks = 127.0.0.0/8
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject
default_transport = discard
relay_transport = discard
local_transport = discard
virtual_transport = discard
alias_maps =
alias_database =
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
"""


@dataclass
class Postfix(Receiver):
    """What the bench needs of a receiving server: its port and how much it received,
    counted from its log."""

    port: int
    log: Path
    name = "postfix"

    @property
    def received(self) -> int:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return text.count(" status=sent ")


def _postfix(root: Path, *command: str) -> None:
    done = subprocess.run(
        ["postfix", "-c", str(root / "etc"), *command],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        log = root / "postfix.log"
        said = (done.stderr or (log.read_text() if log.exists() else "")).strip()
        raise Unavailable(
            f"postfix {command[0]} failed: {said.splitlines()[-1:] or done.returncode}"
        )


@contextmanager
def postfix() -> Iterator[Postfix]:
    """A discarding Postfix on a free loopback port for the block's duration."""
    if shutil.which("postfix") is None or not MASTER_CF.exists():
        raise Unavailable("Postfix is not installed (apt-get install postfix)")
    with tempfile.TemporaryDirectory(prefix="drip-bench-postfix-") as folder:
        root = Path(folder)
        root.chmod(0o755)  # Postfix's own users read their configuration here
        port = free_port()
        (root / "etc").mkdir()
        (root / "spool").mkdir()
        (root / "data").mkdir()
        shutil.chown(root / "data", "postfix")
        (root / "etc" / "main.cf").write_text(MAIN_CF.format(root=root))
        master = MASTER_CF.read_text().splitlines()
        smtpd = f"127.0.0.1:{port} inet n - n - - smtpd"
        master = [smtpd if line.startswith("smtp ") else line for line in master]
        (root / "etc" / "master.cf").write_text("\n".join(master) + "\n")
        _postfix(root, "start")
        try:
            _wait_listening(port)
            yield Postfix(port, root / "postfix.log")
        finally:
            _postfix(root, "stop")


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise Unavailable(f"postfix did not listen on 127.0.0.1:{port}") from None
            time.sleep(0.1)
