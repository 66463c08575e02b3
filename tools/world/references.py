"""Bundled reference pictures drawn by the world: one writer and one command line for every example character.

``examples/<character>/draw_<character>.py`` names its character, its five placements and how a further
picture is placed; this module draws them at 512 px, seed by seed, so anyone can regenerate the bundled
pictures and check them pixel for pixel.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from tools.atomic import atomic_write
from tools.world.attributes import ATTRIBUTES, Character
from tools.world.draw import draw_character_and_mask

SIZE = 512
MASKS = "masks"  # beside the pictures, same file names: what --masked-loss reads (kohya's mask folder)
VARIED_BACKGROUNDS = ATTRIBUTES["background"]


def write_references(out_dir: Path, stem: str, bundled: Sequence[Character],
                     another: Callable[[random.Random], Character], count: int = 5, seed: int = 0,
                     backgrounds: Sequence[str] | None = None) -> list[Path]:
    """Draw ``count`` pictures into ``out_dir`` as ``<stem>1.png``, ``<stem>2.png``, …, and each one's character
    mask into ``out_dir/masks/`` under the same name (white = the character).

    Seed 0 gives the ``bundled`` placements first; any other seed (and any picture past them) draws
    ``another(rng)``. Picture ``i`` is drawn with seed ``seed * 1000 + i``. ``backgrounds``: picture ``i`` is
    drawn on ``backgrounds[i % len(backgrounds)]`` instead (the masked-loss bench's varied backgrounds).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = []
    for index in range(count):
        character = bundled[index] if seed == 0 and index < len(bundled) else another(rng)
        if backgrounds:
            character = replace(character, background=backgrounds[index % len(backgrounds)])
        image, mask = draw_character_and_mask(character, seed * 1000 + index, SIZE)
        path = out_dir / f"{stem}{index + 1}.png"
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))
        atomic_write(out_dir / MASKS / path.name, lambda tmp: mask.save(tmp, format="PNG", optimize=True))
        written.append(path)
    return written


def references_main(description: str, default_out: Path, write_pictures: Callable[..., list[Path]]) -> None:
    """The drawing scripts' command line: --out, --count, --seed; prints each file written."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=default_out, help="output folder")
    parser.add_argument("--count", type=int, default=5, help="number of pictures")
    parser.add_argument("--seed", type=int, default=0, help="0 = the five bundled placements; else random ones")
    parser.add_argument("--varied-backgrounds", action="store_true",
                        help=f"draw picture i on the world's background i ({', '.join(VARIED_BACKGROUNDS)}, in turn)")
    args = parser.parse_args()
    options = {"backgrounds": VARIED_BACKGROUNDS} if args.varied_backgrounds else {}
    for path in write_pictures(args.out, args.count, args.seed, **options):
        print(f"{path} {path.stat().st_size // 1024} KB")
