"""The shapes the rounds add: the feedback deciders get, and the round record in training_history.json.

``TypedDict``s over plain JSON, like ``tools.scoring.records`` (whose analysis, comparison report and
feedback they extend); docs/ARCHITECTURE.md ("training_history.json") explains each key. A record is
written by ``agent.rounds.recording.round_record``. These are the shapes written; what the agent reads is the
typed ``agent.rounds.documents.Round`` / ``RoundFeedback`` the store's loader builds from them, once, with the
defaults of older files (the original system's bare-list history has none of the newer keys) filled there.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from tools.numbers import finite_number
from tools.scoring.records import ComparisonReport, Feedback, RankingEntry

LORA = "lora"  # the generator name of the round's own LoRA in scores, rankings and image folders
BASE = "base"  # the base model as a contestant


# Likeness: a checkpoint's validation quality at this fraction of the reference ceiling's (steps to likeness).
LIKENESS = 0.9


class Overfitting(TypedDict):
    max_reference_clip: float | None  # the LoRA image closest to one single reference (raw cosine)
    max_reference_ssim: float | None
    reference_copies: NotRequired[int]  # LoRA images that nearly copy one reference (tools.scoring.copies)
    variety: float | None  # mean pairwise 1 - cosine of the LoRA's images


class TrainingCurve(TypedDict):
    """How the round's validation quality went over its checkpoints (``Session.score``, from the trainer)."""

    steps: int | None  # steps trained
    best_step: int | None  # the best-scoring checkpoint's step (normally the exported one); None: none scored
    scored_checkpoints: int
    # The best-scoring checkpoint was the last of two or more and above the best earlier one beyond their spread:
    # the score was still rising when training stopped.
    still_rising: bool
    spread: NotRequired[float | None]  # the best checkpoint's standard error (std of its images / √images)
    best_early: NotRequired[bool]  # the best checkpoint came before the last: later steps did not help
    likeness_step: NotRequired[int | None]  # first checkpoint at 90 % of the reference ceiling's quality
    stopped_early: NotRequired[str]  # why training stopped before its steps (plateau), or ""
    lora_steps_before: NotRequired[int]  # steps the warm start's checkpoint had had (0: a fresh LoRA)
    seconds: NotRequired[float]  # wall seconds the round trained


class SessionFeedback(Feedback):
    """``build_feedback``'s document plus what ``Session.score`` adds for the deciders."""

    round: int
    overfitting: Overfitting
    training: NotRequired[TrainingCurve]  # absent in feedback files from before it, and for a LoRA made elsewhere
    lora_spread: NotRequired[float | None]  # standard error of the LoRA's quality (std / √images) this round
    # The prompt suite's (tools.scoring.suite.lora_blocks; absent before it, None when no suite was drawn):
    identity: NotRequired[dict[str, Any] | None]
    editability: NotRequired[dict[str, Any] | None]
    bleed: NotRequired[dict[str, Any] | None]
    suite_prompts: NotRequired[list[dict[str, Any]]]


class GeneratorScores(TypedDict):
    quality: float
    quality_std: float
    clip: float
    features: float
    ssim: float
    band: str
    count: int
    reference_copies: NotRequired[int]  # images that nearly copy a reference (absent in older histories)


class CeilingScores(TypedDict):
    quality: float
    clip: float
    features: float
    ssim: float


class CheckpointScore(TypedDict):  # one scored training checkpoint (train_lora's checkpoint_scores)
    step: int
    quality: float
    quality_std: NotRequired[float]  # spread of its validation images' quality
    images: NotRequired[float]  # how many validation images it was scored on
    clip: NotRequired[float]
    features: NotRequired[float]
    ssim: NotRequired[float]
    validation_loss: NotRequired[float]  # deterministic denoising loss on the references (issue 26)


class ChosenCheckpoint(TypedDict):  # the checkpoint exported as the round's LoRA, and why
    step: int
    why: str
    quality: NotRequired[float]  # absent when no checkpoint was scored (the last step is used)


class RoundTrain(TypedDict):
    steps: int | None
    final_loss: float | None
    interrupted: bool | None
    checkpoint_scores: NotRequired[list[CheckpointScore]]  # NotRequired: histories from before checkpoint scoring
    chosen_checkpoint: NotRequired[ChosenCheckpoint | None]
    warm_start: NotRequired[dict[str, Any] | None]  # the earlier round's checkpoint it continued
    stopped_early: NotRequired[str]  # why training stopped before its steps (a plateau), or ""
    seconds: NotRequired[float]  # wall seconds it trained (older histories: timings_s["train"])


class RoundDecision(TypedDict):
    adjustments: dict[str, Any]  # what was applied (clamped)
    requested: dict[str, Any]  # what the decider asked for
    clamped: list[str]  # one note per value changed or dropped
    stop: bool
    llm_text: NotRequired[str]  # the LLM's answer when it proposed nothing and the rule policy decided
    already_tried: NotRequired[list[dict[str, Any]]]  # proposals turned down: an earlier round trained them


class RoundPaths(TypedDict):  # relative to the results folder
    run_dir: str | None
    lora: str | None
    kohya_lora: str | None
    comparison_report: str | None
    feedback: str | None
    images: dict[str, list[str]]


class NextParamsChange(TypedDict):
    adjustments: dict[str, Any]
    rationale: str
    decided_by: str


class RoundRecord(TypedDict):
    round: int
    finished_at: str
    params: dict[str, Any]
    train: RoundTrain
    scores: dict[str, GeneratorScores]
    ranking: list[RankingEntry]
    ceiling: CeilingScores | None
    lora_score: float | None
    band: str | None
    best_competitor: str | None
    score_gap: float | None
    overfitting: Overfitting | None
    decision: RoundDecision
    rationale: str
    decided_by: str
    next_params: dict[str, Any]
    prompts: list[str]
    base_prompts: NotRequired[list[str]]  # what the base drew (the prompts without emphasis); older: the prompts
    suite: NotRequired[dict[str, Any] | None]  # the prompt suite (recording.suite_record); None when none drawn
    skipped_competitors: list[str]
    paths: RoundPaths
    timings_s: dict[str, float]
    compute_s: dict[str, float]
    profile: dict[str, Any]
    next_params_changes: NotRequired[list[NextParamsChange]]  # set by Session.set_next_params


# --------------------------------------------------------------------------- parts of a record, from a report
def lora_spread(report: ComparisonReport) -> float | None:
    """The spread of the LoRA's quality this round: the standard error of its images' mean (std / √images).
    A round counts as better or worse than another only beyond it."""
    import math

    lora = (report.get("generators") or {}).get(LORA) or {}
    std, count = finite_number(((lora.get("quality") or {}).get("std"))), lora.get("count")
    return round(std / math.sqrt(count), 4) if std is not None and count else None


def overfitting_signals(report: ComparisonReport) -> Overfitting:
    """Signs that the LoRA copies references: its closest image to one single reference
    (CLIP cosine and SSIM), how many of its images are reference copies, and the variety of its
    own images, all from the comparison report."""
    rows = [row for row in report["images"] if row["generator"] == LORA]
    lora = report["generators"].get(LORA)
    return {"max_reference_clip": max((row["clip_max"] for row in rows), default=None),
            "max_reference_ssim": max((row["ssim"] for row in rows), default=None),
            "reference_copies": sum(bool(row.get("reference_copy")) for row in rows),
            "variety": lora["variety"] if lora else None}


def training_curve(train: dict, ceiling: float | None = None, seconds: float | None = None) -> TrainingCurve:
    """Where the round's validation quality peaked among its checkpoints: the best-scoring of two or more being
    the last one means the quality was still rising when training stopped (what a kohya user reads off the
    sample images). Read from the trainer's record, which may come from an older or hand-edited history: a
    score without a finite step or quality counts as unscored.

    Noise-aware: ``still_rising`` needs the last checkpoint above the best earlier one by more than their
    spread (the standard error of a checkpoint's validation images, ``spread``), not by 0.001. With
    ``ceiling`` (the references' own quality), ``likeness_step`` is the first checkpoint at 90 % of it; the
    round's compute (``steps``, ``seconds``) and a warm start's inherited steps come along for the deciders."""
    from tools.training.lora_files import best_checkpoint, quality_spread, rose_beyond_spread  # torch: trained by now

    checkpoints = [s for s in train.get("checkpoint_scores") or []
                   if isinstance(s, dict) and finite_number(s.get("step")) is not None]
    scored = [{"step": int(s["step"]), "quality": s["quality"],
               **{k: s[k] for k in ("quality_std", "images") if finite_number(s.get(k)) is not None}}
              for s in checkpoints if finite_number(s.get("quality")) is not None]
    scored.sort(key=lambda s: s["step"])
    best = best_checkpoint(scored)
    # The last checkpoint of all, scored or not: a peak before an unscored last checkpoint is no rise at the end.
    last_step = max((int(s["step"]) for s in checkpoints), default=None)
    steps = finite_number(train.get("steps"))
    earlier = best_checkpoint([s for s in scored if best is not None and s["step"] < best["step"]])
    rising = (len(scored) >= 2 and best is not None and best["step"] == last_step and earlier is not None
              and rose_beyond_spread(best, earlier))
    target = LIKENESS * ceiling if finite_number(ceiling) is not None else None
    likeness = next((s["step"] for s in scored if target is not None and s["quality"] >= target), None)
    warm = train.get("warm_start") or {}
    curve: TrainingCurve = {
        "steps": int(steps) if steps is not None else None, "best_step": best["step"] if best else None,
        "scored_checkpoints": len(scored), "still_rising": rising,
        "spread": round(quality_spread(best), 4) if best else None,
        "best_early": best is not None and last_step is not None and best["step"] < last_step,
        "likeness_step": likeness, "stopped_early": train.get("stopped_early") or "",
        "lora_steps_before": int(warm.get("lora_steps_before") or 0)}
    if seconds is not None:
        curve["seconds"] = round(seconds, 1)
    return curve


def scores_by_generator(report: ComparisonReport) -> dict[str, GeneratorScores]:
    """generator → {quality, quality_std, clip, features, ssim, band, count, reference_copies} (means)
    from a comparison report."""
    return {name: {"quality": entry["quality"]["mean"], "quality_std": entry["quality"]["std"],
                   "clip": entry["clip"]["mean"], "features": entry["features"]["mean"],
                   "ssim": entry["ssim"]["mean"], "band": entry["band"], "count": entry["count"],
                   "reference_copies": entry.get("reference_copies", 0)}
            for name, entry in (report.get("generators") or {}).items()}
