"""Which finished rounds can win, and which one did: read by the session (best LoRA, patience) and by the
rule policy (going back to the best round), so both agree on what "best" means.

Rounds are ranked by quality (the LoRA's score on the character's own prompt). With the ``guarded`` ranking
(the default, setting ``round_ranking``) a round whose prompt-suite editability or bleed is *clearly* worse
than another ranked round's — beyond the margins below, about two spreads of a round's figure — does not win on
quality alone: the best is the highest-quality round that is not. A LoRA that wins quality by copying the
references' scene is what the suite catches."""

from __future__ import annotations

from agent.rounds.documents import Round, rounds_of
from agent.rounds.records import LORA


def ranked_rounds(history: list[Round]) -> list[Round]:
    """The rounds whose LoRA score can win (best round, target reached, patience): scored, and not a
    LoRA that copied the references — a memorised round scores high for the wrong reason."""
    return [r for r in rounds_of(history) if r.lora_score is not None
            and not (LORA in r.scores and r.scores[LORA].memorised)]


RANKINGS = ("guarded", "quality")
# Two binomial spreads of an editability share of ~32 images near 0.8 (0.07 each): a smaller gap is noise.
EDITABILITY_MARGIN = 0.15
# Bleed (LoRA − base CLIP similarity on no-trigger prompts) worse by more than this than the least-bleeding round.
BLEED_MARGIN = 0.05


def suite_score(record: Round, name: str) -> float | None:
    """A round's editability rate or bleed score from its prompt suite (None: no suite, or not scored)."""
    if record.suite is None:
        return None
    if name == "editability":
        block = record.suite.scores.editability
        return block.rate if block is not None else None
    block = record.suite.scores.bleed
    return block.score if block is not None else None


def clearly_worse(record: Round, rounds: list[Round]) -> str:
    """Why ``record``'s suite is clearly worse than another of ``rounds``' ('' when it is not)."""
    editability, bleed = suite_score(record, "editability"), suite_score(record, "bleed")
    edits = [e for e in (suite_score(r, "editability") for r in rounds) if e is not None]
    bleeds = [b for b in (suite_score(r, "bleed") for r in rounds) if b is not None]
    if editability is not None and edits and editability < max(edits) - EDITABILITY_MARGIN:
        return f"editability {editability:.2f} < {max(edits):.2f} − {EDITABILITY_MARGIN}"
    if bleed is not None and bleeds and bleed > min(bleeds) + BLEED_MARGIN:
        return f"bleed {bleed:+.3f} > {min(bleeds):+.3f} + {BLEED_MARGIN}"
    return ""


def best_round(history: list[Round], ranking: str = "guarded") -> Round | None:
    """The highest-scoring ranked round (of equal scores the earliest: it got there first); with ``guarded``,
    the highest-scoring one whose suite is not clearly worse than another round's."""
    scored = sorted(ranked_rounds(history), key=lambda r: (-r.lora_score, r.round))
    if ranking == "guarded":
        for record in scored:
            if not clearly_worse(record, scored):
                return record
    return scored[0] if scored else None


def how_to_go_on(reason: str) -> str:
    """What lets rounds run again after ``stop_reason`` gave ``reason`` (the setting that stopped them)."""
    if reason.startswith("target reached"):
        return "raise target_score ([rounds] in aldar.toml, or ALDAR_TARGET_SCORE) to train further"
    if reason.startswith("no improvement"):
        return "raise patience ([rounds] in aldar.toml, or ALDAR_PATIENCE) to keep trying"
    return "ask for more rounds (aldar run --rounds N)"


def stop_reason(history: list[Round], rounds: int, target: float, patience: int, ranking: str = "guarded") -> str:
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
    if last.lora_score >= target:
        return f"target reached: round {last.round} scored {last.lora_score:.3f} ≥ {target}"
    best = best_round(history, ranking)
    since_best = sum(1 for r in scored if r.round > best.round)
    if since_best >= patience:
        return f"no improvement for {since_best} round(s) since round {best.round} (patience {patience})"
    return ""
