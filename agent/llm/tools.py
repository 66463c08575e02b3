"""The tools the LLM may call: methods of small classes over a ``Session`` or a decider's data.

Each tool's JSON schema is derived from its signature and docstring (``agent.llm.toolspec``). The knob
parameters are not written out per tool: a tool takes ``**knobs`` and the schema builder expands
the knob group of ``agent.rounds.knobs`` there, ranged by this session's bounds (the same bounds the clamp
uses), so the schema the model sees, the validation of its arguments and the clamp never disagree.
Results are small JSON-able dicts: the model's context is precious. The helpers read feedback and
records from disk too (older histories lack newer keys), so they read optional keys with ``.get``.

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
from agent.rounds.records import RoundRecord, SessionFeedback
from tools.errors import InputError
from tools.scoring.copies import copying

if TYPE_CHECKING:
    from agent.rounds.session import Session


# --------------------------------------------------------------------------- read-only helpers
def _round3(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def feedback_summary(feedback: SessionFeedback) -> dict:
    """The feedback's decision-relevant part, numbers rounded."""
    gaps = feedback.get("metric_gaps") or {}
    return {
        "round": feedback.get("round"),
        "lora_score": _round3(feedback.get("lora_score")),
        "band": feedback.get("band"),
        "best_competitor": feedback.get("best_competitor"),
        "competitor_score": _round3(feedback.get("competitor_score")),
        "ceiling_score": _round3(feedback.get("ceiling_score")),
        "score_gap": _round3(feedback.get("score_gap")),
        "compared_against": feedback.get("compared_against"),
        "needs_improvement": feedback.get("needs_improvement"),
        "reference_copy": bool(feedback.get("reference_copy")),  # memorised: the score measures a copy
        "metrics": {name: {k: _round3(v) for k, v in (entry or {}).items()} for name, entry in gaps.items()},
        "feature_gaps": [{k: _round3(v) for k, v in gap.items()} for gap in (feedback.get("feature_gaps") or [])[:6]],
        "overfitting": {k: _round3(v) for k, v in (feedback.get("overfitting") or {}).items()},
        "training": {k: _round3(v) for k, v in (feedback.get("training") or {}).items()},  # still_rising etc.
        "lora_spread": _round3(feedback.get("lora_spread")),  # a score differs from another only beyond this
        "recommendations": [r.get("message") for r in (feedback.get("recommendations") or [])[:5]],
        "profile": (feedback.get("profile") or {}).get("profile"),
        **suite_summary(feedback),
    }


def suite_summary(feedback: SessionFeedback) -> dict:
    """The prompt suite's identity, editability and bleed (the feedback guide explains them), numbers rounded;
    nothing when the round drew no suite."""
    blocks = {name: feedback.get(name) for name in ("identity", "editability", "bleed")}
    if not any(isinstance(block, dict) for block in blocks.values()):
        return {}
    shown = {name: {k: (_round3(v) if not isinstance(v, dict) else
                        {c: {g: _round3(x) for g, x in (r or {}).items()} for c, r in v.items()})
                    for k, v in block.items()}
             for name, block in blocks.items() if isinstance(block, dict)}
    prompts = [{"kind": p.get("kind"), **({"asks": f"{p.get('category')}: {p.get('value')}"}
                                          if p.get("kind") == "new_context" else {})}
               for p in feedback.get("suite_prompts") or []]
    return {**shown, "suite_prompts": prompts}


def round_summary(record: RoundRecord) -> dict:
    params = record.get("params") or {}
    return {"round": record["round"], "lora_score": _round3(record.get("lora_score")), "band": record.get("band"),
            "best_competitor": record.get("best_competitor"), "score_gap": _round3(record.get("score_gap")),
            "params": knob_values(params),
            **({"suite": {k: _round3(v) for k, v in suite_figures(record).items()}} if suite_figures(record) else {}),
            "decided_by": record.get("decided_by"), "rationale": record.get("rationale"),
            "adjustments": (record.get("decision") or {}).get("adjustments"), **round_compute(record)}


def round_compute(record: RoundRecord) -> dict:
    """What a round cost and how far its score is from noise: optimiser steps and training seconds, the warm
    start it continued, the spread of its LoRA score (standard error of its images) and its steps to likeness
    (the first checkpoint at 90 % of the reference ceiling's quality; null: none reached it)."""
    import math

    train = record.get("train") or {}
    lora = (record.get("scores") or {}).get("lora") or {}
    std, count = lora.get("quality_std"), lora.get("count")
    spread = std / math.sqrt(count) if isinstance(std, (int, float)) and isinstance(count, int) and count else None
    ceiling = (record.get("ceiling") or {}).get("quality")
    likeness = next((s.get("step") for s in sorted(train.get("checkpoint_scores") or [], key=lambda s: s.get("step") or 0)
                     if isinstance(ceiling, (int, float)) and isinstance(s.get("quality"), (int, float))
                     and s["quality"] >= 0.9 * ceiling), None)
    warm = train.get("warm_start") or {}
    return {"compute": {"optimizer_steps": train.get("steps"), "train_seconds": _round3(train.get("seconds")),
                        "warm_start": {"from_round": warm.get("from_round"), "from_step": warm.get("from_step")}
                        if warm else None, "stopped_early": train.get("stopped_early") or None},
            "spread": _round3(spread), "steps_to_likeness": likeness}


def suite_figures(record: RoundRecord) -> dict:
    """identity, editability and bleed of a recorded round's suite ({} without one)."""
    scores = ((record.get("suite") or {}).get("scores") or {}) if isinstance(record.get("suite"), dict) else {}
    figures = {"identity": (scores.get("identity") or {}).get("score"),
               "editability": (scores.get("editability") or {}).get("rate"),
               "editability_base": (scores.get("editability") or {}).get("base"),
               "bleed": (scores.get("bleed") or {}).get("score")}
    return {k: v for k, v in figures.items() if v is not None}


def compare_records(first: RoundRecord, second: RoundRecord) -> dict:
    """What changed between two rounds: parameters, then scores per generator and metric."""
    params_a, params_b = first.get("params") or {}, second.get("params") or {}
    changed = {k: {"from": params_a.get(k), "to": params_b.get(k)} for k in KNOBS
               if params_a.get(k) != params_b.get(k)}
    scores: dict[str, dict] = {}
    for generator in sorted(set(first.get("scores") or {}) | set(second.get("scores") or {})):
        a = (first.get("scores") or {}).get(generator) or {}
        b = (second.get("scores") or {}).get(generator) or {}
        scores[generator] = {metric: {"from": _round3(a.get(metric)), "to": _round3(b.get(metric)),
                                      "change": _round3(b[metric] - a[metric])
                                      if isinstance(a.get(metric), (int, float)) and isinstance(b.get(metric), (int, float))
                                      else None}
                             for metric in ("quality", "clip", "features", "ssim")}
    return {"rounds": [first["round"], second["round"]], "changed_params": changed, "scores": scores}


def explain_features(feedback: SessionFeedback, feature: str | None = None) -> list[dict]:
    """Why key features are weak, from the feedback alone (no LLM): pass rates against the target,
    what the gap means and which knob addresses it. One entry per weak feature (or the one asked for)."""
    gaps = feedback.get("feature_gaps") or []
    if feature:
        wanted = feature.strip().lower()
        # a word of the feature ("mustache") or of its category ("expression", "face" of face_shape)
        gaps = [g for g in gaps if wanted in str(g.get("feature", "")).lower()
                or wanted in str(g.get("category") or "").lower().replace("_", " ")]
        if not gaps:
            return [{"feature": feature, "weak": False,
                     "why": "the LoRA shows it at least as often as the target, so it is not a weak feature"}]
    copies = copying(feedback.get("overfitting"))
    explained = []
    for gap in gaps:
        lora, target = gap.get("lora_pass_rate"), gap.get("competitor_pass_rate") if gap.get("against") != "ceiling" \
            else gap.get("ceiling_pass_rate")
        rate = lora if isinstance(lora, (int, float)) else 0.0
        why = (f"the LoRA shows '{gap.get('feature')}' in {rate:.0%} of its images, "
               f"{gap.get('against') or 'the target'} in {target:.0%}" if isinstance(target, (int, float))
               else f"the LoRA shows '{gap.get('feature')}' in {rate:.0%} of its images")
        if copies:
            suggestion = "the images already copy a reference: lower lora_scale or train fewer steps before emphasising it"
        elif rate < MISSED_PASS_RATE:
            suggestion = (f"put '{gap.get('feature')}' in feature_emphasis so the captions and prompt stress it; "
                          "if it stays missing, train more steps")
        else:
            suggestion = "it shows up often but less than the target: more steps usually close this gap"
        explained.append({"feature": gap.get("feature"), "category": gap.get("category"), "weak": True,
                          "lora_pass_rate": _round3(lora), "target_pass_rate": _round3(target),
                          "against": gap.get("against"), "gap": _round3(gap.get("gap")), "why": why,
                          "suggestion": suggestion})
    return explained


def latest_feedback(session: "Session") -> dict | None:
    """This round's feedback, else the newest recorded round's, else the newest file in feedback/."""
    if session.current is not None and session.current.feedback is not None:
        return session.current.feedback
    return session.store.latest_feedback()


def rule_suggestion(feedback: dict, history: list[dict], params: dict, bounds: dict[str, tuple],
                    ranking: str = "guarded") -> dict:
    from agent.rounds.policy import RulePolicy

    decision = RulePolicy(bounds, ranking).decide(feedback, history, params)
    return {"adjustments": decision.adjustments, "rationale": decision.rationale, "decided_by": decision.decided_by}


def record_of(history: list[dict], number: int) -> dict:
    for record in history:
        if record["round"] == number:  # a whole number: the store checked every record at load
            return record
    known = ", ".join(str(r["round"]) for r in history) or "none yet"
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
    def history(self) -> list[dict]:
        raise NotImplementedError

    def feedback_of(self, round_number: int | None) -> dict | None:
        """The feedback of ``round_number`` (None: the latest one), or None when there is none."""
        raise NotImplementedError

    def rounds_extra(self) -> dict:
        """What ``list_rounds`` adds beside the rounds."""
        return {}

    def round_numbers(self) -> list[int]:
        """The rounds ``read_feedback`` may be asked about: the finished ones (subclasses add more)."""
        return [record["round"] for record in self.history()]

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
            if any(record["round"] == round_number for record in self.history()):
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

    def history(self) -> list[dict]:
        return self.session.history()

    def feedback_of(self, round_number: int | None) -> dict | None:
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
        return {"ok": True, "title": tale.get("title"), "scenes": [s.get("text") for s in tale.get("scenes", [])]}


def given_knobs(knobs: dict[str, Any]) -> dict[str, Any]:
    """The knob arguments the model actually sent (it may send null for the ones that stay)."""
    return {name: value for name, value in knobs.items() if name in KNOBS and value is not None}

