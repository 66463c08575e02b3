"""The two ways aldar writes the time — one place, so file names and records never disagree.

* ``timestamp()`` — in file and folder names: ``YYYYMMDD_HHMMSS``, local time. It sorts by time as
  text and is safe in every file system. Seconds can repeat (a tiny round takes under one), so names
  that must stay unique add a counter or go through ``tools.atomic.unused_path``.
* ``iso_timestamp()`` — in JSON fields (``finished_at``, ``created_at``, a lock's ``since``): ISO-8601
  with the UTC offset, ``2026-11-25T14:00:00+0100``, readable by any tool and unambiguous across
  machines.

Exceptions on purpose: kohya's LoRA metadata keeps the epoch seconds and the UTC date its readers
expect (``tools.training``), and the world build's log lines show a bare clock.
"""

from __future__ import annotations

import time

FILE_FORMAT = "%Y%m%d_%H%M%S"
ISO_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def timestamp(when: float | None = None) -> str:
    """``when`` (epoch seconds, default now) as it goes into file names: ``20261125_140000``."""
    return time.strftime(FILE_FORMAT, time.localtime(when))


def iso_timestamp(when: float | None = None) -> str:
    """``when`` (epoch seconds, default now) as it goes into JSON fields: ``2026-11-25T14:00:00+0100``."""
    return time.strftime(ISO_FORMAT, time.localtime(when))
