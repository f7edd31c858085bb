"""Build the information pack, the PDF attached to the welcome email.

The educator edits readable text (`emails/info-pack/content.md`, format described
at its top) and `drip pack build` turns it into `emails/info-pack.pdf`, so the
pack is reviewed like any other change and never drifts from its source. The
PDF uses fpdf2's built-in Helvetica (no font files to ship), which means its text
must be Latin-1: typographic quotes and dashes are mapped to ASCII here. The
creation date is fixed so that rebuilding an unchanged source gives the same
bytes and does not churn git.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fpdf import FPDF, FontFace
from fpdf.enums import TableBordersLayout, TableCellFillMode

from drip.errors import DripError
from drip.figure import FIGURES, draw_pdf

DEFAULT_SOURCE = Path("emails/info-pack/content.md")
DEFAULT_OUT = Path("emails/info-pack.pdf")

#: Fixed so that rebuilds are byte-for-byte reproducible.
BUILD_DATE = datetime(2026, 1, 1, tzinfo=UTC)

Color = tuple[int, int, int]
TEAL: Color = (31, 78, 90)
GREEN: Color = (42, 127, 117)
ACCENT: Color = (181, 82, 59)
INK: Color = (43, 43, 43)
MUTED: Color = (110, 110, 110)
TINT: Color = (234, 244, 242)
WARM: Color = (255, 246, 229)
AMBER: Color = (201, 140, 40)
SAND: Color = (246, 243, 238)
RULE: Color = (220, 214, 205)
WHITE: Color = (255, 255, 255)

#: Typography the core fonts cannot encode, mapped to what they can.
_ASCII = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": " - ",
        "\u2026": "...",
        "\u00a0": " ",
        "\u2212": "-",
    }
)

_KINDS: list[tuple[str, re.Pattern[str]]] = [
    ("h2", re.compile(r"^## (.+)$")),
    ("ol", re.compile(r"^\d+\. (.+)$")),
    ("ul", re.compile(r"^- (.+)$")),
    ("check", re.compile(r"^\[ \] (.+)$")),
    ("warn", re.compile(r"^>! ?(.+)$")),
    ("box", re.compile(r"^> ?(.+)$")),
    ("table", re.compile(r"^(\|.*\|)$")),
    ("scale", re.compile(r"^(!scale)$")),
    ("figure", re.compile(r"^!figure (\S+)$")),
]
#: Kinds whose consecutive lines form one block, one item a line.
#: A table cell reading "[ ]" becomes this box, for a reader to tick.
_TICK_BOX = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="12" height="12" viewBox="0 0 12 12">'
    b'<rect x="2" y="2" width="8" height="8" rx="0.8" fill="white" stroke="#1f4e5a" '
    b'stroke-width="0.8"/></svg>'
)
_LISTS = {"ol", "ul", "check", "table"}
_COVER_KEYS = {"title", "subtitle", "tagline", "note"}


class PackError(DripError):
    """The pack source cannot be built; the message names the file and line."""


@dataclass
class Block:
    kind: str
    items: list[str] = field(default_factory=list)


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class PackSource:
    cover: dict[str, str]
    sections: list[Section]


def _clean(text: str, where: str) -> str:
    """Map typography to ASCII and refuse what Helvetica cannot show, rather than print '?'."""
    text = text.translate(_ASCII)
    try:
        text.encode("latin-1")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise PackError(f"{where}: character {bad!r} cannot be printed; use plain text") from None
    return text


def parse(text: str, name: str = "content.md") -> PackSource:
    """Read the pack source: cover fields, then one section per '# ' heading."""
    text = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group().count("\n"), text, flags=re.S)
    cover: dict[str, str] = {}
    sections: list[Section] = []
    current: Block | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        where = f"{name}, line {lineno}"
        line = _clean(raw.strip(), where)
        if not line:
            current = None
            continue
        if line.startswith("# "):
            sections.append(Section(line[2:].strip()))
            current = None
            continue
        if not sections:
            key, sep, value = line.partition(":")
            if not sep or key.strip() not in _COVER_KEYS:
                raise PackError(
                    f"{where}: before the first '# ' heading only cover fields "
                    f"({', '.join(sorted(_COVER_KEYS))}) are allowed"
                )
            cover[key.strip()] = value.strip()
            continue
        if line.startswith("!") and line != "!scale":
            directive, _, argument = line.partition(" ")
            if directive != "!figure":
                raise PackError(f"{where}: unknown directive {directive!r}")
            if argument not in FIGURES:
                raise PackError(
                    f"{where}: no figure {argument!r}; known: {', '.join(sorted(FIGURES))}"
                )
        kind, content = "p", line
        for candidate, pattern in _KINDS:
            if match := pattern.match(line):
                kind, content = candidate, match.group(1)
                break
        blocks = sections[-1].blocks
        if current is not None and current.kind == kind and kind in _LISTS:
            current.items.append(content)
        elif current is not None and current.kind == kind and kind in {"p", "box", "warn"}:
            current.items[0] += " " + content
        else:
            current = Block(kind, [content])
            blocks.append(current)
            if kind in {"h2", "scale", "figure"}:
                current = None
    if not cover.get("title"):
        raise PackError(f"{name}: the cover needs a 'title: ...' line at the top")
    if not sections:
        raise PackError(f"{name}: no sections; start each page with '# Heading'")
    return PackSource(cover, sections)


@dataclass(frozen=True)
class Placement:
    """Where a figure was drawn: its page (1-based) and top left corner in mm, and its scale."""

    page: int
    x: float
    y: float
    scale: float


class _PackPDF(FPDF):
    """A4 pages with a running header and a page-numbered footer (not on the cover)."""

    def __init__(self, title: str) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.pack_title = title
        self.placements: dict[str, Placement] = {}
        self.set_margins(20, 24, 20)
        self.set_auto_page_break(auto=True, margin=22)

    def header(self) -> None:
        if self.page_no() == 1:
            return
        self.set_font("Helvetica", "B", 8)
        self.set_text_color(*GREEN)
        self.set_xy(self.l_margin, 11)
        self.cell(self.epw / 2, 5, self.pack_title.upper())
        self.set_font("Helvetica", "", 8)
        self.set_text_color(*MUTED)
        self.cell(self.epw / 2, 5, "Information pack", align="R")
        self.set_draw_color(*RULE)
        self.set_line_width(0.3)
        self.line(self.l_margin, 17, self.w - self.r_margin, 17)
        self.set_y(self.t_margin)

    def footer(self) -> None:
        if self.page_no() == 1:
            return
        self.set_y(-14)
        self.set_font("Helvetica", "", 8)
        self.set_text_color(*MUTED)
        self.cell(self.epw / 2, 5, "Education, not medical advice. See the safety page.")
        self.cell(self.epw / 2, 5, f"Page {self.page_no()} of {{nb}}", align="R")


def _hanging(pdf: FPDF, indent: float, text: str, size: float = 11, line: float = 5.6) -> None:
    """Body text starting `indent` mm in, wrapping under itself, **bold** honoured."""
    pdf.set_font("Helvetica", "", size)
    pdf.set_text_color(*INK)
    pdf.set_x(pdf.l_margin + indent)
    pdf.multi_cell(
        pdf.epw - indent, line, text, markdown=True, align="L", new_x="LMARGIN", new_y="NEXT"
    )


def _room(pdf: FPDF, height: float) -> None:
    """Start a new page when `height` mm will not fit, so nothing splits awkwardly."""
    if pdf.get_y() + height > pdf.page_break_trigger:
        pdf.add_page()


def _draw_cover(pdf: _PackPDF, src: PackSource, pages: dict[str, int]) -> None:
    pdf.add_page()
    cover = src.cover
    pdf.set_fill_color(*TEAL)
    pdf.rect(0, 0, pdf.w, 168, style="F")
    # The motif: a trigger point (rings) and its referred ache (fading dots).
    cx, cy = 152.0, 58.0
    pdf.set_draw_color(*GREEN)
    for radius, width in ((34, 0.6), (24, 0.9), (14, 1.2)):
        pdf.set_line_width(width)
        pdf.circle(x=cx, y=cy, radius=radius, style="D")
    pdf.set_fill_color(*ACCENT)
    pdf.circle(x=cx, y=cy, radius=5.5, style="F")
    pdf.set_fill_color(*(c + (255 - c) * 2 // 5 for c in ACCENT))
    for i, (dx, dy) in enumerate(((5, 44), (10, 56), (13, 68), (15, 80), (16, 92))):
        pdf.circle(x=cx + dx, y=cy + dy, radius=3.2 - i * 0.5, style="F")

    pdf.set_xy(20, 96)
    pdf.set_font("Helvetica", "B", 34)
    pdf.set_text_color(*WHITE)
    pdf.multi_cell(120, 14, cover["title"], new_x="LMARGIN", new_y="NEXT")
    pdf.set_fill_color(*ACCENT)
    pdf.rect(20, pdf.get_y() + 2, 28, 1.6, style="F")
    pdf.set_y(pdf.get_y() + 7)
    pdf.set_font("Helvetica", "", 17)
    pdf.set_text_color(*TINT)
    pdf.multi_cell(130, 8, cover.get("subtitle", ""), new_x="LMARGIN", new_y="NEXT")
    if tagline := cover.get("tagline"):
        pdf.set_y(pdf.get_y() + 3)
        pdf.set_font("Helvetica", "", 11)
        pdf.multi_cell(125, 5.6, tagline, new_x="LMARGIN", new_y="NEXT")

    pdf.set_y(182)
    pdf.set_font("Helvetica", "B", 10)
    pdf.set_text_color(*ACCENT)
    pdf.cell(0, 6, "INSIDE THIS PACK", new_x="LMARGIN", new_y="NEXT")
    pdf.set_y(pdf.get_y() + 2)
    pdf.set_draw_color(*RULE)
    pdf.set_line_width(0.3)
    for section in src.sections:
        pdf.set_font("Helvetica", "", 12)
        pdf.set_text_color(*TEAL)
        pdf.cell(pdf.epw - 20, 9, section.title, border="B")
        pdf.set_text_color(*MUTED)
        pdf.cell(
            20,
            9,
            str(pages.get(section.title, "")),
            border="B",
            align="R",
            new_x="LMARGIN",
            new_y="NEXT",
        )
    if note := cover.get("note"):
        pdf.set_y(262)
        pdf.set_font("Helvetica", "", 9)
        pdf.set_text_color(*MUTED)
        pdf.multi_cell(pdf.epw, 4.8, note, new_x="LMARGIN", new_y="NEXT")


def _draw_box(pdf: FPDF, text: str, fill: Color, bar: Color) -> None:
    pad, line = 4.0, 5.6
    pdf.set_font("Helvetica", "", 10.5)
    lines = pdf.multi_cell(
        pdf.epw - 2 * pad - 2, line, text, markdown=True, align="L", dry_run=True, output="LINES"
    )
    assert isinstance(lines, list)
    height = len(lines) * line + 2 * pad
    pdf.set_y(pdf.get_y() + 2)
    _room(pdf, height)
    top = pdf.get_y()
    pdf.set_fill_color(*fill)
    pdf.rect(pdf.l_margin, top, pdf.epw, height, style="F")
    pdf.set_fill_color(*bar)
    pdf.rect(pdf.l_margin, top, 1.6, height, style="F")
    pdf.set_xy(pdf.l_margin + pad + 2, top + pad)
    pdf.set_text_color(*INK)
    pdf.multi_cell(
        pdf.epw - 2 * pad - 2, line, text, markdown=True, align="L", new_x="LMARGIN", new_y="NEXT"
    )
    pdf.set_y(top + height + 3)


def _draw_scale(pdf: FPDF) -> None:
    """The 0-10 pressure scale with the 5-7 'good pain' zone picked out."""
    _room(pdf, 26)
    top, gap = pdf.get_y() + 1, 1.2
    width = (pdf.epw - 10 * gap) / 11
    for n in range(11):
        x = pdf.l_margin + n * (width + gap)
        if 5 <= n <= 7:
            fill, ink = ACCENT, WHITE
        elif n > 7:
            fill, ink = (122, 40, 30), WHITE
        else:
            red, green, blue = (min(255, c + (10 - n * 2) * 8) for c in TINT)
            fill, ink = (red, green, blue), TEAL
        pdf.set_fill_color(*fill)
        pdf.rect(x, top, width, 10, style="F")
        pdf.set_xy(x, top)
        pdf.set_font("Helvetica", "B", 12)
        pdf.set_text_color(*ink)
        pdf.cell(width, 10, str(n), align="C")
    labels = (
        (0, 5, "Too light to help"),
        (5, 8, "Aim here: 'good pain'"),
        (8, 11, "Too much: ease off"),
    )
    pdf.set_font("Helvetica", "B", 9)
    for start, end, label in labels:
        pdf.set_xy(pdf.l_margin + start * (width + gap), top + 11.5)
        pdf.set_text_color(*(ACCENT if start == 5 else MUTED))
        pdf.cell((end - start) * (width + gap) - gap, 5, label, align="C")
    pdf.set_y(top + 20)


def _kept_with(blocks: list[Block], index: int) -> float:
    """Room a heading needs for what follows it: a figure and its one-paragraph lead-in
    stay on the heading's page rather than leave the heading alone at the foot of one."""
    following = blocks[index + 1 : index + 3]
    for block in following:
        if block.kind == "figure":
            fig = FIGURES[block.items[0]]()
            paragraphs = sum(1 for b in following if b.kind == "p")
            return fig.height * min(1.0, 170 / fig.width) + 6 + 20 * paragraphs
    return 0.0


def _draw_figure(pdf: _PackPDF, name: str) -> None:
    """A picture from drip.figure, full width, on one page; where it went is noted for tests."""
    fig = FIGURES[name]()
    scale = min(1.0, pdf.epw / fig.width)
    _room(pdf, fig.height * scale + 4)
    top = pdf.get_y() + 2
    draw_pdf(pdf, fig, pdf.l_margin, top, scale)
    pdf.placements[name] = Placement(pdf.page_no(), pdf.l_margin, top, scale)
    pdf.set_y(top + fig.height * scale + 4)


def _draw_table(pdf: FPDF, rows: list[str]) -> None:
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    pdf.set_font("Helvetica", "", 9.5)
    pdf.set_text_color(*INK)
    pdf.set_draw_color(*RULE)
    pdf.set_line_width(0.2)
    pdf.set_fill_color(*WHITE)  # fpdf2 fills unshaded rows with the current colour
    widths: Sequence[float] = {4: (9, 24, 44, 23), 5: (8, 24, 42, 20, 10)}.get(
        len(cells[0]), [1.0] * len(cells[0])
    )
    with pdf.table(
        col_widths=widths,
        headings_style=FontFace(emphasis="BOLD", color=WHITE, fill_color=TEAL),
        cell_fill_color=SAND,
        cell_fill_mode=TableCellFillMode.ROWS,
        borders_layout=TableBordersLayout.HORIZONTAL_LINES,
        line_height=5,
        padding=2.2,
        text_align="LEFT",
        markdown=True,
    ) as table:
        for row in cells:
            cells_row = table.row()
            for cell in row:
                if cell == "[ ]":  # a box to tick, drawn as a vector
                    cells_row.cell(img=io.BytesIO(_TICK_BOX), img_fill_width=True)
                else:
                    cells_row.cell(cell)
    pdf.set_y(pdf.get_y() + 3)


def _draw_section(pdf: _PackPDF, number: int, total: int, section: Section) -> None:
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 9)
    pdf.set_text_color(*ACCENT)
    pdf.cell(0, 5, f"PART {number} OF {total}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 24)
    pdf.set_text_color(*TEAL)
    pdf.multi_cell(pdf.epw, 11, section.title, new_x="LMARGIN", new_y="NEXT")
    pdf.set_fill_color(*ACCENT)
    pdf.rect(pdf.l_margin, pdf.get_y() + 1.5, 22, 1.4, style="F")
    pdf.set_y(pdf.get_y() + 8)
    for index, block in enumerate(section.blocks):
        if block.kind == "h2":
            _room(pdf, 22 + _kept_with(section.blocks, index))
            pdf.set_y(pdf.get_y() + 3)
            pdf.set_font("Helvetica", "B", 13)
            pdf.set_text_color(*TEAL)
            pdf.multi_cell(pdf.epw, 7, block.items[0], new_x="LMARGIN", new_y="NEXT")
            pdf.set_y(pdf.get_y() + 1)
        elif block.kind == "p":
            _hanging(pdf, 0, block.items[0])
            pdf.set_y(pdf.get_y() + 3)
        elif block.kind in {"ul", "ol", "check"}:
            for i, item in enumerate(block.items, start=1):
                _room(pdf, 8)
                y = pdf.get_y()
                x = pdf.l_margin
                if block.kind == "ul":
                    pdf.set_fill_color(*ACCENT)
                    pdf.circle(x=x + 2, y=y + 2.8, radius=0.9, style="F")
                    indent = 6.0
                elif block.kind == "ol":
                    pdf.set_fill_color(*ACCENT)
                    pdf.circle(x=x + 2.9, y=y + 2.8, radius=2.9, style="F")
                    pdf.set_xy(x, y + 0.3)
                    pdf.set_font("Helvetica", "B", 8.5)
                    pdf.set_text_color(*WHITE)
                    pdf.cell(5.8, 5, str(i), align="C")
                    indent = 9.0
                else:
                    pdf.set_draw_color(*TEAL)
                    pdf.set_line_width(0.35)
                    pdf.rect(x + 0.3, y + 0.8, 4, 4, style="D")
                    indent = 8.0
                pdf.set_y(y)
                _hanging(pdf, indent, item)
                pdf.set_y(pdf.get_y() + 1.6)
            pdf.set_y(pdf.get_y() + 1.5)
        elif block.kind == "box":
            _draw_box(pdf, block.items[0], TINT, GREEN)
        elif block.kind == "warn":
            _draw_box(pdf, block.items[0], WARM, AMBER)
        elif block.kind == "table":
            _draw_table(pdf, block.items)
        elif block.kind == "scale":
            _draw_scale(pdf)
        elif block.kind == "figure":
            _draw_figure(pdf, block.items[0])


@dataclass(frozen=True)
class Layout:
    """A built pack: the PDF, the page each section starts on, and where each figure went."""

    data: bytes
    starts: dict[str, int]
    placements: dict[str, Placement]


def _render(src: PackSource, pages: dict[str, int]) -> Layout:
    """One full layout, with `pages` as the contents list's page numbers."""
    pdf = _PackPDF(src.cover["title"])
    pdf.set_title(f"{src.cover['title']}: {src.cover.get('subtitle', 'information pack')}")
    pdf.set_author(src.cover["title"])
    pdf.set_subject("Trigger point releases and pain relief techniques")
    pdf.set_creator("drip pack build")
    pdf.set_lang("en")
    pdf.set_creation_date(BUILD_DATE)
    _draw_cover(pdf, src, pages)
    starts: dict[str, int] = {}
    for number, section in enumerate(src.sections, start=1):
        starts[section.title] = pdf.page_no() + 1
        _draw_section(pdf, number, len(src.sections), section)
    return Layout(bytes(pdf.output()), starts, dict(pdf.placements))


def lay_out(source: Path) -> Layout:
    """Read the source and lay it out twice, so the cover's contents show the real pages."""
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise PackError(f"{source}: cannot be read ({exc.strerror or exc})") from None
    src = parse(text, str(source))
    return _render(src, _render(src, {}).starts)


def build_pack(source: Path, out: Path) -> Layout:
    """Build the PDF at `out` from the text at `source`; raise PackError on bad input.

    Written through a temporary file so a reader never sees half a PDF.
    """
    layout = lay_out(source)
    data = layout.data
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the pack is public
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return layout
