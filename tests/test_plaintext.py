"""A newsletter's text part is text: no Markdown markup, wrapped, links written out."""

from __future__ import annotations

import re

import markdown

from drip.plaintext import WIDTH, html_to_text

LONG_URL = (
    "https://example.com/videos/2026/spring/the-pressure-release-step-by-step?utm_source=news"
)

SOURCE = f"""# Hip pain on the stairs?

Hello **Sam**! This month: *three* quick releases for the hips, and a [video of the
release]({LONG_URL}) you asked for, and a last word that makes this paragraph run well past
seventy-two columns. See https://example.com or <https://example.org/x>.

## What to try

- Press the **side** of the hip for ninety seconds, breathing slowly all the while, then let go.
- Walk.
    - on the flat first
- Rest.

Between the lists.

1. One
2. Two, a line long enough that it has to wrap around at the edge of the text column.

> A reader wrote: it helps most after a long drive, when the hip has been still for hours.

    code stays as it is, even when it is long, very long, longer than the column width

---
Write to [me](mailto:ann@example.com).
Or call.
"""


def _text() -> str:
    return html_to_text(markdown.markdown(SOURCE))


def test_markdown_markup_is_gone_and_links_are_written_out() -> None:
    text = _text()
    assert "**" not in text
    assert not re.search(r"(?<!\w)\*\w", text)  # no *emphasis*
    assert not re.search(r"\[[^\]]*\]\(", text)  # no [text](url)
    assert "#" not in text
    assert f"video of the release ({LONG_URL})" in " ".join(text.split())
    assert "https://example.com or https://example.org/x." in text
    assert "Write to me (ann@example.com)." in text


def test_headings_and_lists_read_as_text() -> None:
    lines = _text().splitlines()
    assert lines[0] == "HIP PAIN ON THE STAIRS?"
    assert "WHAT TO TRY" in lines
    bullet = lines.index("- Walk.")
    assert lines[bullet - 1].startswith("  ")  # the first item's continuation, hanging
    assert lines[bullet + 1] == "  - on the flat first"
    assert lines[bullet + 2] == "- Rest."
    assert "1. One" in lines
    two = lines.index("1. One") + 1
    assert lines[two].startswith("2. Two,")
    assert lines[two + 1].startswith("   ")  # under the text, not the number
    assert any(line.startswith("> A reader wrote") for line in lines)
    assert (
        "    code stays as it is, even when it is long, very long, longer than the column width"
        in lines
    )
    assert lines[-2:] == ["Write to me (ann@example.com).", "Or call."]


def test_lines_wrap_at_72_and_a_url_is_never_broken() -> None:
    text = _text()
    for line in text.splitlines():
        if len(line) > WIDTH:
            assert "https://" in line or line.startswith("    code"), line
    assert LONG_URL in text  # whole, on one line
