"""The LLM as the ``Decider`` of ``Session.run_rounds``.

The model gets this round's feedback, the earlier rounds, the current parameters and the rule
policy's suggestion, with the guidance in ``prompts/`` (decider, feedback guide, knobs). It may look
things up with read-only tools and must end with one ``propose_adjustment`` call, whose arguments
are validated against the schema (ranges = the session's bounds) and then clamped with
``agent.rounds.knobs.clamp_adjustments``. Whatever goes wrong — no key, an API error, a server that refuses
tools (not asked again that run) — the rule policy decides instead, and the reason is logged and kept in
the rationale. A decision must decide: no proposal after a reminder, an empty one without ``stop`` or one
without a rationale is "LLM proposed nothing — rule policy" (the model's text kept in the record); a
proposal of parameters an earlier round trained is sent back once, then the rule policy decides.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from agent.llm.client import ToolsUnsupportedError, is_deepseek, make_client
from agent.llm.loop import ChatLoop, LoopEvents, TurnResult, Usage
from agent.llm.prompts import decider_system_prompt
from agent.llm.tools import RoundTools, given_knobs, feedback_summary, round_summary, rule_suggestion
from agent.rounds.decision import Decision, already_trained
from agent.rounds.documents import Round, RoundFeedback, feedback_of, rounds_of
from agent.rounds.knobs import SAFE_BOUNDS, clamp_adjustments, knob_values
from agent.rounds.policy import RulePolicy
from agent.rounds.store import round_feedback
from tools.errors import AldarError, InsecureUrlError
from tools.settings import Settings

log = logging.getLogger(__name__)
PROPOSE = "propose_adjustment"
REMINDER = ("You have not called propose_adjustment yet. Call it now, once, with the knobs to change "
            "(or stop=true) and a one-sentence rationale.")
ALREADY_TRIED = ("Round {round} already trained exactly these parameters: {params}. Training them again would only "
                 "reproduce that LoRA. Call propose_adjustment once more with a change that was not tried yet "
                 "(or stop=true).")
# What the history records when the rule policy decided because the LLM did not.
NOTHING = "LLM proposed nothing — rule policy"
REPEATED = "LLM proposed already-trained parameters twice — rule policy"


class NoDecision(ValueError):
    """The model decided nothing usable; the rule policy decides and the record says why (``label``)."""

    def __init__(self, label: str, text: str, tried: list[dict] | None = None) -> None:
        super().__init__(label)
        self.label, self.text, self.tried = label, text, tried or []


class LLMDecider:
    """Implements ``agent.rounds.decision.Decider`` with an OpenAI-compatible model."""

    def __init__(self, settings: Settings, bounds: dict[str, tuple] | None = None, *, client: Any = None,
                 model: str | None = None, events: LoopEvents | None = None) -> None:
        self.settings = settings
        self.bounds = bounds or SAFE_BOUNDS
        if client is None:
            client, model = make_client(settings)  # ConfigError without a key: the caller picks the rule policy
        self.client, self.model = client, model or settings.llm_model
        self.name = f"llm:{self.model}"
        self.events = events
        self.system_prompt = decider_system_prompt(settings, self.bounds)
        self.usage = Usage()
        self.last_turns: list[TurnResult] = []
        self.fallbacks: list[str] = []
        self.tools_refused = ""  # set once the server refused the tool schemas: not asked again this run

    def decide(self, feedback: RoundFeedback | dict, history: list[Round], params: dict) -> Decision:
        feedback, history = feedback_of(feedback), rounds_of(history)
        rule = RulePolicy(self.bounds, self.settings.round_ranking)  # the same fallback `aldar run --no-llm` uses
        if self.tools_refused:
            reason = self.tools_refused
        else:
            try:
                return self._ask_model(feedback, history, params)
            except NoDecision as nothing:
                log.warning("LLM decider: %s", nothing.label)
                self.fallbacks.append(nothing.label)
                decision = rule.decide(feedback, history, params)
                decision.rationale = f"{nothing.label}: {decision.rationale}"
                decision.llm_text, decision.already_tried = nothing.text, nothing.tried
                return decision
            except ToolsUnsupportedError as exc:
                reason = self.tools_refused = str(exc)
            except (AldarError, ValueError) as exc:
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001 — a decider failure must never end the run
                log.warning("LLM decider failed", exc_info=True)
                reason = f"{type(exc).__name__}: {exc}"
        log.warning("LLM decider fell back to the rule policy: %s", reason)
        self.fallbacks.append(reason)
        decision = rule.decide(feedback, history, params)
        decision.rationale = f"{decision.rationale} (the LLM could not decide: {reason})"
        return decision

    # ------------------------------------------------------------------ internals
    def _ask_model(self, feedback: RoundFeedback, history: list[Round], params: dict) -> Decision:
        tools = DecisionTools(feedback, history, params, self.bounds, Path(self.settings.output_dir))
        loop = ChatLoop(self.client, self.model, tools.specs(), system_prompt=self.system_prompt,
                        max_steps=self.settings.llm_max_steps, thinking=self.settings.llm_thinking,
                        events=self.events, terminal_tools=[PROPOSE], max_tokens=self.settings.llm_max_tokens)
        self.last_turns = []
        try:
            turn = loop.run_turn(self._briefing(feedback, history, params))
            self.last_turns.append(turn)
            if turn.terminal is None:
                turn = loop.run_turn(REMINDER, tool_choice=self._forced_choice())
                self.last_turns.append(turn)
            def repeats(decision: Decision) -> int | None:  # the round that already trained its parameters
                if decision.stop:
                    return None
                return already_trained({**params, **decision.adjustments}, history, params, feedback.round)

            decision = self._decision(tools.proposal if turn.terminal else None, params)
            repeated = repeats(decision)
            if repeated is None:
                return decision
            # Those parameters would reproduce round `repeated`'s LoRA: one more try, told so.
            tried = [{"decided_by": self.name, "adjustments": decision.adjustments, "round": repeated}]
            tools.proposal = None
            turn = loop.run_turn(ALREADY_TRIED.format(round=repeated, params=json.dumps(
                knob_values({**params, **decision.adjustments}), default=str)), tool_choice=self._forced_choice())
            self.last_turns.append(turn)
            try:
                decision = self._decision(tools.proposal if turn.terminal else None, params)
            except NoDecision as nothing:
                raise NoDecision(nothing.label, nothing.text, tried) from None
            repeated = repeats(decision)
            if repeated is not None:
                tried.append({"decided_by": self.name, "adjustments": decision.adjustments, "round": repeated})
                raise NoDecision(REPEATED, self._said(), tried)
            decision.already_tried = tried
            return decision
        finally:
            self.usage.add(loop.usage)

    def _decision(self, proposal: dict | None, params: dict) -> Decision:
        """The clamped decision of a proposal that decides something; NoDecision for none, an empty one
        (no knob and no stop) or one without a rationale — a round would otherwise repeat for nothing."""
        rationale = (proposal or {}).get("rationale", "").strip()
        if proposal is None or not rationale or not (proposal["adjustments"] or proposal["stop"]):
            raise NoDecision(NOTHING, self._said())
        adjustments, notes = clamp_adjustments(params, proposal["adjustments"], self.bounds)
        if notes:
            rationale = f"{rationale} (clamped: {'; '.join(notes)})"
        return Decision(adjustments=adjustments, rationale=rationale, decided_by=self.name,
                        stop=bool(proposal["stop"]))

    def _said(self) -> str:
        """What the model wrote in this decision's turns (kept in the record when it decided nothing)."""
        return "\n".join(turn.text.strip() for turn in self.last_turns if turn.text.strip())[:2000]

    def _forced_choice(self) -> Any:
        # Deepseek's thinking mode does not take a forced tool_choice; the reminder alone has to do there.
        if self.settings.llm_thinking and is_deepseek(str(self.client.base_url)):
            return None
        return {"type": "function", "function": {"name": PROPOSE}}

    def _briefing(self, feedback: RoundFeedback, history: list[Round], params: dict) -> str:
        payload = {
            "feedback": feedback_summary(feedback),
            "history": [round_summary(r) for r in history[-6:]],
            "current_params": knob_values(params),
            "rule_policy_would": rule_suggestion(feedback, history, params, self.bounds, self.settings.round_ranking),
        }
        return ("Decide the next round. Data (JSON):\n" + json.dumps(payload, ensure_ascii=False, default=str)
                + f"\nEnd with one {PROPOSE} call.")


class DecisionTools(RoundTools):
    """The shared read-only tools over the data ``decide`` received, plus the terminal ``propose_adjustment``."""

    TOOLS = (PROPOSE,)

    def __init__(self, feedback: RoundFeedback, history: list[Round], params: dict, bounds: dict[str, tuple],
                 results_root: Path) -> None:
        super().__init__(bounds)
        self.feedback, self.rounds, self.params = feedback, history, params
        self.results_root = results_root
        self.proposal: dict | None = None

    def history(self) -> list[Round]:
        return self.rounds

    def feedback_of(self, round_number: int | None) -> RoundFeedback | None:
        if not round_number or round_number == self.feedback.round:
            return self.feedback
        record = next((record for record in self.rounds if record.round == round_number), None)
        return round_feedback(self.results_root, record) if record is not None else None

    def propose_adjustment(self, rationale: str, stop: bool = False, **knobs: Any) -> dict:
        """Decide the next round: the knobs to change (leave out the ones that stay) and why.

        Args:
            rationale: One sentence naming the feedback signal behind the change.
            stop: True only when further rounds cannot help.
        """
        adjustments = given_knobs(knobs)
        self.proposal = {"adjustments": adjustments, "rationale": rationale, "stop": stop}
        applied, notes = clamp_adjustments(self.params, adjustments, self.bounds)
        return {"ok": True, "accepted": applied, "notes": notes}


def make_decider(settings: Settings, bounds: dict[str, tuple], events: LoopEvents | None = None):
    """The LLM decider when a key is configured, else the rule policy (and the reason why)."""
    try:
        return LLMDecider(settings, bounds, events=events), ""
    except InsecureUrlError:  # the user asked for that LLM: a silent switch to the rule policy would hide it
        raise
    except AldarError as exc:
        return RulePolicy(bounds, settings.round_ranking), str(exc)
