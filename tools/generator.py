"""Local SDXL (+ LoRA) image generation.

``generate_local`` is being filled in; ``GeneratedImage`` is the shared record every
generator (local or hosted) returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GeneratedImage:
    """One image on disk and how it was made (``metadata`` holds the generation parameters)."""

    path: Path
    generator: str
    prompt: str
    seed: int
    metadata: dict[str, Any] = field(default_factory=dict)
