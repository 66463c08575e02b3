"""Draw the bundled Aldar Köse reference pictures procedurally with PIL.

The five ``aldar1.png`` … ``aldar5.png`` beside this script are its output: a flat
2D children's-book Aldar Köse (round face, narrow smiling eyes, thin mustache,
skullcap or topknot, orange patterned robe) on a steppe or a plain background.
Each picture is fully determined by its seed, so anyone can regenerate and check
them; they are placeholders that exercise the pipeline, not artwork.

    python examples/aldar_kose/draw_aldar_kose.py            # rewrites aldar1..5.png here
    python examples/aldar_kose/draw_aldar_kose.py --out DIR --count 8 --seed 7
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE = 512
SUPERSAMPLE = 2  # drawn at 2x and downscaled: smooth outlines without PIL anti-aliasing support
OUTLINE = (58, 36, 28)
SKIN = (240, 196, 150)
SKIN_SHADE = (222, 170, 125)
CHEEK = (236, 150, 130)
HAIR = (40, 30, 28)
ROBE = (236, 128, 36)
ROBE_DARK = (196, 92, 24)
TRIM = (250, 214, 92)
TRIM_DARK = (160, 40, 40)
CAP = (128, 30, 42)
CAP_PATTERN = (246, 220, 120)


@dataclass(frozen=True)
class Pose:
    """What varies between pictures: where the character stands, how big, how the head tilts."""

    background: str  # "steppe" | "plain"
    scale: float  # 1.0: the figure fills about three quarters of the height
    offset_x: float  # fraction of the width, + is right
    offset_y: float
    head_tilt: float  # degrees, + is counter-clockwise
    head_shift: float  # fraction of the head radius, sideways lean of the head on the neck
    headwear: str  # "skullcap" | "topknot"
    plain_color: tuple[int, int, int] = (250, 240, 214)


# The five bundled pictures: two steppes, three plain, different sizes and tilts.
BUNDLED_POSES = (
    Pose("steppe", 1.00, 0.00, 0.02, 0.0, 0.0, "skullcap"),
    Pose("plain", 0.85, -0.10, 0.05, 12.0, 0.10, "skullcap", (252, 236, 200)),
    Pose("steppe", 0.70, 0.16, 0.10, -9.0, -0.08, "topknot"),
    Pose("plain", 1.15, 0.04, 0.12, -5.0, 0.05, "skullcap", (214, 236, 246)),
    Pose("steppe", 0.92, -0.14, 0.04, 7.0, 0.12, "topknot"),
)


def random_pose(rng: random.Random) -> Pose:
    plain = rng.choice([(250, 240, 214), (252, 236, 200), (214, 236, 246), (230, 244, 220)])
    return Pose(rng.choice(["steppe", "plain"]), rng.uniform(0.7, 1.15), rng.uniform(-0.15, 0.15),
                rng.uniform(0.0, 0.12), rng.uniform(-12, 12), rng.uniform(-0.12, 0.12),
                rng.choice(["skullcap", "topknot"]), plain)


def draw_aldar(pose: Pose, seed: int) -> Image.Image:
    """One 512x512 RGB picture; identical for identical ``pose`` and ``seed``."""
    rng = random.Random(seed)
    big = SIZE * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), pose.plain_color)
    if pose.background == "steppe":
        _draw_steppe(canvas, rng)
    else:
        _draw_plain(canvas, pose.plain_color)
    figure = _draw_figure(pose, rng)
    canvas.paste(figure, (0, 0), figure)
    return canvas.resize((SIZE, SIZE), Image.LANCZOS)


# --------------------------------------------------------------------------- backgrounds
def _draw_steppe(canvas: Image.Image, rng: random.Random) -> None:
    d = ImageDraw.Draw(canvas)
    w = h = canvas.width
    horizon = int(h * rng.uniform(0.58, 0.66))
    # Flat bands of sky, lighter towards the horizon (children's-book style, no gradients).
    bands = [(120, 190, 236), (146, 204, 240), (172, 218, 244), (198, 230, 246)]
    for i, colour in enumerate(bands):
        d.rectangle([0, i * horizon // len(bands), w, horizon], fill=colour)
    sun_x, sun_y, sun_r = int(w * rng.choice([0.15, 0.82])), int(h * 0.14), int(w * 0.06)
    d.ellipse([sun_x - sun_r, sun_y - sun_r, sun_x + sun_r, sun_y + sun_r], fill=(255, 222, 110),
              outline=(240, 180, 60), width=6)
    for _ in range(rng.randint(2, 3)):
        _cloud(d, int(w * rng.uniform(0.1, 0.9)), int(h * rng.uniform(0.1, 0.3)), int(w * rng.uniform(0.05, 0.08)))
    # Two rows of distant hills: bluish far away, greener nearer.
    for colour, base, height in (((150, 170, 190), horizon, 0.16), ((132, 176, 130), horizon + 10, 0.09)):
        points = [(0, base)]
        x = 0
        while x < w:
            x += int(w * rng.uniform(0.12, 0.25))
            points.append((x, base - int(h * height * rng.uniform(0.4, 1.0))))
        points += [(w, base), (w, h), (0, h)]
        d.polygon(points, fill=colour, outline=OUTLINE)
        d.line(points[:-2], fill=OUTLINE, width=4, joint="curve")
    d.rectangle([0, horizon + 10, w, h], fill=(168, 200, 96))
    d.line([(0, horizon + 10), (w, horizon + 10)], fill=OUTLINE, width=4)
    d.rectangle([0, int(h * 0.86), w, h], fill=(150, 186, 80))
    for _ in range(40):  # grass tufts
        x, y = rng.randint(0, w), rng.randint(horizon + 30, h)
        for dx in (-8, 0, 8):
            d.line([(x, y), (x + dx * 2, y - 22)], fill=(104, 146, 60), width=4)


def _cloud(d: ImageDraw.ImageDraw, x: int, y: int, r: int) -> None:
    for dx, dy, k in ((-1.0, 0.2, 0.8), (0.0, 0.0, 1.0), (1.0, 0.2, 0.8), (0.5, 0.4, 0.7), (-0.5, 0.4, 0.7)):
        cx, cy, cr = x + int(dx * r), y + int(dy * r), int(k * r)
        d.ellipse([cx - cr, cy - cr, cx + cr, cy + cr], fill=(252, 252, 255))


def _draw_plain(canvas: Image.Image, colour: tuple[int, int, int]) -> None:
    # A soft floor shadow under the figure, so the plain page still reads as a scene.
    d = ImageDraw.Draw(canvas)
    w = canvas.width
    shade = tuple(max(0, c - 22) for c in colour)
    d.rectangle([0, int(w * 0.84), w, w], fill=shade)


# --------------------------------------------------------------------------- character
def _draw_figure(pose: Pose, rng: random.Random) -> Image.Image:
    big = SIZE * SUPERSAMPLE
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    unit = big * 0.5 * pose.scale  # the figure is laid out in units of half the canvas
    cx = big / 2 + pose.offset_x * big
    top = big * 0.14 + pose.offset_y * big + (1 - pose.scale) * big * 0.42
    head_r = unit * 0.30
    head_c = (cx + pose.head_shift * head_r, top + head_r * 1.05)

    body = ImageDraw.Draw(layer)
    _draw_robe(body, cx, head_c[1] + head_r * 0.85, unit, rng)

    head = _draw_head(head_r, pose.headwear, rng)
    head = head.rotate(pose.head_tilt, resample=Image.BICUBIC, expand=False)
    layer.alpha_composite(head, (int(head_c[0] - head.width / 2), int(head_c[1] - head.height / 2)))
    return layer


def _draw_robe(d: ImageDraw.ImageDraw, cx: float, neck_y: float, unit: float, rng: random.Random) -> None:
    stroke = max(4, int(unit * 0.018))
    shoulder, hem = unit * 0.42, unit * 0.62
    bottom = neck_y + unit * 1.05
    robe = [(cx - shoulder * 0.55, neck_y), (cx + shoulder * 0.55, neck_y), (cx + shoulder, neck_y + unit * 0.18),
            (cx + hem, bottom), (cx - hem, bottom), (cx - shoulder, neck_y + unit * 0.18)]
    d.polygon(robe, fill=ROBE, outline=OUTLINE, width=stroke)
    # Sleeves with hands peeking out.
    for side in (-1, 1):
        sleeve = [(cx + side * shoulder, neck_y + unit * 0.18), (cx + side * shoulder * 1.35, neck_y + unit * 0.62),
                  (cx + side * shoulder * 1.05, neck_y + unit * 0.70), (cx + side * shoulder * 0.78, neck_y + unit * 0.35)]
        d.polygon(sleeve, fill=ROBE_DARK, outline=OUTLINE, width=stroke)
        hx, hy, hr = cx + side * shoulder * 1.22, neck_y + unit * 0.72, unit * 0.07
        d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=SKIN, outline=OUTLINE, width=stroke)
    # Front opening with a golden ornamental trim and a belt.
    d.polygon([(cx - unit * 0.12, neck_y), (cx + unit * 0.12, neck_y), (cx + unit * 0.05, bottom), (cx - unit * 0.05, bottom)],
              fill=TRIM, outline=OUTLINE)
    belt_y = neck_y + unit * 0.55
    d.rectangle([cx - hem * 0.86, belt_y, cx + hem * 0.86, belt_y + unit * 0.08], fill=TRIM_DARK, outline=OUTLINE,
                width=stroke)
    # Patterned robe: rows of small diamonds and a hem band (the "orange patterned robe").
    step = unit * 0.16
    y = neck_y + unit * 0.28
    while y < bottom - unit * 0.12:
        width_here = shoulder + (hem - shoulder) * (y - neck_y) / (bottom - neck_y)
        x = cx - width_here + step * 0.6
        while x < cx + width_here - step * 0.4:
            if abs(x - cx) > unit * 0.12 and not belt_y - step * 0.3 < y < belt_y + unit * 0.12:
                r = step * 0.22
                d.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=TRIM, outline=ROBE_DARK)
            x += step
        y += step
    d.rectangle([cx - hem, bottom - unit * 0.09, cx + hem, bottom], fill=TRIM_DARK, outline=OUTLINE, width=stroke)
    x = cx - hem + unit * 0.06
    while x < cx + hem - unit * 0.03:
        r = unit * 0.025
        d.polygon([(x, bottom - unit * 0.045 - r), (x + r, bottom - unit * 0.045), (x, bottom - unit * 0.045 + r),
                   (x - r, bottom - unit * 0.045)], fill=TRIM)
        x += unit * 0.08


def _draw_head(r: float, headwear: str, rng: random.Random) -> Image.Image:
    """The head on its own transparent square, centred, so it can be tilted as a whole."""
    size = int(r * 3.2)
    head = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(head)
    c = size / 2
    stroke = max(4, int(r * 0.06))
    if headwear == "topknot":
        # Black hair cap on the crown and a knot on top.
        d.ellipse([c - r * 0.28, c - r * 1.45, c + r * 0.28, c - r * 0.88], fill=HAIR, outline=OUTLINE, width=stroke)
        d.ellipse([c - r * 1.0, c - r * 1.02, c + r * 1.0, c + r * 0.5], fill=HAIR, outline=OUTLINE, width=stroke)
    # Ears, then the round face.
    for side in (-1, 1):
        ex = c + side * r * 0.98
        d.ellipse([ex - r * 0.16, c - r * 0.12, ex + r * 0.16, c + r * 0.24], fill=SKIN, outline=OUTLINE, width=stroke)
    d.ellipse([c - r, c - r * 0.92, c + r, c + r * 1.02], fill=SKIN, outline=OUTLINE, width=stroke)
    if headwear == "topknot":
        d.chord([c - r * 0.96, c - r * 0.95, c + r * 0.96, c + r * 0.2], 200, 340, fill=HAIR)
    else:
        # Tubeteika: a dark-red skullcap with a golden zigzag band.
        d.chord([c - r * 1.02, c - r * 1.45, c + r * 1.02, c - r * 0.05], 180, 360, fill=CAP, outline=OUTLINE,
                width=stroke)
        band_y = c - r * 0.80
        points, n = [], 9
        for i in range(n + 1):
            x = c - r * 0.92 + i * (r * 1.84 / n)
            points.append((x, band_y - (r * 0.10 if i % 2 else 0)))
        d.line(points, fill=CAP_PATTERN, width=stroke)
        d.ellipse([c - r * 0.10, c - r * 1.30, c + r * 0.10, c - r * 1.10], fill=CAP_PATTERN)
    # Rosy cheeks, narrow smiling eyes (arcs), eyebrows, a small nose.
    for side in (-1, 1):
        kx, ky = c + side * r * 0.55, c + r * 0.38
        d.ellipse([kx - r * 0.16, ky - r * 0.09, kx + r * 0.16, ky + r * 0.09], fill=CHEEK)
        ex, ey = c + side * r * 0.38, c + r * 0.02
        d.arc([ex - r * 0.20, ey - r * 0.09, ex + r * 0.20, ey + r * 0.09], 195, 345, fill=OUTLINE, width=stroke)
        d.line([(ex - r * 0.20, ey - r * 0.24 + side * 0), (ex + r * 0.20, ey - r * 0.28)] if side > 0 else
               [(ex - r * 0.20, ey - r * 0.28), (ex + r * 0.20, ey - r * 0.24)], fill=HAIR, width=stroke)
    d.arc([c - r * 0.10, c + r * 0.10, c + r * 0.10, c + r * 0.34], 20, 160, fill=SKIN_SHADE, width=stroke)
    # Thin mustache curling up at the ends, and a wide smile below it.
    my = c + r * 0.44
    for side in (-1, 1):
        d.line([(c, my), (c + side * r * 0.22, my + r * 0.02), (c + side * r * 0.38, my - r * 0.04),
                (c + side * r * 0.44, my - r * 0.12)], fill=HAIR, width=stroke, joint="curve")
    d.arc([c - r * 0.30, c + r * 0.34, c + r * 0.30, c + r * 0.74], 20, 160, fill=OUTLINE, width=stroke)
    if rng.random() < 0.5:  # a small chin tuft on some pictures
        d.polygon([(c - r * 0.05, c + r * 0.86), (c + r * 0.05, c + r * 0.86), (c, c + r * 0.98)], fill=HAIR)
    return head


def write_pictures(out_dir: Path, count: int = 5, seed: int = 0) -> list[Path]:
    """Draw ``count`` pictures into ``out_dir`` as aldar1.png, aldar2.png, …"""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = []
    for index in range(count):
        pose = BUNDLED_POSES[index] if seed == 0 and index < len(BUNDLED_POSES) else random_pose(rng)
        image = draw_aldar(pose, seed * 1000 + index)
        path = out_dir / f"aldar{index + 1}.png"
        tmp = path.with_suffix(".png.tmp")
        image.save(tmp, format="PNG", optimize=True)
        tmp.replace(path)  # atomic: a reader never sees half a PNG
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    parser.add_argument("--count", type=int, default=5, help="number of pictures")
    parser.add_argument("--seed", type=int, default=0, help="0 = the five bundled poses; else random poses")
    args = parser.parse_args()
    for path in write_pictures(args.out, args.count, args.seed):
        print(f"{path} {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
