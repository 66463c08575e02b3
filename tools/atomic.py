"""Crash-safe file writes: write to a temp file in the same folder, fsync, rename.

A reader (or a rerun after kill -9) sees either the old file or the new one,
never half of one. Text and JSON pass through ``tools.secrets.redact`` on the way:
whatever a model or a server said, no API key reaches a file.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from tools.errors import StorageError
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
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=STAGING_SUFFIX, dir=target.parent))


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` over ``path``. A failure that is the file system's
    (no space, a folder in the way, no permission) raises ``StorageError`` naming ``path``."""
    target = Path(path)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=STAGING_SUFFIX, dir=target.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with writing(target):  # inside: a full disk is recognised while the partial file still fills it
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


# --------------------------------------------------------------------- file-system errors as one line
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Writers in other libraries report a full disk in their own words, without an errno: torch.save
# ("[enforce fail at inline_container.cc:672] ... file write failed", "... unexpected pos 724672 vs 724564",
# "basic_ios::clear: iostream error") and safetensors (an IoError with "code: 28" / StorageFull).
_DISK_FULL_WORDS = ("No space left on device", "file write failed", "StorageFull", "code: 28", "Disk quota exceeded")
# Their words vary with the version and with where the write stopped, so a writer's failure that is no OSError
# also counts as a full disk when the disk has less than this left (a checkpoint of the tiny profile is ~1 MB).
NEARLY_FULL_BYTES = 16 * 2**20
_MB = 2**20


@contextmanager
def writing(target: str | os.PathLike, what: str = "") -> Iterator[None]:
    """Raise a ``StorageError`` naming ``target`` (``what`` describes it) for a file-system failure inside."""
    try:
        yield
    except StorageError as exc:
        if what and exc.errno in DISK_FULL_ERRNOS:  # the whole being written says more than its staging part
            raise disk_full_error(Path(target), what, exc.errno) from None
        raise
    except Exception as exc:
        error = storage_error(exc, target, what)
        if error is None:
            raise
        raise error from None


def storage_error(exc: BaseException, target: str | os.PathLike, what: str = "") -> StorageError | None:
    """The one-line error for a file-system failure while writing ``target``, or None when ``exc`` is none."""
    target = Path(target)
    code = exc.errno if isinstance(exc, OSError) else None
    if says_disk_full(exc) or (code is None and _nearly_full(target)):
        return disk_full_error(target, what, code if code in DISK_FULL_ERRNOS else errno.ENOSPC)
    if not isinstance(exc, OSError):
        return None
    if code == errno.EISDIR or (code in (errno.EEXIST, errno.EPERM) and target.is_dir() and not target.is_symlink()):
        return StorageError(f"{target} is a folder, where aldar keeps a file", "move that folder away (or rename it) "
                            "and rerun, or pass --output-dir DIR", code)
    if code in (errno.EEXIST, errno.ENOTDIR):
        blocker = _file_in_the_way(target)
        return StorageError(f"{blocker} is a file, where aldar needs a folder", "move that file away (or rename it) "
                            "and rerun, or pass --output-dir DIR", code)
    if code in (errno.EACCES, errno.EPERM):
        return StorageError(f"cannot write {target}: permission denied", "make it and its folder writable (chmod u+w; "
                            "chattr -i for an immutable file), or pass --output-dir DIR", code)
    if code == errno.EROFS:
        return StorageError(f"cannot write {target}: the file system is read-only", "pass --output-dir DIR on a "
                            "writable disk", code)
    return StorageError(f"cannot write {target} ({exc.strerror or exc})", "check the disk and the folder, or pass "
                        "--output-dir DIR", code)


def says_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` itself says the disk is full (its errno, or a library's words for it)."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return any(word in str(exc) for word in _DISK_FULL_WORDS)


def disk_full_error(target: Path, what: str = "", code: int = errno.ENOSPC) -> StorageError:
    """"no space left on <folder>: writing <what> — free N MB or pass --output-dir". N: what a file of this
    kind already on that disk takes (a checkpoint is as big as the last one), at least 1 MB."""
    folder = _existing_folder(target)
    needed = max(1, math.ceil(_size_of_a_sibling(target) / _MB))
    try:
        free = f" ({shutil.disk_usage(folder).free / _MB:.1f} MB free)"
    except OSError:
        free = ""
    return StorageError(f"no space left on {_mount_point(folder)}{free}: writing {what or target}",
                        f"free at least {needed} MB there and rerun (finished rounds are kept), or pass "
                        "--output-dir DIR on another disk", code)


def _nearly_full(target: Path) -> bool:
    try:
        return shutil.disk_usage(_existing_folder(target)).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def _existing_folder(path: Path) -> Path:
    path = path.absolute()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def _mount_point(folder: Path) -> Path:
    while not os.path.ismount(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def _file_in_the_way(target: Path) -> Path:
    """The first part of ``target``'s path that exists but is not a folder (mkdir failed on it)."""
    for part in reversed([target.absolute(), *target.absolute().parents]):
        if part.exists() and not part.is_dir():
            return part
    return target


def _size_of_a_sibling(target: Path) -> int:
    """Bytes of the largest existing item of ``target``'s kind beside it (a file or a whole folder), 0 if none."""
    if not target.parent.is_dir():
        return 0
    siblings = [p for p in target.parent.iterdir() if not p.name.startswith(".") and p.suffix == target.suffix]
    return max((_size(p) for p in siblings), default=0)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    except OSError:
        return 0


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


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document in ``path``: the one reader of saved state. A file that is not UTF-8, not JSON, or
    nested deeper than Python's parser can recurse raises ``ValueError`` with the reason (``RecursionError``
    is no ``ValueError``, and would otherwise reach the user as a traceback); OSError as raised."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to read") from None


def read_json_object(path: str | os.PathLike | None) -> dict | None:
    """The JSON object in ``path``, or None when it is missing, unreadable, invalid or not an object
    (callers treat all of those as "nothing saved yet" and recompute)."""
    if path is None:
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
