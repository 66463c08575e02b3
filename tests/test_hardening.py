"""Issue 28's defects, each as a user meets it: damaged state, a hostile file system, a full disk, SIGTERM,
keys over plain HTTP, a failed sdxl run before a tiny one, and the README's own variable. Every failure is
one line (problem — fix) with exit code 2, the state file untouched."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.cli import main
from agent.rounds.session import Session, SessionEvents
from tools.atomic import atomic_write, atomic_write_text
from tools.errors import InsecureUrlError, StorageError
from tools.settings import OTHER_ENV_NAMES, Settings, unknown_environment_names

PROJECT = Path(__file__).resolve().parent.parent
# Deeper than Python's parser recurses (its limit is a thousand-odd levels), far below the 25 million.
NESTING = 100_000


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``aldar <argv>`` in this process: exit code, and stdout + stderr as one text with lines unwrapped."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def one_line_error(code: int, output: str) -> str:
    """The single error line of a failed command (the terminal wraps it; rich indents nothing)."""
    assert code == 2, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    # The error is the last thing printed: join its wrapped continuation lines back into one.
    return " ".join(output[output.index(errors[0]):].split())


def tiny_run(tmp_path: Path, references: Path, *extra: str) -> list[str]:
    return ["run", "--profile", "tiny", "--rounds", "1", "--competitors", "none", "--no-llm", "-q",
            "--references", str(references), "--output-dir", str(tmp_path / "results"), *extra]


def write_history(results: Path, history) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / "training_history.json"
    path.write_text(history if isinstance(history, str) else json.dumps(history), encoding="utf-8")
    return path


def finished_round(results: Path) -> dict:
    """A finished round of the history, its LoRA file on disk (enough for best_lora/ and the report)."""
    lora = results / "runs" / "round_01" / "pytorch_lora_weights.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    lora.write_bytes(b"weights of round 1")
    return {"round": 1, "lora_score": 0.5, "params": {"steps": 40}, "scores": {"lora": {"quality": 0.5}},
            "paths": {"lora": "runs/round_01/pytorch_lora_weights.safetensors"}}


# ----------------------------------------------------------------------------- 1, 3: damaged history
@pytest.mark.parametrize("command", [[], ["chat", "-m", "/history"]], ids=["run", "chat-history"])
def test_deeply_nested_history_is_damaged_not_a_recursion_error(tmp_path, references_dir, capsys, command):
    history = write_history(tmp_path / "results", "[" * NESTING + "]" * NESTING)
    before = history.read_bytes()
    argv = tiny_run(tmp_path, references_dir)
    if command:  # the same settings flags, the chat's command instead of run's
        argv = [*command, "--profile", "tiny", "--references", str(references_dir),
                "--output-dir", str(tmp_path / "results")]
    line = one_line_error(*run_cli(capsys, *argv))
    assert "history is damaged" in line and "nested too deeply" in line and str(history) in line
    assert "move it away" in line  # the fix
    assert history.read_bytes() == before


def test_truncated_history_says_the_same_damaged(tmp_path, references_dir, capsys):
    history = write_history(tmp_path / "results", '{"rounds": [{"round": 1')
    line = one_line_error(*run_cli(capsys, *tiny_run(tmp_path, references_dir)))
    assert "history is damaged" in line and "not valid JSON" in line
    assert history.read_text() == '{"rounds": [{"round": 1'  # left as it was


@pytest.mark.parametrize("entry, words", [
    ({"round": "one"}, "round entry 1 of 'rounds' has 'round' \"one\", not a round number"),
    ({"round": 1, "params": "x"}, "round entry 1 of 'rounds' (round 1) has 'params' \"x\", not an object"),
    ({"round": 1, "lora_score": "high"}, "has 'lora_score' \"high\", not a number"),
    ("a round", "round entry 1 of 'rounds' is a string, not an object"),
])
def test_wrong_typed_history_entry_is_named(tmp_path, references_dir, capsys, entry, words):
    history = write_history(tmp_path / "results", {"version": 1, "rounds": [entry], "in_progress": None})
    before = history.read_bytes()
    line = one_line_error(*run_cli(capsys, *tiny_run(tmp_path, references_dir)))
    assert "history is damaged" in line and words in line and "fix or delete that entry" in line
    assert history.read_bytes() == before


def test_wrong_typed_round_in_progress_is_named(tmp_path, references_dir, capsys):
    write_history(tmp_path / "results", {"rounds": [], "in_progress": {"round": 1, "params": [1, 2]}})
    line = one_line_error(*run_cli(capsys, *tiny_run(tmp_path, references_dir)))
    assert "'in_progress' (round 1) has 'params' [1, 2], not an object" in line


# ----------------------------------------------------------------------------- 2: the file system
def test_results_folder_that_is_a_file(tmp_path, references_dir, capsys):
    (tmp_path / "results").write_text("not a folder")
    line = one_line_error(*run_cli(capsys, *tiny_run(tmp_path, references_dir)))
    assert f"{tmp_path / 'results'} is a file, where aldar needs a folder" in line and "--output-dir" in line
    assert (tmp_path / "results").read_text() == "not a folder"


def test_best_lora_that_is_a_file(tmp_path, references_dir, capsys):
    results = tmp_path / "results"
    history = write_history(results, {"rounds": [finished_round(results)]})
    (results / "best_lora").write_text("in the way")
    line = one_line_error(*run_cli(capsys, *tiny_run(tmp_path, references_dir)))
    assert f"{results / 'best_lora'} is a file, where aldar needs a folder — move that file away" in line
    assert json.loads(history.read_text())["rounds"][0]["round"] == 1  # the finished round is kept
    assert not list(results.rglob("*.tmp")), "nothing half-written"


def test_report_that_is_a_folder(tmp_path, references_dir, capsys):
    results = tmp_path / "results"
    write_history(results, {"rounds": [finished_round(results)]})
    (results / "report.html").mkdir()
    line = one_line_error(*run_cli(capsys, *tiny_run(tmp_path, references_dir)))
    assert f"{results / 'report.html'} is a folder, where aldar keeps a file — move that folder away" in line
    assert not list(results.rglob("*.tmp"))


def test_history_that_is_a_folder(tmp_path, references_dir, capsys):
    (tmp_path / "results" / "training_history.json").mkdir(parents=True)
    line = one_line_error(*run_cli(capsys, *tiny_run(tmp_path, references_dir)))
    assert "training_history.json is a folder, where aldar keeps a file" in line
    assert (tmp_path / "results" / "training_history.json").is_dir()


def test_an_error_of_the_file_system_is_still_an_oserror_for_best_effort_writers(tmp_path):
    (tmp_path / "cache").write_text("a file")
    with pytest.raises(OSError) as caught:  # caches catch OSError and go on: they still do
        atomic_write_text(tmp_path / "cache" / "entry.json", "{}")
    assert isinstance(caught.value, StorageError) and caught.value.errno == errno.EEXIST


# ----------------------------------------------------------------------------- 4: a full disk
@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    # torch.save on a full disk, word for word as on a 3 MB tmpfs
    RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                 "file write failed"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
], ids=["ENOSPC", "torch.save", "EDQUOT"])
def test_a_full_disk_is_one_line_naming_the_folder_and_the_fix(tmp_path, failure):
    target = tmp_path / "runs" / "training_state.pt"

    def fill_the_disk(tmp: Path) -> None:
        tmp.write_bytes(b"x" * 1000)
        raise failure

    with pytest.raises(StorageError) as caught:
        atomic_write(target, fill_the_disk)
    message = str(caught.value)
    assert re.search(r"^no space left on /\S*( \([\d.]+ MB free\))?: writing .*training_state\.pt — free at least "
                     r"\d+ MB there and rerun \(finished rounds are kept\), or pass --output-dir DIR", message), message
    assert not any(target.parent.iterdir()), "the partial file is removed"


@pytest.mark.parametrize("free_mb, full", [(0.5, True), (500, False)])
def test_a_writer_failing_in_its_own_words_on_a_nearly_full_disk_is_a_full_disk(tmp_path, monkeypatch, free_mb, full):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=int(free_mb * 2**20)))

    def torch_save(tmp: Path) -> None:  # torch.save's second message on a 3 MB tmpfs: no errno, no "space"
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 724672 vs 724564")

    with pytest.raises(StorageError if full else RuntimeError, match="no space left on" if full else "unexpected"):
        atomic_write(tmp_path / "training_state.pt", torch_save)


def test_a_full_disk_met_outside_the_writers_is_one_line(tmp_path, references_dir, capsys, monkeypatch):
    import agent.commands.run as run_command

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results" / "log.txt"))

    monkeypatch.setattr(run_command, "run", full)
    line = one_line_error(*run_cli(capsys, *tiny_run(tmp_path, references_dir)))
    assert line.startswith("error: no space left on /") and "log.txt" in line and "--output-dir" in line


# ----------------------------------------------------------------------------- 5: SIGTERM, SIGHUP
# `aldar train` that sends itself the signal right after a given optimizer step: the same point on any machine.
SIGNALLED_AT_STEP = textwrap.dedent("""
    import os, signal, sys
    import tools.training.trainer as trainer

    step_then_signal = trainer._Run._optimizer_step
    at_step, signum = int(sys.argv[1]), getattr(signal, sys.argv[2])

    def optimizer_step(self):
        step_then_signal(self)
        if self.step == at_step:
            os.kill(os.getpid(), signum)

    trainer._Run._optimizer_step = optimizer_step
    from agent.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_and_sighup_checkpoint_the_step_reached_as_ctrl_c_does(tmp_path, references_dir, signame, code):
    run_dir = tmp_path / "run"
    argv = ["train", "--profile", "tiny", "--references", str(references_dir), "--steps", "30",
            "--checkpoint-every", "10", "--validation-images", "0", "--run-dir", str(run_dir), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT),
           "ALDAR_ANALYSIS_PATH": str(tmp_path / "analysis.json")}
    result = subprocess.run([sys.executable, "-c", SIGNALLED_AT_STEP, "13", signame, *argv], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)  # a hang guard
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-3000:]
    assert "Traceback" not in output
    assert "interrupted at step 13/30; checkpoint saved in" in " ".join(output.split())  # as after Ctrl-C
    checkpoints = sorted(p.name for p in run_dir.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-000010", "checkpoint-000013"]  # the step reached, past the periodic one


def test_termination_handlers_are_restored_after_a_command(capsys):
    before = signal.getsignal(signal.SIGTERM)
    main(["doctor", "--profile", "tiny"])
    capsys.readouterr()
    assert signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------------------- 6: keys only over TLS
@pytest.mark.parametrize("url, words", [
    ("http://169.254.169.254", "an API key would travel over plain http to another machine"),
    ("http://user:s3cretpw@10.0.0.1:8080", "it holds credentials"),
    ("ftp://files.example.com", "neither https nor http"),
])
def test_a_provider_url_that_would_expose_the_key_is_refused_before_connecting(tmp_path, capsys, monkeypatch,
                                                                               url, words):
    monkeypatch.setenv("ALDAR_DEEPAI_BASE_URL", url)
    monkeypatch.setenv("DEEPAI_API_KEY", "sk-deepai-secret-1234")
    line = one_line_error(*run_cli(capsys, "generate", "--profile", "tiny", "--provider", "deepai",
                                   "--prompt", "a cat", "--output-dir", str(tmp_path / "out")))
    assert "deepai_base_url (ALDAR_DEEPAI_BASE_URL) is" in line and words in line and "https://" in line
    assert "s3cretpw" not in line and "sk-deepai" not in line  # neither credentials nor the key


def test_the_llm_url_that_would_expose_the_key_is_refused(monkeypatch):
    from agent.llm.client import make_client
    from tools.settings import load_settings

    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek-secret-1234")
    settings = load_settings(overrides={"llm_base_url": "http://169.254.169.254/v1"}, environ={})
    with pytest.raises(InsecureUrlError, match=r"the LLM base URL \(llm_base_url.*\) is http://169\.254\.169\.254/v1: "
                                          r"an API key would travel over plain http"):
        make_client(settings)


def test_aldar_run_refuses_the_llm_url_instead_of_falling_back_to_the_rule_policy(tmp_path, references_dir, capsys,
                                                                                  monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek-secret-1234")
    monkeypatch.setenv("ALDAR_LLM_BASE_URL", "http://169.254.169.254/v1")
    argv = [word for word in tiny_run(tmp_path, references_dir) if word != "--no-llm"]
    line = one_line_error(*run_cli(capsys, *argv))
    assert "the LLM base URL (llm_base_url / ALDAR_LLM_BASE_URL, or OPENAI_BASE_URL) is http://169.254.169.254/v1" in line
    assert not (tmp_path / "results" / "runs").exists()  # refused before the first round


@pytest.mark.parametrize("url", ["https://api.deepai.org", "http://127.0.0.1:8080/v1", "http://localhost:11434/v1",
                                 "http://127.3.2.1", "http://[::1]:8000"])
def test_tls_and_this_machine_are_allowed(url):
    from tools.urls import check_key_url

    check_key_url(url, "deepai_base_url")


def test_doctor_shows_the_url_check(capsys, monkeypatch):
    monkeypatch.setenv("ALDAR_FREEPIK_BASE_URL", "http://10.0.0.5")
    code, output = run_cli(capsys, "doctor", "--profile", "tiny")
    text = " ".join(output.split())
    assert "deepai_base_url URL │ ok │ https://api.deepai.org — keys go over TLS" in text
    assert re.search(r"freepik_base_url URL │ warn │ http://10\.0\.0\.5: an API key would travel", text)


# ----------------------------------------------------------------------------- 7: sdxl's round in a tiny run
def test_a_round_started_by_other_models_is_discarded_not_resumed(tiny_settings):
    sdxl = {"profile": "sdxl", "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
            "clip_model": "openai/clip-vit-large-patch14", "device": "cpu", "dtype": "fp32"}
    sdxl_params = {"steps": 1500, "learning_rate": 1e-4, "rank": 32, "resolution": 1024}
    write_history(Path(tiny_settings.output_dir),
                  {"version": 1, "profile": sdxl, "rounds": [], "best_round": None,
                   "in_progress": {"round": 1, "stage": "train", "started_at": "x", "params": sdxl_params}})
    notices: list[str] = []
    with Session(tiny_settings, quiet=True, events=SessionEvents(on_notice=notices.append)) as session:
        assert session.params == session.default_params and session.params["resolution"] != 1024
        assert session.store.state.in_progress is None and session.store.state.profile["profile"] == "tiny"
    assert len(notices) == 1 and notices[0].startswith("round 1 was started with other models (profile 'sdxl' → "
                                                       "'tiny'") and "discarded" in notices[0]
    # Saved: the next run neither resumes it nor refuses the folder as another profile's.
    with Session(tiny_settings, quiet=True, events=SessionEvents(on_notice=notices.append)) as session:
        assert session.params == session.default_params
    assert len(notices) == 1


# ----------------------------------------------------------------------------- 8: the README's variable
def test_known_variables_that_are_not_settings_are_not_warned_about():
    assert unknown_environment_names({"ALDAR_SKIP_BROWSER": "1", "ALDAR_CACHE": "/c", "ALDAR_CONFIG": "a"}) == []
    assert unknown_environment_names({"ALDAR_SKIP_BROWSR": "1"})  # a typo still is


def test_every_aldar_variable_the_code_reads_is_a_setting_or_listed():
    settings = {"ALDAR_" + name.upper() for name in Settings.__dataclass_fields__}
    read = set()
    for path in [*PROJECT.glob("agent/**/*.py"), *PROJECT.glob("tools/**/*.py"), *PROJECT.glob("tests/*.py"),
                 *PROJECT.glob("bench/*.py"), PROJECT / "README.md"]:
        read |= set(re.findall(r"(?:environ(?:\.get)?\(|environ\[|getenv\()[\"'](ALDAR_[A-Z_]+)[\"']",
                               path.read_text(encoding="utf-8")))
    readme = set(re.findall(r"`(ALDAR_[A-Z_]+)=", (PROJECT / "README.md").read_text(encoding="utf-8")))
    assert read | readme <= settings | set(OTHER_ENV_NAMES), (read | readme) - settings - set(OTHER_ENV_NAMES)


# ----------------------------------------------------------------------------- 9: the fault campaign
def test_fault_campaign_file_system_cases(tmp_path, monkeypatch):
    """bench/fault_campaign.py's file-system cases on a made-up finished round (its disk-full and signal cases
    train, minutes on two cores: run the script for those), so the campaign cannot rot unnoticed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fault_campaign", PROJECT / "bench" / "fault_campaign.py")
    campaign = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, campaign)  # its dataclasses look their module up there
    spec.loader.exec_module(campaign)
    seed = campaign.fabricated_seed(tmp_path / "seed")
    lines: list[str] = []
    outcomes = campaign.run_campaign(tmp_path / "work", campaign.FILE_SYSTEM_CASES, nesting=NESTING, seed=seed,
                                     show=lines.append)
    assert [o.problem for o in outcomes] == [""] * len(campaign.FILE_SYSTEM_CASES), "\n".join(lines)
    ran = sum(not o.skipped for o in outcomes)  # chattr +i needs root and a file system that has it
    assert ran >= len(campaign.FILE_SYSTEM_CASES) - 1
    assert campaign.summary(outcomes) == f"{ran} cases, 0 tracebacks, 0 finished rounds lost"
