"""The information pack: it builds, reads as designed, renders, and the committed PDF is current."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import typer
from pypdf import PdfReader
from typer.testing import CliRunner

from drip.pack import PackError, build_pack

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "emails" / "info-pack" / "content.md"
COMMITTED = ROOT / "emails" / "info-pack.pdf"
#: One page each, in this order: the cover, then the five sections.
HEADINGS = [
    "Trigger Point Relief",
    "What trigger points are",
    "A self-check",
    "The release technique",
    "A simple 7-day routine",
    "Safety first",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "info-pack.pdf"
    build_pack(SOURCE, out)
    return out


def page_texts(pdf: Path) -> list[str]:
    return [" ".join((page.extract_text() or "").split()) for page in PdfReader(pdf).pages]


def assert_sections_in_order(pdf: Path) -> None:
    texts = page_texts(pdf)
    assert len(texts) >= len(HEADINGS)
    assert texts[0].startswith("Trigger Point Relief Your free information pack")
    for number, (heading, text) in enumerate(zip(HEADINGS, texts, strict=False)):
        assert heading in text, (number + 1, heading, text[:120])
        if number:
            assert f"PART {number} OF {len(HEADINGS) - 1} {heading}" in text


def test_builds_a_valid_multi_page_pdf(built: Path) -> None:
    assert built.read_bytes().startswith(b"%PDF-")
    reader = PdfReader(built)
    assert len(reader.pages) == len(HEADINGS)
    assert reader.metadata is not None
    assert reader.metadata.title == "Trigger Point Relief: Your free information pack"


def test_each_page_holds_its_section_in_order(built: Path) -> None:
    assert_sections_in_order(built)


def test_cover_lists_sections_with_their_pages(built: Path) -> None:
    cover = page_texts(built)[0]
    for page, heading in enumerate(HEADINGS[1:], start=2):
        assert f"{heading} {page}" in cover


def test_pages_are_numbered(built: Path) -> None:
    texts = page_texts(built)
    for page, text in enumerate(texts[1:], start=2):
        assert f"Page {page} of {len(texts)}" in text


def test_safety_page_says_what_the_emails_say(built: Path) -> None:
    safety = page_texts(built)[-1]
    for phrase in ("not a diagnosis", "numbness", "bladder", "injury", "fever"):
        assert phrase in safety


def test_routine_is_a_seven_day_table(built: Path) -> None:
    routine = page_texts(built)[4]
    assert "Day Morning (2 min) Evening (about 10 min) Focus" in routine
    for day in range(1, 8):
        assert f" {day} " in routine


def test_rebuilding_gives_the_same_bytes(built: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.pdf"
    build_pack(SOURCE, again)
    assert again.read_bytes() == built.read_bytes()


def test_committed_pdf_is_built_from_the_current_source(built: Path) -> None:
    """Text, not bytes: another fpdf2 version may lay out the same words differently."""
    assert_sections_in_order(COMMITTED)
    assert page_texts(COMMITTED) == page_texts(built), "run: drip pack build"


def test_pages_render_to_images(built: Path, tmp_path: Path) -> None:
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        pytest.fail("pdftoppm is missing: install poppler-utils")
    result = subprocess.run(
        [pdftoppm, "-png", "-r", "50", str(built), str(tmp_path / "page")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("page-*.png"))) == len(PdfReader(built).pages)


# The source format


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "content.md"
    path.write_text(text, encoding="utf-8")
    return path


def test_typographic_quotes_and_dashes_become_ascii(tmp_path: Path) -> None:
    source = write(tmp_path, "title: T\n\n# \u201cQuoted\u201d \u2013 heading\n\nIt\u2019s fine.\n")
    out = tmp_path / "out.pdf"
    build_pack(source, out)
    assert '"Quoted" - heading It\'s fine.' in page_texts(out)[1]


def test_unprintable_character_names_the_line(tmp_path: Path) -> None:
    source = write(tmp_path, "title: T\n\n# Heading\n\nAn arrow \u2192 here.\n")
    with pytest.raises(PackError, match=r"line 5: character '\u2192'"):
        build_pack(source, tmp_path / "out.pdf")
    assert not (tmp_path / "out.pdf").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("subtitle: no title\n\n# Heading\n", "needs a 'title"),
        ("title: T\n", "no sections"),
        ("title: T\nstray words\n# Heading\n", "line 2: before the first"),
        ("title: T\n\n# Heading\n\n!chart\n", "line 5: unknown directive '!chart'"),
    ],
)
def test_bad_source_is_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PackError, match=message):
        build_pack(write(tmp_path, text), tmp_path / "out.pdf")


# drip pack build


def _cli() -> typer.Typer:
    from drip.cli import app

    return app


def test_pack_build_command_writes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "pack.pdf"
    args = ["pack", "build", "--source", str(SOURCE), "--out", str(out)]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}" in result.stdout
    assert_sections_in_order(out)


def test_pack_build_command_fails_in_one_line(tmp_path: Path) -> None:
    args = ["pack", "build", "--source", str(tmp_path / "missing.md"), "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "missing.md" in result.stderr
