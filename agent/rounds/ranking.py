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


def how_to_go_on(reason: str) -> str:
    """What lets rounds run again after ``stop_reason`` gave ``reason`` (the setting that stopped them)."""
    if reason.startswith("target reached"):
        return "raise target_score ([rounds] in aldar.toml, or ALDAR_TARGET_SCORE) to train further"
    if reason.startswith("no improvement"):
        return "raise patience ([rounds] in aldar.toml, or ALDAR_PATIENCE) to keep trying"
    return "ask for more rounds (aldar run --rounds N)"


def stop_reason(history: list[dict], rounds: int, target: float, patience: int) -> str:
    """Why no further round should run, or '' to go on (the tiny profile too: its toy-world scores mean something)."""
    if len(history) >= rounds:
        if len(history) == rounds:
            return f"round limit reached ({rounds} of {rounds})"
        # More finished rounds than the limit: the limit counts the rounds already in the folder.
        return f"round limit reached: {len(history)} rounds are finished already, the limit is {rounds}"
    scored = ranked_rounds(history)
    if not scored:
        return ""
    last = scored[-1]
    if last["lora_score"] >= target:
        return f"target reached: round {last['round']} scored {last['lora_score']:.3f} ≥ {target}"
    best = best_round(history)
    since_best = sum(1 for r in scored if r["round"] > best["round"])
    if since_best >= patience:
        return f"no improvement for {since_best} round(s) since round {best['round']} (patience {patience})"
    return ""
