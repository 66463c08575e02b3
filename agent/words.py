"""English for lists, shared by the rounds' notices and the views' captions."""

from __future__ import annotations


def and_words(words: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
