"""``aldar train`` on the tiny profile: flags, exit codes, Ctrl-C and --resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.cli import build_parser, main
from tools.training import trainer
from tools.training.config import training_settings


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stray aldar.toml
    for name in ("ALDAR_CONFIG", "ALDAR_PROFILE", "ALDAR_OUTPUT_DIR", "ALDAR_REFERENCES"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture
def references(tmp_path) -> Path:
    folder = tmp_path / "refs"
    folder.mkdir()
    for index in range(2):
        pixels = np.full((72, 72, 3), 90 + 60 * index, np.uint8)
        Image.fromarray(pixels).save(folder / f"aldar{index + 1}.png")
    return folder


def base_args(references: Path, run_dir: Path) -> list[str]:
    return ["train", "--profile", "tiny", "--device", "cpu", "--references", str(references), "--run-dir", str(run_dir),
            "--output-dir", str(run_dir.parent / "results"), "--steps", "3", "--validation-images", "0", "-q"]


@pytest.mark.parametrize("flags, words", [
    (["--rank", "0"], "rank"), (["--learning-rate", "-0.001"], "learning_rate"),
    (["--resolution", "100"], "multiple of 8"), (["--lr-warmup-steps", "5"], "warmup"),
])
def test_bad_hyperparameters_exit_2_before_any_file_is_written(references, tmp_path, capsys, flags, words):
    run_dir = tmp_path / "runs" / "bad"
    assert main(base_args(references, run_dir) + flags) == 2
    assert words in capsys.readouterr().err
    assert not run_dir.exists() and not (tmp_path / "runs" / "results").exists()


def test_help_documents_every_knob_with_its_default():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    text = " ".join(train.format_help().split())
    for knob in training_settings():
        if knob.name == "seed":  # the shared --seed setting
            assert "--seed" in text
            continue
        flag = "--" + knob.name.replace("_", "-")
        assert flag in text, flag
        # the flag itself, not the start of a longer one (--output-preservation, --output-preservation-weight)
        after = re.split(rf"{re.escape(flag)}(?![\w-])", text, maxsplit=2)[-1][:400]
        assert "(default:" in after, flag


def test_train_with_analysis_then_ctrl_c_and_resume(references, tmp_path, capsys, monkeypatch):
    analysis = tmp_path / "analysis.json"
    analysis.write_text(json.dumps({"trigger_token": "kose", "captions": {
        "aldar1.png": "kose, smiling", "aldar2.png": "kose, orange robe"}}))
    run_dir = tmp_path / "runs" / "one"
    real, calls = trainer.denoising_loss, {"n": 0}

    def interrupt_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "denoising_loss", interrupt_on_second)
    args = base_args(references, run_dir) + ["--analysis", str(analysis)]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 1/3" in err and "--resume" in err
    assert (run_dir / "checkpoint-000001").is_dir() and not (run_dir / "pytorch_lora_weights.safetensors").exists()
    monkeypatch.setattr(trainer, "denoising_loss", real)
    assert main(args) == 2  # checkpoints present: refuses to start over without --resume
    assert main(args + ["--resume"]) == 0
    saved = json.loads((run_dir / "train_config.json").read_text())
    assert saved["config"]["trigger_token"] == "kose"
    assert {i["caption"] for i in saved["images"]} == {"kose, smiling", "kose, orange robe"}
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert summary["steps"] == 3 and summary["profile"] == "tiny"
    from safetensors import safe_open

    # the trigger token is the analysis' (none was given); the LoRA is named for the folder's character
    with safe_open(str(run_dir / "refs_lora.safetensors"), "pt") as handle:
        assert handle.metadata()["aldar_trigger_token"] == "kose"


def test_at_80_columns_the_summary_paths_are_whole(references, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    run_dir = tmp_path / "a_folder_with_a_long_name_as_people_make_them" / "and_another_one_under_it" / "run"
    assert main(base_args(references, run_dir)) == 0
    out = capsys.readouterr().out
    for name in ("pytorch_lora_weights.safetensors", "refs_lora.safetensors"):
        assert str(run_dir / name) in out  # on one line: it copies whole (was cut to "…" in a table cell)
    assert f"LoRA saved to {run_dir / 'pytorch_lora_weights.safetensors'}" in out


def test_at_80_columns_a_progress_bar_narrows_its_description_not_its_numbers():
    import io

    from rich.console import Console

    from tools.progress import progress_bar, progress_on

    for width, description in ((80, "training Lo…"), (120, "training LoRA (tiny)")):
        out = io.StringIO()
        with progress_on(Console(file=out, width=width, force_terminal=True, color_system=None)):
            with progress_bar("training LoRA (tiny)", 200) as advance:
                advance(200, status="loss 0.0316 · 2.61 it/s")
        last = out.getvalue().split("\r")[-1]
        # was "200/2… 0:00:00 eta 0:00:…" at 80 columns
        assert f"{description} " in last
        assert re.search(r" 200/200 \d+:\d\d:\d\d eta \d+:\d\d:\d\d loss 0\.0316 · 2\.61 it/s", last), last


def test_a_trigger_token_flag_other_than_the_analysis_one_is_refused(references, tmp_path, monkeypatch, capsys):
    """Captions made for 'kose' would train a LoRA the validation prompt and metadata call 'zzk': one line
    naming both and the fix, exit 2, no run folder — never the two mixed."""
    analysis = tmp_path / "analysis.json"
    analysis.write_text(json.dumps({"trigger_token": "kose", "captions": {"aldar1.png": "kose, smiling"}}))
    monkeypatch.setattr(trainer, "train_lora", lambda *a, **k: pytest.fail("trained with a mismatched analysis"))
    run_dir = tmp_path / "runs" / "one"
    args = base_args(references, run_dir) + ["--analysis", str(analysis), "--trigger-token", "zzk"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'kose'" in err and "'zzk'" in err and "--trigger-token kose" in err and len(err.strip().splitlines()) == 1
    assert not run_dir.exists()


def test_the_lora_is_named_for_the_character(references, tmp_path, monkeypatch):
    seen = {}

    def fake_train(config, profile, dataset, run_dir, **kwargs):
        seen.update(name=config.output_name, trigger=config.trigger_token, captions=[c for _, c in dataset],
                    prompt=config.validation_prompt)
        return trainer.TrainResult(run_dir, None, None, 0, None, [], run_dir / "loss.csv", interrupted=True)

    monkeypatch.setattr(trainer, "train_lora", fake_train)
    args = base_args(references, tmp_path / "runs" / "one") + ["--trigger-token", "bluebot", "--character-name",
                                                                 "Blue Bot", "--prompt", "bluebot, waving"]
    assert main(args) == 130
    assert seen == {"name": "blue_bot_lora", "trigger": "bluebot", "captions": ["bluebot, Blue Bot"] * 2,
                    "prompt": "bluebot, waving"}


def test_two_processes_under_torchrun_train_one_lora(references, tmp_path):
    """The multi-GPU code path (DDP, rank-0 writes, loss averaged over ranks) on two CPU processes (gloo)."""
    import os
    import subprocess
    import sys

    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "agent.cli", *base_args(references, run_dir),
                           "--steps", "2", "--checkpoint-every", "2"],
                          capture_output=True, text=True, timeout=1200, env=env, cwd=tmp_path)  # a hang guard
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("LoRA saved to") == 1  # only rank 0 reports
    saved = json.loads((run_dir / "train_config.json").read_text())
    assert saved["num_processes"] == 2
    assert (run_dir / "pytorch_lora_weights.safetensors").is_file() and (run_dir / "checkpoint-000002").is_dir()
