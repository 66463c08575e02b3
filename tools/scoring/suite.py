"""The prompt suite: a LoRA judged as it is used — the character in new scenes, and no character without the trigger.

A character LoRA is drawn in scenes its references never showed. Besides the character's own prompt (where
quality is measured, 0.4 CLIP + 0.4 features + 0.2 SSIM), each round draws the LoRA and the base on a small suite,
built deterministically from the analysis and the seed:

* **new context** — the trigger, the character's identity features (the key features of every category that is
  not a context category), the references' context, and one context category changed to a value the references
  never show (another background, another style). The context categories — what a new scene may change, so not
  identity — are the taxonomy's ``"context"`` list, each of them varied; without one, those of
  ``DEFAULT_CONTEXT`` it has (background, style, expression), of which ``DEFAULT_VARIED`` (background and style)
  are varied: the toy base draws a prompted background 98 % of the time and a style 86 %, an expression 45 %.
* **no trigger** — another character of the same kind: every identity category at a value other than the
  character's, in a scene drawn at random from the context values, without the trigger or the name (for bleed).

Three scores, each with the figures it is made of (docs/ARCHITECTURE.md, "Suite scores"):

* *identity* (new-context images): the share of the identity key features that pass (as the scorer tests a key
  feature: top-k of its category) and the CLIP similarity to the references (mean cosine, clamped to 0..1);
  ``identity = (pass rate + CLIP) / 2``. SSIM is left out on purpose: a new scene must not look like a reference.
  Its ceiling is the same figure of each reference against the others (leave-one-out).
* *editability* (the same images): the share whose prompted value is the CLIP's top-1 of its category — what the
  prompt asked for, not what the references show. Beside it the base's share on the same prompts and seeds:
  the reachable level, as the base was never taught the character.
* *bleed* (no-trigger images): the LoRA's CLIP similarity to the references minus the base's on the same
  prompts and seeds; ≤ 0 is none.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch

from tools.character import check_prompts
from tools.errors import InputError
from tools.scoring.records import Analysis
from tools.scoring.taxonomy import Taxonomy, taxonomy_from_dict

NEW_CONTEXT, NO_TRIGGER = "new_context", "no_trigger"
DEFAULT_CONTEXT = ("background", "style", "expression")
DEFAULT_VARIED = ("background", "style")
DEFAULT_SUITE_SIZE = 5  # 3 new contexts + 2 without the trigger
MIN_SUITE_SIZE, MAX_SUITE_SIZE = 2, 12
SUITE_SCHEMA = "aldar.suite_report/1"
METHOD = {
    "identity": "new-context images: (share of the identity key features passing + mean CLIP cosine to the "
                "references clamped to 0..1) / 2; identity features: key features outside the context categories",
    "editability": "new-context images: share whose prompted value is the CLIP's top-1 of its category; "
                   "beside the base's share on the same prompts and seeds",
    "bleed": "no-trigger images: the LoRA's mean CLIP cosine to the references (clamped 0..1) minus the base's, "
             "same prompts and seeds; <= 0 is none",
    "ceiling": "identity of each reference against the others (leave-one-out)",
}


@dataclass(frozen=True)
class SuitePrompt:
    """One prompt of the suite: what kind it is and, for a new context, which category it changes to what."""

    kind: Literal["new_context", "no_trigger"]
    text: str
    category: str | None = None  # new_context: the context category changed
    value: str | None = None  # new_context: the value the prompt asks for in it

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SuitePrompt":
        return cls(kind=data["kind"], text=data["text"], category=data.get("category"), value=data.get("value"))


@dataclass(frozen=True)
class Character:
    """What the suite needs from an analysis: its trigger, taxonomy, key features and the references' contexts."""

    trigger: str
    taxonomy: Taxonomy
    key_features: dict[str, list[str]]  # category → its key features, in taxonomy order
    shown: dict[str, set[str]]  # context category → the values some reference shows (top-1)
    context: tuple[str, ...]  # what a new scene may change: not identity
    varied: tuple[str, ...]  # the context categories the suite's new-context prompts change

    @property
    def identity_categories(self) -> list[str]:
        return [c for c in self.taxonomy.categories if c not in self.context]

    def identity_features(self) -> list[str]:
        return [f for c in self.identity_categories for f in self.key_features.get(c, [])]


def context_categories(taxonomy: Taxonomy) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(context categories, the ones the suite varies): the taxonomy's ``"context"`` list for both, else
    DEFAULT_CONTEXT's and DEFAULT_VARIED's it has."""
    if taxonomy.context:
        return taxonomy.context, taxonomy.context
    return (tuple(c for c in DEFAULT_CONTEXT if c in taxonomy.categories),
            tuple(c for c in DEFAULT_VARIED if c in taxonomy.categories))


def read_character(analysis: Analysis) -> Character:
    """The suite's view of ``analysis``; ``InputError`` when it lacks what a suite is built from."""
    try:
        taxonomy = taxonomy_from_dict(analysis["taxonomy"], "analysis")
        trigger = str(analysis["trigger_token"]).strip()
        details = analysis.get("key_feature_details") or [
            {"feature": f, "category": taxonomy.category_of(f)} for f in analysis["key_features"]]
        per_image = analysis.get("per_image") or {}
    except (KeyError, TypeError):
        raise InputError("the feature analysis has no taxonomy, trigger token or key features to build a suite from",
                         "rerun `aldar analyze --force`") from None
    key: dict[str, list[str]] = {}
    for detail in details:
        key.setdefault(detail["category"], []).append(detail["feature"])
    key = {c: key[c] for c in taxonomy.categories if c in key}
    context, varied = context_categories(taxonomy)
    shown = {c: {image[c]["top"][0]["feature"] for image in per_image.values() if c in image} | set(key.get(c, []))
             for c in context}
    return Character(trigger, taxonomy, key, shown, context, varied)


def build_suite(analysis: Analysis, seed: int, size: int = DEFAULT_SUITE_SIZE) -> list[SuitePrompt]:
    """``size`` prompts: two in five (at least one) without the trigger, the rest new contexts cycling
    through the varied context categories, each value one no reference shows; the same analysis and seed give the same
    suite. A taxonomy with no context category, or none with an unshown value, gives only no-trigger prompts."""
    if not MIN_SUITE_SIZE <= size <= MAX_SUITE_SIZE:
        raise InputError(f"suite size {size} is out of range",
                         f"use {MIN_SUITE_SIZE}..{MAX_SUITE_SIZE} prompts (suite_size in aldar.toml)")
    character = read_character(analysis)
    rng = random.Random(f"aldar-suite:{seed}:{character.trigger}")
    unshown = {c: [v for v in character.taxonomy.categories[c] if v not in character.shown[c]]
               for c in character.varied}
    for values in unshown.values():
        rng.shuffle(values)
    categories = [c for c in character.varied if unshown[c]]
    no_trigger = max(1, round(size * 2 / 5)) if categories else size
    prompts: list[SuitePrompt] = []
    for index in range(size - no_trigger):
        category = categories[index % len(categories)]
        values = unshown[category]
        value = values[(index // len(categories)) % len(values)]
        prompts.append(SuitePrompt(NEW_CONTEXT, new_context_prompt(character, category, value), category, value))
    others = [other_character(character, rng) for _ in range(no_trigger)]
    prompts += [SuitePrompt(NO_TRIGGER, text) for text in others]
    check_suite(prompts, character.trigger)
    return prompts


def _context_values(character: Character, changed: str | None = None, value: str | None = None) -> list[str]:
    """The references' context (their key features of each context category), ``changed`` set to ``value``."""
    values = []
    for category in character.context:
        values += [value] if category == changed else character.key_features.get(category, [])[:1]
    return values


def new_context_prompt(character: Character, category: str, value: str) -> str:
    return ", ".join([character.trigger, *character.identity_features(), *_context_values(character, category, value)])


def other_character(character: Character, rng: random.Random) -> str:
    """A character of the same kind: each identity category at another value than the character's, in a scene
    drawn at random from the context categories (the references' scene included) — a picture a user of the LoRA
    might ask for without the trigger. Never the trigger or the name."""
    features = []
    for category in character.identity_categories:
        own = set(character.key_features.get(category, []))
        choices = [v for v in character.taxonomy.categories[category] if v not in own]
        if choices:
            features.append(rng.choice(choices))
    scene = [rng.choice(character.taxonomy.categories[category]) for category in character.context]
    text = ", ".join([*features, *scene])
    if not features:
        raise InputError("the taxonomy leaves nothing to describe another character with",
                         "give the taxonomy identity categories (not only context ones) with two or more descriptions")
    return text


def check_suite(prompts: Sequence[SuitePrompt], trigger: str) -> None:
    """One clear line for an empty or duplicate prompt (``tools.character.check_prompts``, as for --prompt), or
    a no-trigger prompt that holds the trigger."""
    texts = check_prompts([prompt.text for prompt in prompts], "suite prompt")
    for number, (prompt, text) in enumerate(zip(prompts, texts), start=1):
        text = " ".join(text.split())
        if prompt.kind == NO_TRIGGER and trigger and trigger.casefold() in text.casefold().split(", "):
            raise InputError(f"suite prompt {number} is meant to have no trigger but holds {trigger!r}",
                             "remove the trigger token from the no-trigger prompts")


# --------------------------------------------------------------------------- scoring
def _clip_similarity(embeddings: torch.Tensor, references: torch.Tensor) -> list[float]:
    """Per image: mean cosine to the reference embeddings, clamped to 0..1 (the scorer's ``clip``)."""
    return [min(1.0, max(0.0, float(row.mean()))) for row in embeddings @ references.T]


def _share(flags: Sequence[bool]) -> dict:
    """A share of images with its binomial spread (the std of the share), so a difference is read beside it."""
    n = len(flags)
    rate = sum(flags) / n if n else None
    return {"rate": rate, "count": n,
            "spread": None if rate is None else math.sqrt(max(rate * (1 - rate), 0.0) / n)}


def _mean_std(values: Sequence[float]) -> dict:
    if not values:
        return {"mean": None, "std": None}
    mean = sum(values) / len(values)
    return {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))}


def score_suite(suite: Sequence[SuitePrompt], images: dict[str, list[list[Path]]], references: Path, profile,
                analysis: Analysis, *, lora: str = "lora", base: str = "base", encoder=None, cache=None) -> dict:
    """The suite report: per generator identity, editability and no-trigger CLIP similarity, and the LoRA's three
    scores beside the base and the reference ceiling. ``images[generator][i]`` are the images of ``suite[i]``."""
    from tools.models import load_clip
    from tools.scoring.analyzer import (category_probabilities, embed_set, load_image_set, load_references,
                                        text_embeddings)
    from tools.scoring.embedding_cache import EmbeddingCache
    from tools.scoring.scorer import feature_passes
    from tools.timestamps import iso_timestamp

    character = read_character(analysis)
    for name, per_prompt in images.items():
        if len(per_prompt) != len(suite):
            raise InputError(f"generator {name!r} has images for {len(per_prompt)} suite prompts, not {len(suite)}",
                             "draw every suite prompt for every generator")
    identity_key = {f: c for c in character.identity_categories for f in character.key_features.get(c, [])}
    reference_set = load_references(references)
    encoder = encoder or load_clip(profile)
    cache = cache if cache is not None else EmbeddingCache()
    texts = text_embeddings(encoder, character.taxonomy)
    reference_embeddings = embed_set(encoder, reference_set, profile, cache)

    rows: list[dict] = []
    for name, per_prompt in images.items():
        for index, paths in enumerate(per_prompt):
            if not paths:
                continue
            image_set = load_image_set(paths)
            embeddings = embed_set(encoder, image_set, profile, cache)
            probabilities = category_probabilities(embeddings, texts)
            clip = _clip_similarity(embeddings, reference_embeddings)
            prompt = suite[index]
            for row in range(len(paths)):
                passes = feature_passes(probabilities, row, character.taxonomy, identity_key)
                entry = {"generator": name, "prompt": index, "kind": prompt.kind, "path": str(paths[row]),
                         "clip": clip[row], "feature_passes": passes,
                         "features": sum(passes.values()) / len(passes) if passes else None}
                if prompt.kind == NEW_CONTEXT:
                    values = character.taxonomy.categories[prompt.category]
                    top = values[int(probabilities[prompt.category][row].argmax())]
                    entry.update(category=prompt.category, asked=prompt.value, seen=top, edited=top == prompt.value)
                rows.append(entry)

    generators = {name: _generator_summary([r for r in rows if r["generator"] == name]) for name in images}
    ceiling = _identity_ceiling(reference_embeddings, category_probabilities(reference_embeddings, texts),
                                character, identity_key)
    mine, theirs = generators.get(lora), generators.get(base)
    return {"schema": SUITE_SCHEMA, "created_at": iso_timestamp(), "model": encoder.model_id,
            "prompts": [p.as_dict() for p in suite], "context_categories": list(character.context),
            "varied_categories": list(character.varied),
            "identity_features": list(identity_key), "method": METHOD, "images": rows, "generators": generators,
            "ceiling": {"identity": ceiling}, **lora_blocks(mine, theirs, ceiling)}


def _generator_summary(rows: list[dict]) -> dict:
    contexts = [r for r in rows if r["kind"] == NEW_CONTEXT]
    plain = [r for r in rows if r["kind"] == NO_TRIGGER]
    features = [r["features"] for r in contexts if r["features"] is not None]
    clip = [r["clip"] for r in contexts]
    per_image = [((f if f is not None else 0.0) + c) / 2 for f, c in zip([r["features"] for r in contexts], clip)]
    by_category = {category: _share([r["edited"] for r in contexts if r["category"] == category])
                   for category in sorted({r["category"] for r in contexts})}
    return {"identity": {**_mean_std(per_image), "feature_pass_rate": _mean_std(features)["mean"],
                         "clip": _mean_std(clip)["mean"], "count": len(contexts)},
            "editability": {**_share([r["edited"] for r in contexts]), "by_category": by_category},
            "no_trigger": {"clip": _mean_std([r["clip"] for r in plain]),
                           "feature_pass_rate": _mean_std([r["features"] for r in plain
                                                           if r["features"] is not None])["mean"],
                           "count": len(plain)}}


def _identity_ceiling(embeddings: torch.Tensor, probabilities: dict, character: Character,
                      identity_key: dict[str, str]) -> float | None:
    """The identity each reference earns against the others (leave-one-out CLIP; its own identity features)."""
    from tools.scoring.scorer import feature_passes

    count = embeddings.shape[0]
    if count < 2:
        return None
    cosines = embeddings @ embeddings.T
    values = []
    for i in range(count):
        others = [j for j in range(count) if j != i]
        clip = min(1.0, max(0.0, float(cosines[i, others].mean())))
        passes = feature_passes(probabilities, i, character.taxonomy, identity_key)
        values.append(((sum(passes.values()) / len(passes) if passes else 0.0) + clip) / 2)
    return sum(values) / count


def lora_blocks(mine: dict | None, base: dict | None, identity_ceiling: float | None) -> dict:
    """The feedback's ``identity``, ``editability`` and ``bleed`` blocks for the LoRA (None where not drawn)."""
    if mine is None:
        return {"identity": None, "editability": None, "bleed": None}
    edit, base_edit = mine["editability"], (base or {}).get("editability") or {}
    ratio = (edit["rate"] / base_edit["rate"]) if edit["rate"] is not None and base_edit.get("rate") else None
    lora_clip, base_clip = mine["no_trigger"]["clip"]["mean"], ((base or {}).get("no_trigger") or {}).get("clip", {}).get("mean")
    bleed = lora_clip - base_clip if lora_clip is not None and base_clip is not None else None
    return {
        "identity": {"score": mine["identity"]["mean"], "spread": mine["identity"]["std"],
                     "feature_pass_rate": mine["identity"]["feature_pass_rate"], "clip": mine["identity"]["clip"],
                     "base": (base or {}).get("identity", {}).get("mean"), "ceiling": identity_ceiling,
                     "count": mine["identity"]["count"]},
        "editability": {"rate": edit["rate"], "spread": edit["spread"], "base": base_edit.get("rate"),
                        "vs_base": ratio, "count": edit["count"],
                        "by_category": {c: {"lora": v["rate"], "base": (base_edit.get("by_category") or {})
                                            .get(c, {}).get("rate")} for c, v in edit["by_category"].items()}},
        "bleed": {"score": bleed, "lora_clip": lora_clip, "base_clip": base_clip,
                  "spread": mine["no_trigger"]["clip"]["std"], "count": mine["no_trigger"]["count"]},
    }


# --------------------------------------------------------------------------- the checkpoints' edit check
# Per checkpoint: the suite's first new-context prompts (a background, a style) × their first images, in one batch.
# 2 × 4 images cost 1.1 × a round's generation (tiny, seed 42, round 1): 2 × 2 about half that.
CHECK_PROMPTS, CHECK_IMAGES = 2, 2


@dataclass
class EditCheck:
    """The checkpoints' edit check (``tools.training.edit_check``): the suite's first ``CHECK_PROMPTS``
    new-context prompts — one per varied category, a background and a style by default — at the suite's first
    ``CHECK_IMAGES`` seeds; a checkpoint's editability is the share of its images whose prompted value is the
    CLIP's top-1 of its category, as ``score_suite`` measures it."""

    suite: list[SuitePrompt]
    seeds: list[int]
    analysis: Analysis
    profile: object

    @property
    def prompts(self) -> list[str]:
        return [prompt.text for prompt in self.suite]

    def __call__(self, images: list[list[Path]]) -> dict[str, float]:
        from tools.models import load_clip
        from tools.scoring.analyzer import category_probabilities, embed_set, load_image_set, text_embeddings

        character = read_character(self.analysis)
        encoder = load_clip(self.profile)  # loaded once per process
        texts = text_embeddings(encoder, character.taxonomy)
        edited = []
        for prompt, paths in zip(self.suite, images):
            probabilities = category_probabilities(embed_set(encoder, load_image_set(paths), self.profile, None),
                                                   texts)[prompt.category]
            values = character.taxonomy.categories[prompt.category]
            edited += [values[int(row.argmax())] == prompt.value for row in probabilities]
        return {"editability": sum(edited) / len(edited) if edited else 0.0, "editability_images": len(edited)}


def edit_check(suite: Sequence[SuitePrompt], analysis: Analysis, profile, seed: int, images_per_prompt: int,
               prompts: int = CHECK_PROMPTS, images: int = CHECK_IMAGES) -> EditCheck | None:
    """The edit check of ``suite`` (None when it has no new-context prompt); its seeds are the suite's first
    (``seed + i``, at most ``images_per_prompt``)."""
    contexts = [prompt for prompt in suite if prompt.kind == NEW_CONTEXT][:prompts]
    if not contexts:
        return None
    return EditCheck(contexts, [seed + i for i in range(min(images, images_per_prompt))], analysis, profile)


def round_edit_check(settings, suite, analysis: Analysis, profile) -> EditCheck | None:
    """A round's edit check: with the guarded ranking (``round_ranking``) and a suite, ``edit_check`` of the round's
    suite (``suite()``) at the round's sampling seed — so the checkpoint a round keeps is chosen with the guard that
    ranks the rounds; None with the ``quality`` ranking or no suite."""
    if settings.round_ranking != "guarded" or not settings.suite_size:
        return None
    from tools.generation.sampling import SamplingSpec

    sampling = SamplingSpec.from_settings(settings)
    return edit_check(suite(), analysis, profile, sampling.seed, sampling.images_per_prompt)
