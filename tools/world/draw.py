"""Draw any character of the toy world with PIL: no model, deterministic from a seed.

The drawing is the bundled references' procedural Aldar Köse (``examples/aldar_kose/draw_aldar_kose.py``)
with every taxonomy category made a parameter. Shapes are laid out in fractions of the canvas, so the
same character draws the same at 64 px (training the tiny models) and at 512 px (the references); the
few absolute pixel sizes are written for the 1024 px supersampled canvas and scaled (``_px``).

Rendering order: background, body (robe, sleeves, hands), head on its own layer (hair behind, ears,
face, headwear, cheeks, eyes, brows, nose, facial hair, mouth) tilted as a whole, then the style's
finish (outline weight, blur, noise, shading).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tools.world.attributes import Character

SUPERSAMPLE = 2  # drawn at 2x and downscaled: smooth outlines without PIL anti-aliasing support
OUTLINE = (58, 36, 28)
SKIN = (240, 196, 150)
SKIN_SHADE = (222, 170, 125)
CHEEK = (236, 150, 130)
HAIR = (40, 30, 28)
BROWN_HAIR = (112, 72, 40)
TRIM = (250, 214, 92)
TRIM_DARK = (160, 40, 40)
CAP = (128, 30, 42)
CAP_PATTERN = (246, 220, 120)
MOUTH = (150, 40, 52)
TEAR = (90, 160, 240)
ROBES = {  # colour → (robe, sleeves and shadow)
    "orange": ((236, 128, 36), (196, 92, 24)),
    "blue": ((62, 112, 204), (40, 78, 160)),
    "green": ((72, 156, 84), (48, 116, 60)),
    "red": ((204, 52, 52), (158, 34, 38)),
    # the novel robes (attributes.NOVEL_ROBE_COLORS)
    "purple": ((134, 70, 178), (98, 46, 140)),
    "checkered": ((238, 234, 220), (34, 110, 120)),
    "striped yellow": ((248, 206, 48), (206, 160, 30)),
}
# A novel robe's own pattern: (kind, colour), laid over the robe below the shoulders.
ROBE_PATTERNS = {"checkered": ("checks", (34, 110, 120)), "striped yellow": ("stripes", (40, 56, 120))}
GOLD, GOLD_DARK, GEM = (246, 196, 40), (176, 120, 20), (200, 30, 60)
WIZARD_HAT, STAR = (44, 52, 130), (250, 226, 90)
STEEL, STEEL_DARK, HORN = (156, 164, 176), (104, 110, 124), (244, 236, 208)
LENS, RIM = (206, 230, 248), (24, 24, 30)
# Head layer side in head radii: a wizard hat's tip and a helmet's horns reach two radii from the head's centre.
HEAD_LAYER = {"wizard hat": 4.6, "horned helmet": 4.4}
# face shape → (half width, top, bottom) of the face in head radii
FACES = {"round face": (1.0, 0.92, 1.02), "oval face": (0.82, 1.0, 1.12), "square face": (0.95, 0.9, 1.0),
         "long narrow face": (0.66, 1.05, 1.25)}


@dataclass(frozen=True)
class Ink:
    """How a style draws outlines: colour (None: shapes have no outline) and weight."""

    outline: tuple[int, int, int] | None
    weight: float
    features: tuple[int, int, int]  # eyes, mouth and brows are drawn in every style


INKS = {
    "children's book style": Ink(OUTLINE, 1.0, OUTLINE),
    "cartoon style": Ink((16, 16, 16), 2.2, (16, 16, 16)),
    "2D illustration": Ink(None, 1.0, OUTLINE),
    "photograph": Ink(None, 1.0, (70, 48, 40)),
    "3D render": Ink(None, 1.0, OUTLINE),
}


class _Canvas:
    """Size bookkeeping shared by the drawing steps."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.big = size * SUPERSAMPLE
        self.k = self.big / 1024  # the absolute pixel sizes below were drawn at 1024

    def px(self, value: float) -> int:
        return max(1, round(value * self.k))


def draw_character(character: Character, seed: int, size: int = 512) -> Image.Image:
    """One ``size`` x ``size`` RGB picture; identical for identical ``character``, ``seed`` and ``size``."""
    return draw_character_and_mask(character, seed, size)[0]


def draw_character_and_mask(character: Character, seed: int, size: int = 512) -> tuple[Image.Image, Image.Image]:
    """The picture and its character mask (``L``: white = the character, black = background), the figure layer's
    coverage as drawn — what a masked-loss trainer weighs (kohya reads such masks from a folder or the alpha)."""
    rng = random.Random(seed)
    canvas = _Canvas(size)
    ink = INKS[character.style]
    image = Image.new("RGB", (canvas.big, canvas.big), character.plain_color)
    BACKGROUNDS[character.background](image, rng, canvas, ink, character)
    figure = _draw_figure(character, rng, canvas, ink)
    image.paste(figure, (0, 0), figure)
    image = image.resize((size, size), Image.LANCZOS)
    mask = figure.getchannel("A").resize((size, size), Image.BOX)
    return _finish(image, character.style, seed), mask


# --------------------------------------------------------------------------- backgrounds
def _draw_steppe(image: Image.Image, rng: random.Random, cv: _Canvas, ink: Ink, character: Character) -> None:
    d = ImageDraw.Draw(image)
    w = h = image.width
    line = ink.outline or (132, 176, 130)
    horizon = int(h * rng.uniform(0.58, 0.66))
    # Flat bands of sky, lighter towards the horizon (children's-book style, no gradients).
    bands = [(120, 190, 236), (146, 204, 240), (172, 218, 244), (198, 230, 246)]
    for i, colour in enumerate(bands):
        d.rectangle([0, i * horizon // len(bands), w, horizon], fill=colour)
    sun_x, sun_y, sun_r = int(w * rng.choice([0.15, 0.82])), int(h * 0.14), int(w * 0.06)
    d.ellipse([sun_x - sun_r, sun_y - sun_r, sun_x + sun_r, sun_y + sun_r], fill=(255, 222, 110),
              outline=(240, 180, 60), width=cv.px(6))
    for _ in range(rng.randint(2, 3)):
        _cloud(d, int(w * rng.uniform(0.1, 0.9)), int(h * rng.uniform(0.1, 0.3)), int(w * rng.uniform(0.05, 0.08)))
    # Two rows of distant hills: bluish far away, greener nearer.
    for colour, base, height in (((150, 170, 190), horizon, 0.16), ((132, 176, 130), horizon + cv.px(10), 0.09)):
        points = [(0, base)]
        x = 0
        while x < w:
            x += int(w * rng.uniform(0.12, 0.25))
            points.append((x, base - int(h * height * rng.uniform(0.4, 1.0))))
        points += [(w, base), (w, h), (0, h)]
        d.polygon(points, fill=colour, outline=ink.outline)
        d.line(points[:-2], fill=ink.outline or colour, width=cv.px(4), joint="curve")
    d.rectangle([0, horizon + cv.px(10), w, h], fill=(168, 200, 96))
    d.line([(0, horizon + cv.px(10)), (w, horizon + cv.px(10))], fill=line if ink.outline else (168, 200, 96),
           width=cv.px(4))
    d.rectangle([0, int(h * 0.86), w, h], fill=(150, 186, 80))
    for _ in range(40):  # grass tufts
        x, y = rng.randint(0, w), rng.randint(horizon + cv.px(30), h)
        for dx in (-8, 0, 8):
            d.line([(x, y), (x + round(dx * 2 * cv.k), y - cv.px(22))], fill=(104, 146, 60), width=cv.px(4))


def _cloud(d: ImageDraw.ImageDraw, x: int, y: int, r: int) -> None:
    for dx, dy, k in ((-1.0, 0.2, 0.8), (0.0, 0.0, 1.0), (1.0, 0.2, 0.8), (0.5, 0.4, 0.7), (-0.5, 0.4, 0.7)):
        cx, cy, cr = x + int(dx * r), y + int(dy * r), int(k * r)
        d.ellipse([cx - cr, cy - cr, cx + cr, cy + cr], fill=(252, 252, 255))


def _draw_plain(image: Image.Image, rng: random.Random, cv: _Canvas, ink: Ink, character: Character) -> None:
    # A soft floor shadow under the figure, so the plain page still reads as a scene.
    d = ImageDraw.Draw(image)
    w = image.width
    shade = tuple(max(0, c - 22) for c in character.plain_color)
    d.rectangle([0, int(w * 0.84), w, w], fill=shade)


def _draw_city(image: Image.Image, rng: random.Random, cv: _Canvas, ink: Ink, character: Character) -> None:
    d = ImageDraw.Draw(image)
    w = h = image.width
    d.rectangle([0, 0, w, h], fill=(176, 206, 230))
    street = int(h * rng.uniform(0.74, 0.8))
    x = -int(w * rng.uniform(0.0, 0.1))
    while x < w:  # a row of houses with lit windows
        bw = int(w * rng.uniform(0.16, 0.26))
        top = int(h * rng.uniform(0.12, 0.42))
        wall = rng.choice([(150, 150, 160), (180, 140, 110), (200, 180, 150), (120, 120, 136), (170, 96, 80)])
        d.rectangle([x, top, x + bw, street], fill=wall, outline=ink.outline, width=cv.px(4))
        wy = top + int(h * 0.04)
        while wy < street - int(h * 0.08):
            for wx in range(x + int(bw * 0.15), x + bw - int(bw * 0.2), max(1, int(bw * 0.3))):
                d.rectangle([wx, wy, wx + int(bw * 0.16), wy + int(h * 0.05)], fill=(250, 226, 130),
                            outline=ink.outline, width=cv.px(2))
            wy += int(h * 0.09)
        x += bw + int(w * rng.uniform(0.0, 0.03))
    d.rectangle([0, street, w, int(street + h * 0.05)], fill=(196, 196, 190))  # pavement
    d.rectangle([0, int(street + h * 0.05), w, h], fill=(84, 84, 92))  # road
    for dash in range(0, w, int(w * 0.14)):
        y = int(street + h * 0.14)
        d.rectangle([dash, y, dash + int(w * 0.07), y + cv.px(10)], fill=(240, 240, 240))


def _draw_forest(image: Image.Image, rng: random.Random, cv: _Canvas, ink: Ink, character: Character) -> None:
    d = ImageDraw.Draw(image)
    w = h = image.width
    d.rectangle([0, 0, w, h], fill=(196, 224, 210))
    ground = int(h * rng.uniform(0.7, 0.78))
    d.rectangle([0, ground, w, h], fill=(78, 120, 58))
    for row, colour in ((0, (44, 96, 64)), (1, (30, 78, 46))):  # two rows of fir trees, darker in front
        for _ in range(rng.randint(6, 9)):
            x = rng.randint(0, w)
            tw = int(w * rng.uniform(0.08, 0.14))
            top = int(h * rng.uniform(0.05, 0.3)) + row * int(h * 0.08)
            base = ground + row * int(h * 0.04)
            d.rectangle([x - tw // 6, base - int(h * 0.06), x + tw // 6, base + int(h * 0.02)], fill=(96, 62, 36))
            d.polygon([(x, top), (x + tw, base - int(h * 0.05)), (x - tw, base - int(h * 0.05))], fill=colour,
                      outline=ink.outline)


def _draw_interior(image: Image.Image, rng: random.Random, cv: _Canvas, ink: Ink, character: Character) -> None:
    d = ImageDraw.Draw(image)
    w = h = image.width
    wall = rng.choice([(236, 214, 180), (206, 220, 236), (230, 200, 200), (214, 230, 200)])
    d.rectangle([0, 0, w, h], fill=wall)
    stripe = tuple(max(0, c - 16) for c in wall)
    for x in range(0, w, int(w * 0.08)):  # wallpaper stripes
        d.rectangle([x, 0, x + int(w * 0.025), h], fill=stripe)
    floor = int(h * rng.uniform(0.74, 0.8))
    d.rectangle([0, floor, w, h], fill=(150, 100, 60), outline=ink.outline, width=cv.px(4))
    for x in range(0, w, int(w * 0.12)):  # floor boards
        d.line([(x, floor), (x - int(w * 0.05), h)], fill=(120, 78, 44), width=cv.px(4))
    wx = int(w * rng.choice([0.06, 0.66]))  # a window with a cross frame
    d.rectangle([wx, int(h * 0.12), wx + int(w * 0.26), int(h * 0.42)], fill=(150, 200, 240),
                outline=(250, 250, 250), width=cv.px(14))
    d.line([(wx + int(w * 0.13), int(h * 0.12)), (wx + int(w * 0.13), int(h * 0.42))], fill=(250, 250, 250),
           width=cv.px(10))
    d.line([(wx, int(h * 0.27)), (wx + int(w * 0.26), int(h * 0.27))], fill=(250, 250, 250), width=cv.px(10))


BACKGROUNDS = {"steppe landscape": _draw_steppe, "plain background": _draw_plain, "city street": _draw_city,
               "forest": _draw_forest, "interior room": _draw_interior}


# --------------------------------------------------------------------------- character
def figure_layout(character: Character, size: float) -> tuple[float, float, float]:
    """(centre x, top, unit) of the figure on a ``size`` px canvas: laid out in units of half the canvas."""
    unit = size * 0.5 * character.scale
    cx = size / 2 + character.offset_x * size
    top = size * 0.14 + character.offset_y * size + (1 - character.scale) * size * 0.42
    return cx, top, unit


def head_circle(character: Character, size: float) -> tuple[float, float, float]:
    """(x, y, radius) of the head on a ``size`` px picture (before tilt, which turns it about its centre)."""
    cx, top, unit = figure_layout(character, size)
    head_r = unit * 0.30
    return cx + character.head_shift * head_r, top + head_r * 1.05, head_r


def _draw_figure(character: Character, rng: random.Random, cv: _Canvas, ink: Ink) -> Image.Image:
    big = cv.big
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    cx, _, unit = figure_layout(character, big)
    head_x, head_y, head_r = head_circle(character, big)
    head_c = (head_x, head_y)

    _draw_robe(layer, cx, head_c[1] + head_r * 0.85, unit, character, cv, ink)

    head = _draw_head(head_r, character, rng, cv, ink)
    head = head.rotate(character.head_tilt, resample=Image.BICUBIC, expand=False)
    layer.alpha_composite(head, (int(head_c[0] - head.width / 2), int(head_c[1] - head.height / 2)))
    return layer


def _sleeve(cx: float, neck_y: float, unit: float, shoulder: float, side: int, raised: bool):
    """A sleeve polygon and the centre of its hand; raised sleeves point up and out."""
    if not raised:
        sleeve = [(cx + side * shoulder, neck_y + unit * 0.18), (cx + side * shoulder * 1.35, neck_y + unit * 0.62),
                  (cx + side * shoulder * 1.05, neck_y + unit * 0.70), (cx + side * shoulder * 0.78, neck_y + unit * 0.35)]
        return sleeve, (cx + side * shoulder * 1.22, neck_y + unit * 0.72)
    sleeve = [(cx + side * shoulder * 0.9, neck_y + unit * 0.12), (cx + side * shoulder * 1.55, neck_y - unit * 0.30),
              (cx + side * shoulder * 1.8, neck_y - unit * 0.22), (cx + side * shoulder * 1.05, neck_y + unit * 0.32)]
    return sleeve, (cx + side * shoulder * 1.72, neck_y - unit * 0.34)


def _draw_robe(layer: Image.Image, cx: float, neck_y: float, unit: float, character: Character, cv: _Canvas,
               ink: Ink) -> None:
    d = ImageDraw.Draw(layer)
    stroke = max(cv.px(4), int(unit * 0.018 * ink.weight))
    outline = ink.outline
    robe_colour, robe_dark = ROBES[character.robe_color]
    shoulder, hem = unit * 0.42, unit * 0.62
    bottom = neck_y + unit * 1.05
    robe = [(cx - shoulder * 0.55, neck_y), (cx + shoulder * 0.55, neck_y), (cx + shoulder, neck_y + unit * 0.18),
            (cx + hem, bottom), (cx - hem, bottom), (cx - shoulder, neck_y + unit * 0.18)]
    d.polygon(robe, fill=robe_colour, outline=outline, width=stroke)
    if character.robe_color in ROBE_PATTERNS:
        _draw_robe_pattern(layer, robe, neck_y + unit * 0.18, unit, *ROBE_PATTERNS[character.robe_color])
        d.polygon(robe, outline=outline, width=stroke)  # the pattern covered the outline's inner half
    # Sleeves with hands peeking out; a waving figure raises its right arm, "arms raised" both.
    for side in (-1, 1):
        raised = character.pose == "arms raised" or (character.pose == "waving" and side == 1)
        sleeve, (hx, hy) = _sleeve(cx, neck_y, unit, shoulder, side, raised)
        d.polygon(sleeve, fill=robe_dark, outline=outline, width=stroke)
        hr = unit * 0.07
        d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=SKIN, outline=outline, width=stroke)
    # Front opening with a golden ornamental trim and a belt.
    d.polygon([(cx - unit * 0.12, neck_y), (cx + unit * 0.12, neck_y), (cx + unit * 0.05, bottom), (cx - unit * 0.05, bottom)],
              fill=TRIM, outline=outline)
    belt_y = neck_y + unit * 0.55
    d.rectangle([cx - hem * 0.86, belt_y, cx + hem * 0.86, belt_y + unit * 0.08], fill=TRIM_DARK, outline=outline,
                width=stroke)
    if character.robe_diamonds:
        # Rows of small diamonds (the "patterned robe").
        step = unit * 0.16
        y = neck_y + unit * 0.28
        while y < bottom - unit * 0.12:
            width_here = shoulder + (hem - shoulder) * (y - neck_y) / (bottom - neck_y)
            x = cx - width_here + step * 0.6
            while x < cx + width_here - step * 0.4:
                if abs(x - cx) > unit * 0.12 and not belt_y - step * 0.3 < y < belt_y + unit * 0.12:
                    r = step * 0.22
                    d.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=TRIM, outline=robe_dark)
                x += step
            y += step
    d.rectangle([cx - hem, bottom - unit * 0.09, cx + hem, bottom], fill=TRIM_DARK, outline=outline, width=stroke)
    if character.robe_diamonds:
        x = cx - hem + unit * 0.06
        while x < cx + hem - unit * 0.03:
            r = unit * 0.025
            d.polygon([(x, bottom - unit * 0.045 - r), (x + r, bottom - unit * 0.045), (x, bottom - unit * 0.045 + r),
                       (x - r, bottom - unit * 0.045)], fill=TRIM)
            x += unit * 0.08


def _draw_robe_pattern(layer: Image.Image, robe: list, top: float, unit: float, kind: str, colour) -> None:
    """Checks or horizontal stripes from ``top`` down, clipped to the robe's polygon (as a mask)."""
    mask = Image.new("L", layer.size, 0)
    ImageDraw.Draw(mask).polygon(robe, fill=255)
    pattern = Image.new("RGBA", layer.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(pattern)
    cell = unit * (0.13 if kind == "checks" else 0.08)
    row, y = 0, top
    while y < layer.height:
        if kind == "stripes":
            if row % 2 == 0:
                d.rectangle([0, y, layer.width, y + cell], fill=colour)
        else:
            x, column = 0.0, 0
            while x < layer.width:
                if (row + column) % 2 == 0:
                    d.rectangle([x, y, x + cell, y + cell], fill=colour)
                x, column = x + cell, column + 1
        y, row = y + cell, row + 1
    alpha = Image.fromarray(np.minimum(np.asarray(mask), np.asarray(pattern.getchannel("A"))))
    layer.paste(pattern, (0, 0), alpha)


def _draw_head(r: float, character: Character, rng: random.Random, cv: _Canvas, ink: Ink) -> Image.Image:
    """The head on its own transparent square, centred, so it can be tilted as a whole."""
    size = int(r * HEAD_LAYER.get(character.hairstyle, 3.2))
    head = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(head)
    c = size / 2
    stroke = max(cv.px(4), int(r * 0.06 * ink.weight))
    line = ink.outline
    half_w, face_top, face_bottom = FACES[character.face_shape]
    hair = character.hairstyle
    # Hair behind the face.
    if hair == "topknot":
        d.ellipse([c - r * 0.28, c - r * 1.45, c + r * 0.28, c - r * 0.88], fill=HAIR, outline=line, width=stroke)
    if hair == "black hair":
        d.rounded_rectangle([c - r * (half_w + 0.22), c - r * (face_top + 0.1), c + r * (half_w + 0.22), c + r * 1.25],
                            radius=r * 0.5, fill=HAIR, outline=line, width=stroke)
    if hair in ("topknot", "short hair"):
        colour = HAIR if hair == "topknot" else BROWN_HAIR
        d.ellipse([c - r * 1.0 * half_w, c - r * (face_top + 0.1), c + r * 1.0 * half_w, c + r * 0.5], fill=colour,
                  outline=line, width=stroke)
    # Ears, then the face.
    for side in (-1, 1):
        ex = c + side * r * 0.98 * half_w
        d.ellipse([ex - r * 0.16, c - r * 0.12, ex + r * 0.16, c + r * 0.24], fill=SKIN, outline=line, width=stroke)
    face_box = [c - r * half_w, c - r * face_top, c + r * half_w, c + r * face_bottom]
    if character.face_shape == "square face":
        d.rounded_rectangle(face_box, radius=r * 0.22, fill=SKIN, outline=line, width=stroke)
    else:
        d.ellipse(face_box, fill=SKIN, outline=line, width=stroke)
    _draw_headwear(d, c, r, half_w, face_top, hair, stroke, line)
    _draw_face(d, c, r, half_w, character, rng, stroke, ink)
    return head


def _draw_headwear(d: ImageDraw.ImageDraw, c: float, r: float, half_w: float, face_top: float, hair: str,
                   stroke: int, line) -> None:
    fringe = [c - r * 0.96 * half_w, c - r * (face_top + 0.03), c + r * 0.96 * half_w, c + r * 0.2]
    if hair in ("topknot", "black hair"):
        d.chord(fringe, 200, 340, fill=HAIR)
    elif hair == "short hair":
        d.chord(fringe, 200, 340, fill=BROWN_HAIR)
    elif hair == "skullcap":
        # Tubeteika: a dark-red skullcap with a golden zigzag band.
        d.chord([c - r * 1.02 * half_w, c - r * (face_top + 0.53), c + r * 1.02 * half_w, c - r * 0.05], 180, 360,
                fill=CAP, outline=line, width=stroke)
        band_y = c - r * (face_top - 0.12)
        points, n = [], 9
        for i in range(n + 1):
            x = c - r * 0.92 * half_w + i * (r * 1.84 * half_w / n)
            points.append((x, band_y - (r * 0.10 if i % 2 else 0)))
        d.line(points, fill=CAP_PATTERN, width=stroke)
        d.ellipse([c - r * 0.10, c - r * (face_top + 0.38), c + r * 0.10, c - r * (face_top + 0.18)], fill=CAP_PATTERN)
    elif hair == "bald head":
        d.ellipse([c - r * 0.35 * half_w, c - r * (face_top - 0.08), c + r * 0.05, c - r * (face_top - 0.26)],
                  fill=(250, 216, 178))
    elif hair in NOVEL_HEADWEAR:
        NOVEL_HEADWEAR[hair](d, c, r, half_w, face_top, stroke, line)


def _draw_crown(d: ImageDraw.ImageDraw, c: float, r: float, half_w: float, face_top: float, stroke: int, line) -> None:
    """A gold crown of five points with red gems, on a black fringe."""
    d.chord([c - r * 0.96 * half_w, c - r * (face_top + 0.03), c + r * 0.96 * half_w, c + r * 0.2], 200, 340, fill=HAIR)
    left, right = c - r * 0.86 * half_w, c + r * 0.86 * half_w
    base, band_top, tips = c - r * (face_top - 0.22), c - r * (face_top + 0.08), c - r * (face_top + 0.62)
    points = [(left, base), (left, tips)]
    for i in range(1, 9):  # four valleys between five points
        x = left + (right - left) * i / 8
        points.append((x, band_top if i % 2 else tips))
    points += [(right, base)]
    d.polygon(points, fill=GOLD, outline=line or GOLD_DARK, width=stroke)
    d.rectangle([left, band_top + r * 0.06, right, base - r * 0.04], fill=GOLD_DARK)
    for i in (1, 3, 5, 7):
        x, y, gr = left + (right - left) * i / 8, (band_top + base) / 2 + r * 0.01, r * 0.09
        d.ellipse([x - gr, y - gr, x + gr, y + gr], fill=GEM)


def _draw_wizard_hat(d: ImageDraw.ImageDraw, c: float, r: float, half_w: float, face_top: float, stroke: int,
                     line) -> None:
    """A tall dark-blue cone with a wide brim and yellow stars."""
    brim_y = c - r * (face_top - 0.28)
    d.polygon([(c - r * 0.78, brim_y - r * 0.05), (c + r * 0.05, c - r * (face_top + 1.05)),
               (c + r * 0.78, brim_y - r * 0.05)], fill=WIZARD_HAT, outline=line, width=stroke)
    d.ellipse([c - r * 1.25, brim_y - r * 0.16, c + r * 1.25, brim_y + r * 0.16], fill=WIZARD_HAT, outline=line,
              width=stroke)
    for sx, sy, sr in ((-0.22, 0.45, 0.14), (0.22, 0.75, 0.11), (0.0, 0.15, 0.1)):  # stars up the cone
        x, y = c + r * sx, c - r * (face_top + sy)
        d.polygon([(x, y - r * sr), (x + r * sr * 0.35, y - r * sr * 0.3), (x + r * sr, y),
                   (x + r * sr * 0.35, y + r * sr * 0.3), (x, y + r * sr), (x - r * sr * 0.35, y + r * sr * 0.3),
                   (x - r * sr, y), (x - r * sr * 0.35, y - r * sr * 0.3)], fill=STAR)


def _draw_horned_helmet(d: ImageDraw.ImageDraw, c: float, r: float, half_w: float, face_top: float, stroke: int,
                        line) -> None:
    """A steel dome with a dark rim and two ivory horns curving up and out."""
    for side in (-1, 1):
        x0, y0 = c + side * r * 0.92 * half_w, c - r * (face_top - 0.12)
        horn = ((0, 0), (0.42, -0.1), (0.68, -0.45), (0.72, -1.0), (0.48, -0.64), (0.24, -0.44), (-0.06, -0.38))
        d.polygon([(x0 + side * r * dx, y0 + r * dy) for dx, dy in horn], fill=HORN, outline=line or (150, 140, 110),
                  width=stroke)
    d.chord([c - r * 1.04 * half_w, c - r * (face_top + 0.45), c + r * 1.04 * half_w, c + r * 0.05], 180, 360,
            fill=STEEL, outline=line, width=stroke)
    rim_y = c - r * (face_top - 0.3)
    d.rectangle([c - r * 1.04 * half_w, rim_y - r * 0.16, c + r * 1.04 * half_w, rim_y], fill=STEEL_DARK, outline=line,
                width=max(1, stroke // 2))
    d.rectangle([c - r * 0.07, c - r * (face_top + 0.42), c + r * 0.07, rim_y], fill=STEEL_DARK)  # the nose ridge


NOVEL_HEADWEAR = {"crown": _draw_crown, "wizard hat": _draw_wizard_hat, "horned helmet": _draw_horned_helmet}


def _draw_face(d: ImageDraw.ImageDraw, c: float, r: float, half_w: float, character: Character,
               rng: random.Random, stroke: int, ink: Ink) -> None:
    mood = character.expression
    feature = ink.features
    for side in (-1, 1):
        if mood not in ("angry", "sad"):  # rosy cheeks on the cheerful faces
            kx, ky = c + side * r * 0.55 * half_w, c + r * 0.38
            d.ellipse([kx - r * 0.16, ky - r * 0.09, kx + r * 0.16, ky + r * 0.09], fill=CHEEK)
        ex, ey = c + side * r * 0.38 * half_w, c + r * 0.02
        _draw_eye(d, ex, ey, r, character.eyes, stroke, feature)
        d.line(_brow(ex, ey, r, side, mood), fill=HAIR, width=stroke)
    if character.eyes == "round glasses":  # the bridge between the lenses
        d.line([(c - r * 0.38 * half_w + r * 0.25, c), (c + r * 0.38 * half_w - r * 0.25, c)], fill=RIM,
               width=max(stroke, round(r * 0.09)))
    if mood == "sad":
        d.ellipse([c + r * 0.30 * half_w, c + r * 0.14, c + r * 0.42 * half_w, c + r * 0.32], fill=TEAR)
    d.arc([c - r * 0.10, c + r * 0.10, c + r * 0.10, c + r * 0.34], 20, 160, fill=SKIN_SHADE, width=stroke)
    my = c + r * 0.44
    facial_hair = character.facial_hair
    if facial_hair == "long beard":
        w = r * half_w
        d.polygon([(c - w * 0.8, c + r * 0.42), (c - w * 0.55, c + r * 1.15), (c, c + r * 1.55),
                   (c + w * 0.55, c + r * 1.15), (c + w * 0.8, c + r * 0.42), (c + r * 0.32, c + r * 0.82),
                   (c - r * 0.32, c + r * 0.82)], fill=HAIR)
    if facial_hair == "thin mustache":  # curling up at the ends
        for side in (-1, 1):
            d.line([(c, my), (c + side * r * 0.22, my + r * 0.02), (c + side * r * 0.38, my - r * 0.04),
                    (c + side * r * 0.44, my - r * 0.12)], fill=HAIR, width=stroke, joint="curve")
    elif facial_hair in ("thick mustache", "long beard"):  # a heavy drooping one
        d.polygon([(c - r * 0.46, my + r * 0.16), (c - r * 0.34, my - r * 0.08), (c, my - r * 0.06),
                   (c + r * 0.34, my - r * 0.08), (c + r * 0.46, my + r * 0.16), (c + r * 0.30, my + r * 0.10),
                   (c, my + r * 0.07), (c - r * 0.30, my + r * 0.10)], fill=HAIR)
    if facial_hair == "goatee":  # a pointed beard on the chin, no mustache
        chin = c + r * FACES[character.face_shape][2]
        d.polygon([(c - r * 0.24, chin - r * 0.26), (c + r * 0.24, chin - r * 0.26), (c + r * 0.16, chin + r * 0.1),
                   (c, chin + r * 0.42), (c - r * 0.16, chin + r * 0.1)], fill=HAIR)
    _draw_mouth(d, c, r, mood, stroke, feature)
    tuft = rng.random() < 0.5
    if tuft and facial_hair == "thin mustache":  # a small chin tuft on some pictures
        d.polygon([(c - r * 0.05, c + r * 0.86), (c + r * 0.05, c + r * 0.86), (c, c + r * 0.98)], fill=HAIR)


def _draw_eye(d: ImageDraw.ImageDraw, ex: float, ey: float, r: float, eyes: str, stroke: int, colour) -> None:
    if eyes == "narrow eyes":  # narrow smiling arcs
        d.arc([ex - r * 0.20, ey - r * 0.09, ex + r * 0.20, ey + r * 0.09], 195, 345, fill=colour, width=stroke)
    elif eyes == "closed eyes":  # lids down, with lashes
        d.arc([ex - r * 0.18, ey - r * 0.10, ex + r * 0.18, ey + r * 0.08], 15, 165, fill=colour, width=stroke)
        for dx in (-0.12, 0.0, 0.12):
            d.line([(ex + r * dx, ey + r * 0.07), (ex + r * dx * 1.3, ey + r * 0.16)], fill=colour,
                   width=max(1, stroke // 2))
    elif eyes == "almond-shaped eyes":
        d.chord([ex - r * 0.20, ey - r * 0.10, ex + r * 0.20, ey + r * 0.10], 180, 360, fill=(250, 250, 250),
                outline=colour, width=max(1, stroke // 2))
        d.chord([ex - r * 0.20, ey - r * 0.10, ex + r * 0.20, ey + r * 0.06], 0, 180, fill=(250, 250, 250),
                outline=colour, width=max(1, stroke // 2))
        d.ellipse([ex - r * 0.07, ey - r * 0.08, ex + r * 0.07, ey + r * 0.05], fill=(40, 28, 22))
    elif eyes == "round glasses":  # round dark rims over tinted lenses, small pupils
        rim = max(stroke, round(r * 0.11))
        d.ellipse([ex - r * 0.25, ey - r * 0.25, ex + r * 0.25, ey + r * 0.25], fill=LENS, outline=RIM, width=rim)
        d.ellipse([ex - r * 0.07, ey - r * 0.07, ex + r * 0.07, ey + r * 0.07], fill=(30, 22, 18))
    else:  # round eyes
        d.ellipse([ex - r * 0.15, ey - r * 0.15, ex + r * 0.15, ey + r * 0.15], fill=(250, 250, 250), outline=colour,
                  width=max(1, stroke // 2))
        d.ellipse([ex - r * 0.08, ey - r * 0.06, ex + r * 0.08, ey + r * 0.10], fill=(30, 22, 18))


def _brow(ex: float, ey: float, r: float, side: int, mood: str) -> list[tuple[float, float]]:
    """Left and right brow ends; ``side`` -1 is the picture's left."""
    outer, inner = {"angry": (0.34, 0.14), "sad": (0.20, 0.36), "happy": (0.36, 0.36),
                    "friendly": (0.32, 0.34)}.get(mood, (0.28, 0.24))
    if mood in ("smiling",):  # the references' brows: outer end a little higher
        return ([(ex - r * 0.20, ey - r * 0.24), (ex + r * 0.20, ey - r * 0.28)] if side > 0 else
                [(ex - r * 0.20, ey - r * 0.28), (ex + r * 0.20, ey - r * 0.24)])
    if side > 0:
        return [(ex - r * 0.20, ey - r * inner), (ex + r * 0.20, ey - r * outer)]
    return [(ex - r * 0.20, ey - r * outer), (ex + r * 0.20, ey - r * inner)]


def _draw_mouth(d: ImageDraw.ImageDraw, c: float, r: float, mood: str, stroke: int, colour) -> None:
    if mood == "smiling":  # a wide closed smile
        d.arc([c - r * 0.30, c + r * 0.34, c + r * 0.30, c + r * 0.74], 20, 160, fill=colour, width=stroke)
    elif mood == "friendly":  # a small gentle smile
        d.arc([c - r * 0.17, c + r * 0.48, c + r * 0.17, c + r * 0.70], 20, 160, fill=colour, width=stroke)
    elif mood == "happy":  # a laughing open mouth
        d.chord([c - r * 0.30, c + r * 0.40, c + r * 0.30, c + r * 0.86], 0, 180, fill=MOUTH, outline=colour,
                width=stroke)
    elif mood == "angry":  # a tight frown
        d.arc([c - r * 0.26, c + r * 0.62, c + r * 0.26, c + r * 0.90], 200, 340, fill=colour, width=stroke)
    else:  # sad: a small downturned mouth
        d.arc([c - r * 0.16, c + r * 0.64, c + r * 0.16, c + r * 0.84], 200, 340, fill=colour, width=stroke)


# --------------------------------------------------------------------------- finish
def _finish(image: Image.Image, style: str, seed: int) -> Image.Image:
    """The style's look over the drawing: a photo is soft and grainy, a 3D render lit and shaded."""
    if style == "photograph":
        noise = np.random.default_rng(seed).normal(0.0, 9.0, (image.height, image.width, 3))
        soft = image.filter(ImageFilter.GaussianBlur(radius=image.width / 110))
        pixels = np.asarray(soft, dtype=np.float32) * 0.85 + 30 + noise
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if style == "3D render":
        h, w = image.height, image.width
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
        light = 1.25 - 0.7 * np.hypot(xx - 0.3, yy - 0.25)  # a key light at the upper left
        soft = image.filter(ImageFilter.GaussianBlur(radius=w / 256))
        pixels = np.asarray(soft, dtype=np.float32) * light[..., None]
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if style == "cartoon style":  # saturated poster colours
        pixels = np.asarray(image, dtype=np.float32)
        grey = pixels.mean(axis=2, keepdims=True)
        return Image.fromarray(np.clip(grey + (pixels - grey) * 1.35, 0, 255).astype(np.uint8))
    return image
