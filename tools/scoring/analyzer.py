"""Zero-shot CLIP feature analysis of the reference pictures.

For every reference and every taxonomy category: cosine between the image
embedding and each description's text embedding (the description put into every
prompt template, embedded, averaged and renormalised — CLIP's prompt
ensembling), then a softmax within the category at CLIP's logit scale (100).
Aggregated over the references: mean probability per feature, and agreement =
how many references have that feature as their top-1.

Key features (what the LoRA must reproduce): per category the feature with the
highest mean probability, plus the runner-up when it is the top-1 of at least
half of the references (rounded up, needs >= 2 references) — then the
references genuinely split between the two and both belong in the prompt.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from tools.atomic import atomic_write_json
from tools.scoring.embedding_cache import EmbeddingCache, embed_images_cached, encoder_key
from tools.errors import InputError
from tools.images import file_sha256, list_images, load_image
from tools.models import ModelProfile, load_clip
from tools.scoring.records import Analysis
from tools.scoring.taxonomy import Taxonomy, load_taxonomy
from tools.timestamps import iso_timestamp

SCHEMA = "aldar.feature_analysis/1"
LOGIT_SCALE = 100.0
TOP_K = 2
# Per encoder (weakly held, so a dropped model frees its entry): taxonomy key → text embeddings.
_text_memo: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclass
class ImageSet:
    """Image files loaded and validated up front, with their content hashes (the cache key)."""

    paths: list[Path]
    images: list[Image.Image]
    hashes: list[str]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.paths]


def load_image_set(paths: Sequence[Path]) -> ImageSet:
    """Open every file (``InputError`` on the first unusable one) before any model work starts."""
    paths = [Path(p) for p in paths]
    images = [load_image(p) for p in paths]
    return ImageSet(paths, images, [file_sha256(p) for p in paths])


def load_references(folder: str | Path) -> ImageSet:
    return load_image_set(list_images(folder, "references"))


def now_iso() -> str:
    return iso_timestamp()


def cache_model_key(encoder, profile: ModelProfile) -> str:
    return encoder_key(encoder, profile.seed if profile.is_tiny else None)


def embed_set(encoder, image_set: ImageSet, profile: ModelProfile, cache: EmbeddingCache | None,
              batch_size: int = 16) -> torch.Tensor:
    return embed_images_cached(encoder, image_set.images, image_set.hashes, cache,
                               cache_model_key(encoder, profile), batch_size)


def text_embeddings(encoder, taxonomy: Taxonomy) -> dict[str, torch.Tensor]:
    """Per category, (n_descriptions, D) unit vectors: template embeddings averaged, then renormalised."""
    memo = _text_memo.setdefault(encoder, {})
    key = (taxonomy.templates, tuple((c, tuple(d)) for c, d in taxonomy.categories.items()))
    if key in memo:
        return memo[key]
    texts = [text for descriptions in taxonomy.categories.values() for d in descriptions for text in taxonomy.fill(d)]
    flat = encoder.embed_texts(texts)
    per_template = len(taxonomy.templates)
    result, row = {}, 0
    for category, descriptions in taxonomy.categories.items():
        count = len(descriptions) * per_template
        block = flat[row:row + count].view(len(descriptions), per_template, -1).mean(dim=1)
        result[category] = torch.nn.functional.normalize(block, dim=-1)
        row += count
    memo[key] = result
    return result


def category_probabilities(image_embeddings: torch.Tensor, texts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per category, (N, n_descriptions) softmax over ``LOGIT_SCALE`` × cosine; each row sums to 1."""
    return {category: torch.softmax(LOGIT_SCALE * image_embeddings @ vectors.T, dim=-1)
            for category, vectors in texts.items()}


def per_image_summary(probabilities: dict[str, torch.Tensor], taxonomy: Taxonomy, names: list[str]) -> dict:
    summary: dict[str, dict] = {}
    for index, name in enumerate(names):
        summary[name] = {}
        for category, descriptions in taxonomy.categories.items():
            row = probabilities[category][index].tolist()
            order = sorted(range(len(row)), key=lambda i: -row[i])
            summary[name][category] = {
                "probabilities": {d: round(p, 6) for d, p in zip(descriptions, row)},
                "top": [{"feature": descriptions[i], "probability": round(row[i], 6)} for i in order[:TOP_K]],
            }
    return summary


def aggregate_categories(probabilities: dict[str, torch.Tensor], taxonomy: Taxonomy) -> dict[str, dict]:
    """Per category the top-2 features by mean probability over the images, with their agreement counts."""
    categories = {}
    for category, descriptions in taxonomy.categories.items():
        matrix = probabilities[category]
        means = matrix.mean(dim=0).tolist()
        top1 = matrix.argmax(dim=1).tolist()
        agreement = [top1.count(i) for i in range(len(descriptions))]
        order = sorted(range(len(descriptions)), key=lambda i: (-means[i], -agreement[i], i))
        categories[category] = {"top": [{"feature": descriptions[i], "probability": round(means[i], 6),
                                         "agreement": agreement[i]} for i in order[:TOP_K]]}
    return categories


def select_key_features(categories: dict[str, dict], reference_count: int) -> list[dict]:
    """Rank-1 feature of every category, plus the rank-2 one where at least half the references pick it."""
    needed = max(2, math.ceil(reference_count / 2))
    details = []
    for category, entry in categories.items():
        for rank, item in enumerate(entry["top"], start=1):
            if rank == 1 or (reference_count >= 2 and item["agreement"] >= needed):
                details.append({"feature": item["feature"], "category": category,
                                "probability": item["probability"], "agreement": item["agreement"], "rank": rank})
    return details


def build_prompt(trigger_token: str, features: Sequence[str]) -> str:
    return ", ".join([trigger_token, *features])


CAPTION_MODES = ("full", "identity-free")


def varying_categories(per_image: dict[str, dict], categories: Sequence[str]) -> list[str]:
    """The categories whose top feature is not the same on every reference (background, pose, …): what a caption
    must name so the trigger does not absorb it. With one reference nothing varies."""
    return [c for c in categories
            if len({per_image[name][c]["top"][0]["feature"] for name in per_image if c in per_image[name]}) > 1]


def identity_free_captions(analysis: dict) -> dict[str, str]:
    """Captions that name the trigger and only what varies across the references, leaving the traits common to all
    of them (the identity) to the trigger token, as character-LoRA guides advise. Works on older analyses too
    (it reads ``per_image``)."""
    per_image, trigger = analysis.get("per_image") or {}, analysis.get("trigger_token", "")
    order = list((analysis.get("taxonomy") or {}).get("categories") or
                 next(iter(per_image.values()), {}).keys())
    varying = varying_categories(per_image, order)
    return {name: build_prompt(trigger, [per_image[name][c]["top"][0]["feature"] for c in varying])
            for name in per_image}


def captions_for(analysis: dict, mode: str) -> dict[str, str]:
    """The analysis' training captions in ``mode``: ``full`` (every category's top feature) or ``identity-free``."""
    return identity_free_captions(analysis) if mode == "identity-free" else (analysis.get("captions") or {})


def analyze_references(references: Path, profile: ModelProfile, taxonomy_path: Path, trigger_token: str,
                       character_name: str, out_path: Path | None, *, encoder=None,
                       cache: EmbeddingCache | None = None, use_cache: bool = True) -> Analysis:
    """The feature-analysis dict (shape in docs/ARCHITECTURE.md); written atomically to ``out_path`` if given.

    Inputs are validated (taxonomy, every reference image, the output path) before the model is loaded.
    """
    taxonomy = load_taxonomy(taxonomy_path)
    if out_path is not None:
        check_output_file(Path(out_path))
    reference_set = load_references(references)
    encoder = encoder or load_clip(profile)
    if use_cache and cache is None:
        cache = EmbeddingCache()
    embeddings = embed_set(encoder, reference_set, profile, cache if use_cache else None)
    probabilities = category_probabilities(embeddings, text_embeddings(encoder, taxonomy))
    per_image = per_image_summary(probabilities, taxonomy, reference_set.names)
    categories = aggregate_categories(probabilities, taxonomy)
    key_details = select_key_features(categories, len(reference_set.paths))
    key_features = [d["feature"] for d in key_details]
    captions = {name: build_prompt(trigger_token, [per_image[name][c]["top"][0]["feature"]
                                                   for c in taxonomy.categories])
                for name in reference_set.names}
    description = profile.describe()
    analysis = {
        "schema": SCHEMA, "created_at": now_iso(), "profile": description, "model": encoder.model_id,
        "character_name": character_name, "trigger_token": trigger_token,
        "references": [{"file": n, "sha256": h} for n, h in zip(reference_set.names, reference_set.hashes)],
        "reference_dir": str(references),
        "taxonomy": taxonomy.as_dict(), "per_image": per_image, "categories": categories,
        "key_features": key_features, "key_feature_details": key_details,
        "training_prompt": build_prompt(trigger_token, key_features), "captions": captions,
    }
    analysis["captions_identity_free"] = identity_free_captions(analysis)
    if "notice" in description:
        analysis["notice"] = description["notice"]
    if out_path is not None:
        atomic_write_json(out_path, analysis)
    return analysis


def check_output_file(path: Path) -> None:
    """``InputError`` up front when ``path`` cannot become a file: it is a folder, or lies under a file."""
    if path.is_dir():
        raise InputError(f"analysis output {path} is a folder, not a file",
                         f"pass a file path such as {path / 'aldar_feature_analysis.json'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"analysis output {path} cannot be written: {parent} is a file",
                         "choose a path inside a folder")


def analysis_matches(analysis: dict, references: Path, model_id: str, taxonomy: Taxonomy | None = None) -> bool:
    """Whether a saved analysis was made from exactly these reference files, this CLIP model (and taxonomy)."""
    try:
        saved = [(r["file"], r["sha256"]) for r in analysis["references"]]
        current = [(p.name, file_sha256(p)) for p in list_images(references, "references")]
        same_taxonomy = taxonomy is None or (
            analysis["taxonomy"]["templates"] == list(taxonomy.templates)
            and analysis["taxonomy"]["categories"] == taxonomy.categories)
        return analysis["model"] == model_id and saved == current and same_taxonomy
    except (KeyError, TypeError):
        return False
