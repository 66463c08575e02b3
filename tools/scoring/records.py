"""The shapes of the three JSON documents scoring writes: feature analysis, comparison report, feedback.

``TypedDict``s, because the documents are plain JSON on disk and in the LLM's context: the types say
which keys exist (docs/ARCHITECTURE.md, "JSON shapes", explains each) without a conversion layer.
Producers (``analyze_references``, ``score_generators``, ``build_feedback``) return them, so readers
of a fresh document index required keys directly; ``NotRequired`` keys may be absent.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class Figure(TypedDict):
    mean: float
    std: float


class ReferenceFile(TypedDict):
    file: str
    sha256: str


# ---------------------------------------------------------------- feature analysis
class TopFeature(TypedDict):
    feature: str
    probability: float
    agreement: NotRequired[int]  # in ``categories``: how many references have it as their top-1


class CategoryTop(TypedDict):
    top: list[TopFeature]
    margin: NotRequired[float]  # log-odds of the best description over the runner-up, mean over the references
    clear: NotRequired[bool]  # margin >= analyzer.CLEAR_MARGIN: else "no clear match"


class KeyFeatureDetail(TypedDict):
    feature: str
    category: str
    probability: float
    agreement: int
    rank: int


class Analysis(TypedDict):
    schema: str
    created_at: str
    profile: dict[str, Any]
    model: str
    character_name: str
    trigger_token: str
    references: list[ReferenceFile]
    reference_dir: str
    taxonomy: dict[str, Any]
    per_image: dict[str, dict[str, Any]]
    categories: dict[str, CategoryTop]
    key_features: list[str]
    key_feature_details: list[KeyFeatureDetail]
    training_prompt: str
    captions: dict[str, str]
    unclear_categories: NotRequired[list[str]]  # categories with no clear match (analyzer.CLEAR_MARGIN)
    warnings: NotRequired[list[str]]  # one line each, shown where the analysis is made
    captions_identity_free: NotRequired[dict[str, str]]  # trigger + what varies (--caption-mode identity-free)
    notice: NotRequired[str]


# ---------------------------------------------------------------- comparison report
class ImageScore(TypedDict):
    generator: str
    path: str
    clip_mean: float
    clip_max: float
    clip: float
    features: float
    feature_passes: dict[str, bool]
    ssim: float
    quality: float
    reference_copy: bool  # nearly copies one reference (tools.scoring.copies)
    copied_reference: str | None  # which one
    copy_clip: NotRequired[float]  # its CLIP cosine and SSIM to that reference (copies only)
    copy_ssim: NotRequired[float]


class GeneratorSummary(TypedDict):
    count: int
    quality: Figure
    clip: Figure
    clip_max: Figure
    features: Figure
    ssim: Figure
    feature_pass_rate: dict[str, float]
    band: str
    variety: float | None
    reference_copies: NotRequired[int]  # how many of its images nearly copy a reference (not in the ceiling)


class RankingEntry(TypedDict):
    rank: int | None  # None: the generator's images copy references, ranked apart after the others
    generator: str
    quality: float
    quality_std: float
    band: str
    reference_copy: NotRequired[bool]  # absent in reports written before copies were flagged


class Ceiling(GeneratorSummary):
    method: str
    per_reference: list[dict[str, Any]]


class ComparisonReport(TypedDict):
    schema: str
    created_at: str
    profile: dict[str, Any]
    model: str
    references: list[ReferenceFile]
    reference_dir: str
    weights: dict[str, float]
    key_features: list[str]
    key_feature_categories: dict[str, str]
    method: dict[str, str]
    images: list[ImageScore]
    generators: dict[str, GeneratorSummary]
    ranking: list[RankingEntry]
    ceiling: Ceiling | None
    round: NotRequired[int]  # set by agent.rounds.session


# ---------------------------------------------------------------- feedback
class MetricGap(TypedDict):
    lora: float | None
    competitor: float | None
    ceiling: float | None
    vs_competitor: float | None
    vs_ceiling: float | None
    base: NotRequired[float | None]  # the base model's mean, where build_feedback was told which generator it is


class FeatureGap(TypedDict):
    feature: str
    category: str | None
    lora_pass_rate: float
    competitor_pass_rate: float | None
    ceiling_pass_rate: float | None
    gap: float
    against: str


class Recommendation(TypedDict):
    area: str
    message: str
    priority: str
    gap: float
    against: str
    feature: NotRequired[str]


class ReferenceCopy(TypedDict):
    path: str
    copied_reference: str | None
    copy_clip: float
    copy_ssim: float


class Feedback(TypedDict):
    schema: str
    created_at: str
    profile: dict[str, Any]
    lora_generator: str
    lora_score: float | None
    best_competitor: str | None
    competitor_score: float | None
    score_gap: float | None
    compared_against: str | None
    ceiling_score: float | None
    needs_improvement: bool
    band: str | None
    reference_copy: bool  # the LoRA's images copy references: memorised, score_gap None
    reference_copies: list[ReferenceCopy]
    metric_gaps: dict[str, MetricGap]
    feature_gaps: list[FeatureGap]
    recommendations: list[Recommendation]
    comparison_report: NotRequired[str]
