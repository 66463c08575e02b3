"""A built wheel is the whole product: installed into a fresh venv it runs from an empty folder.

The wheel is built from a copy of the sources (nothing written into the checkout) with the build
backend already installed here (``--no-build-isolation``, no index). The fresh venv gets the wheel
alone; torch and the rest of the model stack come from this environment's site-packages through a
``.pth`` line, which adds the folder to ``sys.path`` but runs none of its ``.pth`` files, so the
editable install of this checkout stays invisible there and ``agent`` can only come from the wheel.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "agent", "tools", "prompts", "examples")
INSTALLED_AS = {"prompts": "aldar_prompts", "examples": "aldar_examples"}  # pyproject's package-dir


def run(command: list, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheelhouse")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", ".", "-w", out], cwd=source)
    [built] = out.glob("aldar_lora-*.whl")
    return built


def repository_files() -> set[str]:
    """Every file of the repository that the installed product needs, as its path inside the wheel."""
    wanted = set()
    for folder in ("agent", "tools"):
        wanted |= {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*.py")}
    wanted |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "tools" / "world" / "weights").rglob("*") if p.is_file()}
    for folder, package in INSTALLED_AS.items():
        wanted |= {f"{package}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts}
    return wanted


def test_the_wheel_holds_every_module_prompt_reference_and_weight_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert repository_files() - names == set()
    assert {"aldar_prompts/system.md", "aldar_examples/aldar_kose/aldar1.png",
            "aldar_examples/aldar_kose/taxonomy.json"} <= names
    assert not any(name.startswith(("tests/", "bench/", "prompts/", "examples/")) for name in names)


def test_the_installed_wheel_runs_doctor_and_a_tiny_round_from_an_empty_folder(wheel, tmp_path, monkeypatch):
    monkeypatch.setenv("ALDAR_IMAGES_PER_PROMPT", "2")  # the package's files are the point here, not the scores
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # pip is lent from here (--python): no bootstrap, no index
    python = env_dir / "bin" / "python"
    site_packages = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             tmp_path).stdout.strip())
    lent = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site_packages / "model_stack_from_the_test_env.pth").write_text("\n".join(lent) + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--no-compile",
         "--disable-pip-version-check", "-q", wheel], tmp_path)

    empty = tmp_path / "empty"
    empty.mkdir()
    where = json.loads(run([python, "-c", "import json, agent, aldar_prompts, tools.settings as s; print(json.dumps("
                                          "[agent.__file__, aldar_prompts.__file__, str(s.BUNDLED_REFERENCES)]))"],
                           empty).stdout)
    assert all(Path(path).is_relative_to(site_packages) for path in where), where

    aldar = env_dir / "bin" / "aldar"
    doctor = run([aldar, "doctor", "--profile", "tiny"], empty)
    assert "ready for profile tiny" in doctor.stdout  # no FAIL: modules, prompt files, toy world, references

    rounds = run([aldar, "run", "--profile", "tiny", "--rounds", "1", "--steps", "40"], empty)
    assert "best round: 1" in rounds.stdout
    results = empty / "lora_training_results"
    history = json.loads((results / "training_history.json").read_text())
    assert [record["round"] for record in history["rounds"]] == [1]
    assert (results / "report.html").is_file() and (results / "score_chart.png").is_file()
    assert (results / "best_lora" / "best_lora.json").is_file()
    assert sorted(p.name for p in empty.iterdir()) == ["lora_training_results"]  # nothing else written
    assert (results / "feature_analysis.json").is_file()  # the analysis lives with the results it made
