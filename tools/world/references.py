"""Bundled reference pictures drawn by the world: one writer and one command line for every example character.

``examples/<character>/draw_<character>.py`` names its character, its five placements and how a further
picture is placed; this module draws them at 512 px, seed by seed, so anyone can regenerate the bundled
pictures and check them pixel for pixel.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Callable, Sequence

from tools.atomic import atomic_write
from tools.world.attributes import Character
from tools.world.draw import draw_character

SIZE = 512


def write_references(out_dir: Path, stem: str, bundled: Sequence[Character],
                     another: Callable[[random.Random], Character], count: int = 5, seed: int = 0) -> list[Path]:
    """Draw ``count`` pictures into ``out_dir`` as ``<stem>1.png``, ``<stem>2.png``, …

    Seed 0 gives the ``bundled`` placements first; any other seed (and any picture past them) draws
    ``another(rng)``. Picture ``i`` is drawn with seed ``seed * 1000 + i``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = []
    for index in range(count):
        character = bundled[index] if seed == 0 and index < len(bundled) else another(rng)
        image = draw_character(character, seed * 1000 + index, SIZE)
        path = out_dir / f"{stem}{index + 1}.png"
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))
        written.append(path)
    return written


def references_main(description: str, default_out: Path, write_pictures: Callable[..., list[Path]]) -> None:
    """The drawing scripts' command line: --out, --count, --seed; prints each file written."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=default_out, help="output folder")
    parser.add_argument("--count", type=int, default=5, help="number of pictures")
    parser.add_argument("--seed", type=int, default=0, help="0 = the five bundled placements; else random ones")
    args = parser.parse_args()
    for path in write_pictures(args.out, args.count, args.seed):
        print(f"{path} {path.stat().st_size // 1024} KB")
