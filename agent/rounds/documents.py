"""Typed records of the two documents a run keeps per round: the round record (training_history.json's
``rounds``) and the feedback file (feedback/feedback_<ts>.json).

The JSON on disk stays as it was written (``agent.rounds.recording.round_record``, ``Session.score``): the
LLM, the report and users read it. What the code reads is one frozen object per document, built here once,
when the store loads it: every default an older file lacks is filled here (the original system's bare-list
history has none of the newer keys), every number is checked finite, every block has its type. This module
and the store are the only places that read these documents as dicts (tests/test_architecture.py holds it).

``round_of`` and ``feedback_of`` accept an already typed object unchanged, so a function fed by the store
and a test fed a literal dict read the same object.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from tools.numbers import finite_number
from tools.scoring.copies import is_reference_copy


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    number = finite_number(value)
    return int(number) if number is not None else None


def _as_json(value: Any) -> Any:
    if is_dataclass(value):
        return value.as_json()
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Block:
    """A typed block whose fields are its JSON keys: ``as_json`` gives back the keys the file had (``written``, in
    its order; every field for a block made in code), as the LLM's summaries and the round record show it."""

    written: tuple[str, ...] = field(default=(), compare=False, repr=False, kw_only=True)

    def as_json(self) -> dict[str, Any]:
        known = [f.name for f in fields(self) if f.name != "written"]
        return {name: _as_json(getattr(self, name)) for name in self.written or known if name in known}


def _keys(block: dict) -> tuple[str, ...]:
    return tuple(str(key) for key in block)


# ---------------------------------------------------------------- blocks shared by both documents
@dataclass(frozen=True)
class Overfitting(Block):
    """Signs that the LoRA copies references (``agent.rounds.records.overfitting_signals``)."""

    max_reference_clip: float | None = None  # the LoRA image closest to one single reference (raw cosine)
    max_reference_ssim: float | None = None
    reference_copies: int | None = None  # None: a feedback from before copies were counted
    variety: float | None = None  # mean pairwise 1 - cosine of the LoRA's images

    @property
    def copies_reference(self) -> bool:
        """A LoRA image copies a reference: the count, or for a feedback from before the count its closest CLIP and
        SSIM (``tools.scoring.copies.is_reference_copy``, the one definition)."""
        if self.reference_copies is not None:
            return self.reference_copies > 0
        return is_reference_copy(self.max_reference_clip, self.max_reference_ssim)


def overfitting_of(block: Any) -> Overfitting | None:
    if not isinstance(block, dict):
        return None
    return Overfitting(finite_number(block.get("max_reference_clip")), finite_number(block.get("max_reference_ssim")),
                       _int(block.get("reference_copies")), finite_number(block.get("variety")), written=_keys(block))


@dataclass(frozen=True)
class Identity(Block):  # the prompt suite's identity in new contexts (tools.scoring.suite.lora_blocks)
    score: float | None = None
    spread: float | None = None
    feature_pass_rate: float | None = None
    clip: float | None = None
    base: float | None = None
    ceiling: float | None = None
    count: int | None = None


@dataclass(frozen=True)
class CategoryEdit(Block):  # editability of one context category
    lora: float | None = None
    base: float | None = None


@dataclass(frozen=True)
class Editability(Block):  # share of new-context images showing what the prompt asked
    rate: float | None = None
    spread: float | None = None
    base: float | None = None
    vs_base: float | None = None
    count: int | None = None
    by_category: dict[str, CategoryEdit] = field(default_factory=dict)


@dataclass(frozen=True)
class Bleed(Block):  # LoRA − base CLIP similarity to the references on no-trigger prompts
    score: float | None = None
    lora_clip: float | None = None
    base_clip: float | None = None
    spread: float | None = None
    count: int | None = None


@dataclass(frozen=True)
class SuiteScores:
    identity: Identity | None = None
    editability: Editability | None = None
    bleed: Bleed | None = None


def _numbers(block: dict, *names: str) -> list[float | None]:
    return [finite_number(block.get(name)) for name in names]


def suite_scores_of(blocks: dict) -> SuiteScores:
    """The ``identity``, ``editability`` and ``bleed`` blocks of a feedback, or of a record's ``suite.scores``."""
    identity, edit, bleed = (blocks.get(name) for name in ("identity", "editability", "bleed"))
    if isinstance(identity, dict):
        identity = Identity(*_numbers(identity, "score", "spread", "feature_pass_rate", "clip", "base", "ceiling"),
                            _int(identity.get("count")), written=_keys(identity))
    if isinstance(edit, dict):
        by_category = {str(c): CategoryEdit(*_numbers(_dict(v), "lora", "base"), written=_keys(_dict(v)))
                       for c, v in _dict(edit.get("by_category")).items()}
        edit = Editability(*_numbers(edit, "rate", "spread", "base", "vs_base"), _int(edit.get("count")), by_category,
                           written=_keys(edit))
    if isinstance(bleed, dict):
        bleed = Bleed(*_numbers(bleed, "score", "lora_clip", "base_clip", "spread"), _int(bleed.get("count")),
                      written=_keys(bleed))
    return SuiteScores(*(block if isinstance(block, Block) else None for block in (identity, edit, bleed)))


@dataclass(frozen=True)
class SuitePrompt:  # one prompt of the suite (tools.scoring.suite.SuitePrompt.as_dict)
    kind: str | None
    category: str | None
    value: str | None
    text: str


def suite_prompts_of(items: Any) -> tuple[SuitePrompt, ...]:
    return tuple(SuitePrompt(_text(p.get("kind")), _text(p.get("category")), _text(p.get("value")),
                             str(p.get("text") or "")) for p in _list(items) if isinstance(p, dict))


# ---------------------------------------------------------------- the feedback document
@dataclass(frozen=True)
class MetricGap(Block):
    lora: float | None = None
    competitor: float | None = None
    ceiling: float | None = None
    vs_competitor: float | None = None
    vs_ceiling: float | None = None
    base: float | None = None  # the base model's mean, same seeds, prompt without emphasis (absent in older files)


@dataclass(frozen=True)
class FeatureGap(Block):
    feature: str
    category: str | None
    lora_pass_rate: float | None
    competitor_pass_rate: float | None
    ceiling_pass_rate: float | None
    gap: float | None
    against: str | None


@dataclass(frozen=True)
class Recommendation:
    priority: str | None
    message: str | None


@dataclass(frozen=True)
class TrainingCurve(Block):
    """How the round's validation quality went over its checkpoints (``agent.rounds.records.training_curve``)."""

    steps: int | None = None
    best_step: int | None = None
    scored_checkpoints: int | None = None
    still_rising: bool = False  # a hand-edited "false" is not True
    spread: float | None = None
    best_early: bool = False
    likeness_step: int | None = None
    stopped_early: str | None = None
    lora_steps_before: int | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class RoundFeedback:
    """One round's feedback document (``build_feedback`` plus what ``Session.score`` adds)."""

    round: int | None = None
    lora_generator: str | None = None
    lora_score: float | None = None
    band: str | None = None
    best_competitor: str | None = None
    competitor_score: float | None = None
    ceiling_score: float | None = None
    score_gap: float | None = None
    compared_against: str | None = None
    needs_improvement: Any = None
    reference_copy: bool = False  # the LoRA's images copy references: the score measures a copy
    metric_gaps: dict[str, MetricGap] = field(default_factory=dict)
    feature_gaps: tuple[FeatureGap, ...] = ()
    recommendations: tuple[Recommendation, ...] = ()
    overfitting: Overfitting | None = None
    training: TrainingCurve | None = None  # absent before it, and for a LoRA made elsewhere
    lora_spread: float | None = None  # standard error of the LoRA's quality (std / √images)
    suite: SuiteScores = field(default_factory=SuiteScores)  # identity, editability, bleed (None: not drawn)
    suite_prompts: tuple[SuitePrompt, ...] = ()
    profile_name: str | None = None  # the profile it was scored with ("tiny", "sdxl")

    def metric(self, name: str) -> MetricGap:
        return self.metric_gaps.get(name) or MetricGap()


def _feature_gap(gap: dict) -> FeatureGap:
    return FeatureGap(str(gap["feature"]), _text(gap.get("category")),
                      *_numbers(gap, "lora_pass_rate", "competitor_pass_rate", "ceiling_pass_rate", "gap"),
                      _text(gap.get("against")), written=_keys(gap))


def _training(curve: dict) -> TrainingCurve:
    return TrainingCurve(
        steps=_int(curve.get("steps")), best_step=_int(curve.get("best_step")),
        scored_checkpoints=_int(curve.get("scored_checkpoints")), still_rising=curve.get("still_rising") is True,
        spread=finite_number(curve.get("spread")), best_early=curve.get("best_early") is True,
        likeness_step=_int(curve.get("likeness_step")), stopped_early=_text(curve.get("stopped_early")),
        lora_steps_before=_int(curve.get("lora_steps_before")), seconds=finite_number(curve.get("seconds")),
        written=_keys(curve))


def feedback_of(document: Any) -> RoundFeedback:
    """The typed feedback of a feedback document (tolerant: the LLM decider and older files may hold a part of
    one; missing values stay None)."""
    if isinstance(document, RoundFeedback):
        return document
    doc = _dict(document)
    profile = _dict(doc.get("profile"))
    return RoundFeedback(
        round=_int(doc.get("round")), lora_generator=_text(doc.get("lora_generator")),
        lora_score=finite_number(doc.get("lora_score")), band=_text(doc.get("band")),
        best_competitor=_text(doc.get("best_competitor")), competitor_score=finite_number(doc.get("competitor_score")),
        ceiling_score=finite_number(doc.get("ceiling_score")), score_gap=finite_number(doc.get("score_gap")),
        compared_against=_text(doc.get("compared_against")), needs_improvement=doc.get("needs_improvement"),
        reference_copy=bool(doc.get("reference_copy")),
        metric_gaps={str(name): MetricGap(*_numbers(gap, "lora", "competitor", "ceiling", "vs_competitor",
                                                    "vs_ceiling", "base"), written=_keys(gap))
                     for name, gap in _dict(doc.get("metric_gaps")).items() if isinstance(gap, dict)},
        feature_gaps=tuple(_feature_gap(gap) for gap in _list(doc.get("feature_gaps"))
                           if isinstance(gap, dict) and gap.get("feature")),
        recommendations=tuple(Recommendation(_text(r.get("priority")), _text(r.get("message")))
                              for r in _list(doc.get("recommendations")) if isinstance(r, dict)),
        overfitting=overfitting_of(doc.get("overfitting")),
        training=_training(doc["training"]) if isinstance(doc.get("training"), dict) else None,
        lora_spread=finite_number(doc.get("lora_spread")), suite=suite_scores_of(doc),
        suite_prompts=suite_prompts_of(doc.get("suite_prompts")), profile_name=_text(profile.get("profile")))


# ---------------------------------------------------------------- the round record
@dataclass(frozen=True)
class GeneratorScores:
    """One generator's means in a round (``agent.rounds.records.scores_by_generator``)."""

    quality: float | None = None
    quality_std: float | None = None
    clip: float | None = None
    features: float | None = None
    ssim: float | None = None
    band: str | None = None
    count: int | None = None
    reference_copies: int = 0  # images that nearly copy a reference (absent in older histories)

    @property
    def memorised(self) -> bool:
        return self.reference_copies > 0


@dataclass(frozen=True)
class Ceiling:  # the references' own scores against each other
    quality: float | None = None
    clip: float | None = None
    features: float | None = None
    ssim: float | None = None


@dataclass(frozen=True)
class CheckpointScore:
    step: int
    quality: float | None = None
    quality_std: float | None = None
    images: float | None = None
    validation_loss: float | None = None


@dataclass(frozen=True)
class ChosenCheckpoint:
    step: int | None
    why: str
    quality: float | None = None


@dataclass(frozen=True)
class WarmStart:  # the round continued an earlier round's checkpoint
    from_round: int | None
    from_step: int | None
    lora_steps_before: int = 0


@dataclass(frozen=True)
class RoundTrain:
    steps: int | None = None
    final_loss: float | None = None
    interrupted: bool | None = None
    checkpoint_scores: tuple[CheckpointScore, ...] = ()  # with a finite step, sorted as written
    chosen_checkpoint: ChosenCheckpoint | None = None
    warm_start: WarmStart | None = None
    stopped_early: str = ""
    seconds: float | None = None  # older histories: the round's "train" timing


@dataclass(frozen=True)
class RoundDecision:
    adjustments: dict[str, Any] = field(default_factory=dict)  # what was applied (clamped)
    requested: dict[str, Any] = field(default_factory=dict)
    clamped: tuple[str, ...] = ()
    stop: bool = False
    llm_text: str = ""


@dataclass(frozen=True)
class RoundPaths:  # relative to the results folder
    run_dir: str | None = None
    lora: str | None = None
    kohya_lora: str | None = None
    comparison_report: str | None = None
    feedback: str | None = None
    images: dict[str, list[str]] = field(default_factory=dict)  # generator → its images


@dataclass(frozen=True)
class RoundSuite:
    """The round's prompt suite: its prompts, the LoRA's three scores, every generator's images."""

    prompts: tuple[SuitePrompt, ...] = ()
    scores: SuiteScores = field(default_factory=SuiteScores)
    images: dict[str, list[list[str]]] = field(default_factory=dict)  # generator → images of each prompt
    base_key: str | None = None
    base_from_round: int | None = None


@dataclass(frozen=True)
class Round:
    """One finished round of training_history.json."""

    round: int
    finished_at: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # knob name → value (agent.rounds.knobs)
    train: RoundTrain = field(default_factory=RoundTrain)
    scores: dict[str, GeneratorScores] = field(default_factory=dict)
    ceiling: Ceiling | None = None
    lora_score: float | None = None
    band: str | None = None
    best_competitor: str | None = None
    score_gap: float | None = None
    overfitting: Overfitting | None = None
    decision: RoundDecision = field(default_factory=RoundDecision)
    rationale: str = ""
    decided_by: str = ""
    next_params: dict[str, Any] | None = None
    prompts: tuple[str, ...] = ()
    base_prompts: tuple[str, ...] = ()  # what the base drew; older histories: the prompts
    suite: RoundSuite | None = None
    skipped_competitors: tuple[str, ...] = ()
    paths: RoundPaths = field(default_factory=RoundPaths)
    timings_s: dict[str, float] = field(default_factory=dict)  # stage → wall seconds
    compute_s: dict[str, float] = field(default_factory=dict)  # stage → seconds inside model code


def _checkpoints(items: Any) -> tuple[CheckpointScore, ...]:
    return tuple(CheckpointScore(int(step), *_numbers(s, "quality", "quality_std", "images", "validation_loss"))
                 for s in _list(items) if isinstance(s, dict) and (step := finite_number(s.get("step"))) is not None)


def _train(train: dict, timings: dict) -> RoundTrain:
    chosen, warm = train.get("chosen_checkpoint"), train.get("warm_start")
    return RoundTrain(
        steps=_int(train.get("steps")), final_loss=finite_number(train.get("final_loss")),
        interrupted=train.get("interrupted"), checkpoint_scores=_checkpoints(train.get("checkpoint_scores")),
        chosen_checkpoint=ChosenCheckpoint(_int(chosen.get("step")), str(chosen.get("why") or ""),
                                           finite_number(chosen.get("quality")))
        if isinstance(chosen, dict) and chosen else None,
        warm_start=WarmStart(_int(warm.get("from_round")), _int(warm.get("from_step")),
                             _int(warm.get("lora_steps_before")) or 0) if isinstance(warm, dict) and warm else None,
        stopped_early=str(train.get("stopped_early") or ""),
        seconds=finite_number(train.get("seconds", timings.get("train"))))


def _suite(suite: Any) -> RoundSuite | None:
    if not isinstance(suite, dict):
        return None
    return RoundSuite(suite_prompts_of(suite.get("prompts")), suite_scores_of(_dict(suite.get("scores"))),
                      {str(name): [[str(p) for p in _list(group)] for group in _list(groups)]
                       for name, groups in _dict(suite.get("images")).items()},
                      _text(suite.get("base_key")), _int(suite.get("base_from_round")))


def round_of(record: Any) -> Round:
    """The typed round of a history record (the store checked its round number and block types at load)."""
    if isinstance(record, Round):
        return record
    ceiling, decision, paths = record.get("ceiling"), _dict(record.get("decision")), _dict(record.get("paths"))
    timings, compute = ({str(k): v for k, v in _dict(record.get(key)).items() if finite_number(v) is not None}
                        for key in ("timings_s", "compute_s"))
    prompts = tuple(str(p) for p in _list(record.get("prompts")))
    base_prompts = record.get("base_prompts")
    return Round(
        round=int(record["round"]), finished_at=_text(record.get("finished_at")),
        params=dict(_dict(record.get("params"))), train=_train(_dict(record.get("train")), timings),
        scores={str(name): GeneratorScores(*_numbers(s, "quality", "quality_std", "clip", "features", "ssim"),
                                           _text(s.get("band")), _int(s.get("count")), _int(s.get("reference_copies")) or 0)
                for name, s in _dict(record.get("scores")).items() if isinstance(s, dict)},
        ceiling=Ceiling(*_numbers(ceiling, "quality", "clip", "features", "ssim")) if isinstance(ceiling, dict) else None,
        lora_score=finite_number(record.get("lora_score")), band=_text(record.get("band")),
        best_competitor=_text(record.get("best_competitor")), score_gap=finite_number(record.get("score_gap")),
        overfitting=overfitting_of(record.get("overfitting")),
        decision=RoundDecision(dict(_dict(decision.get("adjustments"))), dict(_dict(decision.get("requested"))),
                               tuple(str(n) for n in _list(decision.get("clamped"))), decision.get("stop") is True,
                               str(decision.get("llm_text") or "")),
        rationale=str(record.get("rationale") or ""), decided_by=str(record.get("decided_by") or ""),
        next_params=dict(record["next_params"]) if isinstance(record.get("next_params"), dict) else None,
        prompts=prompts,
        base_prompts=tuple(str(p) for p in base_prompts) if isinstance(base_prompts, list) else prompts,
        suite=_suite(record.get("suite")),
        skipped_competitors=tuple(str(s) for s in _list(record.get("skipped_competitors"))),
        paths=RoundPaths(_text(paths.get("run_dir")), _text(paths.get("lora")), _text(paths.get("kohya_lora")),
                         _text(paths.get("comparison_report")), _text(paths.get("feedback")),
                         {str(name): [str(p) for p in _list(files)] for name, files in _dict(paths.get("images")).items()}),
        timings_s=timings, compute_s=compute)


def rounds_of(history: Any) -> list[Round]:
    """The typed rounds of a history's ``rounds`` (records or typed rounds)."""
    return [round_of(record) for record in history]
