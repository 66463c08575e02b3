"""Score generated images against the reference pictures and turn the comparison into feedback.

Per image (shapes in docs/ARCHITECTURE.md):

* CLIP: cosine between the image embedding and each reference embedding; mean
  and max are reported raw (-1..1). ``clip`` = mean cosine clamped to 0..1 is
  the figure that enters quality (mean, not max: a generator should resemble the
  character as a whole, not one lucky reference).
* features: share of the analysis key features the image shows, zero-shot as in
  the analyzer. A key feature passes when it is among the image's top-k of its
  category, k = number of key features of that category (1, or 2 when the
  analysis kept a runner-up) — so a kept runner-up does not make the test
  impossible to pass.
* SSIM: ``skimage.metrics.structural_similarity`` on luminance at a common
  256x256 size (gaussian weights, sigma 1.5, 11 px window, population
  covariance, data range 255); the max over references, clamped to 0..1.
* quality = w_clip·clip + w_features·features + w_ssim·SSIM.
* reference copy: CLIP cosine and SSIM to one same reference both at the
  near-copy thresholds of ``tools.scoring.copies`` — a memorised reference.

Generators get mean ± population std over their images and are ranked by mean
quality; a generator with a reference copy among its images is ranked apart,
after the others and without a rank number, so a memorised picture never wins.
The ceiling is the same figures computed leave-one-out among the
references (each against the others, key features re-derived without it).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from tools.scoring.copies import COPY_CLIP, COPY_SSIM, copies_text, is_reference_copy, memorised
from tools.scoring.analyzer import (ImageSet, aggregate_categories, category_probabilities, embed_set, load_image_set,
                            load_references, now_iso, select_key_features, text_embeddings)
from tools.atomic import atomic_write_json
from tools.scoring.embedding_cache import EmbeddingCache
from tools.errors import InputError
from tools.models import ModelProfile, load_clip
from tools.progress import progress_bar
from tools.settings import validate_weights
from tools.scoring.records import Analysis, ComparisonReport, Feedback
from tools.scoring.taxonomy import Taxonomy, taxonomy_from_dict

SCHEMA = "aldar.comparison_report/1"
FEEDBACK_SCHEMA = "aldar.feedback/1"
SSIM_SIZE = 256
METRICS = ("clip", "features", "ssim")
AREAS = {"clip": "clip_similarity", "features": "feature_matching", "ssim": "structural_similarity"}
# Gap thresholds (target minus LoRA, on the 0..1 scale) for a recommendation's priority.
PRIORITY_HIGH, PRIORITY_MEDIUM, NO_GAP = 0.08, 0.04, 0.01
PRIORITY_ORDER = {"high": 0, "medium": 1, "low": 2}
METHOD = {
    "clip": "mean cosine of the image's CLIP embedding to the reference embeddings, clamped to 0..1 "
            "(clip_mean/clip_max are raw cosines)",
    "features": "share of the key features that are in the image's top-k of their category "
                "(k = key features of that category), zero-shot CLIP with the analysis templates",
    "ssim": f"skimage structural_similarity on luminance at {SSIM_SIZE}x{SSIM_SIZE}, gaussian sigma 1.5, "
            "win 11, population covariance, data_range 255; max over references, clamped to 0..1",
    "quality": "w_clip*clip + w_features*features + w_ssim*ssim; generators: mean and population std",
    "ceiling": "the same scores leave-one-out among the references",
    "variety": "per generator: mean pairwise 1 - cosine of its images' CLIP embeddings (null under 2 images)",
    "reference_copy": f"an image whose CLIP cosine >= {COPY_CLIP} and SSIM >= {COPY_SSIM} to one same reference "
                      "nearly copies it (memorised; copy_clip, copy_ssim); a generator with any such image is ranked "
                      "apart (rank null), after the others",
}


def band(score: float) -> str:
    """The original design's bands: 0.8–1 excellent, 0.6–0.8 good, 0.4–0.6 average, below 0.4 poor."""
    if score >= 0.8:
        return "excellent"
    if score >= 0.6:
        return "good"
    if score >= 0.4:
        return "average"
    return "poor"


def priority(gap: float) -> str | None:
    """Priority of closing ``gap`` (target minus LoRA); None when the LoRA is not meaningfully behind."""
    if gap >= PRIORITY_HIGH:
        return "high"
    if gap >= PRIORITY_MEDIUM:
        return "medium"
    if gap > NO_GAP:
        return "low"
    return None


# --------------------------------------------------------------------------- building blocks
def luminance(image: Image.Image) -> np.ndarray:
    """Luminance (ITU-R 601) at the common SSIM size, as float64 0..255."""
    return np.asarray(image.convert("L").resize((SSIM_SIZE, SSIM_SIZE), Image.BICUBIC), dtype=np.float64)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5, win_size=11,
                                       use_sample_covariance=False, data_range=255.0))


def _ssim_pool() -> ThreadPoolExecutor:
    # skimage/scipy filtering releases the GIL: SSIM pairs scale with cores (2x on 2 cores).
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))


def ssim_matrix(images: Sequence[np.ndarray], references: Sequence[np.ndarray], pool: ThreadPoolExecutor,
                symmetric: bool = False) -> np.ndarray:
    """(len(images), len(references)) SSIM values; with ``symmetric`` (images is references) each pair once."""
    pairs = [(i, j) for i in range(len(images)) for j in range(len(references)) if not symmetric or j > i]
    values = pool.map(lambda pair: ssim(images[pair[0]], references[pair[1]]), pairs)
    matrix = np.ones((len(images), len(references)))
    for (i, j), value in zip(pairs, values):
        matrix[i, j] = value
        if symmetric:
            matrix[j, i] = value  # SSIM is symmetric in its two images
    return matrix


def feature_passes(probabilities: dict[str, torch.Tensor], row: int, taxonomy: Taxonomy,
                   key_categories: dict[str, str]) -> dict[str, bool]:
    """For image ``row``: does each key feature rank within the top-k of its category?"""
    per_category: dict[str, int] = {}
    for category in key_categories.values():
        per_category[category] = per_category.get(category, 0) + 1
    passes = {}
    for feature, category in key_categories.items():
        ranked = torch.argsort(probabilities[category][row], descending=True).tolist()
        top = {taxonomy.categories[category][i] for i in ranked[:per_category[category]]}
        passes[feature] = feature in top
    return passes


def quality(clip: float, features: float, structure: float, weights: dict[str, float]) -> float:
    return weights["clip"] * clip + weights["features"] * features + weights["ssim"] * structure


def image_scores(cosines: torch.Tensor, passes: dict[str, bool], ssims: Iterable[float],
                 weights: dict[str, float]) -> dict:
    clip_mean, clip_max = float(cosines.mean()), float(cosines.max())
    clip = min(1.0, max(0.0, clip_mean))
    features = sum(passes.values()) / len(passes) if passes else 0.0
    structure = min(1.0, max(0.0, max(ssims)))
    return {"clip_mean": clip_mean, "clip_max": clip_max, "clip": clip, "features": features,
            "feature_passes": passes, "ssim": structure, "quality": quality(clip, features, structure, weights)}


def summarize(rows: Sequence[dict], key_features: Sequence[str]) -> dict:
    """Mean and population std of every figure over ``rows``, plus how often each key feature passed."""
    summary: dict = {"count": len(rows)}
    for name in ("quality", "clip", "clip_max", "features", "ssim"):
        values = np.array([r[name] for r in rows], dtype=np.float64)
        summary[name] = {"mean": float(values.mean()), "std": float(values.std())}
    summary["feature_pass_rate"] = {f: sum(bool(r["feature_passes"].get(f)) for r in rows) / len(rows)
                                    for f in key_features}
    summary["band"] = band(summary["quality"]["mean"])
    return summary


def _analysis_parts(analysis: dict) -> tuple[Taxonomy, list[str], dict[str, str]]:
    source = f"analysis {analysis.get('path', '')}".strip() if isinstance(analysis, dict) else "analysis"
    try:
        taxonomy = taxonomy_from_dict(analysis["taxonomy"], source)
        key_features = list(analysis["key_features"])
        if not key_features or not all(isinstance(f, str) for f in key_features):
            raise KeyError("key_features")
        details = {d["feature"]: d["category"] for d in analysis.get("key_feature_details", [])}
        key_categories = {f: details.get(f) or taxonomy.category_of(f) for f in key_features}
        for feature, category in key_categories.items():
            if feature not in taxonomy.categories.get(category, ()):  # a hand-edited key_feature_details
                raise KeyError(feature)
    except (KeyError, TypeError):
        raise InputError(f"the feature {source} is incomplete (no usable taxonomy/key_features)",
                         "delete it and rerun `aldar analyze`") from None
    return taxonomy, key_features, key_categories


# --------------------------------------------------------------------------- scoring
def score_generators(images: dict[str, list[Path] | ImageSet], references: Path, profile: ModelProfile,
                     analysis: Analysis, weights: dict[str, float], *, encoder=None, cache: EmbeddingCache | None = None,
                     use_cache: bool = True, batch_size: int = 16, quiet: bool = True) -> ComparisonReport:
    """The comparison report: every image scored, generators summarised and ranked, the reference ceiling.

    Everything is validated (weights, analysis, every image file) before a model is loaded.
    """
    validate_weights(weights)
    if not images or not any(images.values()):
        raise InputError("no generated images to score", "pass --images PATH (files or folders)")
    for name, paths in images.items():
        if not (paths.paths if isinstance(paths, ImageSet) else paths):
            raise InputError(f"generator {name!r} has no images", "give it at least one image or drop it")
    taxonomy, key_features, key_categories = _analysis_parts(analysis)
    reference_set = load_references(references)
    # Callers that validated the files already (the CLI does, before analysing) may pass ImageSets.
    generated = {name: paths if isinstance(paths, ImageSet) else load_image_set(paths)
                 for name, paths in images.items()}

    encoder = encoder or load_clip(profile)
    if encoder.model_id != analysis.get("model"):
        raise InputError(f"the feature analysis was made with CLIP {analysis.get('model')!r}, "
                         f"scoring uses {encoder.model_id!r}", "rerun `aldar analyze` with the same profile")
    if use_cache and cache is None:
        cache = EmbeddingCache()
    texts = text_embeddings(encoder, taxonomy)
    reference_embeddings = embed_set(encoder, reference_set, profile, cache if use_cache else None)
    reference_luma = [luminance(im) for im in reference_set.images]

    rows: list[dict] = []
    embedded: dict[str, list[torch.Tensor]] = {name: [] for name in generated}
    total = sum(len(s.paths) for s in generated.values())
    with progress_bar("scoring images", total, quiet) as advance, _ssim_pool() as pool:
        for name, image_set in generated.items():
            for start in range(0, len(image_set.paths), batch_size):
                batch = image_set.images[start:start + batch_size]
                embeddings = encoder.embed_images(batch, batch_size=batch_size)
                embedded[name].append(embeddings)
                cosines = embeddings @ reference_embeddings.T
                probabilities = category_probabilities(embeddings, texts)
                structure = ssim_matrix(list(pool.map(luminance, batch)), reference_luma, pool)
                for row in range(len(batch)):
                    scores = image_scores(cosines[row], feature_passes(probabilities, row, taxonomy, key_categories),
                                          structure[row], weights)
                    scores.update(reference_copy(cosines[row], structure[row], reference_set.names))
                    rows.append({"generator": name, "path": str(image_set.paths[start + row]), **scores})
                advance(len(batch))

    generators = {name: summarize([r for r in rows if r["generator"] == name], key_features) for name in generated}
    for name, chunks in embedded.items():
        generators[name]["variety"] = variety(torch.cat(chunks))
        generators[name]["reference_copies"] = sum(r["reference_copy"] for r in rows if r["generator"] == name)
    ranking = rank_generators(generators)
    ceiling = reference_ceiling(reference_set, reference_embeddings, reference_luma, texts, taxonomy,
                                key_features, key_categories, weights)
    return {"schema": SCHEMA, "created_at": now_iso(), "profile": profile.describe(), "model": encoder.model_id,
            "references": [{"file": n, "sha256": h} for n, h in zip(reference_set.names, reference_set.hashes)],
            "reference_dir": str(references), "weights": dict(weights), "key_features": key_features,
            "key_feature_categories": key_categories,
            "method": METHOD, "images": rows, "generators": generators, "ranking": ranking, "ceiling": ceiling}


def reference_copy(cosines: torch.Tensor, ssims: Sequence[float], names: Sequence[str]) -> dict:
    """Which reference an image nearly copies (CLIP and SSIM to that same reference at the thresholds;
    the closest such one) with the two figures, or ``copied_reference`` None."""
    matches = [j for j in range(len(names)) if is_reference_copy(float(cosines[j]), float(ssims[j]))]
    if not matches:
        return {"reference_copy": False, "copied_reference": None}
    j = max(matches, key=lambda k: float(cosines[k]) + float(ssims[k]))
    return {"reference_copy": True, "copied_reference": names[j], "copy_clip": float(cosines[j]),
            "copy_ssim": float(ssims[j])}


def rank_generators(generators: dict[str, dict]) -> list[dict]:
    """Generators by mean quality, those with reference copies after the rest and unranked (rank None):
    a memorised reference scores near 1.0 and must not be taken for the best generator."""
    def order(name: str) -> tuple:
        return (memorised(generators[name]), -generators[name]["quality"]["mean"], name)

    ranking, rank = [], 0
    for name in sorted(generators, key=order):
        copy = memorised(generators[name])
        rank += 0 if copy else 1
        ranking.append({"rank": None if copy else rank, "generator": name,
                        "quality": generators[name]["quality"]["mean"], "quality_std": generators[name]["quality"]["std"],
                        "band": generators[name]["band"], "reference_copy": copy})
    return ranking


def checkpoint_scorer(references: Path, profile: ModelProfile, analysis: dict, weights: dict[str, float]):
    """A function scoring a training checkpoint's validation images as the rounds score the LoRA: the same
    scorer and weights, CLIP loaded once, reference embeddings from the embedding cache. Returns the means
    of quality, clip, features and ssim (what ``train_lora(score_checkpoint=...)`` records).

    None when ``analysis`` names no key features (no `aldar analyze` yet): there is nothing to score against.
    """
    if not (isinstance(analysis, dict) and analysis.get("key_features")):
        return None
    validate_weights(weights)
    _analysis_parts(analysis)  # an unusable analysis fails here, before training, not at the first checkpoint
    cache, encoders = EmbeddingCache(), []

    def score(images: list[Path]) -> dict[str, float]:
        if not encoders:
            encoders.append(load_clip(profile))
        report = score_generators({"checkpoint": list(images)}, references, profile, analysis, weights,
                                  encoder=encoders[0], cache=cache)
        summary = report["generators"]["checkpoint"]
        # quality_std / images: the spread of the mean (its standard error is std / √images), so that a later
        # checkpoint counts as better only beyond it (plateau stop, still_rising).
        return {**{name: summary[name]["mean"] for name in ("quality", "clip", "features", "ssim")},
                "quality_std": summary["quality"]["std"], "images": summary["count"]}

    return score


def variety(embeddings: torch.Tensor) -> float | None:
    """Mean pairwise 1 - cosine of unit embeddings: near 0 when a generator draws the same picture every time."""
    n = embeddings.shape[0]
    if n < 2:
        return None
    similarity = embeddings @ embeddings.T
    mean_off_diagonal = (similarity.sum() - similarity.diagonal().sum()) / (n * (n - 1))
    return round(float(1.0 - mean_off_diagonal), 6)


def reference_ceiling(reference_set: ImageSet, embeddings: torch.Tensor, luma: list[np.ndarray],
                      texts: dict[str, torch.Tensor], taxonomy: Taxonomy, key_features: list[str],
                      key_categories: dict[str, str], weights: dict[str, float]) -> dict | None:
    """Each reference scored against the others only; None with fewer than two references."""
    count = len(reference_set.paths)
    if count < 2:
        return None
    cosines = embeddings @ embeddings.T
    probabilities = category_probabilities(embeddings, texts)
    with _ssim_pool() as pool:
        pair_ssim = ssim_matrix(luma, luma, pool, symmetric=True)
    rows = []
    for i, name in enumerate(reference_set.names):
        others = [j for j in range(count) if j != i]
        without_me = {c: p[others] for c, p in probabilities.items()}
        loo_details = select_key_features(aggregate_categories(without_me, taxonomy), len(others))
        loo_categories = {d["feature"]: d["category"] for d in loo_details}
        scores = image_scores(cosines[i, others], feature_passes(probabilities, i, taxonomy, loo_categories),
                              pair_ssim[i, others], weights)
        # The per-feature rates below use the analysis key features, so they compare with the generators'.
        scores["analysis_feature_passes"] = feature_passes(probabilities, i, taxonomy, key_categories)
        rows.append({"file": name, "key_features": list(loo_categories), **scores})
    summary = summarize(rows, [])
    summary["feature_pass_rate"] = {f: sum(r["analysis_feature_passes"][f] for r in rows) / count
                                    for f in key_features}
    return {"method": "leave-one-out", **summary, "per_reference": rows}


# --------------------------------------------------------------------------- feedback
def build_feedback(report: ComparisonReport, lora_generator: str = "lora",
                   base_generator: str | None = None) -> Feedback:
    """The original feedback shape (lora_score, best_competitor, ..., recommendations) plus gaps and band.

    Each metric is compared with the best-ranked competitor; where the LoRA is not behind it, with the
    reference ceiling instead. With no competitors everything is compared with the ceiling. With
    ``base_generator`` (the base model without the LoRA; a generator of that name absent: none) each metric also
    holds the base's mean: what the LoRA adds to what the words alone draw, whoever the best competitor is.
    """
    generators = report["generators"]
    if lora_generator not in generators:
        raise InputError(f"the comparison has no generator named {lora_generator!r} "
                         f"(it has: {', '.join(generators)})", "name the LoRA's images lora=PATH or pass --lora NAME")
    lora = generators[lora_generator]
    # A competitor that copies the references is no target to chase; the ranking lists it last anyway.
    competitors = [r["generator"] for r in report["ranking"]
                   if r["generator"] != lora_generator and not memorised(generators[r["generator"]])]
    best = competitors[0] if competitors else None
    rival = generators[best] if best else None
    ceiling = report["ceiling"]
    base = generators.get(base_generator) if base_generator else None
    lora_score = lora["quality"]["mean"]
    competitor_score = rival["quality"]["mean"] if rival else None
    ceiling_score = ceiling["quality"]["mean"] if ceiling else None
    target_score, against = ((competitor_score, best) if rival else
                             (ceiling_score, "ceiling") if ceiling else (None, None))
    copies = [row for row in report.get("images") or [] if row["generator"] == lora_generator and row.get("reference_copy")]
    lora_copies = memorised(lora)
    # A memorised LoRA is not "ahead of" anyone: its score measures the copy, not the character.
    if lora_copies:
        target_score = against = None
    score_gap = target_score - lora_score if target_score is not None else None

    metric_gaps, recommendations = {}, []
    for metric in METRICS:
        mine = lora[metric]["mean"]
        theirs = rival[metric]["mean"] if rival else None
        top = ceiling[metric]["mean"] if ceiling else None
        entry = {"lora": mine, "competitor": theirs, "ceiling": top,
                 "vs_competitor": None if theirs is None else theirs - mine,
                 "vs_ceiling": None if top is None else top - mine}
        if base is not None:
            entry["base"] = base[metric]["mean"]
        metric_gaps[metric] = entry
        gap, versus = _pick_gap(entry["vs_competitor"], best, entry["vs_ceiling"])
        level = priority(gap) if gap is not None else None
        if level:
            recommendations.append({"area": AREAS[metric], "message": _metric_message(metric, gap, versus),
                                    "priority": level, "gap": gap, "against": versus})

    feature_gaps = []
    for feature in report["key_features"]:
        mine = lora["feature_pass_rate"].get(feature, 0.0)
        theirs = rival["feature_pass_rate"].get(feature) if rival else None
        top = ceiling["feature_pass_rate"].get(feature) if ceiling else None
        gap, versus = _pick_gap(None if theirs is None else theirs - mine, best, None if top is None else top - mine)
        if gap is None or gap <= NO_GAP:
            continue
        feature_gaps.append({"feature": feature, "category": _category(report, feature), "lora_pass_rate": mine,
                             "competitor_pass_rate": theirs, "ceiling_pass_rate": top, "gap": gap, "against": versus})
    feature_gaps.sort(key=lambda g: -g["gap"])
    for item in feature_gaps:
        level = priority(item["gap"])
        other = item["competitor_pass_rate"] if item["against"] != "ceiling" else item["ceiling_pass_rate"]
        source = item["against"] if item["against"] != "ceiling" else "the references themselves"
        recommendations.append({
            "area": AREAS["features"], "feature": item["feature"], "priority": level, "gap": item["gap"],
            "against": item["against"],
            "message": f"The LoRA shows '{item['feature']}' in {item['lora_pass_rate']:.0%} of its images vs "
                       f"{other:.0%} for {source} (gap: {item['gap']:.3f}) — keep it in the training captions "
                       f"and prompts"})
    recommendations.sort(key=lambda r: (PRIORITY_ORDER[r["priority"]], -r["gap"]))
    if lora_copies:
        recommendations.insert(0, _memorisation_recommendation(lora, copies))
    lora_band = band(lora_score)
    return {"schema": FEEDBACK_SCHEMA, "created_at": now_iso(), "profile": report["profile"],
            "lora_generator": lora_generator, "lora_score": lora_score, "best_competitor": best,
            "competitor_score": competitor_score, "score_gap": score_gap, "compared_against": against,
            "ceiling_score": ceiling_score,
            "needs_improvement": bool(lora_copies or (score_gap is not None and score_gap > NO_GAP)
                                      or lora_band in ("average", "poor")),
            "band": lora_band, "reference_copy": lora_copies,
            "reference_copies": [{"path": row["path"], "copied_reference": row.get("copied_reference"),
                                  "copy_clip": row.get("copy_clip"), "copy_ssim": row.get("copy_ssim")}
                                 for row in copies], "metric_gaps": metric_gaps, "feature_gaps": feature_gaps,
            "recommendations": recommendations}


def _memorisation_recommendation(lora: dict, copies: list[dict]) -> dict:
    """The first recommendation when the LoRA's images copy references; gap = the share of copied images."""
    count = lora.get("reference_copies") or len(copies)
    total = lora.get("count") or count
    return {"area": "memorisation", "priority": "high", "gap": count / total, "against": "references",
            "message": f"Reference copy — memorised: {copies_text(count, total, copies)}; the LoRA's score "
                       "measures the copy, not the character, so it is not ranked — train fewer steps at a lower "
                       "learning rate, or lower lora_scale"}


def _pick_gap(vs_competitor: float | None, competitor: str | None,
              vs_ceiling: float | None) -> tuple[float | None, str | None]:
    if vs_competitor is not None and vs_competitor > NO_GAP:
        return vs_competitor, competitor
    if vs_ceiling is not None:
        return vs_ceiling, "ceiling"
    return vs_competitor, competitor


def _metric_message(metric: str, gap: float, versus: str) -> str:
    target = "the reference ceiling" if versus == "ceiling" else versus
    return {
        "clip": f"Improve semantic similarity to the references (gap: {gap:.3f} vs {target}) — more training "
                f"steps or a higher LoRA rank let the model absorb the character",
        "features": f"Improve matching of key features (gap: {gap:.3f} vs {target}) — make sure the captions "
                    f"name them and the prompt keeps the trigger token",
        "ssim": f"Improve structural similarity (composition, pose, framing) to the references "
                f"(gap: {gap:.3f} vs {target}) — prompt the references' framing or lower the learning rate",
    }[metric]


def _category(report: dict, feature: str) -> str | None:
    return report.get("key_feature_categories", {}).get(feature)


# --------------------------------------------------------------------------- saving
def write_results(report: ComparisonReport, feedback: Feedback | None, output_dir: str | Path) -> tuple[Path, Path | None]:
    """``comparisons/comparison_report_<ts>.json`` and ``feedback/feedback_<ts>.json``, both atomic."""
    output_dir = Path(output_dir)
    stamp = report["created_at"].replace("-", "").replace(":", "").replace("T", "-").rstrip("Z")
    report_path = _free_name(output_dir / "comparisons", "comparison_report", stamp)
    feedback_path = _free_name(output_dir / "feedback", "feedback", report_path.stem.split("comparison_report_")[1])
    atomic_write_json(report_path, report)
    if feedback is None:
        return report_path, None
    atomic_write_json(feedback_path, {**feedback, "comparison_report": str(report_path)})
    return report_path, feedback_path


def check_output_folder(output_dir: str | Path) -> None:
    """``InputError`` before any work when the results cannot go under ``output_dir`` (it or a parent is a file)."""
    folder = Path(output_dir).expanduser()
    for path in (folder / "comparisons", folder / "feedback", folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise InputError(f"output folder {folder} cannot be used: {path} is a file",
                                 "pass --output-dir DIR with a folder path (or set output_dir in aldar.toml)")
            if path in (folder, *folder.parents):
                return


def _free_name(folder: Path, prefix: str, stamp: str) -> Path:
    candidate, n = folder / f"{prefix}_{stamp}.json", 2
    while candidate.exists():
        candidate, n = folder / f"{prefix}_{stamp}-{n}.json", n + 1
    return candidate

