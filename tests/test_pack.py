"""The information pack: it builds, reads as designed, renders, and the committed PDF is current."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import typer
from PIL import Image
from pypdf import PdfReader
from typer.testing import CliRunner

from drip import figure, pack
from drip.pack import PackError, build_pack

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "emails" / "info-pack" / "content.md"
COMMITTED = ROOT / "emails" / "info-pack.pdf"
#: The cover, then the five sections in this order, each starting a new page.
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


def section_pages(pdf: Path) -> dict[str, int]:
    """The page (1-based) each section starts on, read from its 'PART n OF m' line."""
    found: dict[str, int] = {}
    for page, text in enumerate(page_texts(pdf), start=1):
        for number, heading in enumerate(HEADINGS[1:], start=1):
            if f"PART {number} OF {len(HEADINGS) - 1} {heading}" in text:
                found[heading] = page
    return found


def assert_sections_in_order(pdf: Path) -> None:
    texts = page_texts(pdf)
    assert texts[0].startswith("Trigger Point Relief Your free information pack")
    starts = section_pages(pdf)
    assert list(starts) == HEADINGS[1:], starts
    assert sorted(starts.values()) == list(starts.values())
    assert starts[HEADINGS[1]] == 2


def test_builds_a_valid_multi_page_pdf(built: Path) -> None:
    assert built.read_bytes().startswith(b"%PDF-")
    reader = PdfReader(built)
    assert len(HEADINGS) <= len(reader.pages) <= 10
    assert reader.metadata is not None
    assert reader.metadata.title == "Trigger Point Relief: Your free information pack"


def test_each_page_holds_its_section_in_order(built: Path) -> None:
    assert_sections_in_order(built)


def test_cover_lists_sections_with_their_pages(built: Path) -> None:
    cover = page_texts(built)[0]
    for heading, page in section_pages(built).items():
        assert f"{heading} {page}" in cover


def test_pages_are_numbered(built: Path) -> None:
    texts = page_texts(built)
    for page, text in enumerate(texts[1:], start=2):
        assert f"Page {page} of {len(texts)}" in text


def test_safety_page_says_what_the_emails_say(built: Path) -> None:
    safety = page_texts(built)[section_pages(built)["Safety first"] - 1]
    for phrase in ("not a diagnosis", "numbness", "bladder", "injury", "fever"):
        assert phrase in safety
    # The same urgent signs as every lesson's safety note (emails/partials/safety.*).
    for phrase in ("both legs", "weakness that is getting worse", "hot, swollen, painful calf"):
        assert phrase in safety


def test_routine_is_a_seven_day_table_with_a_box_to_tick_each_day(built: Path) -> None:
    page = section_pages(built)["A simple 7-day routine"]
    routine = page_texts(built)[page - 1]
    assert "Day Morning (2 min) Evening (about 7 min) Focus Done" in routine
    for day in range(1, 8):
        assert f" {day} " in routine
    assert "[ ]" not in routine, "the boxes are drawn, not typed"


def test_each_day_of_the_routine_has_a_box_to_tick(built: Path, tmp_path: Path) -> None:
    """In the 'Done' column (the last 10 of 104 width units): the teal heading, then
    seven separate teal-edged boxes, one a row."""
    page = section_pages(built)["A simple 7-day routine"]
    image = render_page(built, page, tmp_path)
    left, right = mm_to_px(20 + 170 * 94 / 104), mm_to_px(190)
    runs, height = 0, 0
    for y in range(image.height):
        dark = any(near(image.getpixel((x, y)), pack.TEAL, 30) for x in range(left, right))
        height = height + 1 if dark else 0
        runs += height == mm_to_px(2.5)  # taller than a letter: the heading or a box
    assert runs == 1 + 7


def test_routine_length_agrees_with_lesson_seven(built: Path) -> None:
    """One routine: about ten minutes a day, the evening part about seven (lesson 7)."""
    routine = page_texts(built)[section_pages(built)["A simple 7-day routine"] - 1]
    lesson = (ROOT / "emails" / "lesson-07-keep-them-away.txt").read_text()
    assert "About ten minutes a day" in routine
    assert "ten-minute daily routine" in lesson
    assert "about 7 min" in routine
    assert "Evening, about 7 minutes" in lesson
    assert "10 min" not in routine


# The pictures

DPI = 100


def mm_to_px(mm: float) -> int:
    return round(mm / 25.4 * DPI)


def near(pixel: object, color: tuple[int, int, int], tolerance: int = 40) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], color, strict=True))


def render_page(pdf: Path, page: int, tmp_path: Path) -> Image.Image:
    """One page through poppler's pdftoppm, as a reader's viewer would draw it."""
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        pytest.fail("pdftoppm is missing: install poppler-utils")
    prefix = tmp_path / f"page{page}"
    args = [pdftoppm, "-png", "-r", str(DPI), "-f", str(page), "-l", str(page), "-singlefile"]
    result = subprocess.run(
        [*args, str(pdf), str(prefix)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return Image.open(prefix.with_suffix(".png")).convert("RGB")


@pytest.fixture(scope="module")
def layout() -> pack.Layout:
    return pack.lay_out(SOURCE)


def test_the_pack_carries_the_body_outlines_and_the_muscle(layout: pack.Layout) -> None:
    starts = {title: page for title, page in layout.starts.items()}
    assert set(layout.placements) == {"body-map", "gluteus-minimus"}
    # The outlines to shade sit in the self-check, the muscle in the first part.
    assert (
        starts["A self-check"]
        <= layout.placements["body-map"].page
        < starts["The release technique"]
    )
    assert (
        starts["What trigger points are"]
        <= layout.placements["gluteus-minimus"].page
        < (starts["A self-check"])
    )


def _figure_pixel(image: Image.Image, where: pack.Placement, point: tuple[float, float]) -> object:
    x, y = where.x + point[0] * where.scale, where.y + point[1] * where.scale
    return image.getpixel((mm_to_px(x), mm_to_px(y)))


def test_the_referral_bands_are_drawn_where_the_seed_puts_them(
    built: Path, layout: pack.Layout, tmp_path: Path
) -> None:
    where = layout.placements["gluteus-minimus"]
    image = render_page(built, where.page, tmp_path)
    bands = figure.band_points("gluteus-minimus")
    for point in bands["front"]:
        assert near(_figure_pixel(image, where, point), figure.FRONT_PART, 12), point
    for point in bands["back"]:
        assert near(_figure_pixel(image, where, point), figure.BACK_PART, 12), point
    k, front_x = figure.BODY_HEIGHT / 100, 92.0
    # Front part: nothing over the outside of the knee, and nothing below the ankle.
    for units in ((7.0, 70.0), (6.0, 97.0)):
        (x, y) = (front_x - units[0] * k, 10.0 + units[1] * k)
        assert not near(_figure_pixel(image, where, (x, y)), figure.FRONT_PART), units
    # Back part: nothing on the calf, well below the knee.
    back_x = 145.0
    (x, y) = (back_x + 5.0 * k, 10.0 + 84.0 * k)
    assert not near(_figure_pixel(image, where, (x, y)), figure.BACK_PART)
    # The muscle itself: both parts coloured in the hip panel, under the see-through medius.
    seen = {image.getpixel((x, y)) for x in range(mm_to_px(where.x), mm_to_px(where.x + 55))
            for y in range(mm_to_px(where.y + 20), mm_to_px(where.y + 60))}  # fmt: skip
    assert any(near(p, figure.FRONT_PART, 70) for p in seen)
    assert any(near(p, figure.BACK_PART, 70) for p in seen)


def test_the_body_outlines_are_drawn_front_and_back(
    built: Path, layout: pack.Layout, tmp_path: Path
) -> None:
    where = layout.placements["body-map"]
    image = render_page(built, where.page, tmp_path)
    for centre in (52.0, 118.0):  # the two bodies: skin inside, an outline at the flank
        assert near(_figure_pixel(image, where, (centre + 3, 50.0)), figure.SKIN, 8)
        flank = [_figure_pixel(image, where, (centre + dx / 10, 40.0)) for dx in range(60, 110)]
        assert any(near(p, figure.OUTLINE, 60) for p in flank)
        assert near(_figure_pixel(image, where, (centre + 20, 50.0)), (255, 255, 255), 4)


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
        ("title: T\n\n# Heading\n\n!figure spine\n", "line 5: no figure 'spine'"),
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
