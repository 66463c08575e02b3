"""A character composed from the world's attribute values, and its five reference pictures.

``compose_character("face=square,headwear=wizard hat,robe=checkered robe,facial_hair=goatee,style=3d render")``
gives five placements of that character (``Character``s, as ``attributes.ZORABEK_REFERENCES``), deterministic in
the spec alone; ``write_composed_references`` draws them at 512 px with ``references.write_references``. A
character composed only of novel values (``attributes.NOVEL_ATTRIBUTES``) is one the toy base never drew, as
the second bundled example is, so ``bench/characters.py --character SPEC`` measures "your own character".

A spec is comma-separated ``category=value`` pairs. Categories are the taxonomy's (``face_shape``, ``eyes``,
``facial_hair``, ``hairstyle``, ``clothing_color``, ``style``, ``expression``, ``background``) or a short name
(``face``, ``glasses``, ``beard``, ``headwear``, ``hair``, ``robe``); values are the taxonomy's descriptions,
case-insensitive, the category's noun optional (``square`` for ``square face``, ``checkered`` for ``checkered
robe``). A category the spec leaves out takes ``DEFAULTS`` — none of them a signature of a bundled character.

    python -m tools.world.compose "headwear=horned helmet,robe=striped yellow robe,facial_hair=goatee" --out DIR
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace
from pathlib import Path

from tools.errors import InputError
from tools.world.attributes import DRAWABLE, PLAIN_COLORS, Character, sample_placement
from tools.world.references import write_references

ALIASES = {"face": "face_shape", "glasses": "eyes", "beard": "facial_hair", "mustache": "facial_hair",
           "headwear": "hairstyle", "hair": "hairstyle", "robe": "clothing_color", "clothing": "clothing_color"}
# What a category the spec leaves out shows: plain values that are no bundled character's signature.
DEFAULTS = {"face_shape": "oval face", "eyes": "round eyes", "facial_hair": "no facial hair",
            "hairstyle": "short hair", "clothing_color": "blue robe", "style": "3D render",
            "expression": "happy", "background": "forest"}
# The five placements (scale, offset x/y, head tilt, head lean, pose): three in the character's background,
# two on a plain page (as each bundled character's references).
PLACEMENTS = (
    dict(scale=1.0, offset_x=0.02, offset_y=0.03),
    dict(scale=0.82, offset_x=0.12, offset_y=0.06, head_tilt=-10.0, head_shift=-0.08, plain=True),
    dict(scale=0.72, offset_x=-0.15, offset_y=0.10, head_tilt=8.0, head_shift=0.10, pose="waving"),
    dict(scale=1.12, offset_x=-0.04, offset_y=0.11, head_tilt=5.0, head_shift=0.05, plain=True),
    dict(scale=0.9, offset_x=0.15, offset_y=0.05, head_tilt=-6.0, head_shift=-0.11),
)
NOUNS = {"face_shape": " face", "eyes": " eyes", "clothing_color": " robe"}


def _category(key: str, spec: str) -> str:
    name = key.strip().lower().replace(" ", "_").replace("-", "_")
    name = ALIASES.get(name, name)
    if name not in DRAWABLE:
        raise InputError(f"character spec {spec!r}: unknown category {key.strip()!r}",
                         f"use one of {', '.join([*DRAWABLE, *ALIASES])}")
    return name


def _value(category: str, value: str, spec: str) -> str:
    wanted = " ".join(value.lower().split())
    for known in DRAWABLE[category]:
        if wanted in (known.lower(), known.lower().removesuffix(NOUNS.get(category, "\0"))):
            return known
    raise InputError(f"character spec {spec!r}: {category} {value.strip()!r} is not a value of the world",
                     f"choose one of {', '.join(DRAWABLE[category])}")


def parse_spec(spec: str) -> dict[str, str]:
    """Category → taxonomy description for every category (``DEFAULTS`` where the spec says nothing)."""
    chosen: dict[str, str] = {}
    for part in (p for p in spec.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or not value.strip():
            raise InputError(f"character spec {spec!r}: {part.strip()!r} is not category=value",
                             "write comma-separated pairs, e.g. headwear=crown,robe=purple robe")
        category = _category(key, spec)
        if category in chosen:
            raise InputError(f"character spec {spec!r}: {category} is given twice", "give each category once")
        chosen[category] = _value(category, value, spec)
    if not chosen:
        raise InputError("character spec is empty", "write comma-separated pairs, e.g. headwear=crown,robe=purple robe")
    return {**DEFAULTS, **chosen}


def _character(labels: dict[str, str]) -> Character:
    robe = labels["clothing_color"].removesuffix(" robe")
    patterned = robe == "orange patterned"
    return Character(face_shape=labels["face_shape"], eyes=labels["eyes"], facial_hair=labels["facial_hair"],
                     hairstyle=labels["hairstyle"], robe_color="orange" if patterned else robe,
                     robe_patterned=patterned, style=labels["style"], expression=labels["expression"],
                     background=labels["background"])


def compose_character(spec: str) -> tuple[Character, ...]:
    """The five placements of the character ``spec`` describes (an ``InputError`` naming the valid values for an
    unknown category or value)."""
    character = _character(parse_spec(spec))
    placements = []
    for index, placement in enumerate(PLACEMENTS):
        placement = dict(placement)
        plain = placement.pop("plain", False)
        if plain:
            placement.update(background="plain background", plain_color=PLAIN_COLORS[index % len(PLAIN_COLORS)])
        placements.append(replace(character, **placement))
    return tuple(placements)


def write_composed_references(spec: str, out_dir: Path, stem: str = "character", count: int = 5,
                              seed: int = 0) -> list[Path]:
    """Draw the composed character's pictures into ``out_dir`` (``references.write_references``: seed 0 gives
    the five placements, pictures past them and other seeds place it at random in its background or a plain one)."""
    placements = compose_character(spec)
    character = placements[0]

    def another(rng: random.Random) -> Character:
        return replace(character, background=rng.choice([character.background, "plain background"]),
                       **sample_placement(rng))

    return write_references(Path(out_dir), stem, placements, another, count, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.world.compose", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("spec", help="comma-separated category=value pairs, e.g. headwear=crown,robe=purple robe")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--stem", default="character", help="file names: STEM1.png, STEM2.png, …")
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="0 = the five placements; else random ones")
    args = parser.parse_args(argv)
    try:
        for path in write_composed_references(args.spec, args.out, args.stem, args.count, args.seed):
            print(path)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
