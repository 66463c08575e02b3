"""Crash-safe file writes: write to a temp file in the same folder, fsync, rename.

A reader (or a rerun after kill -9) sees either the old file or the new one,
never half of one. Text and JSON pass through ``tools.secrets.redact`` on the way:
whatever a model or a server said, no API key reaches a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from tools.secrets import redact


# Every staging file and folder the writers make is named ``.<target name>.<random>.tmp`` beside its
# target, so one pattern finds what a kill left behind (``staging_glob``).
STAGING_SUFFIX = ".tmp"
# Names older versions' writers used for staging folders (a kill left them in runs/round_NN/ for good).
LEGACY_STAGING_GLOBS = (".checkpoint-*-*", ".lora-*")


def staging_glob(target_pattern: str = "*") -> str:
    """The glob matching the staging names of targets matching ``target_pattern`` (one folder level)."""
    return f".{target_pattern}.*{STAGING_SUFFIX}"


def staging_dir(target: str | os.PathLike) -> Path:
    """A new empty staging folder beside ``target``, to be renamed over it once complete."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=STAGING_SUFFIX, dir=target.parent))


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=STAGING_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp makes it 0600 (and some writers replace the file): users share LoRAs and reports.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def current_umask() -> int:
    """The process umask (read from /proc where it can be: setting it to read it races with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def unused_path(path: str | os.PathLike) -> Path:
    """``path``, or the same name with ``-2``, ``-3``... before the suffix when it is taken
    (two runs in the same second must not overwrite each other's files or folders)."""
    path = Path(path)
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    text = redact(text)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    text = json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    return atomic_write_text(path, text)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_json_object(path: str | os.PathLike | None) -> dict | None:
    """The JSON object in ``path``, or None when it is missing, unreadable, invalid or not an object
    (callers treat all of those as "nothing saved yet" and recompute)."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
