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

import random
from dataclasses import replace
from pathlib import Path

from tools.world.attributes import Character, ZORABEK, ZORABEK_REFERENCES, sample_placement
from tools.world.references import references_main, write_references


def another_picture(rng: random.Random) -> Character:
    """A picture past the bundled five: the character placed at random."""
    return replace(ZORABEK, background=rng.choice(["interior room", "plain background"]),
                   **sample_placement(rng))


def write_pictures(out_dir: Path, count: int = 5, seed: int = 0, backgrounds=None) -> list[Path]:
    """Draw ``count`` pictures of King Zorabek into ``out_dir`` as zorabek1.png, zorabek2.png, …

    Seed 0 gives the five bundled placements first; any other seed (and any picture past the fifth)
    places him at random, in a throne room or on a plain background.
    """
    return write_references(out_dir, "zorabek", ZORABEK_REFERENCES, another_picture, count, seed, backgrounds)


if __name__ == "__main__":
    references_main(__doc__.splitlines()[0], Path(__file__).resolve().parent, write_pictures)
