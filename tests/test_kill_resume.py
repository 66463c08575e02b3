"""kill -9 in the middle of round 2 of `aldar run`, then the same command again: nothing finished is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


# `aldar run` that SIGKILLs itself at a fixed point of round 2 (no polling: the same point on any machine
# load): right after round 2's first training checkpoint, so the rerun resumes from it; should round 2 be
# decided too short for a checkpoint, as soon as its training is done.
KILLED_IN_ROUND_TWO = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path

    import tools.training.lora_files as lora_files
    from agent.rounds.store import RunStore

    save_checkpoint, set_stage = lora_files.save_checkpoint, RunStore.set_stage

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def checkpoint_then_die(run_dir, *args, **kwargs):
        written = save_checkpoint(run_dir, *args, **kwargs)
        if Path(run_dir).name == "round_02":
            die()
        return written

    def stage_then_die(self, stage, params=None):
        set_stage(self, stage, params)
        if stage == "generate" and self.state.in_progress is not None and self.state.in_progress.round == 2:
            die()

    lora_files.save_checkpoint, RunStore.set_stage = checkpoint_then_die, stage_then_die
    from agent.cli import main  # imports the trainer after the patch: it binds the dying save_checkpoint
    sys.exit(main(sys.argv[1:]))
""")


def _history(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None  # not written yet; a half-written file would raise ValueError and fail the test


def test_kill_during_round_two_then_rerun_resumes(tmp_path, references_dir):
    results = tmp_path / "results"
    arguments = ["run", "--profile", "tiny", "--rounds", "3", "--references", str(references_dir),
                 "--output-dir", str(results), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT),
           "ALDAR_ANALYSIS_PATH": str(tmp_path / "analysis.json"),
           "ALDAR_IMAGES_PER_PROMPT": "2"}  # resuming is the point here, not the scores' precision (tiny's 8)
    history_path = results / "training_history.json"
    # Timeouts only guard against a hung test; nothing waits on them.
    run = subprocess.run([sys.executable, "-c", KILLED_IN_ROUND_TWO, *arguments], cwd=tmp_path, env=env,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1200)
    assert run.returncode == -signal.SIGKILL, run.stdout[-3000:] + run.stderr[-3000:]

    # Every JSON in the folder is whole; round 1 is there, round 2 is marked unfinished.
    for path in results.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))
    before = _history(history_path)
    assert [r["round"] for r in before["rounds"]] == [1] and before["in_progress"]["round"] == 2
    round_one = before["rounds"][0]
    assert (results / round_one["paths"]["lora"]).is_file()

    rerun = subprocess.run([sys.executable, "-m", "agent.cli", *arguments], cwd=tmp_path, env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1200)
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
