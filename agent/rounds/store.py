"""The run store: one results folder, laid out as the original system did.

    <output_dir>/
      training_history.json        every finished round, the round in progress, the best round
      comparisons/                 round_<n>/<generator>/*.png, comparison_report_<ts>.json
      feedback/                    feedback_<ts>.json
      runs/round_<n>/              the trainer's run folder (LoRA, checkpoints, loss log)
      best_lora/                   a copy of the best round's LoRA files (+ embeddings/) + best_lora.json
      report.html, score_chart.png
      .aldar.lock                  pid + host of the process that holds the folder

Every JSON goes through ``tools.atomic``, so a kill -9 leaves the previous or
the next version of a file, never half of one; a round is appended to the
history only once all its files exist, so a finished round is never lost.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.rounds.documents import Round, RoundFeedback, feedback_of, round_of, rounds_of
from tools.atomic import (LEGACY_STAGING_GLOBS, atomic_write, atomic_write_json, read_json, read_json_object,
                          staging_glob, storage_error, writing)
from tools.errors import BusyError, InputError
from tools.timestamps import iso_timestamp, timestamp

HISTORY_FILE = "training_history.json"
LOCK_FILE = ".aldar.lock"
HISTORY_VERSION = 1
# What makes two rounds comparable, and a checkpoint resumable: the same models.
MODEL_KEYS = ("profile", "base_model", "clip_model")
# Where only a lock holder writes. comparisons/, feedback/, runs/train_*/ and stories/ also take files
# from `aldar generate`, `score`, `train` and `story`, which run without the lock: a staging file there
# may belong to a live writer, and deleting it would crash that writer's rename.
_OWN_FOLDERS = ("", "comparisons/round_*/**/", "runs/round_*/**/", "best_lora/**/", "report_assets/**/", "chat/**/")
OWN_STAGING = (
    *(folder + staging_glob() for folder in _OWN_FOLDERS),
    # the rounds' own reports: RunStore.timestamp names end in _roundNN, `aldar score`'s do not
    "comparisons/" + staging_glob("comparison_report_*_round[0-9]*.json"),
    "feedback/" + staging_glob("feedback_*_round[0-9]*.json"),
    *("runs/round_*/**/" + legacy for legacy in LEGACY_STAGING_GLOBS))


class FolderLock:
    """An exclusive ``fcntl.flock`` on ``<folder>/.aldar.lock`` holding ``{pid, host, since}``.

    flock is released by the kernel when its holder dies, so a lock left by a
    killed run is simply taken over; its old pid/host are kept for the message.
    The file is never deleted: unlinking a lock file lets two processes end up
    holding locks on two different inodes.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd: int | None = None
        self.previous_holder: dict[str, Any] | None = None

    def acquire(self) -> None:
        import fcntl

        with writing(self.path):  # the results folder may be a file, full, or not writable
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            who = (f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"
                   if holder else "another process")
            raise BusyError(f"results folder {self.path.parent} is in use by {who}",
                            "wait for that run to finish, or pass --output-dir DIR to use another folder") from None
        self.previous_holder = _read_holder(fd) or None
        stamp = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
        # Written in place, not renamed: the flock belongs to this inode.
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(stamp) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def remove_own_staging(root: Path) -> int:
    """Delete the staging files and folders a killed lock holder left where only lock holders write."""
    removed = 0
    for pattern in OWN_STAGING:
        for path in sorted(root.glob(pattern)):  # a folder sorts before what is inside it
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file() or path.is_symlink():
                path.unlink(missing_ok=True)
            else:
                continue  # inside a folder removed just before
            removed += 1
    return removed


# The types the code relies on in a record read from disk (None: absent in older histories, or unset).
# Checked once here, at load, so that a hand-edited "round": "one" is named as damaged instead of
# failing as a TypeError rounds later (agent/rounds/ranking.py sorts and compares these).
_RECORD_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "params": (dict,), "train": (dict,), "scores": (dict,), "ranking": (list,), "decision": (dict,),
    "next_params": (dict,), "paths": (dict,), "prompts": (list,), "skipped_competitors": (list,),
    "timings_s": (dict,), "compute_s": (dict,), "overfitting": (dict,), "ceiling": (dict,),
    "lora_score": (int, float), "score_gap": (int, float), "rationale": (str,), "decided_by": (str,)}


def damaged_entry(history: dict[str, Any]) -> str:
    """What is wrong with the first damaged entry of ``history`` (its rounds, then in_progress), or ''."""
    for index, record in enumerate(history["rounds"]):
        problem = _record_problem(record, _RECORD_FIELD_TYPES)
        if problem:
            return f"round entry {index + 1} of 'rounds' {problem}"
    in_progress = history.get("in_progress")
    if in_progress is not None:
        problem = _record_problem(in_progress, {"params": (dict,), "stage": (str,)})
        if problem:
            return f"'in_progress' {problem}"
    return ""


def _record_problem(record: Any, field_types: dict[str, tuple[type, ...]]) -> str:
    if not isinstance(record, dict):
        return f"is {_json_type(record)}, not an object"
    number = record.get("round")
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        return f"has 'round' {_shown(number)}, not a round number (1, 2, ...)"
    for field, types in field_types.items():
        value = record.get(field)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            return f"(round {number}) has '{field}' {_shown(value)}, not {_json_type(types[0]())}"
    return ""


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _now() -> str:
    return iso_timestamp()


@dataclass(frozen=True)
class InProgress:
    """The round a process started and has not recorded (a kill leaves it; the rerun restarts it)."""

    round: int
    stage: str = "start"
    params: dict[str, Any] | None = None  # what it trains with, once known


@dataclass(frozen=True)
class Stopped:
    reason: str
    at: str | None = None


@dataclass(frozen=True)
class HistoryState:
    """training_history.json as typed values, the defaults of older files filled here, once: the finished
    rounds, the round in progress, the best round and its LoRA copy, why the run stopped, the models."""

    rounds: list[Round] = field(default_factory=list)
    in_progress: InProgress | None = None
    best_round: int | None = None
    best_lora: str | None = None  # relative to the results folder
    stopped: Stopped | None = None
    profile: dict[str, Any] = field(default_factory=dict)


def history_state(document: dict[str, Any]) -> HistoryState:
    """The loader's one reading of a history document (a checked one, or what ``peek_history`` found)."""
    interrupted, stopped = document.get("in_progress"), document.get("stopped")
    return HistoryState(
        rounds=rounds_of(document.get("rounds") or []),
        in_progress=InProgress(interrupted["round"], interrupted.get("stage") or "start", interrupted.get("params"))
        if isinstance(interrupted, dict) and isinstance(interrupted.get("round"), int) else None,
        best_round=document.get("best_round"), best_lora=document.get("best_lora"),
        stopped=Stopped(str(stopped.get("reason") or ""), stopped.get("at")) if isinstance(stopped, dict) else None,
        profile=document.get("profile") if isinstance(document.get("profile"), dict) else {})


def round_feedback(root: Path, record: Round) -> RoundFeedback | None:
    """The feedback file a finished round's record names, read from the results folder ``root`` (None: the
    record names none — the original system's — or the file is gone or unreadable)."""
    return read_feedback(root / record.paths.feedback) if record.paths.feedback else None


def read_feedback(path: Path) -> RoundFeedback | None:
    """A feedback file as typed values (None: gone, unreadable or not an object)."""
    document = read_json_object(path)
    return feedback_of(document) if document is not None else None


def peek_history(root: str | Path) -> HistoryState:
    """The history in ``root`` read without taking the lock (what the chat shows before it opens the
    folder). The file is replaced by rename, so a read sees a whole version; a missing or unreadable
    history reads as no rounds."""
    try:
        data = read_json(Path(root) / HISTORY_FILE)
    except (OSError, ValueError):
        data = {}
    if isinstance(data, list):  # the original system's bare list of rounds
        data = {"rounds": data}
    if not isinstance(data, dict) or not isinstance(data.get("rounds"), list):
        data = {}
    return history_state(data)


class RunStore:
    """Paths, the history file and the lock of one results folder."""

    def __init__(self, root: str | Path, profile: dict[str, Any] | None = None) -> None:
        self.root = Path(root).resolve()
        self.profile = profile or {}
        self.lock = FolderLock(self.root)
        self.lock.acquire()  # before reading anything: the holder may be writing
        remove_own_staging(self.root)  # what a kill -9 of an earlier holder left behind
        self.comparisons_dir = self.root / "comparisons"
        self.feedback_dir = self.root / "feedback"
        self.runs_dir = self.root / "runs"
        self.best_lora_dir = self.root / "best_lora"
        self.history_path = self.root / HISTORY_FILE
        self.report_path = self.root / "report.html"
        self.chart_path = self.root / "score_chart.png"
        try:
            self._history = self._load_history()
            self._rounds = rounds_of(self._history["rounds"])
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        self.lock.release()

    # ---------------------------------------------------------------- history
    def _load_history(self) -> dict[str, Any]:
        if not self.history_path.exists():
            return {"version": HISTORY_VERSION, "profile": self.profile, "rounds": [], "in_progress": None,
                    "best_round": None, "best_lora": None, "stopped": None}
        try:
            data = read_json(self.history_path)
        except ValueError as exc:  # truncated, not UTF-8, nested too deeply
            raise self._damaged(f"not valid JSON ({exc})", "restore it from a backup, or move it away to "
                                                           "start a fresh run") from None
        except OSError as exc:  # a folder by that name, no permission
            raise storage_error(exc, self.history_path) from None
        if isinstance(data, list):  # the original system's bare list of rounds
            data = {"version": HISTORY_VERSION, "profile": self.profile, "rounds": data}
        if not isinstance(data, dict) or not isinstance(data.get("rounds"), list):
            raise self._damaged("it has no 'rounds' list", "move it away to start a fresh run in this folder")
        problem = damaged_entry(data)
        if problem:
            raise self._damaged(problem, "fix or delete that entry (keep a copy), or move the file away to "
                                         "start a fresh run")
        for key in ("in_progress", "best_round", "best_lora", "stopped"):
            data.setdefault(key, None)
        return data

    def _damaged(self, what: str, fix: str) -> InputError:
        return InputError(f"history is damaged — {self.history_path}: {what}", fix)

    @property
    def state(self) -> HistoryState:
        """The history as typed values (a snapshot: the store's methods change the file)."""
        return history_state(self._history)

    @property
    def rounds(self) -> list[Round]:
        """The finished rounds, typed once when loaded or recorded (the history's records stay as written)."""
        return self._rounds

    def record(self, number: int) -> Round | None:
        """The finished round ``number``, or None."""
        return next((record for record in self.rounds if record.round == number), None)

    def best_record(self) -> Round | None:
        best = self._history["best_round"]
        return self.record(best) if best is not None else None

    def feedback(self, number: int) -> RoundFeedback | None:
        """The feedback file of finished round ``number`` (None: no such round, or its file is gone)."""
        record = self.record(number)
        return self._feedback_of(record) if record is not None else None

    def latest_feedback(self) -> RoundFeedback | None:
        """The newest recorded round's feedback that is still readable, else the newest file in feedback/."""
        for record in reversed(self.rounds):
            feedback = self._feedback_of(record)
            if feedback is not None:
                return feedback
        files = sorted(self.feedback_dir.glob("feedback_*.json"))
        return read_feedback(files[-1]) if files else None

    def _feedback_of(self, record: Round) -> RoundFeedback | None:
        return round_feedback(self.root, record)

    def save(self) -> None:
        self._history["updated_at"] = _now()
        atomic_write_json(self.history_path, self._history)

    def begin_round(self, number: int, params: dict[str, Any]) -> None:
        """Mark round ``number`` as started (a rerun after a kill restarts it from here)."""
        self._history["in_progress"] = {"round": number, "stage": "start", "started_at": _now(), "params": params}
        self._history["stopped"] = None
        self.save()

    def set_stage(self, stage: str, params: dict[str, Any] | None = None) -> None:
        """Record the stage of the round in progress (and the params it trains with, once known)."""
        if self._history.get("in_progress"):
            self._history["in_progress"]["stage"] = stage
            if params is not None:
                self._history["in_progress"]["params"] = params
            self.save()

    def finish_round(self, record: dict[str, Any]) -> Round:
        """Append a finished round (replacing an older record of the same number) and clear in_progress;
        returns it typed."""
        rounds = [r for r in self._history["rounds"] if r["round"] != record["round"]]
        rounds.append(record)
        rounds.sort(key=lambda r: r["round"])
        self._history["rounds"] = rounds
        self._history["in_progress"] = None
        self._rounds = rounds_of(rounds)
        self.save()
        return round_of(record)

    def refuse_other_models(self, profile: dict[str, Any]) -> None:
        """Rounds of one history must be comparable: refuse to append rounds made with other models."""
        saved = self._history.get("profile") or {}
        if not self.rounds or not saved:
            return
        changed = [k for k in MODEL_KEYS if saved.get(k) != profile[k]]
        if changed:
            detail = ", ".join(f"{k} {saved.get(k)!r} → {profile[k]!r}" for k in changed)
            raise InputError(f"{self.root} holds rounds made with other models ({detail})",
                             "pass --output-dir DIR for a new results folder, or the same models to resume")

    def discard_round_of_other_models(self) -> str:
        """With no finished round yet, a round in progress that other models started (a failed sdxl run,
        then ``--profile tiny``) is dropped and the history takes the current models: its parameters
        belong to those models. Returns why, for one info line, or '' when nothing was dropped. (With
        finished rounds the session refuses other models outright.)"""
        saved = self._history.get("profile") or {}
        changed = [key for key in MODEL_KEYS if saved.get(key) != self.profile.get(key)]
        if self.rounds or not saved or not changed:
            return ""
        dropped = self._history.get("in_progress")
        self._history["profile"] = self.profile
        self._history["in_progress"] = None
        self.save()
        if not dropped:
            return ""
        detail = ", ".join(f"{key} {saved.get(key)!r} → {self.profile.get(key)!r}" for key in changed)
        return (f"round {dropped.get('round')} was started with other models ({detail}); it is discarded "
                f"and starts afresh with this profile's parameters")

    def amend_next_params(self, next_params: dict[str, Any], change: dict[str, Any]) -> None:
        """Between rounds: the last record's ``next_params`` become ``next_params``; ``change``
        (adjustments, rationale, decided_by) is appended to its ``next_params_changes``."""
        last = self._history["rounds"][-1]
        last["next_params"] = next_params
        last.setdefault("next_params_changes", []).append(change)
        self._rounds[-1] = round_of(last)
        self.save()

    def mark_stopped(self, reason: str) -> None:
        self._history["stopped"] = {"reason": reason, "at": _now()}
        self.save()

    # ---------------------------------------------------------------- paths
    def round_run_dir(self, number: int) -> Path:
        return self.runs_dir / f"round_{number:02d}"

    def round_images_dir(self, number: int, generator: str) -> Path:
        return self.comparisons_dir / f"round_{number:02d}" / generator

    def round_suite_dir(self, number: int, generator: str) -> Path:
        return self.comparisons_dir / f"round_{number:02d}" / "suite" / generator

    def write_suite_report(self, report: dict[str, Any], number: int) -> Path:
        return atomic_write_json(self.comparisons_dir / f"round_{number:02d}" / "suite_report.json", report)

    def relative(self, path: str | Path | None) -> str | None:
        """``path`` relative to the results folder (history and report stay valid if the folder moves)."""
        if path is None:
            return None
        path = Path(path).resolve()
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def absolute(self, stored: str | None) -> Path | None:
        if stored is None:
            return None
        path = Path(stored)
        return path if path.is_absolute() else self.root / path

    @staticmethod
    def timestamp(number: int) -> str:
        # Seconds alone collide when tiny rounds take under a second; the round number keeps names unique.
        return timestamp() + f"_round{number:02d}"

    def write_comparison_report(self, report: dict[str, Any], stamp: str) -> Path:
        return atomic_write_json(self.comparisons_dir / f"comparison_report_{stamp}.json", report)

    def write_feedback(self, feedback: dict[str, Any], stamp: str) -> Path:
        return atomic_write_json(self.feedback_dir / f"feedback_{stamp}.json", feedback)

    # ---------------------------------------------------------------- best LoRA
    def best_lora_holds(self, record: Round | dict[str, Any]) -> bool:
        """Whether best_lora/ is complete for ``record``: the history names it, best_lora.json (written last)
        names its round, and every file listed there exists. A kill during the copy leaves one of them unmet."""
        record = round_of(record)
        saved = read_json_object(self.best_lora_dir / "best_lora.json")
        return (self._history.get("best_round") == record.round and saved is not None
                and saved.get("round") == record.round
                and all((self.root / name).is_file() for name in saved.get("files") or []))

    def mark_best(self, record: Round | dict[str, Any]) -> Path | None:
        """Copy the best round's LoRA files into best_lora/ and point the history at them.

        ``best_round`` changes only once the copies exist: set first, a Ctrl-C during the copy would
        leave it naming this round while best_lora/ still holds another, and never be redone.
        """
        from tools.embeddings import EMBEDDINGS_DIR, find_embedding  # imports torch: only when a round finishes

        record = round_of(record)  # a record as written, or already typed
        files = [(self.absolute(p), self.best_lora_dir) for p in (record.paths.lora, record.paths.kohya_lora) if p]
        run_dir = self.absolute(record.paths.run_dir) if record.paths.run_dir else None
        embedding = find_embedding(run_dir) if run_dir is not None and run_dir.is_dir() else None
        if embedding is not None:  # pivotal tuning's trigger embedding: the LoRA draws its character only with it
            files.append((embedding, self.best_lora_dir / EMBEDDINGS_DIR))
        for stale in (self.best_lora_dir / EMBEDDINGS_DIR).glob("*.safetensors"):  # an earlier best round's
            if embedding is None or stale.name != embedding.name:
                stale.unlink(missing_ok=True)
        copied = []
        for source, folder in files:
            if source and source.is_file():
                target = folder / source.name
                atomic_write(target, lambda tmp, s=source: shutil.copyfile(s, tmp))
                copied.append(self.relative(target))
        atomic_write_json(self.best_lora_dir / "best_lora.json",
                          {"round": record.round, "lora_score": record.lora_score, "params": record.params,
                           "files": copied,
                           "source_run": record.paths.run_dir, "profile": self.profile})
        self._history["best_round"] = record.round
        self._history["best_lora"] = copied[0] if copied else None
        self.save()
        return self.best_lora_dir
