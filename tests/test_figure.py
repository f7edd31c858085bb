"""The pictures: drawn once, the same in the pack (see test_pack.py) and in lesson 4's PNG."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from drip import figure

PX_PER_MM = 6.6


def near(pixel: object, color: tuple[int, int, int], tolerance: int) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], color, strict=True))


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return Image.open(io.BytesIO(figure.png("gluteus-minimus"))).convert("RGB")


def at(image: Image.Image, point: tuple[float, float]) -> object:
    return image.getpixel((round(point[0] * PX_PER_MM), round(point[1] * PX_PER_MM)))


def test_the_png_is_wide_enough_for_a_sharp_email_at_two_x(picture: Image.Image) -> None:
    fig = figure.gluteus_minimus()
    assert picture.size == (round(fig.width * PX_PER_MM), round(fig.height * PX_PER_MM))
    assert picture.width >= 2 * 536  # shown 536 px wide in lesson 4


def test_the_png_shows_both_bands_where_the_seed_puts_them(picture: Image.Image) -> None:
    bands = figure.band_points("gluteus-minimus")
    assert bands["front"]
    assert bands["back"]
    for point in bands["front"]:
        assert near(at(picture, point), figure.FRONT_PART, 10), point
    for point in bands["back"]:
        assert near(at(picture, point), figure.BACK_PART, 10), point
    k = figure.BODY_HEIGHT / 100
    # The front part's band passes the outside of the knee by.
    knee = (92.0 - 7.0 * k, 10.0 + 70.0 * k)
    assert not near(at(picture, knee), figure.FRONT_PART, 60)
    # The back part's band stops just below the knee: the calf is clear.
    calf = (145.0 + 5.0 * k, 10.0 + 84.0 * k)
    assert not near(at(picture, calf), figure.BACK_PART, 60)


def test_the_png_is_made_once_and_is_the_same_each_time() -> None:
    assert figure.png("gluteus-minimus") is figure.png("gluteus-minimus")
    fresh = figure.render_png(figure.gluteus_minimus())
    assert fresh == figure.png("gluteus-minimus")
    assert fresh.startswith(b"\x89PNG\r\n\x1a\n")


def test_every_figure_says_in_words_what_it_shows() -> None:
    for make in figure.FIGURES.values():
        fig = make()
        assert len(fig.alt) > 40
        texts = [s for s in fig.shapes if s.kind == "text"]
        assert texts
        assert all(t.text.isascii() for t in texts)  # Helvetica in the PDF
    alt = figure.gluteus_minimus().alt
    for phrase in (
        "under the larger gluteus medius",
        "to the ankle",
        "just below the knee",
        "buttock",
    ):
        assert phrase in alt
