"""How long ``aldar`` takes to answer before any work: version, help, an argument error, the chat prompt.

    python bench/startup.py [--runs 7]

Every command runs as a fresh process from an empty folder (no aldar.toml, no .env), through the
``aldar`` entry point beside this interpreter (``python -m agent.cli`` where there is none). The
chat is timed to its prompt (``aldar>`` on stdout), then told ``/quit``. The baseline, measured in
the same run, is ``python -c pass`` on the same interpreter: the commands and the baseline take turns
and the medians are reported, so load from other processes hits all of them alike.

Targets (issue 11): ``--version``, ``--help`` and argument errors under 0.5 s; the chat at its
prompt under 1.5 s. They are absolute seconds; the ratio says how much of that is aldar's own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = b")> "  # the end of "aldar (<profile>, round N)> "


def aldar_command() -> list[str]:
    entry_point = Path(sys.executable).parent / "aldar"
    return [str(entry_point)] if entry_point.is_file() else [sys.executable, "-m", "agent.cli"]


def time_exit(command: list[str], folder: Path, env: dict[str, str]) -> float:
    """Seconds until the process has exited (its output is read and dropped)."""
    started = time.perf_counter()
    subprocess.run(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def time_to_prompt(command: list[str], folder: Path, env: dict[str, str]) -> float:
    """Seconds until the chat prompt appears on stdout; then the chat is told /quit and waited for."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    seen = b""
    while PROMPT not in seen:
        chunk = process.stdout.read1(4096)
        if not chunk:
            raise SystemExit(f"{' '.join(command)} ended before its prompt")
        seen += chunk
    elapsed = time.perf_counter() - started
    process.communicate(b"/quit\n", timeout=60)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (medians are reported)")
    args = parser.parse_args()
    aldar = aldar_command()
    env = {**os.environ, "NO_COLOR": "1"}
    for name in [n for n in env if n.startswith("ALDAR_")]:
        del env[name]
    # (label, how to time it, command, target seconds or None)
    cases = [
        ("python -c pass", time_exit, [sys.executable, "-c", "pass"], None),
        ("aldar --version", time_exit, [*aldar, "--version"], 0.5),
        ("aldar --help", time_exit, [*aldar, "--help"], 0.5),
        ("aldar run --help", time_exit, [*aldar, "run", "--help"], 0.5),
        ("aldar run --rounds -1 (error)", time_exit, [*aldar, "run", "--rounds", "-1"], 0.5),
        ("aldar chat → prompt", time_to_prompt, [*aldar, "chat", "--profile", "tiny"], 1.5),
    ]
    times: dict[str, list[float]] = {label: [] for label, *_ in cases}
    with tempfile.TemporaryDirectory(prefix="aldar-startup-") as folder:
        for _ in range(args.runs):
            for label, measure, command, _target in cases:
                times[label].append(measure(command, Path(folder), env))
    baseline = statistics.median(times["python -c pass"])
    print(f"start-up from an empty folder, median of {args.runs} runs each ({' '.join(aldar)}):")
    for label, _measure, _command, target in cases:
        seconds = statistics.median(times[label])
        verdict = "" if target is None else f"   target < {target:g} s: {'ok' if seconds < target else 'MISSED'}"
        print(f"  {label:32s} {seconds:6.3f} s  {seconds / baseline:6.1f}x python -c pass{verdict}")


if __name__ == "__main__":
    main()
