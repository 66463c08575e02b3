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

import random
from dataclasses import replace
from pathlib import Path

from tools.world.attributes import Character, ALDAR, BUNDLED_REFERENCES, sample_placement
from tools.world.references import references_main, write_references


def another_picture(rng: random.Random) -> Character:
    """A picture past the bundled five: the character placed at random."""
    return replace(ALDAR, hairstyle=rng.choice(["skullcap", "topknot"]),
                   background=rng.choice(["steppe landscape", "plain background"]),
                   **{**sample_placement(rng), "pose": "standing"})


def write_pictures(out_dir: Path, count: int = 5, seed: int = 0, backgrounds=None) -> list[Path]:
    """Draw ``count`` pictures of Aldar Köse into ``out_dir`` as aldar1.png, aldar2.png, …

    Seed 0 gives the five bundled placements first; any other seed (and any picture past the fifth)
    places him at random, with a random headwear of his two and a steppe or plain background.
    """
    return write_references(out_dir, "aldar", BUNDLED_REFERENCES, another_picture, count, seed, backgrounds)


if __name__ == "__main__":
    references_main(__doc__.splitlines()[0], Path(__file__).resolve().parent, write_pictures)
