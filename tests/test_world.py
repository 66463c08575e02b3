"""The toy world: every taxonomy feature is drawable, pictures are deterministic and labelled, the
bundled references are points of it, and the base model's data really leaves out Aldar's signature."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from tools.settings import BUNDLED_REFERENCES
from tools.world.attributes import (ALDAR, ATTRIBUTES, BUNDLED_REFERENCES as ALDAR_PLACEMENTS, DRAWABLE, Character,
                                    caption_phrases, sample_character, sentence_caption, shows_signature, tag_caption)
from tools.world.dataset import render_split
from tools.world.draw import draw_character


def test_every_category_of_the_bundled_taxonomy_is_a_drawable_attribute():
    """The bundled taxonomy lists every value the world draws: each category's old values first, then its novel
    ones (which the base never saw and the scorer's CLIP learnt), so the second example is analysed with it too."""
    taxonomy = json.loads((BUNDLED_REFERENCES / "taxonomy.json").read_text())
    assert {k: tuple(v) for k, v in taxonomy["categories"].items()} == DRAWABLE
    assert all(DRAWABLE[c][:len(values)] == values for c, values in ATTRIBUTES.items())


@pytest.mark.parametrize("category", sorted(ATTRIBUTES))
def test_each_value_of_an_attribute_draws_a_different_picture(category):
    """Changing one attribute and nothing else changes the pixels (no value is drawn like another)."""
    base = replace(ALDAR, style="children's book style", background="plain background")
    pictures = {}
    for value in ATTRIBUTES[category]:
        if category == "clothing_color":
            colour, patterned = ("orange", value == "orange patterned robe") if value.startswith("orange") \
                else (value.split()[0], False)
            character = replace(base, robe_color=colour, robe_patterned=patterned)
        else:
            character = replace(base, **{category: value})
        assert character.labels()[category] == value
        pictures[value] = np.asarray(draw_character(character, seed=3, size=64), dtype=np.int16)
    values = list(pictures)
    for i, a in enumerate(values):
        for b in values[i + 1:]:
            assert np.abs(pictures[a] - pictures[b]).sum() > 0, f"{a!r} and {b!r} draw the same picture"


def test_pictures_are_deterministic_from_their_seed():
    character = sample_character(random.Random(5))
    first = np.asarray(draw_character(character, seed=11, size=64))
    assert np.array_equal(first, np.asarray(draw_character(character, seed=11, size=64)))
    assert not np.array_equal(first, np.asarray(draw_character(character, seed=12, size=64)))


def test_the_bundled_references_are_aldar_in_five_placements_pixel_for_pixel():
    for index, character in enumerate(ALDAR_PLACEMENTS):
        drawn = np.asarray(draw_character(character, seed=index, size=512))
        bundled = np.asarray(Image.open(BUNDLED_REFERENCES / f"aldar{index + 1}.png").convert("RGB"))
        assert np.array_equal(drawn, bundled), f"aldar{index + 1}.png is not the world's Aldar Köse"
        assert shows_signature(character)


def test_aldar_is_labelled_with_his_features():
    assert ALDAR.labels() == {"face_shape": "round face", "eyes": "narrow eyes", "facial_hair": "thin mustache",
                              "hairstyle": "skullcap", "clothing_color": "orange patterned robe",
                              "style": "children's book style", "expression": "smiling",
                              "background": "steppe landscape"}


def test_a_bad_attribute_value_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="not drawable.*round face"):
        Character(face_shape="triangle face")


def test_the_base_models_split_never_shows_the_signature_but_covers_everything_else():
    split = render_split(2, 600, size=64, without_signature=True)
    assert split.pixels.shape == (600, 64, 64, 3) and split.pixels.dtype == np.uint8
    assert not any(shows_signature(c) for c in split.characters)
    seen = {category: {c.labels()[category] for c in split.characters} for category in ATTRIBUTES}
    signature = {"hairstyle": {"skullcap"}, "clothing_color": {"orange patterned robe"},
                 "facial_hair": {"thin mustache"}}
    for category, values in ATTRIBUTES.items():
        assert seen[category] == set(values) - signature.get(category, set()), category


def test_splits_are_reproducible_and_seeds_do_not_overlap():
    a, again, other = render_split(1, 20), render_split(1, 20), render_split(9, 20)
    assert np.array_equal(a.pixels, again.pixels) and a.characters == again.characters
    assert not any(np.array_equal(x, y) for x in a.pixels for y in other.pixels)


def test_captions_name_the_pictures_attributes():
    rng = random.Random(0)
    character = replace(ALDAR, robe_color="blue", robe_patterned=False, expression="sad")
    full = tag_caption(character, rng, keep=1.0)
    for phrase in ("round face", "narrow eyes", "thin mustache", "skullcap", "blue robe", "sad", "steppe landscape"):
        assert phrase in full
    sentence = sentence_caption(character, rng)
    assert any(phrase in sentence for phrase in caption_phrases(character, random.Random(0)))


def test_world_captions_fit_sdxls_77_token_window():
    from tools.models import load_toy_world_clip

    _, tokenizer = load_toy_world_clip()
    rng = random.Random(1)
    longest = max(len(tokenizer(tag_caption(sample_character(rng), rng, keep=1.0)).input_ids) for _ in range(200))
    assert longest <= 40  # whole-word tokens: a full caption is ~30 tokens, one per byte would be ~150


def test_the_latent_head_mask_weighs_the_cells_under_each_head_and_nothing_else():
    import torch

    from tools.world.dataset import head_weight_map, latent_head_weight_map
    from tools.world.draw import head_circle

    left, right = replace(ALDAR, offset_x=-0.2), replace(ALDAR, offset_x=0.2)
    pixels = head_weight_map([left, right], 64, 4.0)
    cells = latent_head_weight_map([left, right], 64, 8, 4.0)
    assert cells.shape == (2, 1, 8, 8)
    assert torch.allclose(cells.mean(dim=(2, 3)), pixels.mean(dim=(2, 3)))  # pooled: the same weight in all
    for index, character in enumerate((left, right)):
        x, y, _ = head_circle(character, 64)
        assert cells[index, 0, int(y // 8), int(x // 8)] > 3.0  # the cell at the head's centre is (nearly) all head
        assert cells[index, 0, 7].eq(1.0).all()  # the bottom row (robe, ground) keeps weight 1
    assert not np.array_equal(cells[0].numpy(), cells[1].numpy())  # the mask follows the head
