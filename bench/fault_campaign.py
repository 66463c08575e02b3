"""Fault campaign (issue 28): the real ``aldar`` CLI against a damaged results folder, a full disk and signals.

    python bench/fault_campaign.py [--only NAME,NAME] [--keep DIR]

Every case is a fresh ``aldar`` process (the entry point beside this interpreter, else ``python -m agent.cli``)
on the tiny profile, one thread, ``--competitors none``, two images per prompt. What a user would see is checked:

* the exit code (2 for an error, 143/129/130 for SIGTERM/SIGHUP/SIGINT, 0 for a rerun);
* no "Traceback" on stdout or stderr;
* the message: one ``error:`` line holding the case's words (the terminal is made wide: rich does not wrap it);
* no finished round lost: every round in training_history.json before the fault is there after it, and a
  history the case damaged on purpose is left byte for byte as it was.

Cases: file system (results folder a file, best_lora a file, report.html a folder or immutable (``chattr +i``,
skipped where chattr fails), the history a folder, the
history nested 25 million deep, read by ``aldar run`` and by the chat's /history, a round of the wrong type);
disk full (a 3 MB tmpfs, and one just bigger than a finished round: mounted when run as root where ``mount``
works, else skipped with the reason), each followed by a rerun with room; signals (SIGTERM, SIGHUP, SIGINT
sent once round 2's first periodic checkpoint is written, then the rerun that resumes it). A finished one-round
run (the seed, ~40 s) is made first and copied for the cases that need one. About five minutes on two cores.

Prints a table and "N cases, T tracebacks, L finished rounds lost"; exits 1 when any case failed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PROJECT = Path(__file__).resolve().parent.parent
HISTORY = "training_history.json"
NESTING = 25_000_000  # the reproduction: "[" x 25 million, then "]" as many
PERIODIC_STEP = 40    # tiny's checkpoint_every: the first checkpoint a signal must improve on
HANG_GUARD_S = 900    # no case comes near it; it only stops a hung process from stalling the campaign


@dataclass
class Run:
    """What a case hands to ``aldar``: its arguments, the results folder, and what must survive."""

    argv: list[str]
    results: Path
    rounds_before: list[int] = field(default_factory=list)
    untouched: Path | None = None  # a file the case damaged on purpose: aldar must not rewrite it
    send: signal.Signals | None = None  # sent once round 2's first periodic checkpoint is written


@dataclass
class Case:
    name: str
    prepare: Callable[["Campaign"], Run]
    expect_rc: int
    words: tuple[str, ...] = ()  # in the one error line; none: no error line at all
    check: Callable[["Campaign", Run, str], str] | None = None  # '' or what else went wrong
    needs: str = ""  # "seed" (a finished round made first) or "tmpfs"


@dataclass
class Outcome:
    name: str
    rc: int | None
    expect_rc: int
    traceback: bool = False
    message: str = ""
    lost: int = 0
    seconds: float = 0.0
    problem: str = ""
    skipped: str = ""

    @property
    def passed(self) -> bool:
        return not self.skipped and not self.problem


class Campaign:
    """The work folder, the environment every ``aldar`` process gets, and the seed run."""

    def __init__(self, work: Path, nesting: int = NESTING) -> None:
        self.work = work
        self.nesting = nesting
        self.references = work / "references"
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "ALDAR_IMAGES_PER_PROMPT": "2", "NO_COLOR": "1",
                    "COLUMNS": "400", "ALDAR_ANALYSIS_PATH": str(work / "analysis.json"),
                    "PYTHONPATH": str(PROJECT), "HF_HUB_OFFLINE": "1"}
        self.seed: Path | None = None
        self.mounts: list[Path] = []
        self.immutable: list[Path] = []  # files made immutable, made mutable again at the end
        self._counter = 0
        # Handed from a case to the one after it (the rerun of the same folder).
        self.full_fresh: Path | None = None
        self.full_after_one: Path | None = None
        self.terminated: Path | None = None
        self.resumed_from = 0

    def folder(self, name: str) -> Path:
        self._counter += 1
        return self.work / f"{self._counter:02d}_{name}"

    def run_args(self, results: Path, rounds: int = 1) -> list[str]:
        return ["run", "--profile", "tiny", "--rounds", str(rounds), "--competitors", "none", "--no-llm", "-q",
                "--references", str(self.references), "--output-dir", str(results)]

    def copy_seed(self, name: str, into: Path | None = None) -> Path:
        assert self.seed is not None, "the case needs the seed run"
        target = (into or self.folder(name)) / "results"
        shutil.copytree(self.seed, target, ignore=shutil.ignore_patterns(".aldar.lock"))
        return target

    def tmpfs(self, name: str, size_bytes: int) -> Path:
        folder = self.folder(name)
        folder.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)], check=True,
                       capture_output=True)
        self.mounts.append(folder)
        return folder

    def clean_up(self) -> None:
        """Unmount the tmpfs folders and make immutable files mutable: the work folder can then be removed."""
        for folder in reversed(self.mounts):
            subprocess.run(["umount", str(folder)], check=False, capture_output=True)
        for path in self.immutable:
            subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)
        self.mounts.clear()
        self.immutable.clear()


def aldar_command() -> list[str]:
    entry_point = Path(sys.executable).parent / "aldar"
    return [str(entry_point)] if entry_point.is_file() else [sys.executable, "-m", "agent.cli"]


# ----------------------------------------------------------------------------- state on disk
def finished_rounds(results: Path) -> list[int]:
    try:
        data = json.loads((results / HISTORY).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return []
    rounds = data.get("rounds", []) if isinstance(data, dict) else data
    return [r["round"] for r in rounds if isinstance(r, dict) and isinstance(r.get("round"), int)]


def history_field(results: Path, key: str):
    return json.loads((results / HISTORY).read_text(encoding="utf-8")).get(key)


def edit_history(results: Path, edit: Callable[[dict], None]) -> Path:
    path = results / HISTORY
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def latest_checkpoint_step(run_dir: Path) -> int:
    steps = [int(p.name.rpartition("-")[2]) for p in run_dir.glob("checkpoint-*") if p.is_dir()]
    return max(steps, default=0)


def fabricated_seed(folder: Path) -> Path:
    """A results folder holding one finished round (its LoRA a placeholder file): enough for the file-system
    cases, which fail before anything loads the LoRA. The pytest that keeps this campaign alive uses it."""
    results = folder / "results"
    lora = results / "runs" / "round_01" / "pytorch_lora_weights.safetensors"
    lora.parent.mkdir(parents=True)
    lora.write_bytes(b"weights of round 1")
    record = {"round": 1, "lora_score": 0.5, "params": {"steps": 40}, "scores": {"lora": {"quality": 0.5}},
              "paths": {"lora": "runs/round_01/pytorch_lora_weights.safetensors"}}
    (results / HISTORY).write_text(json.dumps({"version": 1, "rounds": [record], "in_progress": None}))
    (results / "report.html").write_text("<html></html>")
    return results


# ----------------------------------------------------------------------------- file-system cases
def results_a_file(c: Campaign) -> Run:
    results = c.folder("results-file") / "results"
    results.parent.mkdir(parents=True)
    results.write_text("a file where the results folder goes")
    return Run(c.run_args(results), results, untouched=results)


def best_lora_a_file(c: Campaign) -> Run:
    results = c.copy_seed("best_lora-file")
    shutil.rmtree(results / "best_lora", ignore_errors=True)
    (results / "best_lora").write_text("in the way")
    return Run(c.run_args(results), results, finished_rounds(results))


def report_a_folder(c: Campaign) -> Run:
    results = c.copy_seed("report-folder")
    (results / "report.html").unlink(missing_ok=True)
    (results / "report.html").mkdir()
    return Run(c.run_args(results), results, finished_rounds(results))


def report_immutable(c: Campaign) -> Run:
    results = c.copy_seed("report-immutable")
    subprocess.run(["chattr", "+i", str(results / "report.html")], check=True, capture_output=True)
    c.immutable.append(results / "report.html")
    return Run(c.run_args(results), results, finished_rounds(results), untouched=results / "report.html")


def history_a_folder(c: Campaign) -> Run:
    results = c.folder("history-folder") / "results"
    (results / HISTORY).mkdir(parents=True)
    return Run(c.run_args(results), results)


def _nested_history(c: Campaign, name: str) -> Path:
    results = c.copy_seed(name)
    with open(results / HISTORY, "w", encoding="utf-8") as handle:
        handle.write("[" * c.nesting)
        handle.write("]" * c.nesting)
    return results


def nested_history(c: Campaign) -> Run:
    results = _nested_history(c, "nested-run")
    return Run(c.run_args(results), results, untouched=results / HISTORY)


def nested_history_chat(c: Campaign) -> Run:
    results = _nested_history(c, "nested-chat")
    argv = ["chat", "--profile", "tiny", "--references", str(c.references), "--output-dir", str(results),
            "-m", "/history"]
    return Run(argv, results, untouched=results / HISTORY)


def round_of_wrong_type(c: Campaign) -> Run:
    results = c.copy_seed("round-one")
    path = edit_history(results, lambda data: data["rounds"][0].update(round="one"))
    return Run(c.run_args(results), results, untouched=path)


def params_of_wrong_type(c: Campaign) -> Run:
    results = c.copy_seed("params-x")
    path = edit_history(results, lambda data: data["rounds"][0].update(params="x"))
    return Run(c.run_args(results), results, untouched=path)


FILE_SYSTEM_CASES = [
    Case("results folder is a file", results_a_file, 2, ("is a file, where aldar needs a folder", "--output-dir")),
    Case("best_lora is a file", best_lora_a_file, 2, ("best_lora is a file, where aldar needs a folder",),
         needs="seed"),
    Case("report.html is a folder", report_a_folder, 2, ("report.html is a folder, where aldar keeps a file",),
         needs="seed"),
    Case("report.html is immutable (chattr +i)", report_immutable, 2,
         ("report.html: permission denied", "chattr -i"), needs="chattr"),
    Case("history is a folder", history_a_folder, 2, (f"{HISTORY} is a folder, where aldar keeps a file",)),
    Case("history nested deep: run", nested_history, 2, ("history is damaged", "nested too deeply")),
    Case("history nested deep: chat /history", nested_history_chat, 2, ("history is damaged", "nested too deeply")),
    Case('round entry "round": "one"', round_of_wrong_type, 2,
         ("history is damaged", "round entry 1 of 'rounds' has 'round' \"one\"")),
    Case('round entry "params": "x"', params_of_wrong_type, 2,
         ("history is damaged", "(round 1) has 'params' \"x\", not an object")),
]


# ----------------------------------------------------------------------------- disk-full cases
def disk_full_fresh(c: Campaign) -> Run:
    results = c.tmpfs("tmpfs-3m", 3 * 2**20) / "results"
    c.full_fresh = results
    return Run(c.run_args(results), results)


def rerun_with_room(c: Campaign) -> Run:
    """The 3 MB case's folder moved to a disk with room, the same command again: the round finishes."""
    results = c.folder("tmpfs-3m-moved") / "results"
    shutil.copytree(c.full_fresh, results, ignore=shutil.ignore_patterns(".aldar.lock"))
    return Run(c.run_args(results), results, finished_rounds(results))


def disk_full_after_round_one(c: Campaign) -> Run:
    """The seed (one finished round) on a tmpfs with 1.5 MB to spare, two rounds asked: round 2 fills it."""
    size = sum(p.stat().st_size for p in c.seed.rglob("*") if p.is_file())
    results = c.copy_seed("", into=c.tmpfs("tmpfs-seed", size + 3 * 2**19))
    c.full_after_one = results
    return Run(c.run_args(results, rounds=2), results, finished_rounds(results))


def rerun_with_room_sets_best_round(c: Campaign) -> Run:
    """That folder moved to a disk with room, its best_lora/ gone and best_round unset (a disk that filled
    while the best LoRA was copied), the run's round limit already reached: best_round is set at once."""
    results = c.folder("tmpfs-seed-moved") / "results"
    shutil.copytree(c.full_after_one, results, ignore=shutil.ignore_patterns(".aldar.lock"))
    shutil.rmtree(results / "best_lora", ignore_errors=True)
    edit_history(results, lambda data: data.update(best_round=None, best_lora=None))
    return Run(c.run_args(results, rounds=1), results, finished_rounds(results))


def round_finished_and_best(c: Campaign, run: Run, output: str) -> str:
    best = history_field(run.results, "best_round")
    if 1 not in finished_rounds(run.results):
        return "round 1 did not finish"
    if best != 1 or not (run.results / "best_lora" / "best_lora.json").is_file():
        return f"best_round is {best!r}, best_lora/ {'complete' if best == 1 else 'missing'}"
    return ""


NO_SPACE = ("no space left on", "free at least", "--output-dir")
DISK_FULL_CASES = [
    Case("disk full (3 MB tmpfs), fresh run", disk_full_fresh, 2, NO_SPACE, needs="tmpfs"),
    Case("  rerun with room resumes", rerun_with_room, 0, check=round_finished_and_best, needs="tmpfs"),
    Case("disk full in round 2", disk_full_after_round_one, 2, NO_SPACE, needs="tmpfs"),
    Case("  rerun with room: best_round at once", rerun_with_room_sets_best_round, 0,
         check=round_finished_and_best, needs="tmpfs"),
]


# ----------------------------------------------------------------------------- signal cases
def signalled(signum: signal.Signals) -> Callable[[Campaign], Run]:
    def prepare(c: Campaign) -> Run:
        results = c.copy_seed(signum.name)
        if signum == signal.SIGTERM:
            c.terminated = results
        return Run(c.run_args(results, rounds=2), results, finished_rounds(results), send=signum)
    return prepare


def checkpoint_past_periodic(c: Campaign, run: Run, output: str) -> str:
    step = latest_checkpoint_step(run.results / "runs" / "round_02")
    in_progress = (history_field(run.results, "in_progress") or {}).get("round")
    if in_progress != 2:
        return f"round 2 is not marked unfinished ({in_progress!r})"
    return "" if step > PERIODIC_STEP else f"latest checkpoint at step {step}, not past the periodic {PERIODIC_STEP}"


def resume_after_sigterm(c: Campaign) -> Run:
    c.resumed_from = latest_checkpoint_step(c.terminated / "runs" / "round_02")
    return Run(c.run_args(c.terminated, rounds=2), c.terminated, finished_rounds(c.terminated))


def resumed_and_finished(c: Campaign, run: Run, output: str) -> str:
    said = f"resuming training from step {c.resumed_from}"
    if said not in output:
        return f"no '{said}'"
    return "" if finished_rounds(run.results) == [1, 2] else f"rounds {finished_rounds(run.results)}, not [1, 2]"


INTERRUPTED = ("interrupted — finished work is saved",)
SIGNAL_CASES = [
    Case("SIGTERM during training", signalled(signal.SIGTERM), 143, INTERRUPTED, checkpoint_past_periodic, "seed"),
    Case("  rerun resumes the step reached", resume_after_sigterm, 0, check=resumed_and_finished, needs="seed"),
    Case("SIGHUP during training", signalled(signal.SIGHUP), 129, INTERRUPTED, checkpoint_past_periodic, "seed"),
    Case("SIGINT during training", signalled(signal.SIGINT), 130, INTERRUPTED, checkpoint_past_periodic, "seed"),
]
ALL_CASES = FILE_SYSTEM_CASES + DISK_FULL_CASES + SIGNAL_CASES


# ----------------------------------------------------------------------------- running a case
def run_case(c: Campaign, case: Case) -> Outcome:
    outcome = Outcome(case.name, None, case.expect_rc)
    started = time.perf_counter()
    try:
        run = case.prepare(c)
    except (OSError, subprocess.CalledProcessError, TypeError) as exc:  # TypeError: the case before it failed
        outcome.skipped = f"could not prepare: {exc}"
        return outcome
    before = digest(run.untouched) if run.untouched and run.untouched.is_file() else None
    rc, output = launch(c, run)
    outcome.rc, outcome.seconds = rc, time.perf_counter() - started
    outcome.traceback = "Traceback" in output
    said = [line for line in output.splitlines() if case.words and all(word in line for word in case.words)]
    outcome.message = (said[0] if said else "").replace(str(c.work), "…")  # the words, not the temp path
    outcome.lost = len(set(run.rounds_before) - set(finished_rounds(run.results)))
    problems = [*what_went_wrong(case, rc, output, outcome, bool(said)),
                *([f"{run.untouched.name} was rewritten"] if before and digest(run.untouched) != before else [])]
    if case.check and not problems:
        problems.append(case.check(c, run, output))
    outcome.problem = "; ".join(p for p in problems if p)
    return outcome


def what_went_wrong(case: Case, rc: int, output: str, outcome: Outcome, said: bool) -> list[str]:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    checks = [(rc != case.expect_rc, f"exit code {rc}, expected {case.expect_rc}"),
              (outcome.traceback, "a traceback"),
              (bool(case.words) and not said, f"no line with {case.words}"),
              # an error is one line; an interrupt (a warning) or a rerun has none
              (len(errors) != (1 if case.expect_rc == 2 else 0), f"{len(errors)} error lines"),
              (outcome.lost > 0, f"{outcome.lost} finished round(s) lost")]
    return [problem for failed, problem in checks if failed]


def launch(c: Campaign, run: Run) -> tuple[int, str]:
    """Run ``aldar`` (sending ``run.send`` once round 2's first periodic checkpoint is complete): rc, output."""
    process = subprocess.Popen([*aldar_command(), *run.argv], cwd=c.work, env=c.env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # a SIGINT for it alone, not for this script
    if run.send is not None:
        wait_for_checkpoint(process, run.results / "runs" / "round_02")
        if process.poll() is None:
            time.sleep(1.0)  # a few steps past the checkpoint: the one the signal writes must be new
            process.send_signal(run.send)
    try:
        output, _ = process.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return -9, output + "\n(killed: hung)"
    return process.returncode, output


def wait_for_checkpoint(process: subprocess.Popen, run_dir: Path) -> None:
    """Until the loss log (written last at a checkpoint) reaches the first periodic step, or the process ends."""
    while process.poll() is None:
        try:
            with open(run_dir / "loss_log.csv", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            if rows and int(rows[-1]["step"]) >= PERIODIC_STEP:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)


# ----------------------------------------------------------------------------- the campaign
def why_no_tmpfs(work: Path) -> str:
    """'' when a tmpfs can be mounted here, else why the disk-full cases are skipped."""
    if os.geteuid() != 0:
        return "not root: mounting a small tmpfs needs root"
    probe = work / "mount-probe"
    probe.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        return f"mount -t tmpfs failed: {(mounted.stderr or mounted.stdout).strip()[:80]}"
    subprocess.run(["umount", str(probe)], check=False)
    return ""


def why_no_chattr(work: Path) -> str:
    """'' when files can be made immutable here, else why that case is skipped."""
    probe = work / "chattr-probe"
    probe.write_text("")
    try:
        made = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
    except OSError as exc:
        return f"no chattr: {exc}"
    subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    return "" if made.returncode == 0 else f"chattr +i failed: {(made.stderr or made.stdout).strip()[:80]}"


def make_seed(c: Campaign) -> str:
    """One finished tiny round, copied by the cases that need one; '' or why it failed."""
    seed = c.work / "seed" / "results"
    rc, output = launch(c, Run(c.run_args(seed), seed))
    if rc != 0 or finished_rounds(seed) != [1]:
        return f"the seed run failed (rc {rc}): {output.strip().splitlines()[-1:]}"
    c.seed = seed
    return ""


def print_now(line: str) -> None:
    print(line, flush=True)  # a row as its case ends, also when the output goes to a file


def run_campaign(work: Path, cases: list[Case], *, nesting: int = NESTING, seed: Path | None = None,
                 show: Callable[[str], None] = print_now) -> list[Outcome]:
    """Run ``cases`` in ``work``; ``seed`` (a results folder with a finished round) spares making one."""
    c = Campaign(work, nesting)
    shutil.copytree(PROJECT / "examples" / "aldar_kose", c.references)
    needed = {case.needs for case in cases}
    skip = {"tmpfs": why_no_tmpfs(work) if "tmpfs" in needed else "",
            "chattr": why_no_chattr(work) if "chattr" in needed else ""}
    if seed is not None:
        c.seed, skip["seed"] = seed, ""
    elif needed - {""}:
        show("making the seed: one finished tiny round ...")
        skip["seed"] = make_seed(c)
    outcomes = []
    try:
        for case in cases:
            reason = skip.get(case.needs, "") or (skip.get("seed", "") if case.needs != "" else "")
            if reason:
                outcomes.append(Outcome(case.name, None, case.expect_rc, skipped=reason))
            else:
                outcomes.append(run_case(c, case))
            show(row(outcomes[-1]))
    finally:
        c.clean_up()
    return outcomes


def row(o: Outcome) -> str:
    if o.skipped:
        return f"{o.name:<40} {'skipped':>9}  {o.skipped}"
    verdict = "ok" if o.passed else f"FAIL: {o.problem}"
    return (f"{o.name:<40} {o.rc:>4} ({o.expect_rc:>3}) {'yes' if o.traceback else 'no':>5} {o.lost:>4} "
            f"{o.seconds:>6.1f}  {verdict:<5} {o.message[:150]}")


def summary(outcomes: list[Outcome]) -> str:
    ran = [o for o in outcomes if not o.skipped]
    return (f"{len(ran)} cases, {sum(o.traceback for o in ran)} tracebacks, "
            f"{sum(o.lost for o in ran)} finished rounds lost")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated words: run the cases whose name holds one")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args()
    words = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    cases = [case for case in ALL_CASES if not words or any(w in case.name.lower() for w in words)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aldar-faults-") as temporary:
        work = Path(args.keep) if args.keep else Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        print_now(f"{'case':<40} {'rc (want)':>10} {'trace':>5} {'lost':>4} {'secs':>6}  result / message")
        outcomes = run_campaign(work, cases)
    skipped = [o for o in outcomes if o.skipped]
    if skipped:
        print(f"{len(skipped)} case(s) skipped: {skipped[0].skipped}")
    print(f"campaign took {time.perf_counter() - started:.0f} s")
    print(summary(outcomes))
    return 0 if all(o.passed or o.skipped for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
