"""Where aldar finds what it ships (the bundled references and taxonomy) and keeps what it can rebuild:
``$ALDAR_CACHE`` (unset or empty: ``~/.cache/aldar``).

One resolution for every cache (embeddings, latents, chat history, the byte-level tokenizer, the toy
world's build), so that pointing ``ALDAR_CACHE`` elsewhere moves all of them together.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

# The bundled references and taxonomy are package data (the repository's examples/ folder, installed as
# aldar_examples), so they resolve from a checkout, an editable install and a wheel alike, whatever the
# working folder. pip and pipx install wheels unpacked, so the resource is a real folder.
BUNDLED_REFERENCES = Path(str(files("aldar_examples") / "aldar_kose"))
BUNDLED_TAXONOMY = BUNDLED_REFERENCES / "taxonomy.json"


def aldar_cache(*parts: str) -> Path:
    """``$ALDAR_CACHE/<parts…>``; an empty ``ALDAR_CACHE`` counts as unset (not as the current folder)."""
    root = os.environ.get("ALDAR_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "aldar").joinpath(*parts)
