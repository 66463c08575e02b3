"""Where the bundled example characters live (the ``aldar_examples`` package): the default references and
taxonomy. Its own module so that the settings and the image readers share it without importing each other."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

BUNDLED_REFERENCES = Path(str(files("aldar_examples") / "aldar_kose"))
BUNDLED_TAXONOMY = BUNDLED_REFERENCES / "taxonomy.json"
