"""The embedded rule policy: feedback of one round in, the next training adjustment out.

No network, no LLM: a handful of readable rules with their thresholds named
below. Every adjustment passes through ``clamp_adjustments`` (the same clamp the
LLM decider's proposals go through), and every decision carries a one-sentence
rationale naming the signal that triggered it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from agent.rounds.decision import Decision
from agent.rounds.documents import Overfitting, Round, RoundFeedback, feedback_of, rounds_of
from agent.rounds.lever_rules import lever_rules
from agent.rounds.knobs import (BY_NAME, MAX_EMPHASIS, SAFE_BOUNDS, clamp_adjustments, finite_number, knob_values,
                         value_text)
from agent.rounds.ranking import best_round
from tools.scoring.copies import COPY_CLIP, COPY_SSIM

# Thresholds (scores are 0-1). CLIP similarity of SDXL character LoRAs to their
# references typically sits at 0.7-0.85; below 0.6 the character is not there yet.
LOW_CLIP = 0.6
# A generated image this close to one single reference is a near-copy, not the character: the one
# definition (tools.scoring.copies) that also ranks such images apart in the tables and the report.
# Mean pairwise (1 - cosine) distance between the LoRA's own images: below this they all look alike.
LOW_VARIETY = 0.05
# Variety falling below this fraction of the previous round's: the LoRA is collapsing onto the references.
VARIETY_DROP = 0.5
# A key feature shown in fewer than half of the LoRA's images counts as missed.
MISSED_PASS_RATE = 0.5
STEP_UP, STEP_DOWN, LR_DOWN, RANK_UP = 1.5, 0.7, 0.5, 2
# The prompt suite (tools.scoring.suite). Identity below this: the character does not survive a new scene.
IDENTITY_OK = 0.6
# Editability below this share of the base's (same prompts and seeds): the LoRA overrides what the prompt asks.
EDITABILITY_VS_BASE = 0.85
# Bleed (LoRA − base CLIP similarity to the references on no-trigger prompts) above this: everyone becomes him.
BLEED_HIGH = 0.05
# The LoRA's key features ahead of the base's (same seeds, the base's prompt without emphasis) by less than this: it draws the character no
# better than the words alone do. The per-image pass rates move in steps of 1/images; at 0.1 a plain round-1 LoRA of
# Aldar Köse passed on 2 of 3 seeds (+0.31, +0.23; +0.03 failed), King Zorabek's on none (bench/characters.py).
LEAD_LOW = 0.1
SCALE_DOWN = 0.85  # lora_scale × this against an overriding or bleeding LoRA (no retraining needed)


@dataclass
class Signals:
    """What the rules look at, read out of a ``build_feedback`` dict (missing values stay None)."""

    lora_score: float | None = None
    clip: float | None = None
    features: float | None = None
    ssim: float | None = None
    missed_features: list[str] = field(default_factory=list)
    max_reference_clip: float | None = None
    max_reference_ssim: float | None = None
    variety: float | None = None
    copies_reference: bool = False  # a LoRA image nearly copies one reference (tools.scoring.copies)
    still_rising: bool = False  # the round's best checkpoint was its last, beyond the spread: stopped too early
    best_step: int | None = None
    best_early: bool = False  # the best checkpoint came before the last: more steps would not help
    spread: float | None = None  # standard error of the LoRA's quality this round (std / √images)
    identity: float | None = None  # prompt suite: identity in new contexts
    editability: float | None = None  # share of new-context images showing what the prompt asked
    editability_base: float | None = None  # the base's share on the same prompts
    bleed: float | None = None  # LoRA − base CLIP similarity to the references without the trigger


def read_signals(feedback: RoundFeedback | dict[str, Any]) -> Signals:
    """The policy's inputs out of a round's feedback (typed by ``feedback_of``: the LLM decider and older
    feedback files may hand it a part of one, and missing values stay None).

    ``metric_gaps`` and ``feature_gaps`` come from ``tools.scoring.scorer.build_feedback``;
    ``overfitting`` is added by ``Session.score`` (see docs/ARCHITECTURE.md).
    """
    feedback = feedback_of(feedback)
    overfit, training, suite = feedback.overfitting or Overfitting(), feedback.training, feedback.suite
    return Signals(
        lora_score=feedback.lora_score,
        clip=feedback.metric("clip").lora,
        features=feedback.metric("features").lora,
        ssim=feedback.metric("ssim").lora,
        missed_features=[g.feature for g in feedback.feature_gaps if (g.lora_pass_rate or 0.0) < MISSED_PASS_RATE],
        max_reference_clip=overfit.max_reference_clip,
        max_reference_ssim=overfit.max_reference_ssim,
        variety=overfit.variety,
        copies_reference=feedback.overfitting is not None and overfit.copies_reference,
        still_rising=training is not None and training.still_rising,
        best_step=training.best_step if training is not None else None,
        best_early=training is not None and training.best_early,
        spread=feedback.lora_spread,
        identity=suite.identity.score if suite.identity else None,
        editability=suite.editability.rate if suite.editability else None,
        editability_base=suite.editability.base if suite.editability else None,
        bleed=suite.bleed.score if suite.bleed else None,
    )


class RulePolicy:
    """Maps feedback to an adjustment with the rules below, in priority order.

    1. overfitting (a near-copy of one reference, the LoRA's images all alike, or their
       variety halved since the previous round)
       → fewer steps and a lower learning rate; nothing that trains harder. On the prompt suite: identity at
       least IDENTITY_OK while editability falls under EDITABILITY_VS_BASE × the base's or bleed exceeds
       BLEED_HIGH — the character is learnt but overrides the prompt or leaks into trigger-free pictures
       → the same, and a lower ``lora_scale``.
    2. this round scored below the best earlier round → that round's parameters plus half the change tried
       from them (``backtrack``); nothing else this round, since the change just tried is what went wrong.
    3. low CLIP similarity, identity under IDENTITY_OK in new contexts while the prompt is still followed, or the
       validation quality still rising at the round's last checkpoint (of two or more scored checkpoints the best
       was the last) → more steps; once steps sit at their cap, a higher rank.
    4. key features the images miss → emphasise them in the next captions and prompt.
    Beside 1, 3 and 4: bleed above BLEED_HIGH, a prompted background drawn less often than the base draws it, or
    key features ahead of the base's by less than LEAD_LOW → prior preservation, masked loss or output
    preservation, each only where measured to help (``agent/rounds/lever_rules.py``); else the rationale says it
    was measured not to, with the figures.
    With no rule firing the parameters stay as they are.
    """

    name = "rule-policy"

    def __init__(self, bounds: dict[str, tuple] | None = None, ranking: str = "guarded") -> None:
        self.bounds = bounds or SAFE_BOUNDS  # Session.bounds: SAFE_BOUNDS, tighter on tiny
        self.ranking = ranking  # settings.round_ranking: which earlier round is "the best" to go back to

    def decide(self, feedback: RoundFeedback | dict, history: list[Round], params: dict) -> Decision:
        signals = read_signals(feedback)
        history = rounds_of(history)
        proposal: dict[str, Any] = {}
        reasons: list[str] = []
        overfit = overfitting_reason(signals, previous_variety(history))
        suite_overfit = "" if overfit else prompt_overridden(signals)
        back = None if overfit or suite_overfit else backtrack(signals.lora_score, history, params, self.ranking,
                                                                       signals.spread or 0.0)
        if overfit:
            proposal.update(fewer_steps_lower_lr(params))
            reasons.append(f"{overfit}, so train fewer steps at a lower learning rate")
        elif suite_overfit:
            proposal.update(fewer_steps_lower_lr(params))
            proposal["lora_scale"] = round(float(params.get("lora_scale", 1.0)) * SCALE_DOWN, 3)
            reasons.append(f"{suite_overfit}, so train fewer steps at a lower learning rate and draw at a lower "
                           f"lora_scale")
        elif back:
            proposal.update(back[0])
            reasons.append(back[1])
        elif signals.clip is not None and signals.clip < LOW_CLIP:
            more, why = train_harder(params, self.bounds, steps_help=not signals.best_early)
            proposal.update(more)
            reasons.append(f"CLIP similarity {signals.clip:.3f} is below {LOW_CLIP}, so {why}")
        elif weak_identity(signals):
            more, why = train_harder(params, self.bounds)
            proposal.update(more)
            reasons.append(f"in new scenes the identity is {signals.identity:.2f} (< {IDENTITY_OK}) while the prompt "
                           f"is followed, so {why}")
        elif signals.still_rising:
            more, why = train_harder(params, self.bounds)
            proposal.update(more)
            at = f" (step {signals.best_step})" if signals.best_step is not None else ""
            reasons.append(f"the validation quality was still rising at the last checkpoint{at}, so {why}")
        if not back:  # the training levers, each only where bench/levers.py measured it to help (lever_rules.py)
            levers, why = lever_rules(feedback, params, BLEED_HIGH, EDITABILITY_VS_BASE, LEAD_LOW)
            proposal.update(levers)
            reasons += why
        if signals.missed_features and not back:
            missed = signals.missed_features[:MAX_EMPHASIS]
            proposal["feature_emphasis"] = missed
            # Quoted: the phrases are taxonomy entries, often adjectives ("friendly") that read as English otherwise.
            named = ", ".join(f"'{phrase}'" for phrase in missed)
            reasons.append(f"under {MISSED_PASS_RATE:.0%} of the LoRA's images show {named}, so the next captions and prompt "
                           f"stress {'it' if len(missed) == 1 else 'them'}")
        adjustments, notes = clamp_adjustments(params, proposal, self.bounds)
        if not reasons:
            score = f"{signals.lora_score:.3f}" if signals.lora_score is not None else "unknown"
            rationale = f"No rule fired (LoRA score {score}, no overfitting, no missed features), so the parameters stay."
        else:
            rationale = _sentence("; ".join(reasons))
        if notes:
            rationale = rationale[:-1] + f" ({'; '.join(notes)})."
        return Decision(adjustments=adjustments, rationale=rationale, decided_by=self.name)


def backtrack(score: float | None, history: list[Round], params: dict[str, Any],
              ranking: str = "guarded", spread: float = 0.0) -> tuple[dict[str, Any], str] | None:
    """When this round (``params``, scoring ``score``) fell below the best earlier round: go back to that round's
    parameters plus half the change tried from them, as a backtracking line search halves a step that
    overshot. Returns (adjustments from ``params``, reason), or None when this round is the best so far or no
    untried half-step is left (one emphasised phrase cannot be halved): then the other rules go on from here.
    Noise-aware: a round counts as below only by more than ``spread`` (its images' standard error)."""
    best = best_round(history, ranking)
    if score is None or best is None or score >= best.lora_score - spread:
        return None
    start, tried = knob_values(best.params), knob_values(params)
    candidate = {**start, **half_change(start, tried)}
    if candidate in [knob_values(r.params) for r in rounds_of(history)] + [tried]:
        return None
    adjustments = {name: value for name, value in candidate.items() if tried.get(name) != value}
    half = ", ".join(f"{name} {value_text(value)}" for name, value in candidate.items() if start.get(name) != value)
    return adjustments, (f"this round scored {score:.3f}, below round {best.round}'s {best.lora_score:.3f}, so go "
                         f"back to round {best.round}'s parameters with half the change tried from them ({half})")


def half_change(start: dict[str, Any], tried: dict[str, Any]) -> dict[str, Any]:
    """The knobs of ``tried`` halfway back to ``start``: numbers at the midpoint (the learning rate at the
    geometric one, as it is searched on a log scale), emphasis with the first half of the phrases it added.
    Knobs that cannot be halved (one added phrase) are left out, so they stay at ``start``."""
    half: dict[str, Any] = {}
    for name, value in tried.items():
        before = start.get(name)
        if name not in start or before == value:
            continue
        knob = BY_NAME[name]
        if knob.kind in (bool, str):  # a switch or a choice has no half-way: it stays at ``start``
            continue
        if knob.kind is list:
            added = [phrase for phrase in value or [] if phrase not in (before or [])]
            if len(added) >= 2:
                half[name] = [*(before or []), *added[:len(added) // 2]]
            continue
        a, b = finite_number(before), finite_number(value)
        if a is None or b is None:
            continue
        middle = math.sqrt(a * b) if name == "learning_rate" and a > 0 and b > 0 else (a + b) / 2
        half[name] = int(round(middle)) if knob.kind is int else middle
    return half


def previous_variety(history: list[Round]) -> float | None:
    """The variety of the LoRA's images in the last finished round (None when unknown)."""
    for record in reversed(rounds_of(history)):
        if record.overfitting is not None and record.overfitting.variety is not None:
            return record.overfitting.variety
    return None


def overfitting_reason(signals: Signals, earlier_variety: float | None = None) -> str:
    """A short clause naming the overfitting sign, or '' when there is none."""
    if signals.copies_reference:
        return (f"an image nearly copies one reference (CLIP ≥ {COPY_CLIP} and SSIM ≥ {COPY_SSIM} to it; "
                f"closest CLIP {_figure(signals.max_reference_clip)}, SSIM {_figure(signals.max_reference_ssim)})")
    if signals.variety is not None and signals.variety < LOW_VARIETY:
        return f"the LoRA's images look alike (variety {signals.variety:.3f} < {LOW_VARIETY})"
    if signals.variety is not None and earlier_variety and signals.variety < earlier_variety * VARIETY_DROP:
        return f"the variety of the LoRA's images fell from {earlier_variety:.3f} to {signals.variety:.3f}"
    return ""


def prompt_overridden(signals: Signals) -> str:
    """A clause when the character is learnt (identity ≥ IDENTITY_OK) but overrides the prompt (editability under
    EDITABILITY_VS_BASE × the base's) or leaks without the trigger (bleed > BLEED_HIGH); else ''."""
    if signals.identity is None or signals.identity < IDENTITY_OK:
        return ""
    if (signals.editability is not None and signals.editability_base
            and signals.editability < EDITABILITY_VS_BASE * signals.editability_base):
        return (f"in new scenes the LoRA draws what the prompt asks in {signals.editability:.0%} of its images, under "
                f"{EDITABILITY_VS_BASE:.0%} of the base's {signals.editability_base:.0%}")
    if signals.bleed is not None and signals.bleed > BLEED_HIGH:
        return (f"without the trigger its images are {signals.bleed:+.3f} closer to the references than the base's "
                f"(bleed above {BLEED_HIGH})")
    return ""


def weak_identity(signals: Signals) -> bool:
    """Identity under IDENTITY_OK in new scenes while the prompt is still followed: train harder."""
    followed = (signals.editability is None or not signals.editability_base
                or signals.editability >= EDITABILITY_VS_BASE * signals.editability_base)
    return signals.identity is not None and signals.identity < IDENTITY_OK and followed


def _figure(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def fewer_steps_lower_lr(params: dict[str, Any]) -> dict[str, Any]:
    change: dict[str, Any] = {}
    if params.get("steps"):
        change["steps"] = max(1, int(params["steps"] * STEP_DOWN))
    if params.get("learning_rate"):
        change["learning_rate"] = params["learning_rate"] * LR_DOWN
    return change


def train_harder(params: dict[str, Any], bounds: dict[str, tuple],
                 steps_help: bool = True) -> tuple[dict[str, Any], str]:
    """More steps while below the cap; at the cap, or when the best checkpoint came early (``steps_help``
    False: more steps would only repeat the round), double the rank (alpha along, so alpha/rank holds)."""
    steps = int(params.get("steps") or 1)
    step_cap, rank_cap = bounds["steps"][1], bounds["rank"][1]
    if steps < step_cap and steps_help:
        return {"steps": min(max(int(round(steps * STEP_UP)), steps + 1), step_cap)}, "train more steps"
    rank = int(params.get("rank") or 4)
    if rank >= rank_cap:
        return {}, "nothing more can be added (steps and rank are at their caps)"
    new_rank = min(rank * RANK_UP, rank_cap)
    change: dict[str, Any] = {"rank": new_rank}
    if params.get("alpha"):
        change["alpha"] = params["alpha"] * new_rank / rank
    return change, ("raise the LoRA rank (steps are at their cap)" if steps_help or steps >= step_cap else
                    "raise the LoRA rank (the best checkpoint came early: more steps would not help)")


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[0].upper() + text[1:]).rstrip(".") + "."
