"""Which text of an email went out: a short hash of its template's sources.

Recorded on each outbox row when it is rendered for sending, so the send log and the
subscriber's timeline show who got a lesson before a fix and who after, and `drip check`
can say that a lesson changed since it was last sent. The hash covers the template's
own two files (NAME.html and NAME.txt), not the layout they share: a typo fixed in
one lesson changes that lesson's version only.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

#: Hex digits kept: enough to tell a lesson's versions apart, short enough to read.
LENGTH = 12


def template_version(emails_dir: Path, template: str) -> str | None:
    """The version of `template` as it is on disk now; None when a part is missing. Two
    stats on plain strings: this runs for every email a delivery renders."""
    base = os.path.join(emails_dir, template)
    parts = (base + ".html", base + ".txt")
    try:
        stamps = tuple((st.st_mtime_ns, st.st_size) for st in map(os.stat, parts))
    except OSError:
        return None
    return _hashed(parts, stamps)


@lru_cache(maxsize=256)
def _hashed(paths: tuple[str, ...], stamps: tuple[tuple[int, int], ...]) -> str | None:
    """Read and hash once per file state (`stamps`), not once per message."""
    digest = hashlib.sha256()
    try:
        for path in paths:
            with open(path, "rb") as handle:
                digest.update(handle.read())
            digest.update(b"\0")
    except OSError:
        return None
    return digest.hexdigest()[:LENGTH]
