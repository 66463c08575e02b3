"""The tools the LLM may call, as typed, documented functions over a ``Session``.

Each tool's JSON schema is derived from its signature and docstring (``agent.toolspec``); the
ranges of the adjustable knobs come from ``session.bounds`` (the same bounds the clamp uses), so the
schema the model sees, the validation of its arguments and the clamp never disagree.
Results are small JSON-able dicts: the model's context is precious.

The read-only helpers (``feedback_summary``, ``explain_features``, ``compare_records`` …) are also used
by the slash commands (no LLM) and by the LLM decider.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Optional

from agent import ui
from agent.toolspec import Range, ToolSpec, tool_spec
from tools.atomic import read_json_object
from tools.errors import InputError

if TYPE_CHECKING:
    from agent.session import Decision, Session

KNOBS = ("steps", "learning_rate", "rank", "alpha", "lora_scale", "feature_emphasis")
INTEGER_KNOBS = ("steps", "rank")


# --------------------------------------------------------------------------- knob schema from the bounds
def knob_annotations(bounds: dict[str, tuple]) -> dict[str, Any]:
    """Optional typed annotations with ``Range`` metadata, one per adjustable knob in ``bounds``."""
    annotations: dict[str, Any] = {}
    for name, (low, high) in bounds.items():
        if name == "feature_emphasis":
            annotations[name] = Optional[list[str]]
        elif name in INTEGER_KNOBS:
            annotations[name] = Optional[Annotated[int, Range(low, high)]]
        else:
            annotations[name] = Optional[Annotated[float, Range(low, high)]]
    return annotations


def with_bounds(function: Any, bounds: dict[str, tuple]) -> Any:
    """Give a freshly defined function's knob parameters the ranges of this session's bounds."""
    for name, annotation in knob_annotations(bounds).items():
        if name in function.__annotations__:
            function.__annotations__[name] = annotation
    return function


def knob_values(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if name in KNOBS and value is not None}


# --------------------------------------------------------------------------- read-only helpers
def _round3(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def feedback_summary(feedback: dict) -> dict:
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
        "metrics": {name: {k: _round3(v) for k, v in (entry or {}).items()} for name, entry in gaps.items()},
        "feature_gaps": [{k: _round3(v) for k, v in gap.items()} for gap in (feedback.get("feature_gaps") or [])[:6]],
        "overfitting": {k: _round3(v) for k, v in (feedback.get("overfitting") or {}).items()},
        "recommendations": [r.get("message") for r in (feedback.get("recommendations") or [])[:5]],
        "profile": (feedback.get("profile") or {}).get("profile"),
    }


def round_summary(record: dict) -> dict:
    params = record.get("params") or {}
    return {"round": record.get("round"), "lora_score": _round3(record.get("lora_score")), "band": record.get("band"),
            "best_competitor": record.get("best_competitor"), "score_gap": _round3(record.get("score_gap")),
            "params": {k: params[k] for k in KNOBS if k in params},
            "decided_by": record.get("decided_by"), "rationale": record.get("rationale"),
            "adjustments": (record.get("decision") or {}).get("adjustments")}


def compare_records(first: dict, second: dict) -> dict:
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
    return {"rounds": [first.get("round"), second.get("round")], "changed_params": changed, "scores": scores}


def explain_features(feedback: dict, feature: str | None = None) -> list[dict]:
    """Why key features are weak, from the feedback alone (no LLM): pass rates against the target,
    what the gap means and which knob addresses it. One entry per weak feature (or the one asked for)."""
    gaps = feedback.get("feature_gaps") or []
    if feature:
        wanted = feature.strip().lower()
        gaps = [g for g in gaps if wanted in str(g.get("feature", "")).lower()]
        if not gaps:
            return [{"feature": feature, "weak": False,
                     "why": "the LoRA shows it at least as often as the target, so it is not a weak feature"}]
    overfit = feedback.get("overfitting") or {}
    copying = (overfit.get("max_reference_clip") or 0) >= 0.95 or (overfit.get("max_reference_ssim") or 0) >= 0.85
    explained = []
    for gap in gaps:
        lora, target = gap.get("lora_pass_rate"), gap.get("competitor_pass_rate") if gap.get("against") != "ceiling" \
            else gap.get("ceiling_pass_rate")
        rate = lora if isinstance(lora, (int, float)) else 0.0
        why = (f"the LoRA shows '{gap.get('feature')}' in {rate:.0%} of its images, "
               f"{gap.get('against') or 'the target'} in {target:.0%}" if isinstance(target, (int, float))
               else f"the LoRA shows '{gap.get('feature')}' in {rate:.0%} of its images")
        if copying:
            suggestion = "the images already copy a reference: lower lora_scale or train fewer steps before emphasising it"
        elif rate < 0.5:
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
    for record in reversed(session.history()):
        path = session.store.absolute((record.get("paths") or {}).get("feedback"))
        data = read_json_object(path)
        if data is not None:
            return data
    files = sorted(session.store.feedback_dir.glob("feedback_*.json"))
    return read_json_object(files[-1]) if files else None


def feedback_of_round(session: "Session", number: int) -> dict | None:
    if session.current is not None and session.current.number == number and session.current.feedback is not None:
        return session.current.feedback
    for record in session.history():
        if record.get("round") == number:
            return read_json_object(session.store.absolute((record.get("paths") or {}).get("feedback")))
    return None




def rule_suggestion(feedback: dict, history: list[dict], params: dict, bounds: dict[str, tuple]) -> dict:
    from agent.policy import RulePolicy

    decision = RulePolicy(bounds).decide(feedback, history, params)
    return {"adjustments": decision.adjustments, "rationale": decision.rationale, "decided_by": decision.decided_by}


def _round_numbers(session: "Session") -> list[int]:
    """The finished rounds' numbers and the round in progress."""
    numbers = [r.get("round") for r in session.history()]
    return numbers + ([session.current.number] if session.current is not None else [])


def record_of(history: list[dict], number: int) -> dict:
    for record in history:
        if record.get("round") == number:
            return record
    known = ", ".join(str(r.get("round")) for r in history) or "none yet"
    raise InputError(f"there is no finished round {number}", f"finished rounds: {known}")


def finish_scored_round(session: "Session", decision: "Decision") -> dict | None:
    """Record the round in progress if it has been scored (a manual train → generate → score)."""
    if session.current is not None and session.current.feedback is not None:
        return session.finish_round(decision)
    return None


def remember_next_params(session: "Session", applied: dict, rationale: str, decided_by: str) -> None:
    """Between rounds, a change must outlive this chat: the next Session starts from the last
    record's ``next_params``, so update it there, and note who changed it and why."""
    if not applied or session.current is not None or not session.store.rounds:
        return
    last = session.store.rounds[-1]
    last["next_params"] = dict(session.params)
    last.setdefault("next_params_changes", []).append(
        {"adjustments": applied, "rationale": rationale, "decided_by": decided_by})
    session.store.save()




# --------------------------------------------------------------------------- the tools
def build_session_tools(session: "Session", *, assume_yes: bool = False, decided_by: str = "llm") -> list[ToolSpec]:
    """The chat assistant's tools over ``session``; ``decided_by`` labels adjustments it records."""
    from agent.policy import clamp_adjustments
    from agent.session import Decision

    def analyze_references(force: bool = False) -> dict:
        """Analyse the reference pictures with CLIP: the character's key features and the training prompt.

        Args:
            force: Recompute even when a saved analysis of the same references exists.
        """
        analysis = session.analyze(force=force)
        categories = {name: [t.get("feature") for t in (entry.get("top") or [])]
                      for name, entry in (analysis.get("categories") or {}).items()}
        return {"key_features": analysis.get("key_features"), "training_prompt": analysis.get("training_prompt"),
                "categories": categories, "references": len(analysis.get("references") or [])}

    def train_lora(steps: int | None = None, learning_rate: float | None = None, rank: int | None = None,
                   alpha: float | None = None, lora_scale: float | None = None,
                   feature_emphasis: list[str] | None = None) -> dict:
        """Train the LoRA for the next round (asks the user first). Optional arguments adjust the parameters first.

        Args:
            steps: Optimiser steps.
            learning_rate: Optimiser step size.
            rank: LoRA rank (capacity).
            alpha: LoRA alpha (strength is alpha / rank).
            lora_scale: LoRA strength when generating.
            feature_emphasis: Key feature phrases to stress in the captions and prompt.
        """
        adjustments = knob_values(steps=steps, learning_rate=learning_rate, rank=rank, alpha=alpha,
                                  lora_scale=lora_scale, feature_emphasis=feature_emphasis)
        if not ui.confirm(f"Train round {session.next_round_number}'s LoRA now?", assume_yes):
            return {"ok": False, "error": "the user declined training; do not ask again this turn"}
        finish_scored_round(session, Decision(adjustments, "adjusted in chat", decided_by))
        applied, notes = clamp_adjustments(session.params, adjustments, session.bounds)
        result = session.train(applied or None)
        return {"ok": True, "round": session.current.number if session.current else None,
                "steps": result.get("steps"), "final_loss": _round3(result.get("final_loss")),
                "interrupted": result.get("interrupted"), "lora": session.store.relative(result.get("lora_path")),
                "applied": applied, "notes": notes}

    def generate_images(prompt: str | None = None) -> dict:
        """Generate this round's images: the LoRA, the base model and every configured hosted competitor.

        Args:
            prompt: A test prompt; by default the configured one with the emphasised features.
        """
        paid = session.keyed_competitors()
        if paid and not ui.confirm(f"Ask the paid APIs ({', '.join(paid)}) for images?", assume_yes):
            session.competitors = [c for c in session.competitors if c not in paid]
        images = session.generate([prompt] if prompt else None)
        return {"ok": True, "round": session.current.number if session.current else None,
                "images": {name: len(paths) for name, paths in images.items()},
                "skipped": list(session.current.skipped) if session.current else []}

    def score_round() -> dict:
        """Score this round's images against the references and write the comparison report and feedback."""
        result = session.score()
        report = result["report"]
        return {"ok": True, "ranking": [{k: _round3(v) for k, v in row.items()} for row in report.get("ranking", [])],
                "feedback": feedback_summary(result["feedback"]),
                "feedback_file": session.store.relative(result.get("feedback_path"))}

    def read_feedback(round_number: Optional[Annotated[int, Range(1)]] = None) -> dict:
        """Read the feedback of a round: scores, gaps to the best competitor, weak features, overfitting signs.

        Args:
            round_number: Which round; by default the latest one with feedback.
        """
        if round_number is None:
            feedback = latest_feedback(session)
        else:
            feedback = feedback_of_round(session, round_number)
            if feedback is None and round_number not in _round_numbers(session):
                # "no feedback yet" for round 1e20 would send the model to train, generate and score
                raise InputError(f"there is no round {round_number}",
                                 f"rounds so far: {', '.join(map(str, _round_numbers(session))) or 'none'}")
        if feedback is None:
            return {"ok": False, "error": "no feedback yet: train, generate and score a round first"}
        return {"ok": True, **feedback_summary(feedback)}

    def list_rounds() -> dict:
        """List the finished rounds: score, band, parameters, who decided the next change and why."""
        rounds = [round_summary(r) for r in session.history()]
        return {"ok": True, "rounds": rounds, "in_progress": session.current.number if session.current else None,
                "next_params": {k: session.params[k] for k in KNOBS if k in session.params}}

    def compare_rounds(first: int, second: int) -> dict:
        """Compare two finished rounds: which parameters changed and how each score moved.

        Args:
            first: The earlier round number.
            second: The later round number.
        """
        history = session.history()
        return {"ok": True, **compare_records(record_of(history, first), record_of(history, second))}

    def propose_adjustment() -> dict:
        """Ask the built-in rule policy what it would change next, from the latest feedback (nothing is applied)."""
        feedback = latest_feedback(session)
        if feedback is None:
            return {"ok": False, "error": "no feedback yet: score a round first"}
        return {"ok": True, **rule_suggestion(feedback, session.history(), dict(session.params), session.bounds)}

    def apply_adjustment(rationale: str, steps: int | None = None, learning_rate: float | None = None,
                         rank: int | None = None, alpha: float | None = None, lora_scale: float | None = None,
                         feature_emphasis: list[str] | None = None) -> dict:
        """Set the parameters of the next training round (validated and clamped to the safe ranges).

        A round that was already scored is recorded in the history with this decision.

        Args:
            rationale: One sentence: which signal in the feedback motivates the change.
            steps: Optimiser steps.
            learning_rate: Optimiser step size.
            rank: LoRA rank (capacity).
            alpha: LoRA alpha (strength is alpha / rank).
            lora_scale: LoRA strength when generating.
            feature_emphasis: Key feature phrases to stress in the captions and prompt.
        """
        adjustments = knob_values(steps=steps, learning_rate=learning_rate, rank=rank, alpha=alpha,
                                  lora_scale=lora_scale, feature_emphasis=feature_emphasis)
        recorded = finish_scored_round(session, Decision(adjustments, rationale, decided_by))
        if recorded is not None:
            return {"ok": True, "recorded_round": recorded["round"], "applied": recorded["decision"]["adjustments"],
                    "notes": recorded["decision"]["clamped"],
                    "next_params": {k: session.params[k] for k in KNOBS if k in session.params}}
        applied, notes = clamp_adjustments(session.params, adjustments, session.bounds)
        session.params.update(applied)
        remember_next_params(session, applied, rationale, decided_by)
        return {"ok": True, "applied": applied, "notes": notes,
                "next_params": {k: session.params[k] for k in KNOBS if k in session.params}}

    def explain_feature(feature: str | None = None) -> dict:
        """Explain why key features are weak in the latest feedback, and which knob addresses each.

        Args:
            feature: One feature phrase (e.g. "thin mustache"); by default every weak one.
        """
        feedback = latest_feedback(session)
        if feedback is None:
            return {"ok": False, "error": "no feedback yet: score a round first"}
        return {"ok": True, "features": explain_features(feedback, feature)}

    def write_story(idea: str, scenes: int = 4) -> dict:
        """Write a short Aldar Köse tale (text only) with the LLM; `aldar story` also illustrates it.

        Args:
            idea: What the tale is about.
            scenes: How many scenes (3 to 6).
        """
        try:
            from agent import story
        except ImportError:
            return {"ok": False, "error": "story writing is not available in this installation"}
        tale = story.write_story(session.settings, idea, scenes)
        return {"ok": True, "title": tale.get("title"), "scenes": [s.get("text") for s in tale.get("scenes", [])]}

    write_story.__annotations__["scenes"] = Annotated[int, Range(3, 6)]
    with_bounds(train_lora, session.bounds)
    with_bounds(apply_adjustment, session.bounds)
    functions = [analyze_references, train_lora, generate_images, score_round, read_feedback, list_rounds,
                 compare_rounds, propose_adjustment, apply_adjustment, explain_feature, write_story]
    return [tool_spec(function) for function in functions]
