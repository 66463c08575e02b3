"""The round in progress (``RoundState``: what its stages have produced so far) and the history's record
made of it when it finishes (``round_record``), the prompt suite's part included."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import NotRequired, TypedDict

from agent.rounds.decision import Decision
from agent.rounds.documents import RoundFeedback
from agent.rounds.records import BASE, CheckpointScore, ChosenCheckpoint, RoundRecord, scores_by_generator
from agent.rounds.store import MODEL_KEYS, RunStore
from tools.scoring.records import ComparisonReport
from tools.timestamps import iso_timestamp


class TrainedRound(TypedDict):
    run_dir: Path | None
    lora_path: Path | None
    kohya_path: NotRequired[Path | None]
    steps: int
    final_loss: float
    interrupted: bool
    resumed_from_step: NotRequired[int]  # 0: trained from scratch
    warm_start: NotRequired[dict | None]  # continued from an earlier round's checkpoint: {from_round, from_step, ...}
    stopped_early: NotRequired[str]  # why training stopped before its steps (a plateau), or ""
    checkpoint_scores: list[CheckpointScore]
    chosen_checkpoint: ChosenCheckpoint | None


@dataclass
class RoundState:
    """What the stages of the round in progress have produced so far."""

    number: int
    params: dict
    stamp: str
    timings: dict[str, float] = field(default_factory=dict)  # stage → seconds (wall)
    compute: dict[str, float] = field(default_factory=dict)  # stage → seconds inside model code
    train: TrainedRound | None = None
    images: dict[str, list[Path]] | None = None
    skipped: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    base_prompts: list[str] = field(default_factory=list)  # what the base model drew: the prompts without emphasis
    suite: list | None = None  # the prompt suite (tools.scoring.suite.SuitePrompt), drawn beside the own prompt
    suite_images: dict[str, list[list[Path]]] | None = None  # generator → images of each suite prompt
    suite_base_from: int | None = None  # the round whose base suite images were reused (same prompts and seeds)
    suite_report: dict | None = None
    suite_report_path: Path | None = None
    suite_key: str | None = None
    report: ComparisonReport | None = None
    feedback: RoundFeedback | None = None  # typed from the document written to feedback/
    report_path: Path | None = None
    feedback_path: Path | None = None


def round_record(state: RoundState, store: RunStore, profile: dict, decision: Decision, applied: dict,
                 notes: list[str], next_params: dict) -> RoundRecord:
    """The history's record of a finished round. Tolerant of missing stages: a round may be recorded
    before it was scored (then it has no scores)."""
    report = state.report or {}
    feedback = state.feedback or RoundFeedback()
    ceiling = report.get("ceiling")
    train = state.train or {}
    return {
        "round": state.number,
        "finished_at": iso_timestamp(),
        "params": state.params,
        "train": {"steps": train.get("steps"), "final_loss": train.get("final_loss"),
                  "interrupted": train.get("interrupted"), "checkpoint_scores": train.get("checkpoint_scores") or [],
                  "chosen_checkpoint": train.get("chosen_checkpoint"), "warm_start": train.get("warm_start"),
                  "stopped_early": train.get("stopped_early") or "",
                  "seconds": round(state.timings.get("train", 0.0), 3)},
        "scores": scores_by_generator(report),
        "ranking": report.get("ranking", []),
        "ceiling": {"quality": ceiling["quality"]["mean"], "clip": ceiling["clip"]["mean"],
                    "features": ceiling["features"]["mean"], "ssim": ceiling["ssim"]["mean"]} if ceiling else None,
        "lora_score": feedback.lora_score,
        "band": feedback.band,
        "best_competitor": feedback.best_competitor,
        "score_gap": feedback.score_gap,
        "overfitting": feedback.overfitting.as_json() if feedback.overfitting else None,
        "decision": {"adjustments": applied, "requested": decision.adjustments, "clamped": notes,
                     "stop": decision.stop, **({"llm_text": decision.llm_text} if decision.llm_text else {}),
                     **({"already_tried": decision.already_tried} if decision.already_tried else {})},
        "rationale": decision.rationale,
        "decided_by": decision.decided_by,
        "next_params": next_params,
        "prompts": state.prompts,
        "base_prompts": state.base_prompts or state.prompts,
        "suite": suite_record(state, store),
        "skipped_competitors": state.skipped,
        "paths": {"run_dir": store.relative(train.get("run_dir")), "lora": store.relative(train.get("lora_path")),
                  "kohya_lora": store.relative(train.get("kohya_path")),
                  "comparison_report": store.relative(state.report_path),
                  "feedback": store.relative(state.feedback_path),
                  "images": {name: [store.relative(p) for p in paths] for name, paths in (state.images or {}).items()}},
        "timings_s": {k: round(v, 4) for k, v in state.timings.items()},
        "compute_s": {k: round(v, 4) for k, v in state.compute.items()},
        "profile": profile,
    }


SUITE_SCORES = ("identity", "editability", "bleed")


def suite_base_key(texts: list[str], sampling, profile: dict) -> str:
    """What the base's suite images depend on: the prompts, how they are drawn and the models."""
    import hashlib
    import json

    drawn = dataclasses.asdict(sampling.as_drawn())
    models = {k: profile.get(k) for k in MODEL_KEYS}
    text = json.dumps({"prompts": texts, "sampling": drawn, "models": models}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reusable_base_suite(store: RunStore, key: str, count: int) -> tuple[int, list[list[Path]]] | None:
    """(round, base images per suite prompt) of the latest finished round drawn with the same suite key."""
    for record in reversed(store.rounds):
        stored = record.suite.images.get(BASE) if record.suite is not None else None
        if record.suite is None or record.suite.base_key != key or stored is None or len(stored) != count:
            continue
        paths = [[store.absolute(p) for p in group] for group in stored]
        if all(group and all(p is not None and p.is_file() for p in group) for group in paths):
            return record.suite.base_from_round or record.round, paths
    return None


def suite_record(state: RoundState, store: RunStore) -> dict | None:
    """The round record's ``suite``: its prompts, the LoRA's three scores, every generator's images."""
    if not state.suite:
        return None
    report = state.suite_report or {}
    return {"prompts": [prompt.as_dict() for prompt in state.suite],
            "scores": {name: report.get(name) for name in SUITE_SCORES},
            "generators": {name: {"identity": entry["identity"]["mean"], "editability": entry["editability"]["rate"],
                                  "no_trigger_clip": entry["no_trigger"]["clip"]["mean"]}
                           for name, entry in (report.get("generators") or {}).items()},
            "images": {name: [[store.relative(p) for p in group] for group in groups]
                       for name, groups in (state.suite_images or {}).items()},
            "base_key": state.suite_key, "base_from_round": state.suite_base_from,
            "report": store.relative(state.suite_report_path)}
