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
# A category "fits" the pictures when its best description beats the runner-up clearly: the log-odds between
# the two (LOGIT_SCALE × their cosine difference), averaged over the references, is at least CLEAR_MARGIN —
# the winner at least e ≈ 2.7 times as likely. The softmax at scale 100 turns any lead into a probability near
# 1, so the probability alone ("sad 0.999") cannot tell. Measured with the toy CLIP (bench-free: the figures
# are in tests/test_character.py): every bundled category of Aldar Köse's and King Zorabek's references leads
# by 2.9 to 29.5, except Aldar's expression (0.16: smiling and friendly read alike; 0.37 with the scorer before
# it learnt the novel values); descriptions the CLIP reads alike lead by 0.03 ("smiling friendly" / "friendly
# smiling") to 0.37. The toy CLIP is sure of itself on words outside its world
# (examples/taxonomies/robot.json on either character: 2.2 to 34.4), so there it
# catches only descriptions that read alike to it (README "Your own character").
CLEAR_MARGIN = 1.0
MARGIN_CAP = 50.0  # per picture: a lead past float32's softmax range counts as this (and stays finite in JSON)
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
    """Per category the top-2 features by mean probability over the images, with their agreement counts, and
    how clearly the best description leads (``margin``, ``clear``: see CLEAR_MARGIN)."""
    categories = {}
    for category, descriptions in taxonomy.categories.items():
        matrix = probabilities[category]
        means = matrix.mean(dim=0).tolist()
        top1 = matrix.argmax(dim=1).tolist()
        agreement = [top1.count(i) for i in range(len(descriptions))]
        order = sorted(range(len(descriptions)), key=lambda i: (-means[i], -agreement[i], i))
        margin = clear_margin(matrix)
        categories[category] = {"top": [{"feature": descriptions[i], "probability": round(means[i], 6),
                                         "agreement": agreement[i]} for i in order[:TOP_K]],
                                "margin": round(margin, 4), "clear": margin >= CLEAR_MARGIN}
    return categories


def clear_margin(matrix: torch.Tensor) -> float:
    """Mean over the pictures of log(p_best / p_runner_up) within one category (N × descriptions)."""
    top2 = matrix.double().clamp_min(1e-300).topk(2, dim=1).values.log()
    return float((top2[:, 0] - top2[:, 1]).clamp(max=MARGIN_CAP).mean())


def unclear_lines(categories: dict[str, dict]) -> list[str]:
    """One line per category whose descriptions all fit the pictures about equally."""
    return [f"category {name!r}: no clear match — its descriptions fit the pictures about equally (the best one "
            f"leads by {entry['margin']:.2f} log-odds, under {CLEAR_MARGIN:g}); describe what the pictures show, "
            "or leave the category out" for name, entry in categories.items() if not entry.get("clear", True)]


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
    unclear = [name for name, entry in categories.items() if not entry["clear"]]
    if unclear and len(unclear) == len(categories):  # nothing to learn from: refused before anything is written
        leads = ", ".join(f"{name} {categories[name]['margin']:.2f}" for name in unclear)
        raise InputError(f"taxonomy {taxonomy_path} fits none of the pictures: every category's descriptions fit "
                         f"them about equally (the best leads by {leads} log-odds, under {CLEAR_MARGIN:g})",
                         "describe what the pictures show, with wrong alternatives that differ (README 'Your own "
                         "character'), or drop --taxonomy for the bundled one")
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
        "taxonomy": {**taxonomy.as_dict(), "path": shown_taxonomy_path(taxonomy_path)}, "per_image": per_image, "categories": categories,
        "key_features": key_features, "key_feature_details": key_details,
        "training_prompt": build_prompt(trigger_token, key_features), "captions": captions,
        "unclear_categories": unclear, "warnings": unclear_lines(categories),
    }
    analysis["captions_identity_free"] = identity_free_captions(analysis)
    if "notice" in description:
        analysis["notice"] = description["notice"]
    if out_path is not None:
        atomic_write_json(out_path, analysis)
    return analysis


def shown_taxonomy_path(path: Path) -> str:
    """``bundled`` for the bundled taxonomy (it lives in the first character's folder, whose name is no part of
    another character's analysis), else the file's path."""
    from tools.settings import BUNDLED_TAXONOMY

    try:
        return "bundled" if Path(path).resolve() == BUNDLED_TAXONOMY.resolve() else str(path)
    except OSError:
        return str(path)


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


def reusable_analysis(path: Path, references: Path, trigger_token: str, model_id: str,
                      taxonomy: Taxonomy) -> Analysis | None:  # the trigger token: after adopt_analysis
    """The analysis saved at ``path`` when it can be reused for this run; None when there is none, it is
    unreadable, or it was made with another CLIP model or taxonomy (then it is made afresh). One made for
    another trigger token or other reference pictures is refused (``InputError``): it belongs to another
    character, and silently replacing or mixing it would mix two characters' captions and scores."""
    from tools.atomic import read_json_object
    from tools.character import check_analysis_fits, reference_hashes

    saved = read_json_object(path)
    if not saved:
        return None
    check_analysis_fits(saved, path, trigger_token, reference_hashes(references), references)
    return saved if analysis_matches(saved, references, model_id, taxonomy) else None


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
