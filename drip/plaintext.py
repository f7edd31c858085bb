"""HTML made from Markdown, as the plain text a reader reads in a text-only mail client.

The text part of a newsletter used to be its Markdown source: `**`, `[text](url)` and
lines of hundreds of characters. Here the HTML that Markdown became is read back into
text: emphasis is dropped, a link is `text (url)`, headings are capitals, lists keep
their bullets and numbers with a hanging indent, and paragraphs wrap at 72 columns.
A word is never broken, so a URL longer than a line stays whole on a line of its own.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from html.parser import HTMLParser

WIDTH = 72
_BLOCKS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "blockquote", "pre", "hr", "div"}
)
_VOID = frozenset({"br", "hr", "img"})


@dataclass
class _Node:
    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[_Node | str] = field(default_factory=list)


class _TreeBuilder(HTMLParser):
    """A small tree of the HTML: enough for what Python-Markdown writes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("root")
        self._stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = _Node(tag, {k: v or "" for k, v in attrs})
        self._stack[-1].children.append(node)
        if tag not in _VOID:
            self._stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._stack) - 1, 0, -1):
            if self._stack[depth].tag == tag:
                del self._stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._stack[-1].children.append(data)


def _link(text: str, href: str) -> str:
    """`text (url)`; just the URL when the text is the URL (or an address, for mailto:)."""
    text = " ".join(text.split())
    if not href:
        return text
    shown = href.removeprefix("mailto:")
    if not text or text in (href, shown, href.split("://", 1)[-1]):
        return shown
    return f"{text} ({shown})"


def _inline(node: _Node | str) -> str:
    """A node's text as one run: links written out, line breaks as newlines."""
    if isinstance(node, str):
        return node
    if node.tag == "br":
        return "\n"
    if node.tag == "img":
        alt, src = node.attrs.get("alt", ""), node.attrs.get("src", "")
        return f"{alt} ({src})" if alt and src else alt or src
    inner = "".join(_inline(child) for child in node.children)
    if node.tag == "a":
        return _link(inner, node.attrs.get("href", ""))
    return inner


def _wrap(text: str, width: int, first: str = "", rest: str = "") -> list[str]:
    """Each line of `text` (a <br> makes one) wrapped, words and URLs never split."""
    lines: list[str] = []
    for number, part in enumerate(text.split("\n")):
        words = " ".join(part.split())
        if not words:
            continue
        lines.extend(
            textwrap.wrap(
                words,
                width=width,
                initial_indent=first if number == 0 and not lines else rest,
                subsequent_indent=rest,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return lines


def _blocks(nodes: list[_Node | str], width: int) -> list[list[str]]:
    """The nodes as blocks of lines; blocks are printed a blank line apart."""
    out: list[list[str]] = []
    run: list[_Node | str] = []  # inline content between blocks (a tight list item's text)

    def flush() -> None:
        text = "".join(_inline(n) for n in run)
        run.clear()
        lines = _wrap(text, width)
        if lines:
            out.append(lines)

    for node in nodes:
        if isinstance(node, str) or node.tag not in _BLOCKS:
            run.append(node)
            continue
        flush()
        out.extend(_block(node, width))
    flush()
    return out


def _block(node: _Node, width: int) -> list[list[str]]:
    tag = node.tag
    if tag in ("h1", "h2"):
        return [_wrap("".join(_inline(n) for n in node.children).upper(), width)]
    if tag in ("p", "h3", "h4", "h5", "h6"):
        lines = _wrap("".join(_inline(n) for n in node.children), width)
        return [lines] if lines else []
    if tag == "hr":
        return [["* * *"]]
    if tag == "pre":
        code = "".join(_inline(n) for n in node.children).rstrip("\n")
        return [["    " + line if line else "" for line in code.split("\n")]]
    if tag == "blockquote":
        inner = _blocks(node.children, width - 2)
        return [["> " + line if line else ">" for line in block] for block in inner]
    if tag in ("ul", "ol"):
        return [_list(node, width)]
    return _blocks(node.children, width)


def _list(node: _Node, width: int) -> list[str]:
    """A list as one block: `- ` or `N. ` bullets, continuation lines under the text."""
    lines: list[str] = []
    number = int(node.attrs.get("start") or 1)
    for item in node.children:
        if not isinstance(item, _Node) or item.tag != "li":
            continue
        bullet = f"{number}. " if node.tag == "ol" else "- "
        number += 1
        indent = " " * len(bullet)
        blocks = _blocks(item.children, width - len(bullet))
        # A loose item (its text in paragraphs) keeps its blank lines; a tight one none.
        loose = any(isinstance(c, _Node) and c.tag == "p" for c in item.children)
        for count, block in enumerate(blocks):
            if count and loose:
                lines.append("")
            for index, line in enumerate(block):
                lead = bullet if count == 0 and index == 0 else indent
                lines.append(lead + line if line else "")
    return lines


def html_to_text(html: str, width: int = WIDTH) -> str:
    """Readable plain text of `html` (Markdown's output), wrapped at `width`."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    blocks = _blocks(builder.root.children, width)
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"
