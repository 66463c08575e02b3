import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tools.scoring.analyzer import analyze_references, select_key_features, text_embeddings
from tools.scoring.embedding_cache import EmbeddingCache
from tools.errors import InputError
from tools.models import load_clip, resolve_profile
from tools.settings import BUNDLED_TAXONOMY, load_settings
from tools.scoring.taxonomy import load_taxonomy

TRIGGER = "aldarkose"


def tiny_profile():
    return resolve_profile(load_settings(overrides={"profile": "tiny", "device": "cpu"}, environ={}))


def draw_character(path: Path, seed: int, size: int = 96) -> Path:
    """A small deterministic PIL drawing: coloured robe, face circle, hat — different per seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(120, 255, 3)))
    draw = ImageDraw.Draw(image)
    robe = tuple(int(v) for v in rng.integers(0, 255, 3))
    draw.rectangle([size * 0.25, size * 0.5, size * 0.75, size], fill=robe)
    r = size * (0.15 + 0.1 * rng.random())
    draw.ellipse([size / 2 - r, size * 0.35 - r, size / 2 + r, size * 0.35 + r], fill=(230, 190, 150))
    draw.polygon([(size * 0.35, size * 0.2), (size * 0.65, size * 0.2), (size / 2, rng.integers(0, size // 8))],
                 fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def make_references(folder: Path, count: int = 3, seeds=None) -> Path:
    for index, seed in enumerate(seeds or range(count)):
        draw_character(folder / f"ref{index + 1}.png", seed)
    return folder


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALDAR_CACHE", str(tmp_path / "cache"))


class CountingEncoder:
    """Wraps the real tiny encoder and counts how many images go through the model."""

    def __init__(self, inner):
        self.inner, self.images_embedded, self.text_calls = inner, 0, 0
        self.model_id, self.profile, self.image_size = inner.model_id, inner.profile, inner.image_size

    def embed_images(self, images, batch_size=16):
        self.images_embedded += len(images)
        return self.inner.embed_images(images, batch_size)

    def embed_texts(self, texts, batch_size=64):
        self.text_calls += 1
        return self.inner.embed_texts(texts, batch_size)


def test_analysis_schema_and_values(tmp_path):
    references = make_references(tmp_path / "refs", 3)
    out = tmp_path / "models" / "analysis.json"
    profile = tiny_profile()
    analysis = analyze_references(references, profile, BUNDLED_TAXONOMY, TRIGGER, "Aldar Köse", out)

    assert json.loads(out.read_text(encoding="utf-8")) == json.loads(json.dumps(analysis))
    assert not list(out.parent.glob(".*.tmp"))
    for key, kind in [("schema", str), ("created_at", str), ("profile", dict), ("model", str),
                      ("references", list), ("taxonomy", dict), ("per_image", dict), ("categories", dict),
                      ("key_features", list), ("key_feature_details", list), ("training_prompt", str),
                      ("captions", dict), ("trigger_token", str), ("character_name", str), ("notice", str)]:
        assert isinstance(analysis[key], kind), key
    assert analysis["profile"] == profile.describe() and analysis["profile"]["profile"] == "tiny"
    assert analysis["model"].startswith("toy-world-clip@") and analysis["model"] == profile.clip_model
    names = ["ref1.png", "ref2.png", "ref3.png"]
    assert [r["file"] for r in analysis["references"]] == names
    assert all(len(r["sha256"]) == 64 for r in analysis["references"])

    taxonomy = load_taxonomy(BUNDLED_TAXONOMY)
    assert set(analysis["per_image"]) == set(names)
    for name in names:
        for category, descriptions in taxonomy.categories.items():
            entry = analysis["per_image"][name][category]
            assert set(entry["probabilities"]) == set(descriptions)
            assert math.isclose(sum(entry["probabilities"].values()), 1.0, abs_tol=1e-4)
            top = entry["top"]
            assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
            assert top[0]["probability"] == max(entry["probabilities"].values())

    for category, entry in analysis["categories"].items():
        top = entry["top"]
        assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
        assert all(0 <= t["agreement"] <= len(names) for t in top)
        # agreement counts the references whose own top-1 it is
        for t in top:
            expected = sum(analysis["per_image"][n][category]["top"][0]["feature"] == t["feature"] for n in names)
            assert t["agreement"] == expected
        mean = np.mean([analysis["per_image"][n][category]["probabilities"][top[0]["feature"]] for n in names])
        assert math.isclose(top[0]["probability"], mean, abs_tol=1e-5)

    # one rank-1 key feature per category, in category order
    rank1 = [d["feature"] for d in analysis["key_feature_details"] if d["rank"] == 1]
    assert rank1 == [analysis["categories"][c]["top"][0]["feature"] for c in taxonomy.categories]
    assert analysis["key_features"] == [d["feature"] for d in analysis["key_feature_details"]]

    parts = analysis["training_prompt"].split(", ")
    assert parts[0] == TRIGGER and parts[1:] == analysis["key_features"]
    assert set(analysis["captions"]) == set(names)
    for name, caption in analysis["captions"].items():
        own = [analysis["per_image"][name][c]["top"][0]["feature"] for c in taxonomy.categories]
        assert caption.split(", ") == [TRIGGER, *own]


def test_key_feature_rule_keeps_split_runner_up():
    categories = {
        "robe": {"top": [{"feature": "orange robe", "probability": 0.5, "agreement": 2},
                         {"feature": "patterned robe", "probability": 0.45, "agreement": 3}]},
        "eyes": {"top": [{"feature": "narrow eyes", "probability": 0.9, "agreement": 5},
                         {"feature": "round eyes", "probability": 0.1, "agreement": 0}]},
    }
    details = select_key_features(categories, reference_count=5)
    assert [(d["feature"], d["rank"]) for d in details] == [("orange robe", 1), ("patterned robe", 2),
                                                           ("narrow eyes", 1)]
    categories["robe"]["top"][1]["agreement"] = 2  # below ceil(5/2) = 3: dropped
    assert [d["feature"] for d in select_key_features(categories, 5)] == ["orange robe", "narrow eyes"]
    # a single reference never yields a runner-up
    assert len(select_key_features(categories, 1)) == 2


def test_template_ensemble_is_the_renormalised_mean(tmp_path):
    taxonomy_file = tmp_path / "t.json"
    taxonomy_file.write_text(json.dumps({"templates": ["a picture of {}", "{} drawn"],
                                         "categories": {"eyes": ["narrow eyes", "round eyes"]}}))
    encoder = load_clip(tiny_profile())
    taxonomy = load_taxonomy(taxonomy_file)
    vectors = text_embeddings(encoder, taxonomy)["eyes"]
    raw = encoder.embed_texts(["a picture of narrow eyes", "narrow eyes drawn"])
    expected = torch.nn.functional.normalize(raw.mean(dim=0), dim=0)
    assert torch.allclose(vectors[0], expected, atol=1e-5)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_embedding_cache_hit_skips_the_model(tmp_path):
    references = make_references(tmp_path / "refs", 3)
    profile = tiny_profile()
    encoder = CountingEncoder(load_clip(profile))
    cache = EmbeddingCache(tmp_path / "emb")
    first = analyze_references(references, profile, BUNDLED_TAXONOMY, TRIGGER, "A", None, encoder=encoder, cache=cache)
    assert encoder.images_embedded == 3 and cache.misses == 3
    second = analyze_references(references, profile, BUNDLED_TAXONOMY, TRIGGER, "A", None, encoder=encoder,
                                cache=EmbeddingCache(tmp_path / "emb"))
    assert encoder.images_embedded == 3  # nothing recomputed
    assert second["per_image"] == first["per_image"]
    # a renamed file still hits (key = content), a changed file misses
    (references / "ref1.png").rename(references / "renamed.png")
    draw_character(references / "ref2.png", seed=99)
    analyze_references(references, profile, BUNDLED_TAXONOMY, TRIGGER, "A", None, encoder=encoder, cache=cache)
    assert encoder.images_embedded == 4


def test_other_seed_is_another_cache_entry(tmp_path):
    references = make_references(tmp_path / "refs", 2)
    cache = EmbeddingCache(tmp_path / "emb")
    base = tiny_profile()
    analyze_references(references, base, BUNDLED_TAXONOMY, TRIGGER, "A", None, cache=cache)
    from dataclasses import replace
    analyze_references(references, replace(base, seed=base.seed + 1), BUNDLED_TAXONOMY, TRIGGER, "A", None,
                       cache=cache)
    assert cache.misses == 4 and cache.hits == 0


@pytest.mark.parametrize("problem", ["missing", "empty", "zero-byte", "truncated", "too-small", "taxonomy"])
def test_bad_input_raises_before_writing(tmp_path, problem):
    references = make_references(tmp_path / "refs", 2)
    taxonomy = BUNDLED_TAXONOMY
    if problem == "missing":
        references = tmp_path / "nowhere"
    elif problem == "empty":
        references = tmp_path / "empty"
        references.mkdir()
    elif problem == "zero-byte":
        (references / "zero.png").write_bytes(b"")
    elif problem == "truncated":
        data = (references / "ref1.png").read_bytes()
        (references / "ref1.png").write_bytes(data[: len(data) // 2])
    elif problem == "too-small":
        Image.new("RGB", (40, 80)).save(references / "small.png")
    else:
        taxonomy = tmp_path / "bad.json"
        taxonomy.write_text(json.dumps({"categories": {"eyes": ["narrow eyes"]}}))
    out = tmp_path / "analysis.json"
    with pytest.raises(InputError):
        analyze_references(references, tiny_profile(), taxonomy, TRIGGER, "A", out)
    assert not out.exists()


@pytest.mark.parametrize("problem", ["folder", "under-a-file"])
def test_unwritable_output_path_is_refused_before_any_work(tmp_path, problem):
    references = make_references(tmp_path / "refs", 2)
    out = tmp_path / "out"
    if problem == "folder":
        out.mkdir()
    else:
        out.write_text("a file")
        out = out / "analysis.json"
    encoder = CountingEncoder(load_clip(tiny_profile()))
    with pytest.raises(InputError, match="analysis output"):
        analyze_references(references, tiny_profile(), BUNDLED_TAXONOMY, TRIGGER, "A", out, encoder=encoder)
    assert encoder.images_embedded == 0
