"""The tools the LLM may call: methods of small classes over a ``Session`` or a decider's data.

Each tool's JSON schema is derived from its signature and docstring (``agent.llm.toolspec``). The knob
parameters are not written out per tool: a tool takes ``**knobs`` and the schema builder expands
the knob group of ``agent.rounds.knobs`` there, ranged by this session's bounds (the same bounds the clamp
uses), so the schema the model sees, the validation of its arguments and the clamp never disagree.
Results are small JSON-able dicts: the model's context is precious. The helpers read the typed feedback and
round records of ``agent.rounds.documents`` (older files' missing keys were filled there, once).

``RoundTools`` holds the read-only tools both the chat (``SessionTools``) and the LLM decider
(``agent.llm.decider.DecisionTools``) offer. Every change to the session goes through ``Session``
methods. The read-only helpers below (``feedback_summary``, ``explain_features`` …) are also used
by the slash commands (no LLM) and by the LLM decider's briefing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

from agent.llm.toolspec import Range, ToolSpec, tool_spec
from agent.rounds.actions import generate_with_consent, train_next_round
from agent.rounds.decision import Decision
from agent.rounds.knobs import NAMES as KNOBS
from agent.rounds.knobs import knob_parameters, knob_values
from agent.rounds.policy import MISSED_PASS_RATE
from agent.rounds.documents import GeneratorScores, Round, RoundFeedback, SuiteScores, feedback_of, round_of
from agent.rounds.records import LIKENESS, LORA
from tools.errors import InputError

if TYPE_CHECKING:
    from agent.rounds.session import Session


# --------------------------------------------------------------------------- read-only helpers
def _round3(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def feedback_summary(feedback: RoundFeedback | dict) -> dict:
    """The feedback's decision-relevant part, numbers rounded."""
    feedback = feedback_of(feedback)
    return {
        "round": feedback.round,
        "lora_score": _round3(feedback.lora_score),
        "band": feedback.band,
        "best_competitor": feedback.best_competitor,
        "competitor_score": _round3(feedback.competitor_score),
        "ceiling_score": _round3(feedback.ceiling_score),
        "score_gap": _round3(feedback.score_gap),
        "compared_against": feedback.compared_against,
        "needs_improvement": feedback.needs_improvement,
        "reference_copy": feedback.reference_copy,  # memorised: the score measures a copy
        "metrics": {name: _rounded(gap.as_json()) for name, gap in feedback.metric_gaps.items()},
        "feature_gaps": [_rounded(gap.as_json()) for gap in feedback.feature_gaps[:6]],
        "overfitting": _rounded(feedback.overfitting.as_json()) if feedback.overfitting else {},
        "training": _rounded(feedback.training.as_json()) if feedback.training else {},  # still_rising etc.
        "lora_spread": _round3(feedback.lora_spread),  # a score differs from another only beyond this
        "recommendations": [r.message for r in feedback.recommendations[:5]],
        "profile": feedback.profile_name,
        **suite_summary(feedback),
    }


def _rounded(block: dict) -> dict:
    return {k: _rounded(v) if isinstance(v, dict) else _round3(v) for k, v in block.items()}


def suite_summary(feedback: RoundFeedback) -> dict:
    """The prompt suite's identity, editability and bleed (the feedback guide explains them), numbers rounded;
    nothing when the round drew no suite."""
    blocks = {"identity": feedback.suite.identity, "editability": feedback.suite.editability,
              "bleed": feedback.suite.bleed}
    if not any(blocks.values()):
        return {}
    shown = {name: _rounded(block.as_json()) for name, block in blocks.items() if block is not None}
    prompts = [{"kind": p.kind, **({"asks": f"{p.category}: {p.value}"} if p.kind == "new_context" else {})}
               for p in feedback.suite_prompts]
    return {**shown, "suite_prompts": prompts}


def round_summary(record: Round | dict) -> dict:
    record = round_of(record)
    return {"round": record.round, "lora_score": _round3(record.lora_score), "band": record.band,
            "best_competitor": record.best_competitor, "score_gap": _round3(record.score_gap),
            "params": knob_values(record.params),
            **({"suite": {k: _round3(v) for k, v in suite_figures(record).items()}} if suite_figures(record) else {}),
            "decided_by": record.decided_by, "rationale": record.rationale,
            "adjustments": record.decision.adjustments, **round_compute(record)}


def round_compute(record: Round) -> dict:
    """What a round cost and how far its score is from noise: optimiser steps and training seconds, the warm
    start it continued, the spread of its LoRA score (standard error of its images) and its steps to likeness
    (the first checkpoint at LIKENESS × the reference ceiling's quality; null: none reached it)."""
    import math

    train, lora = record.train, record.scores.get(LORA) or GeneratorScores()
    std, count = lora.quality_std, lora.count
    spread = std / math.sqrt(count) if std is not None and count else None
    ceiling = record.ceiling.quality if record.ceiling is not None else None
    likeness = next((s.step for s in sorted(train.checkpoint_scores, key=lambda s: s.step)
                     if ceiling is not None and s.quality is not None and s.quality >= LIKENESS * ceiling), None)
    warm = train.warm_start
    return {"compute": {"optimizer_steps": train.steps, "train_seconds": _round3(train.seconds),
                        "warm_start": {"from_round": warm.from_round, "from_step": warm.from_step}
                        if warm else None, "stopped_early": train.stopped_early or None},
            "spread": _round3(spread), "steps_to_likeness": likeness}


def suite_figures(record: Round) -> dict:
    """identity, editability and bleed of a recorded round's suite ({} without one)."""
    scores = record.suite.scores if record.suite is not None else SuiteScores()
    figures = {"identity": scores.identity.score if scores.identity else None,
               "editability": scores.editability.rate if scores.editability else None,
               "editability_base": scores.editability.base if scores.editability else None,
               "bleed": scores.bleed.score if scores.bleed else None}
    return {k: v for k, v in figures.items() if v is not None}


def compare_records(first: Round, second: Round) -> dict:
    """What changed between two rounds: parameters, then scores per generator and metric."""
    params_a, params_b = first.params, second.params
    changed = {k: {"from": params_a.get(k), "to": params_b.get(k)} for k in KNOBS
               if params_a.get(k) != params_b.get(k)}
    scores: dict[str, dict] = {}
    for generator in sorted(set(first.scores) | set(second.scores)):
        a = first.scores.get(generator) or GeneratorScores()
        b = second.scores.get(generator) or GeneratorScores()
        scores[generator] = {metric: {"from": _round3(getattr(a, metric)), "to": _round3(getattr(b, metric)),
                                      "change": _round3(getattr(b, metric) - getattr(a, metric))
                                      if getattr(a, metric) is not None and getattr(b, metric) is not None
                                      else None}
                             for metric in ("quality", "clip", "features", "ssim")}
    return {"rounds": [first.round, second.round], "changed_params": changed, "scores": scores}


def explain_features(feedback: RoundFeedback | dict, feature: str | None = None) -> list[dict]:
    """Why key features are weak, from the feedback alone (no LLM): pass rates against the target,
    what the gap means and which knob addresses it. One entry per weak feature (or the one asked for)."""
    feedback = feedback_of(feedback)
    gaps = list(feedback.feature_gaps)
    if feature:
        wanted = feature.strip().lower()
        # a word of the feature ("mustache") or of its category ("expression", "face" of face_shape)
        gaps = [g for g in gaps if wanted in g.feature.lower()
                or wanted in (g.category or "").lower().replace("_", " ")]
        if not gaps:
            return [{"feature": feature, "weak": False,
                     "why": "the LoRA shows it at least as often as the target, so it is not a weak feature"}]
    copies = feedback.overfitting is not None and feedback.overfitting.copies_reference
    explained = []
    for gap in gaps:
        lora = gap.lora_pass_rate
        target = gap.competitor_pass_rate if gap.against != "ceiling" else gap.ceiling_pass_rate
        rate = lora if lora is not None else 0.0
        why = (f"the LoRA shows '{gap.feature}' in {rate:.0%} of its images, "
               f"{gap.against or 'the target'} in {target:.0%}" if target is not None
               else f"the LoRA shows '{gap.feature}' in {rate:.0%} of its images")
        if copies:
            suggestion = "the images already copy a reference: lower lora_scale or train fewer steps before emphasising it"
        elif rate < MISSED_PASS_RATE:
            suggestion = (f"put '{gap.feature}' in feature_emphasis so the captions and prompt stress it; "
                          "if it stays missing, train more steps")
        else:
            suggestion = "it shows up often but less than the target: more steps usually close this gap"
        explained.append({"feature": gap.feature, "category": gap.category, "weak": True,
                          "lora_pass_rate": _round3(lora), "target_pass_rate": _round3(target),
                          "against": gap.against, "gap": _round3(gap.gap), "why": why,
                          "suggestion": suggestion})
    return explained


def latest_feedback(session: "Session") -> RoundFeedback | None:
    """This round's feedback, else the newest recorded round's, else the newest file in feedback/."""
    if session.current is not None and session.current.feedback is not None:
        return session.current.feedback
    return session.store.latest_feedback()


def rule_suggestion(feedback: RoundFeedback, history: list[Round], params: dict, bounds: dict[str, tuple],
                    ranking: str = "guarded") -> dict:
    from agent.rounds.policy import RulePolicy

    decision = RulePolicy(bounds, ranking).decide(feedback, history, params)
    return {"adjustments": decision.adjustments, "rationale": decision.rationale, "decided_by": decision.decided_by}


def record_of(history: list[Round], number: int) -> Round:
    for record in history:
        if record.round == number:
            return record
    known = ", ".join(str(r.round) for r in history) or "none yet"
    raise InputError(f"there is no finished round {number}", f"finished rounds: {known}")


# --------------------------------------------------------------------------- the tools
class RoundTools:
    """The read-only tools over finished rounds and their feedback, shared by the chat and the decider.

    A subclass says where the data comes from (``history``, ``feedback_of``, ``results_root``) and
    lists its own tools in ``TOOLS``; ``specs()`` derives every tool's schema.
    """

    READ_ONLY = ("read_feedback", "list_rounds", "compare_rounds", "explain_feature")
    TOOLS: tuple[str, ...] = ()

    def __init__(self, bounds: dict[str, tuple]) -> None:
        self.bounds = bounds

    # ---- data sources (subclasses)
    def history(self) -> list[Round]:
        raise NotImplementedError

    def feedback_of(self, round_number: int | None) -> RoundFeedback | None:
        """The feedback of ``round_number`` (None: the latest one), or None when there is none."""
        raise NotImplementedError

    def rounds_extra(self) -> dict:
        """What ``list_rounds`` adds beside the rounds."""
        return {}

    def round_numbers(self) -> list[int]:
        """The rounds ``read_feedback`` may be asked about: the finished ones (subclasses add more)."""
        return [record.round for record in self.history()]

    def specs(self) -> list[ToolSpec]:
        groups = {"knobs": knob_parameters(self.bounds)}
        return [tool_spec(getattr(self, name), groups=groups) for name in self.READ_ONLY + self.TOOLS]

    # ---- the tools
    def read_feedback(self, round_number: Optional[Annotated[int, Range(1)]] = None) -> dict:
        """Read the feedback of a round: scores, gaps to the best competitor, weak features, overfitting signs.

        Args:
            round_number: Which round; by default the latest one (the one being decided).
        """
        feedback = self.feedback_of(round_number)
        if feedback is not None:
            return {"ok": True, **feedback_summary(feedback)}
        if round_number is not None:
            known = self.round_numbers()
            if round_number not in known:
                # "no feedback yet" for round 1e20 would send the model to train, generate and score
                raise InputError(f"there is no round {round_number}",
                                 f"rounds so far: {', '.join(map(str, known)) or 'none'}")
            if any(record.round == round_number for record in self.history()):
                return {"ok": True, **round_summary(record_of(self.history(), round_number))}
        return {"ok": False, "error": "no feedback yet: train, generate and score a round first"}

    def list_rounds(self) -> dict:
        """List the finished rounds: score, band, parameters, who decided the next change and why."""
        return {"ok": True, "rounds": [round_summary(r) for r in self.history()], **self.rounds_extra()}

    def compare_rounds(self, first: int, second: int) -> dict:
        """Compare two finished rounds: which parameters changed and how each score moved.

        Args:
            first: The earlier round number.
            second: The later round number.
        """
        history = self.history()
        return {"ok": True, **compare_records(record_of(history, first), record_of(history, second))}

    def explain_feature(self, feature: str | None = None) -> dict:
        """Explain why key features are weak in the latest feedback, and which knob addresses each.

        Args:
            feature: One feature phrase (e.g. "thin mustache"); by default every weak one.
        """
        feedback = self.feedback_of(None)
        if feedback is None:
            return {"ok": False, "error": "no feedback yet: score a round first"}
        return {"ok": True, "features": explain_features(feedback, feature)}


class SessionTools(RoundTools):
    """The chat assistant's tools over a ``Session``; ``confirm`` asks the user before long or paid work."""

    TOOLS = ("analyze_references", "train_lora", "generate_images", "score_round", "suggest_adjustment",
             "apply_adjustment", "write_story")

    def __init__(self, session: "Session", confirm: Callable[[str], bool], decided_by: str = "llm") -> None:
        super().__init__(session.bounds)
        self.session, self.confirm, self.decided_by = session, confirm, decided_by

    def history(self) -> list[Round]:
        return self.session.history()

    def feedback_of(self, round_number: int | None) -> RoundFeedback | None:
        session = self.session
        if not round_number:
            return latest_feedback(session)
        if session.current is not None and session.current.number == round_number:
            return session.current.feedback
        return session.store.feedback(round_number)

    def round_numbers(self) -> list[int]:
        """The finished rounds and the round in progress."""
        current = self.session.current
        return super().round_numbers() + ([current.number] if current is not None else [])

    def rounds_extra(self) -> dict:
        session = self.session
        return {"in_progress": session.current.number if session.current else None,
                "next_params": knob_values(session.params)}

    def analyze_references(self, force: bool = False) -> dict:
        """Analyse the reference pictures with CLIP: the character's key features and the training prompt.

        Args:
            force: Recompute even when a saved analysis of the same references exists.
        """
        analysis = self.session.analyze(force=force)
        categories = {name: [t.get("feature") for t in (entry.get("top") or [])]
                      for name, entry in (analysis.get("categories") or {}).items()}
        return {"key_features": analysis.get("key_features"), "training_prompt": analysis.get("training_prompt"),
                "categories": categories, "references": len(analysis.get("references") or [])}

    def train_lora(self, **knobs: Any) -> dict:
        """Train the LoRA for the next round (asks the user first). Optional knob arguments adjust the parameters first."""
        session = self.session
        if not self.confirm(f"Train round {session.training_round_number}'s LoRA now?"):
            return {"ok": False, "error": "the user declined training; do not ask again this turn"}
        result, applied, notes = train_next_round(session, given_knobs(knobs), "adjusted in chat", self.decided_by)
        chosen = {k: _round3(v) for k, v in (result.get("chosen_checkpoint") or {}).items()} or None
        return {"ok": True, "round": session.current.number if session.current else None,
                "steps": result.get("steps"), "final_loss": _round3(result.get("final_loss")),
                "interrupted": result.get("interrupted"), "lora": session.store.relative(result.get("lora_path")),
                "chosen_checkpoint": chosen, "applied": applied, "notes": notes}

    def generate_images(self, prompt: str | None = None) -> dict:
        """Generate this round's images: the LoRA, the base model and every configured hosted competitor.

        Args:
            prompt: A test prompt; by default the configured one with the emphasised features.
        """
        session = self.session
        images = generate_with_consent(session, self.confirm, prompt)
        return {"ok": True, "round": session.current.number if session.current else None,
                "images": {name: len(paths) for name, paths in images.items()},
                "skipped": list(session.current.skipped) if session.current else []}

    def score_round(self) -> dict:
        """Score this round's images against the references and write the comparison report and feedback."""
        result = self.session.score()
        report = result["report"]
        return {"ok": True, "ranking": [{k: _round3(v) for k, v in row.items()} for row in report.get("ranking", [])],
                "feedback": feedback_summary(result["feedback"]),
                "feedback_file": self.session.store.relative(result.get("feedback_path"))}

    def suggest_adjustment(self) -> dict:
        """Ask the built-in rule policy what it would change next, from the latest feedback (nothing is applied)."""
        feedback = latest_feedback(self.session)
        if feedback is None:
            return {"ok": False, "error": "no feedback yet: score a round first"}
        return {"ok": True, **rule_suggestion(feedback, self.session.history(), dict(self.session.params),
                                              self.bounds)}

    def apply_adjustment(self, rationale: str, **knobs: Any) -> dict:
        """Set the parameters of the next training round (validated and clamped to the safe ranges).

        A round that was already scored is recorded in the history with this decision.

        Args:
            rationale: One sentence: which signal in the feedback motivates the change.
        """
        session = self.session
        adjustments = given_knobs(knobs)
        recorded = session.finish_scored_round(Decision(adjustments, rationale, self.decided_by))
        if recorded is not None:
            return {"ok": True, "recorded_round": recorded["round"], "applied": recorded["decision"]["adjustments"],
                    "notes": recorded["decision"]["clamped"], "next_params": knob_values(session.params)}
        applied, notes = session.set_next_params(adjustments, rationale, self.decided_by)
        return {"ok": True, "applied": applied, "notes": notes, "next_params": knob_values(session.params)}

    def write_story(self, idea: str, scenes: Annotated[int, Range(3, 6)] = 4) -> dict:
        """Write a short Aldar Köse tale (text only) with the LLM; `aldar story` also illustrates it.

        Args:
            idea: What the tale is about.
            scenes: How many scenes (3 to 6).
        """
        try:
            from agent.llm import story
        except ImportError:
            return {"ok": False, "error": "story writing is not available in this installation"}
        tale = story.write_story(self.session.settings, idea, scenes)
        return {"ok": True, "title": tale.get("title"), "scenes": [scene.get("text") for scene in tale.get("scenes", [])]}


def given_knobs(knobs: dict[str, Any]) -> dict[str, Any]:
    """The knob arguments the model actually sent (it may send null for the ones that stay)."""
    return {name: value for name, value in knobs.items() if name in KNOBS and value is not None}

