"""A character composed from attribute values (tools.world.compose): what bench/characters.py --character SPEC
draws its references from."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tools.errors import InputError
from tools.world.attributes import DRAWABLE, NOVEL_ATTRIBUTES, is_novel, shows_signature
from tools.world.compose import DEFAULTS, compose_character, parse_spec, write_composed_references

SPEC = "face=square,headwear=wizard hat,robe=checkered robe,facial_hair=goatee,style=3d render"


def test_a_spec_names_each_value_in_the_taxonomys_words_and_the_rest_take_the_defaults():
    labels = parse_spec(SPEC)
    assert labels == {**DEFAULTS, "face_shape": "square face", "hairstyle": "wizard hat",
                      "clothing_color": "checkered robe", "facial_hair": "goatee", "style": "3D render"}
    assert parse_spec("glasses=Round Glasses, robe=striped yellow") == {
        **DEFAULTS, "eyes": "round glasses", "clothing_color": "striped yellow robe"}
    assert not any(shows_signature(p) for p in compose_character("robe=purple"))  # the defaults are nobody's signature


def test_the_five_placements_show_the_character_in_its_background_and_on_a_plain_page():
    placements = compose_character(SPEC)
    assert len(placements) == 5 and len(set(placements)) == 5
    for placement in placements:
        assert {c: v for c, v in placement.labels().items() if c != "background"} == {
            c: v for c, v in parse_spec(SPEC).items() if c != "background"}
        assert is_novel(placement)
    assert [p.background for p in placements].count("forest") == 3
    assert [p.background for p in placements].count("plain background") == 2


def test_a_composed_character_draws_deterministically(tmp_path):
    first = write_composed_references(SPEC, tmp_path / "a", stem="wizard")
    second = write_composed_references(SPEC, tmp_path / "b", stem="wizard")
    assert [p.name for p in first] == [f"wizard{i}.png" for i in range(1, 6)]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
    pictures = [np.asarray(Image.open(p)) for p in first]
    assert pictures[0].shape == (512, 512, 3)
    assert all((a != b).any() for i, a in enumerate(pictures) for b in pictures[i + 1:])  # five different pictures
    other = write_composed_references(SPEC.replace("wizard hat", "horned helmet"), tmp_path / "c", stem="wizard")
    assert all(a.read_bytes() != b.read_bytes() for a, b in zip(first, other))


@pytest.mark.parametrize("spec, named", [
    ("headwear=top hat", "hairstyle 'top hat'"),
    ("hat=crown", "unknown category 'hat'"),
    ("robe=purple,robe=red", "clothing_color is given twice"),
    ("crown", "'crown' is not category=value"),
    ("", "character spec is empty"),
])
def test_a_bad_spec_is_refused_in_one_line_naming_the_valid_values(spec, named):
    with pytest.raises(InputError) as refused:
        compose_character(spec)
    message = str(refused.value)
    assert named in message and "\n" not in message
    if "top hat" in spec:
        assert all(value in message for value in DRAWABLE["hairstyle"])  # the old and the novel ones


def test_the_command_line_writes_the_pictures_or_refuses_with_exit_2(tmp_path):
    novel_only = ",".join(f"{c}={v[0]}" for c, v in NOVEL_ATTRIBUTES.items())
    done = subprocess.run([sys.executable, "-m", "tools.world.compose", novel_only, "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"character{i}.png" for i in range(1, 6)]
    refused = subprocess.run([sys.executable, "-m", "tools.world.compose", "robe=tartan", "--out", str(tmp_path / "x")],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.count("\n") == 1 and "purple robe" in refused.stderr
    assert not (tmp_path / "x").exists()  # nothing half-written
