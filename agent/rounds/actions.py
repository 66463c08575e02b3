"""The front ends' shared flows over a ``Session``: the REPL, the chat's tools and ``aldar run`` call these
rather than spell them out each. ``confirm`` asks the user (``UI.confirm``, or the REPL's wrapper of it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from agent.rounds.recording import TrainedRound
    from agent.rounds.session import Session


def paid_question(paid: list[str]) -> str:
    return f"Ask the paid APIs ({', '.join(paid)}) for images?"


def consent_to_paid(session: Session, confirm: Callable[[str], bool],
                    question: Callable[[list[str]], str] = paid_question) -> list[str]:
    """Ask before the keyed (paid) competitors are asked for images; on no they sit out from now on.
    Returns those that sit out ([] after a yes, or when no competitor has its key)."""
    paid = session.keyed_competitors()
    if not paid or confirm(question(paid)):
        return []
    session.skip_competitors(paid)
    return paid


def generate_with_consent(session: Session, confirm: Callable[[str], bool], prompt: str | None = None) -> dict:
    """This round's images, the paid competitors only after a yes: generator → list of image paths."""
    consent_to_paid(session, confirm)
    return session.generate([prompt] if prompt else None)


def train_next_round(session: Session, adjustments: dict, how: str,
                     decided_by: str) -> tuple[TrainedRound, dict, list[str]]:
    """Train the next round's LoRA by hand: a scored round is recorded first (its decision says ``how`` the
    next one was asked for), then ``adjustments`` apply (clamped) and the round trains.
    Returns (the trained round, the adjustments applied, clamp notes)."""
    session.finish_scored_round_before_training(adjustments, how, decided_by)
    applied, notes = session.apply(adjustments)
    return session.train(), applied, notes
