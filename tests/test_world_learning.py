"""Learning outcomes inside the toy world (tiny profile, trained models, CPU):

* the toy CLIP reads the bundled references correctly (headwear, robe, background, face, eyes, mustache);
* a controlled edit of a reference moves exactly the matching feature's probability;
* a short LoRA training makes generated images match the character's key features better than the base;
* the rule policy's emphasis on a missed feature raises that feature's pass rate the next round.

These say the loop works in the toy world; they say nothing about real SDXL.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from tools.scoring.analyzer import analyze_references, category_probabilities, text_embeddings
from tools.scoring.taxonomy import load_taxonomy
from tools.world.attributes import BUNDLED_REFERENCES as ALDAR_PLACEMENTS
from tools.world.draw import SKIN, draw_character

HEADWEAR = {"aldar1.png": "skullcap", "aldar2.png": "skullcap", "aldar3.png": "topknot", "aldar4.png": "skullcap",
            "aldar5.png": "topknot"}
BACKGROUND = {"aldar1.png": "steppe landscape", "aldar2.png": "plain background", "aldar3.png": "steppe landscape",
              "aldar4.png": "plain background", "aldar5.png": "steppe landscape"}


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    from tools.models import resolve_profile
    from tools.settings import BUNDLED_REFERENCES, load_settings

    settings = load_settings(overrides={"profile": "tiny"}, environ={})
    return analyze_references(BUNDLED_REFERENCES, resolve_profile(settings), BUNDLED_REFERENCES / "taxonomy.json",
                              "aldarkose", "Aldar Köse", None, use_cache=False)


def test_the_analyzer_names_the_orange_robe_and_each_pictures_background(analysis):
    assert any(f.startswith("orange") and f.endswith("robe") for f in analysis["key_features"])
    assert "steppe landscape" in analysis["key_features"]  # three of the five
    for name, background in BACKGROUND.items():
        top = {category: entry["top"][0]["feature"] for category, entry in analysis["per_image"][name].items()}
        assert top["background"] == background, name
        assert top["clothing_color"].startswith("orange"), name


def test_the_analyzer_reads_aldars_face_round_with_narrow_eyes_and_a_thin_mustache(analysis):
    assert {"round face", "narrow eyes", "thin mustache"} <= set(analysis["key_features"])
    for name, entry in analysis["per_image"].items():
        assert (entry["face_shape"]["top"][0]["feature"], entry["eyes"]["top"][0]["feature"]) == (
            "round face", "narrow eyes"), name


def test_the_analyzer_names_each_pictures_headwear(analysis):
    for name, headwear in HEADWEAR.items():
        assert analysis["per_image"][name]["hairstyle"]["top"][0]["feature"] == headwear, name


# --------------------------------------------------------------------------- controlled edits
def _reference(index: int) -> np.ndarray:
    from tools.settings import BUNDLED_REFERENCES

    return np.asarray(Image.open(BUNDLED_REFERENCES / f"aldar{index + 1}.png").convert("RGB")).copy()


def _differs(a: Image.Image, b: Image.Image) -> np.ndarray:
    return (np.asarray(a, dtype=np.int16) != np.asarray(b, dtype=np.int16)).any(axis=2)


def recolour_robe(index: int, hue_degrees: float) -> Image.Image:
    """The reference with its robe's pixels turned to another hue (the robe found by redrawing it blue)."""
    character = ALDAR_PLACEMENTS[index]
    mask = _differs(draw_character(character, index), draw_character(replace(character, robe_color="blue"), index))
    pixels = _reference(index)
    hsv = np.asarray(Image.fromarray(pixels).convert("HSV")).copy()
    hsv[..., 0] = round(hue_degrees / 360 * 255)
    turned = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    pixels[mask] = turned[mask]  # only the robe: the HSV round trip would shift other pixels by a level
    return Image.fromarray(pixels)


def plain_background(index: int) -> Image.Image:
    """The reference with everything around the figure replaced by a plain page (found by drawing the figure
    on two page colours: what changes is background)."""
    character = replace(ALDAR_PLACEMENTS[index], background="plain background")
    page = draw_character(replace(character, plain_color=(250, 240, 214)), index)
    other = draw_character(replace(character, plain_color=(200, 220, 250)), index)
    mask = _differs(page, other)
    pixels = _reference(index)
    pixels[mask] = np.asarray(page)[mask]
    return Image.fromarray(pixels)


def paint_over_mustache(index: int) -> Image.Image:
    """The reference with its mustache (and chin tuft) painted over in skin colour."""
    character = ALDAR_PLACEMENTS[index]
    mask = _differs(draw_character(character, index), draw_character(replace(character, facial_hair="no facial hair"), index))
    pixels = _reference(index)
    pixels[mask] = SKIN
    return Image.fromarray(pixels)


def _largest_move_elsewhere(before: dict, after: dict, category: str) -> float:
    """The largest change of any feature's probability outside ``category``."""
    return max(abs(after[c][f] - before[c][f]) for c in before if c != category for f in before[c])


@pytest.fixture(scope="module")
def probabilities_of():
    from tools.models import load_clip, resolve_profile
    from tools.settings import BUNDLED_TAXONOMY, load_settings

    encoder = load_clip(resolve_profile(load_settings(overrides={"profile": "tiny"}, environ={})))
    taxonomy = load_taxonomy(BUNDLED_TAXONOMY)
    texts = text_embeddings(encoder, taxonomy)

    def probabilities(image: Image.Image) -> dict[str, dict[str, float]]:
        matrix = category_probabilities(encoder.embed_images([image]), texts)
        return {c: dict(zip(taxonomy.categories[c], matrix[c][0].tolist())) for c in taxonomy.categories}

    return probabilities


EDITS = {  # edit → (the pictures it applies to, category, the feature that must gain, the feature that must lose)
    "robe recoloured blue": (lambda i: recolour_robe(i, 220), range(5), "clothing_color", "blue robe",
                             "orange patterned robe"),
    "robe recoloured green": (lambda i: recolour_robe(i, 125), range(5), "clothing_color", "green robe",
                              "orange patterned robe"),
    "background replaced by a plain one": (plain_background, (0, 2, 4), "background", "plain background",
                                           "steppe landscape"),  # the three steppe pictures
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_controlled_edit_moves_exactly_the_matching_feature(edit, probabilities_of):
    make, pictures, category, gains, loses = EDITS[edit]
    for index in pictures:
        before, after = probabilities_of(Image.fromarray(_reference(index))), probabilities_of(make(index))
        moved = after[category][gains] - before[category][gains]
        assert moved > 0.5 and after[category][loses] < before[category][loses], (index, before[category],
                                                                                     after[category])
        assert moved > _largest_move_elsewhere(before, after, category), index  # the edit moves its own feature most


def test_painting_over_the_mustache_moves_exactly_the_facial_hair_reading(probabilities_of):
    read_before = 0
    for index in range(5):
        before, after = probabilities_of(Image.fromarray(_reference(index))), probabilities_of(paint_over_mustache(index))
        hair_before, hair_after = before["facial_hair"], after["facial_hair"]
        moved = hair_after["no facial hair"] - hair_before["no facial hair"]
        # The edit can only take away what was seen: its size is bounded by how surely the mustache was read.
        assert moved > 0.2 and hair_after["thin mustache"] < hair_before["thin mustache"] - 0.2, (index, hair_before,
                                                                                                hair_after)
        assert max(hair_after, key=hair_after.get) == "no facial hair", (index, hair_after)
        assert moved > _largest_move_elsewhere(before, after, "facial_hair"), index  # its own feature moves most
        read_before += max(hair_before, key=hair_before.get) == "thin mustache"
    assert read_before >= 4  # the toy CLIP sees the thin mustache on (nearly) every reference


# --------------------------------------------------------------------------- the loop
def test_a_short_lora_training_beats_the_base_on_key_features(tiny_settings):
    from agent.rounds.policy import RulePolicy
    from agent.rounds.session import Session

    # The profile's eight images per generator: with two, one image moved a key feature's pass rate by a half.
    settings = tiny_settings.replace(images_per_prompt=0, target_score=1.0)
    with Session(settings, quiet=True) as session:
        record = session.run_rounds(1, RulePolicy(bounds=session.bounds))[0]
    lora, base = record.scores["lora"].features, record.scores["base"].features
    # Measured on one thread, seeds 42, 1, 2, 3, with the fourth passes' VAE: leads of +0.14, +0.19, +0.25, +0.20
    # over the base's 0.41-0.42; with decoder3's +0.25, +0.23, +0.23, +0.20; with decoder4's (seed 42, two
    # threads) +0.27.
    assert lora >= base + 0.1, (lora, base)


EMPHASIS_IMAGES = 6  # per round: pass rates in sixths, enough to see a feature come in


def _pass_rates(results, record, generator: str = "lora") -> dict[str, float]:
    import json

    report = json.loads((results / record.paths.comparison_report).read_text())
    return report["generators"][generator]["feature_pass_rate"]


EMPHASIS_SEEDS = (42, 1, 2)  # the seeds the pair was measured at before decoder5 (below)


def test_the_rule_policys_emphasis_on_missed_features_raises_their_pass_rate_next_round(tiny_settings):
    """Controlled: round 2 trains with round 1's parameters plus the policy's ``feature_emphasis`` alone
    (same steps, seeds and prompts otherwise), so what changes is the emphasis. Pooled over three seeds."""
    from pathlib import Path

    from agent.rounds.policy import RulePolicy
    from agent.rounds.session import Session

    rises, pooled = {}, 0.0
    for seed in EMPHASIS_SEEDS:
        settings = tiny_settings.replace(images_per_prompt=EMPHASIS_IMAGES, target_score=1.0, seed=seed,
                                         output_dir=str(Path(tiny_settings.output_dir) / f"seed{seed}"))
        with Session(settings, quiet=True) as session:
            policy = RulePolicy(bounds=session.bounds)
            first = session.run_rounds(1, policy)[0]
            emphasised = first.decision.adjustments.get("feature_emphasis") or []
            assert emphasised, first.rationale  # the round missed key features and the policy named them
            # A fresh LoRA, not round 1's continued (warm_start): the pair differs in the emphasis alone.
            session.params = {**first.params, "feature_emphasis": emphasised, "warm_start": False}
            second = session.run_round(policy)
        results = Path(settings.output_dir)
        before, after = _pass_rates(results, first), _pass_rates(results, second)
        rises[seed] = {f: (before[f], after[f]) for f in emphasised}
        pooled += sum(after[f] for f in emphasised) - sum(before[f] for f in emphasised)
    # Pooled over the emphasised features and the seeds: with six images a round, one image moves a feature's
    # rate by a sixth, and a weak reading flips on it. Measured with the scorer CLIP of the build's novel3 stage
    # and decoder4's VAE (seeds 42/1/2, this controlled pair): the pooled rate rose by 1, 4 and 3 images; at seed
    # 42 no single feature rose by more than one image (with the CLIP before it, six pairs rose by one to eight
    # images and the largest single rise was 2-6 images). With decoder5's VAE (the decoder learnt the novel
    # values): by -2, 7 and 9 images (seed 3: 4; with decoder4 3). One seed's pair sits on a knife edge (seed 42
    # rose by one image, then fell by two), so the test holds the rise pooled over the three seeds.
    assert pooled > 0, rises
