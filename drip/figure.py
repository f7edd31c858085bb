"""The pictures: body outlines to shade, and the gluteus minimus with its pain patterns.

Each picture is drawn once, as plain shapes in millimetres (polygons, ellipses,
lines and one-line labels), and two small renderers put the same shapes on a page
of the information pack (fpdf2, as vectors) and into a PNG for lesson 4 (Pillow,
drawn large and scaled down so the edges are smooth). So the pack and the email
can never show two different pictures.

The referral patterns follow the course's seed page: the front part of the muscle
sends pain in a thin band down the outside of the thigh and leg to the ankle,
passing the outside of the knee by; the back part sends it deep into the buttock
and in a broad band down the back of the thigh to just below the knee.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

from fpdf import FPDF
from PIL import Image, ImageDraw, ImageFont

Color = tuple[int, int, int]
Point = tuple[float, float]

INK: Color = (43, 43, 43)
TEAL: Color = (31, 78, 90)
MUTED: Color = (110, 110, 110)
SKIN: Color = (250, 247, 242)
OUTLINE: Color = (120, 120, 120)
BONE: Color = (226, 226, 222)
BONE_EDGE: Color = (150, 150, 146)
MEDIUS: Color = (150, 185, 190)
#: The two parts of the muscle, and the pain each sends: one colour each, in every panel.
FRONT_PART: Color = (214, 69, 65)
BACK_PART: Color = (111, 70, 160)
WHITE: Color = (255, 255, 255)

Kind = Literal["polygon", "ellipse", "line", "text"]


@dataclass(frozen=True)
class Shape:
    """One thing to draw. Points in mm from the figure's top left; an ellipse is (centre, radii)."""

    kind: Kind
    points: tuple[Point, ...]
    fill: Color | None = None
    stroke: Color | None = None
    width: float = 0.3
    opacity: float = 1.0
    dashed: bool = False
    text: str = ""
    size: float = 3.0  #: text height in mm (cap height about 0.7 of it)
    bold: bool = False
    align: Literal["L", "C", "R"] = "L"


@dataclass
class Figure:
    name: str
    width: float
    height: float
    alt: str
    shapes: list[Shape] = field(default_factory=list)

    def add(self, shape: Shape) -> None:
        self.shapes.append(shape)


# -- the body ---------------------------------------------------------------------------

#: The right half of a standing body, 100 units tall, centre line at x=0, y down: from the
#: neck over the shoulder, down the outside of the arm, back up its inside to the armpit,
#: down the flank and the outside of the leg, round the foot and up the inside to the crotch.
_HALF: tuple[Point, ...] = (
    (2.2, 12.0),
    (2.5, 14.6),
    (8.0, 16.4),
    (11.0, 18.2),
    (12.2, 21.5),
    (12.8, 30.0),
    (13.5, 40.0),
    (14.3, 48.5),
    (15.0, 53.5),
    (14.1, 56.5),
    (12.6, 55.0),
    (12.2, 50.0),
    (11.2, 45.0),
    (10.3, 37.0),
    (9.6, 30.0),
    (8.9, 25.5),
    (8.6, 32.0),
    (7.9, 40.0),
    (9.5, 46.5),
    (10.0, 52.0),
    (9.5, 60.0),
    (8.3, 67.0),
    (8.0, 71.0),
    (8.4, 77.0),
    (7.2, 87.0),
    (5.8, 94.0),
    (6.6, 98.2),
    (6.2, 100.0),
    (2.7, 100.0),
    (2.8, 94.0),
    (2.4, 87.0),
    (2.3, 78.0),
    (2.0, 70.0),
    (1.6, 60.0),
    (0.3, 54.5),
)
HEAD_CENTRE: Point = (0.0, 6.3)
HEAD_RADII: Point = (4.5, 6.0)


def _place(
    points: tuple[Point, ...], x0: float, y0: float, k: float, mirror: bool
) -> tuple[Point, ...]:
    sign = -1.0 if mirror else 1.0
    return tuple((x0 + sign * x * k, y0 + y * k) for x, y in points)


def body_outline(x0: float, y0: float, height: float) -> list[Shape]:
    """A body `height` mm tall, centred on x0, head at y0."""
    k = height / 100
    right = _place(_HALF, x0, y0, k, mirror=False)
    left = _place(_HALF, x0, y0, k, mirror=True)
    outline = right + tuple(reversed(left))
    (cx, cy), (rx, ry) = HEAD_CENTRE, HEAD_RADII
    return [
        Shape("polygon", outline, fill=SKIN, stroke=OUTLINE, width=0.35),
        Shape("ellipse", ((x0 + cx * k, y0 + cy * k), (rx * k, ry * k)), SKIN, OUTLINE, 0.35),
    ]


def _back_marks(x0: float, y0: float, height: float) -> list[Shape]:
    """What tells a back view from a front view: the spine and the buttock creases."""
    k = height / 100

    def at(*points: Point) -> tuple[Point, ...]:
        return _place(points, x0, y0, k, mirror=False)

    def mirrored(*points: Point) -> tuple[Point, ...]:
        return _place(points, x0, y0, k, mirror=True)

    return [
        Shape("line", at((0, 17.0), (0, 44.0)), stroke=OUTLINE, width=0.25, dashed=True),
        Shape("line", at((0, 47.0), (0, 54.0)), stroke=OUTLINE, width=0.3),
        Shape("line", at((0.6, 55.2), (4.0, 56.0), (7.6, 55.0)), stroke=OUTLINE, width=0.3),
        Shape("line", mirrored((0.6, 55.2), (4.0, 56.0), (7.6, 55.0)), stroke=OUTLINE, width=0.3),
    ]


def _front_marks(x0: float, y0: float, height: float) -> list[Shape]:
    k = height / 100
    (x, y) = (x0, y0 + 41.0 * k)
    return [Shape("ellipse", ((x, y), (0.35 * k, 0.35 * k)), fill=OUTLINE)]


def _label(x: float, y: float, text: str, size: float = 3.0, **kw: object) -> Shape:
    return Shape("text", ((x, y),), text=text, size=size, **kw)  # type: ignore[arg-type]


def _lines(x: float, y: float, lines: list[str], size: float, **kw: object) -> list[Shape]:
    return [_label(x, y + i * size * 1.35, line, size, **kw) for i, line in enumerate(lines)]


# -- the referral patterns, in the body's units (right half, x outward) -------------------

#: Front part: a thin band down the outside of the thigh, a gap at the outside of the
#: knee, then down the outside of the leg to the ankle.
FRONT_THIGH: tuple[Point, ...] = (
    (9.3, 47.5),
    (9.7, 52.0),
    (9.2, 60.0),
    (8.0, 66.0),
    (6.0, 66.0),
    (7.1, 60.0),
    (7.5, 52.0),
    (7.2, 47.5),
)
FRONT_LEG: tuple[Point, ...] = (
    (8.1, 74.0),
    (8.1, 78.0),
    (7.0, 87.0),
    (5.7, 93.5),
    (4.3, 93.5),
    (5.3, 87.0),
    (6.1, 78.0),
    (6.0, 74.0),
)
#: Back part: deep in the buttock, then a broad band down the back of the thigh that
#: stops just below the knee.
BACK_BUTTOCK: tuple[Point, Point] = ((5.2, 50.5), (3.4, 3.3))
BACK_THIGH: tuple[Point, ...] = (
    (2.6, 53.0),
    (8.6, 53.0),
    (8.8, 60.0),
    (7.6, 67.0),
    (7.4, 71.0),
    (7.2, 74.5),
    (5.0, 75.5),
    (2.9, 74.5),
    (2.6, 70.0),
    (2.3, 60.0),
)
#: Where the trigger points of each part sit, seen from the front and from behind.
FRONT_SPOT: Point = (8.6, 45.0)
BACK_SPOT: Point = (6.4, 47.0)


def _cross(x: float, y: float, r: float, color: Color) -> list[Shape]:
    return [
        Shape("ellipse", ((x, y), (r * 1.5, r * 1.5)), fill=WHITE, stroke=color, width=0.35),
        Shape("line", ((x - r, y - r), (x + r, y + r)), stroke=color, width=0.55),
        Shape("line", ((x - r, y + r), (x + r, y - r)), stroke=color, width=0.55),
    ]


# -- the pictures --------------------------------------------------------------------------

BODY_HEIGHT = 96.0


@cache
def body_map() -> Figure:
    """Front and back outlines, side by side, for a reader to shade where they ache."""
    fig = Figure(
        "body-map",
        170.0,
        112.0,
        "Two body outlines, front and back, to shade where you ache.",
    )
    for x0, title, marks in ((52.0, "FRONT", _front_marks), (118.0, "BACK", _back_marks)):
        fig.shapes += body_outline(x0, 8.0, BODY_HEIGHT)
        fig.shapes += marks(x0, 8.0, BODY_HEIGHT)
        fig.add(_label(x0, 2.5, title, 3.4, bold=True, align="C", fill=TEAL))
    for x, side in (
        (40.0, "Your right"),
        (64.0, "Your left"),
        (106.0, "Your left"),
        (130.0, "Your right"),
    ):
        fig.add(_label(x, 110.0, side, 2.8, align="C", fill=MUTED))
    return fig


def _hip(fig: Figure, ox: float, oy: float) -> None:
    """The side of the right hip, front to the left: bone, the minimus, the medius over it."""

    def at(*points: Point) -> tuple[Point, ...]:
        return tuple((ox + x, oy + y) for x, y in points)

    ilium = at(
        (8, 24), (12, 14), (22, 7), (34, 6), (45, 11), (50, 18), (46, 26), (41, 36),
        (38, 44), (26, 44), (21, 37), (14, 30),
    )  # fmt: skip
    fig.add(Shape("polygon", ilium, fill=BONE, stroke=BONE_EDGE, width=0.3))
    fig.add(Shape("ellipse", ((32.0 + ox, 47.0 + oy), (8.0, 6.5)), BONE, BONE_EDGE, 0.3))
    shaft = at((30, 52), (44, 52), (43, 100), (33, 100))
    fig.add(Shape("polygon", shaft, fill=BONE, stroke=BONE_EDGE, width=0.3))
    fig.add(Shape("ellipse", ((37.5 + ox, 53.5 + oy), (7.0, 5.5)), BONE, BONE_EDGE, 0.3))
    # The minimus: a fan from the outer face of the hip bone to the front of the great
    # trochanter, its front part and its back part in their pattern colours.
    front = at((13, 27), (20, 18), (28, 16), (31, 16), (36, 50), (32, 50), (22, 38))
    back = at((31, 16), (37, 16), (44, 22), (42, 32), (39, 42), (38, 50), (36, 50))
    fig.add(Shape("polygon", front, fill=FRONT_PART, stroke=WHITE, width=0.2))
    fig.add(Shape("polygon", back, fill=BACK_PART, stroke=WHITE, width=0.2))
    # The medius lies over it, larger; drawn see-through so the minimus shows beneath.
    medius = at(
        (9, 22), (14, 13), (23, 7), (34, 6), (45, 11), (51, 19), (46, 30), (42, 42),
        (41, 53), (34, 53), (30, 44), (22, 36), (14, 29),
    )  # fmt: skip
    fig.add(Shape("polygon", medius, fill=MEDIUS, opacity=0.45))
    fig.add(Shape("polygon", medius, stroke=TEAL, width=0.45, dashed=True))


@cache
def gluteus_minimus() -> Figure:
    """The muscle under the gluteus medius, and where each of its two parts sends pain."""
    fig = Figure(
        "gluteus-minimus",
        170.0,
        128.0,
        "Diagram of the side of the hip: the small gluteus minimus lies under the larger "
        "gluteus medius. Its front part sends pain in a thin band down the outside of the "
        "thigh and leg to the ankle, passing the outside of the knee by. Its back part sends "
        "pain deep into the buttock and in a broad band down the back of the thigh to just "
        "below the knee.",
    )
    # Panel 1: the hip from the side.
    fig.add(_label(2.0, 4.5, "THE SIDE OF THE HIP", 4.0, bold=True, fill=TEAL))
    _hip(fig, 2.0, 10.0)
    fig.shapes += _lines(2.0, 116.0, ["Front of the body: left.", "Back: right."], 3.0, fill=MUTED)
    fig.add(Shape("line", ((40.0, 19.0), (49.0, 14.0)), stroke=TEAL, width=0.3))
    fig.shapes += _lines(
        50.0, 13.0, ["Gluteus medius", "(on top, see-through)"], 3.1, fill=TEAL, bold=False
    )
    fig.add(Shape("line", ((24.0, 34.0), (4.0, 64.0)), stroke=FRONT_PART, width=0.3))
    fig.shapes += _lines(2.0, 68.0, ["Gluteus minimus,", "front part"], 3.1, fill=FRONT_PART)
    fig.add(Shape("line", ((42.0, 40.0), (58.0, 72.0)), stroke=BACK_PART, width=0.3))
    fig.shapes += _lines(46.0, 76.0, ["Gluteus minimus,", "back part"], 3.1, fill=BACK_PART)
    fig.shapes += _lines(2.0, 100.0, ["Grey: the hip bone", "and the thigh bone"], 3.0, fill=MUTED)

    # Panel 2: the front part's pain, seen from the front (the right leg: the viewer's left).
    k = BODY_HEIGHT / 100
    fx, top = 92.0, 10.0
    fig.add(_label(fx, 4.5, "FRONT PART", 4.0, bold=True, align="C", fill=FRONT_PART))
    fig.shapes += body_outline(fx, top, BODY_HEIGHT)
    fig.shapes += _front_marks(fx, top, BODY_HEIGHT)
    for band in (FRONT_THIGH, FRONT_LEG):
        fig.add(Shape("polygon", _place(band, fx, top, k, mirror=True), fill=FRONT_PART))
    sx, sy = _place((FRONT_SPOT,), fx, top, k, mirror=True)[0]
    fig.shapes += _cross(sx, sy, 1.1, FRONT_PART)
    fig.shapes += _lines(
        fx,
        top + BODY_HEIGHT + 5.0,
        ["A thin band down the outside", "of the leg to the ankle,", "passing the knee by"],
        3.0,
        align="C",
        fill=INK,
    )

    # Panel 3: the back part's pain, seen from behind (the right leg: the viewer's right).
    bx = 145.0
    fig.add(_label(bx, 4.5, "BACK PART", 4.0, bold=True, align="C", fill=BACK_PART))
    fig.shapes += body_outline(bx, top, BODY_HEIGHT)
    fig.shapes += _back_marks(bx, top, BODY_HEIGHT)
    (c, r) = BACK_BUTTOCK
    centre = _place((c,), bx, top, k, mirror=False)[0]
    fig.add(Shape("ellipse", (centre, (r[0] * k, r[1] * k)), fill=BACK_PART))
    fig.add(Shape("polygon", _place(BACK_THIGH, bx, top, k, mirror=False), fill=BACK_PART))
    sx, sy = _place((BACK_SPOT,), bx, top, k, mirror=False)[0]
    fig.shapes += _cross(sx, sy, 1.1, BACK_PART)
    fig.shapes += _lines(
        bx,
        top + BODY_HEIGHT + 5.0,
        [
            "Deep in the buttock, a broad",
            "band down the back of the",
            "thigh to just below the knee",
        ],
        3.0,
        align="C",
        fill=INK,
    )
    fig.add(_label(118.5, 58.0, "x = trigger point", 2.8, align="C", fill=MUTED))
    return fig


FIGURES = {"body-map": body_map, "gluteus-minimus": gluteus_minimus}


def band_points(name: str) -> dict[str, tuple[Point, ...]]:
    """Points (figure mm) that must show each band's colour: what the tests look for."""
    k = BODY_HEIGHT / 100
    if name != "gluteus-minimus":
        return {}
    front = _place(((8.1, 56.0), (6.8, 84.0)), 92.0, 10.0, k, mirror=True)
    back = _place(((5.2, 50.5), (5.5, 62.0), (5.0, 72.5)), 145.0, 10.0, k, mirror=False)
    return {"front": front, "back": back}


# -- rendering: PDF ------------------------------------------------------------------------


def draw_pdf(pdf: FPDF, fig: Figure, x: float, y: float, scale: float = 1.0) -> None:
    """Draw `fig` with its top left at (x, y) mm on the current page."""

    def at(p: Point) -> Point:
        return (x + p[0] * scale, y + p[1] * scale)

    for shape in fig.shapes:
        if shape.kind == "text":
            _pdf_text(pdf, shape, at(shape.points[0]), scale)
            continue
        style = ("F" if shape.fill else "") + ("D" if shape.stroke else "")
        if not style:
            continue
        opacity = {"fill_opacity": shape.opacity} if shape.opacity < 1 else {}
        with pdf.local_context(**opacity):
            if shape.fill:
                pdf.set_fill_color(*shape.fill)
            if shape.stroke:
                pdf.set_draw_color(*shape.stroke)
                pdf.set_line_width(shape.width * scale)
            if shape.dashed:
                pdf.set_dash_pattern(dash=1.2 * scale, gap=0.9 * scale)
            if shape.kind == "polygon":
                pdf.polygon([at(p) for p in shape.points], style=style)
            elif shape.kind == "ellipse":
                (cx, cy), (rx, ry) = at(shape.points[0]), shape.points[1]
                pdf.ellipse(
                    cx - rx * scale, cy - ry * scale, 2 * rx * scale, 2 * ry * scale, style=style
                )
            else:
                pdf.polyline([at(p) for p in shape.points], style="D")


def _pdf_text(pdf: FPDF, shape: Shape, where: Point, scale: float) -> None:
    points = shape.size * scale / 0.3528 * 0.95  # mm of height to points of font size
    pdf.set_font("Helvetica", "B" if shape.bold else "", points)
    pdf.set_text_color(*(shape.fill or INK))
    width = pdf.get_string_width(shape.text)
    x, y = where
    if shape.align == "C":
        x -= width / 2
    elif shape.align == "R":
        x -= width
    pdf.text(x, y, shape.text)


# -- rendering: PNG ------------------------------------------------------------------------

#: Drawn this many times larger, then scaled down: Pillow draws polygons without smoothing.
_SUPERSAMPLE = 3


def render_png(fig: Figure, px_per_mm: float = 6.6) -> bytes:
    """The figure as a PNG on white, `px_per_mm` pixels to the millimetre."""
    k = px_per_mm * _SUPERSAMPLE
    size = (round(fig.width * k), round(fig.height * k))
    image = Image.new("RGBA", size, WHITE + (255,))

    def at(p: Point) -> tuple[float, float]:
        return (p[0] * k, p[1] * k)

    for shape in fig.shapes:
        layer = image if shape.opacity >= 1 else Image.new("RGBA", size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        fill = None if shape.fill is None else shape.fill + (round(255 * shape.opacity),)
        stroke = None if shape.stroke is None else shape.stroke + (255,)
        width = max(1, round(shape.width * k))
        if shape.kind == "text":
            _png_text(draw, shape, at(shape.points[0]), k)
        elif shape.kind == "polygon":
            points = [at(p) for p in shape.points]
            if fill:
                draw.polygon(points, fill=fill)
            if stroke:
                _png_path(draw, points + points[:1], stroke, width, shape.dashed, k)
        elif shape.kind == "ellipse":
            (cx, cy), (rx, ry) = at(shape.points[0]), shape.points[1]
            box = (cx - rx * k, cy - ry * k, cx + rx * k, cy + ry * k)
            draw.ellipse(box, fill=fill, outline=stroke, width=width if stroke else 0)
        elif stroke:
            _png_path(draw, [at(p) for p in shape.points], stroke, width, shape.dashed, k)
        if layer is not image:
            image.alpha_composite(layer)
    small = image.convert("RGB").resize(
        (round(fig.width * px_per_mm), round(fig.height * px_per_mm)), Image.Resampling.LANCZOS
    )
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _png_path(
    draw: ImageDraw.ImageDraw,
    points: list[tuple[float, float]],
    color: tuple[int, int, int, int],
    width: int,
    dashed: bool,
    k: float,
) -> None:
    if not dashed:
        draw.line(points, fill=color, width=width, joint="curve")
        return
    dash, gap = 1.2 * k, 0.9 * k
    for (x1, y1), (x2, y2) in zip(points, points[1:], strict=False):
        length = ((x2 - x1) ** 2 + (y2 - y1) ** 2) ** 0.5 or 1.0
        pos = 0.0
        while pos < length:
            end = min(pos + dash, length)
            a, b = pos / length, end / length
            draw.line(
                [
                    (x1 + (x2 - x1) * a, y1 + (y2 - y1) * a),
                    (x1 + (x2 - x1) * b, y1 + (y2 - y1) * b),
                ],
                fill=color,
                width=width,
            )
            pos = end + gap


@cache
def _font(pixels: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=pixels)


def _png_text(
    draw: ImageDraw.ImageDraw, shape: Shape, where: tuple[float, float], k: float
) -> None:
    font = _font(max(6, round(shape.size * k * 0.95)))
    anchor = {"L": "ls", "C": "ms", "R": "rs"}[shape.align]
    color = (shape.fill or INK) + (255,)
    draw.text(where, shape.text, font=font, fill=color, anchor=anchor,
              stroke_width=1 if shape.bold else 0, stroke_fill=color)  # fmt: skip


@cache
def png(name: str) -> bytes:
    """The named figure as a PNG, made once per process."""
    return render_png(FIGURES[name]())
