"""What a decider returns, and what a decider is: shared by the session, the rule policy and the LLM.

Kept apart so that ``agent.rounds.session`` and ``agent.rounds.policy`` need not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from agent.rounds.documents import Round, RoundFeedback, rounds_of
from agent.rounds.knobs import knob_values


@dataclass
class Decision:
    """The next round's adjustment: ``adjustments`` maps knob → new value."""

    adjustments: dict
    rationale: str
    decided_by: str
    stop: bool = False
    # What an LLM said in a round it decided nothing (the rule policy decided instead): kept in the record.
    llm_text: str = ""
    # Proposals turned down because an earlier round trained those parameters: [{decided_by, adjustments, round}].
    already_tried: list = field(default_factory=list)


class Decider(Protocol):
    name: str  # "rule-policy" or "llm:<model>"

    def decide(self, feedback: RoundFeedback, history: list[Round], params: dict) -> Decision: ...


def already_trained(next_params: dict, history: list[Round], current_params: dict, current_round: int | None) -> int | None:
    """The round whose knobs equal ``next_params``' (an earlier one, or the round being decided), else None.

    Training is seeded, so those parameters would reproduce that round's LoRA to the digit: a round spent
    for nothing. Only the knobs are compared — nothing else changes between rounds.
    """
    wanted = knob_values(next_params)
    for record in rounds_of(history):
        if knob_values(record.params) == wanted:
            return record.round
    return current_round if knob_values(current_params) == wanted else None
