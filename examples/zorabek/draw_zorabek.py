"""Draw the bundled King Zorabek reference pictures with the toy world's renderer (``tools.world``).

The five ``zorabek1.png`` … ``zorabek5.png`` beside this script are its output: King Zorabek — square face,
round glasses, a pointed goatee, a gold crown, a purple robe, laughing — as a 3D render, in a throne
room or on a plain background, in five placements. He is composed of the toy world's novel values
(``tools.world.attributes.NOVEL_ATTRIBUTES``), which its base model never drew, so he is a new character
for it; each picture is fully determined by its seed, so anyone can regenerate and check them pixel for pixel.

    python examples/zorabek/draw_zorabek.py            # rewrites zorabek1..5.png here
    python examples/zorabek/draw_zorabek.py --out DIR --count 8 --seed 7
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace
from pathlib import Path

from tools.atomic import atomic_write
from tools.world.attributes import ZORABEK, ZORABEK_REFERENCES, sample_placement
from tools.world.draw import draw_character

SIZE = 512


def write_pictures(out_dir: Path, count: int = 5, seed: int = 0) -> list[Path]:
    """Draw ``count`` pictures of King Zorabek into ``out_dir`` as zorabek1.png, zorabek2.png, …

    Seed 0 gives the five bundled placements first; any other seed (and any picture past the fifth)
    places him at random, in a throne room or on a plain background.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = []
    for index in range(count):
        if seed == 0 and index < len(ZORABEK_REFERENCES):
            character = ZORABEK_REFERENCES[index]
        else:
            character = replace(ZORABEK, background=rng.choice(["interior room", "plain background"]),
                                **sample_placement(rng))
        image = draw_character(character, seed * 1000 + index, SIZE)
        path = out_dir / f"zorabek{index + 1}.png"
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    parser.add_argument("--count", type=int, default=5, help="number of pictures")
    parser.add_argument("--seed", type=int, default=0, help="0 = the five bundled placements; else random ones")
    args = parser.parse_args()
    for path in write_pictures(args.out, args.count, args.seed):
        print(f"{path} {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
