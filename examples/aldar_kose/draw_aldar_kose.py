"""Draw the bundled Aldar Köse reference pictures with the toy world's renderer (``tools.world``).

The five ``aldar1.png`` … ``aldar5.png`` beside this script are its output: Aldar Köse — round face,
narrow smiling eyes, thin mustache, skullcap or topknot, orange patterned robe — in a flat 2D
children's-book style, on a steppe or a plain background, in five placements. He is one point of the
parametric world the tiny profile's models are trained in (``tools.world.attributes.ALDAR``); each
picture is fully determined by its seed, so anyone can regenerate and check them pixel for pixel.

    python examples/aldar_kose/draw_aldar_kose.py            # rewrites aldar1..5.png here
    python examples/aldar_kose/draw_aldar_kose.py --out DIR --count 8 --seed 7
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace
from pathlib import Path

from tools.atomic import atomic_write
from tools.world.attributes import ALDAR, BUNDLED_REFERENCES, sample_placement
from tools.world.draw import draw_character

SIZE = 512


def write_pictures(out_dir: Path, count: int = 5, seed: int = 0) -> list[Path]:
    """Draw ``count`` pictures of Aldar Köse into ``out_dir`` as aldar1.png, aldar2.png, …

    Seed 0 gives the five bundled placements first; any other seed (and any picture past the fifth)
    places him at random, with a random headwear of his two and a steppe or plain background.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = []
    for index in range(count):
        if seed == 0 and index < len(BUNDLED_REFERENCES):
            character = BUNDLED_REFERENCES[index]
        else:
            character = replace(ALDAR, hairstyle=rng.choice(["skullcap", "topknot"]),
                                background=rng.choice(["steppe landscape", "plain background"]),
                                **{**sample_placement(rng), "pose": "standing"})
        image = draw_character(character, seed * 1000 + index, SIZE)
        path = out_dir / f"aldar{index + 1}.png"
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
