"""When a generated image is a near copy of one reference: the one definition the scorer, the rule
policy, the score tables, the report and the feedback all use.

A copy of a reference scores at the top of every metric (CLIP and SSIM against itself are 1.0), so
ranked like any other image it would win — yet it shows that the model memorised a training picture,
not that it learned the character. Such images are flagged, and a generator that made one is ranked
apart from the others, never the winner. No heavy imports here: the policy and the tables read it too.

A copy is close to one reference in content *and* in layout: CLIP cosine and SSIM to that same
reference both at their thresholds. Either alone is not enough — SSIM of flat drawings on plain
backgrounds runs high for different pictures (the tests' simple drawings reach 0.93-0.96 against
each other), and CLIP alone cannot tell the same picture from a close variation of it.
"""

from __future__ import annotations

from typing import Any

from tools.numbers import finite_number

# Raw CLIP cosine and SSIM to one single reference at or above which an image is that reference again.
# Different pictures of one character sit well below the pair (the bundled references: CLIP about 0.5,
# SSIM about 0.56 between each other; toy-world characters at most 0.66 SSIM against them).
COPY_CLIP = 0.95
COPY_SSIM = 0.85
MEMORISED = "reference copy — memorised"


def is_reference_copy(clip: Any, ssim: Any) -> bool:
    """Whether an image whose CLIP cosine and SSIM to one reference are these nearly copies it."""
    return (finite_number(clip) or 0.0) >= COPY_CLIP and (finite_number(ssim) or 0.0) >= COPY_SSIM


def copy_evidence(clip: Any, ssim: Any) -> str:
    """The figures that make an image a copy: ``CLIP 1.000 ≥ 0.95, SSIM 1.000 ≥ 0.85``."""
    return f"CLIP {finite_number(clip) or 0.0:.3f} ≥ {COPY_CLIP}, SSIM {finite_number(ssim) or 0.0:.3f} ≥ {COPY_SSIM}"


def memorised(scores: Any) -> bool:
    """Whether a generator's scores (a comparison report's ``generators`` entry) say some of its images copy a
    reference (a round record's typed scores: ``agent.rounds.documents.GeneratorScores.memorised``)."""
    return isinstance(scores, dict) and (finite_number(scores.get("reference_copies")) or 0) > 0


def copies_text(count: int, total: int, rows: list[dict] | None = None) -> str:
    """``1 of 4 images nearly copies a reference (aldar1.png: CLIP 1.000 ≥ 0.95, SSIM 1.000 ≥ 0.85)`` from
    the count and the copied images' rows (``copied_reference``, ``clip_max``, ``ssim``); at most three named."""
    verb = "copies" if count == 1 else "copy"
    named = [f"{row.get('copied_reference') or '?'}: {copy_evidence(row.get('copy_clip'), row.get('copy_ssim'))}"
             for row in (rows or [])[:3]]
    detail = f" ({'; '.join(named)}{'; …' if len(rows or []) > 3 else ''})" if named else ""
    return f"{count} of {total} image{'' if total == 1 else 's'} nearly {verb} a reference{detail}"
