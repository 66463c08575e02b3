"""Numbers read from JSON that a model, a user or an older version wrote."""

from __future__ import annotations

import math
from typing import Any


def finite_number(value: Any) -> float | None:
    """``value`` as a float; None for non-numbers (booleans included) and NaN/infinity (NaN passes min/max
    clamping unchanged)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return number if math.isfinite(number) else None
