"""What a decider returns, and what a decider is: shared by the session, the rule policy and the LLM.

Kept apart so that ``agent.session`` and ``agent.policy`` need not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Decision:
    """The next round's adjustment: ``adjustments`` maps knob → new value."""

    adjustments: dict
    rationale: str
    decided_by: str
    stop: bool = False


class Decider(Protocol):
    name: str  # "rule-policy" or "llm:<model>"

    def decide(self, feedback: dict, history: list[dict], params: dict) -> Decision: ...
