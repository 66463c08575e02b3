"""kill -9 in the middle of round 2 of `aldar run`, then the same command again: nothing finished is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def _history(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None  # not written yet; a half-written file would raise ValueError and fail the test


def test_kill_during_round_two_then_rerun_resumes(tmp_path, references_dir):
    results = tmp_path / "results"
    command = [sys.executable, "-m", "agent.cli", "run", "--profile", "tiny", "--rounds", "3",
               "--references", str(references_dir), "--output-dir", str(results), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "ALDAR_ANALYSIS_PATH": str(tmp_path / "analysis.json")}
    history_path = results / "training_history.json"
    run = subprocess.Popen(command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    killed_at = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            data = _history(history_path)
            progress = (data or {}).get("in_progress") or {}
            if data and len(data["rounds"]) == 1 and progress.get("round") == 2:
                # Prefer a kill after round 2's first training checkpoint, so the rerun resumes from it.
                checkpoints = list((results / "runs" / "round_02").glob("checkpoint-*"))
                if checkpoints or progress.get("stage") not in ("start", "train"):
                    run.send_signal(signal.SIGKILL)
                    killed_at = progress.get("stage"), len(checkpoints)
                    break
            time.sleep(0.05)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    output = run.stdout.read().decode(errors="replace")
    assert killed_at is not None, f"round 2 never started (exit {run.returncode}):\n{output[-3000:]}"
    assert run.returncode == -signal.SIGKILL

    # Every JSON in the folder is whole; round 1 is there, round 2 is marked unfinished.
    for path in results.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))
    before = _history(history_path)
    assert [r["round"] for r in before["rounds"]] == [1] and before["in_progress"]["round"] == 2
    round_one = before["rounds"][0]
    assert (results / round_one["paths"]["lora"]).is_file()

    rerun = subprocess.run(command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resuming: round 2 was interrupted" in rerun.stdout
    after = _history(history_path)
    assert [r["round"] for r in after["rounds"]] == [1, 2, 3]
    assert after["rounds"][0] == round_one  # untouched by the rerun
    assert after["in_progress"] is None and after["stopped"]["reason"].startswith("round limit")
    assert after["rounds"][1]["params"] == round_one["next_params"]
    assert after["rounds"][1]["train"]["steps"] == after["rounds"][1]["params"]["steps"]
    assert all(r["decided_by"] == "rule-policy" for r in after["rounds"])
    assert not list(results.rglob("*.tmp"))
    assert json.loads((results / ".aldar.lock").read_text() or "{}") == {}  # released at exit
