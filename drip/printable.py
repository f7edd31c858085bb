"""Text from outside drip (an SMTP server's reply, an imported name) made safe to show.

A server's reply can carry terminal escape sequences (ESC, the 8-bit CSI, BEL...)
that would retitle, clear or rewrite the operator's terminal through `drip logs`, and
bidirectional overrides that make text read other than it is. `printable` spells
each such character out (`\\x1b`, `\\u202e`) instead; everything else is kept.
"""

from __future__ import annotations

import re

#: C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _spelled(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control character (but tab and newline) spelled out."""
    return _UNSAFE.sub(_spelled, text)


def one_line(text: str) -> str:
    """`printable(text)` on one line: tabs and newlines become spaces."""
    return printable(text.replace("\t", " ").replace("\r", " ").replace("\n", " "))
