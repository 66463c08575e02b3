"""The suite guard, one rule for the ranking of rounds (``agent.rounds.ranking``) and the choice of a round's
checkpoint (``tools.training.lora_files.guarded_checkpoint``): a candidate whose prompt-suite editability or
bleed is *clearly* worse than another candidate's does not win on quality alone — the best is the
highest-quality candidate that is not. A LoRA that wins quality by copying the references' scene (background,
style) is what the guard catches.

"Clearly" is beyond a margin of about two spreads of a round's figure, or beyond the two figures' own spread
where they rest on fewer images (a checkpoint's editability is measured on 4 images, a round's on 24).
No heavy imports here: the policy and the ranking read it too.
"""

from __future__ import annotations

import math
from typing import Sequence

# Two binomial spreads of an editability share of ~32 images near 0.8 (0.07 each): a smaller gap is noise.
EDITABILITY_MARGIN = 0.15
# Bleed (LoRA − base CLIP similarity on no-trigger prompts) worse by more than this than the least-bleeding one.
BLEED_MARGIN = 0.05


def share_spread(rate: float, count: int | None) -> float:
    """The binomial spread (std) of a share of ``count`` images, the share taken with one image added either way
    (so 4 of 4 is not certain: 0.19, not 0); 0 when the count is unknown."""
    if not count or count <= 0:
        return 0.0
    smoothed = (rate * count + 1.0) / (count + 2.0)
    return math.sqrt(smoothed * (1.0 - smoothed) / count)


def clearly_worse(editability: float | None, bleed: float | None, editabilities: Sequence[float],
                  bleeds: Sequence[float], *, count: int | None = None) -> str:
    """Why a candidate with ``editability`` and ``bleed`` is clearly worse than the best of the candidates'
    ``editabilities`` and ``bleeds`` ('' when it is not; None figures are not judged). With ``count`` (the
    images each editability share rests on) the editability margin is at least the two shares' joint spread."""
    if editability is not None and editabilities:
        best = max(editabilities)
        margin = max(EDITABILITY_MARGIN,
                      math.hypot(share_spread(editability, count), share_spread(best, count)))
        if editability < best - margin:
            return f"editability {editability:.2f} < {best:.2f} − {margin:.2f}"
    if bleed is not None and bleeds:
        # Bleed ≤ 0 is none: a candidate less like the references than the base is no better than one at 0 (on
        # Aldar seed 2 a round at +0.037 lost to one at 0.47 quality because a third scored −0.076).
        floor = max(min(bleeds), 0.0)
        if bleed > floor + BLEED_MARGIN:
            return f"bleed {bleed:+.3f} > {floor:+.3f} + {BLEED_MARGIN}"
    return ""
