"""Which finished rounds can win, and which one did: read by the session (best LoRA, patience) and by the
rule policy (going back to the best round), so both agree on what "best" means."""

from __future__ import annotations

from agent.rounds.records import LORA, RoundRecord
from tools.numbers import finite_number
from tools.scoring.copies import memorised


def ranked_rounds(history: list[RoundRecord]) -> list[RoundRecord]:
    """The rounds whose LoRA score can win (best round, target reached, patience): scored, and not a
    LoRA that copied the references — a memorised round scores high for the wrong reason."""
    return [r for r in history if finite_number(r.get("lora_score")) is not None
            and not memorised((r.get("scores") or {}).get(LORA))]


def best_round(history: list[RoundRecord]) -> RoundRecord | None:
    """The highest-scoring ranked round; of equal scores the earliest (it got there first)."""
    scored = ranked_rounds(history)
    return max(scored, key=lambda r: (r["lora_score"], -r["round"])) if scored else None
