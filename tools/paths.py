"""Where aldar keeps what it can rebuild: ``$ALDAR_CACHE`` (unset or empty: ``~/.cache/aldar``).

One resolution for every cache (embeddings, latents, chat history, the byte-level tokenizer, the toy
world's build), so that pointing ``ALDAR_CACHE`` elsewhere moves all of them together.
"""

from __future__ import annotations

import os
from pathlib import Path


def aldar_cache(*parts: str) -> Path:
    """``$ALDAR_CACHE/<parts…>``; an empty ``ALDAR_CACHE`` counts as unset (not as the current folder)."""
    root = os.environ.get("ALDAR_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "aldar").joinpath(*parts)
