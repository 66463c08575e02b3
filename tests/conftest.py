"""Shared fixtures. Every test runs hermetically:

* the working directory is the test's own ``tmp_path`` (so no ``./aldar.toml``,
  no ``./.env`` and no results folder of the user is read or written);
* ``ALDAR_*`` variables and API keys of the user's shell are removed;
* ``ALDAR_CACHE`` and the Hugging Face cache point into one temporary folder
  per session (the tiny tokenizer is written there once), and the Hub is
  offline, so nothing reads ``~/.cache`` or waits on the network.

Subprocesses started by a test inherit the same environment.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tools.settings import BUNDLED_REFERENCES, Settings, load_settings

REFERENCE_NAMES = tuple(f"aldar{i}.png" for i in range(1, 6))
_USER_VARIABLES = re.compile(r"^(ALDAR_.*|.*_API_KEY|OPENAI_BASE_URL|HF_TOKEN|HUGGING_FACE_HUB_TOKEN)$")


_SESSION_CACHE: Path | None = None


def pytest_configure(config):
    # Set before any test module is imported: huggingface_hub reads its cache folder once, at import.
    global _SESSION_CACHE
    _SESSION_CACHE = Path(tempfile.mkdtemp(prefix="aldar-test-cache-"))
    os.environ.update(_cache_environment(_SESSION_CACHE))
    from agent.cli import use_one_torch_thread

    use_one_torch_thread()  # every test runs the tiny profile, as `aldar --profile tiny` does


def pytest_unconfigure(config):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def _cache_environment(cache: Path) -> dict[str, str]:
    return {"ALDAR_CACHE": str(cache), "HF_HOME": str(cache / "huggingface"),
            "HF_HUB_CACHE": str(cache / "huggingface" / "hub"), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}


@pytest.fixture(scope="session")
def session_cache() -> Path:
    """One cache folder for the whole session (tiny tokenizer, an empty HF cache)."""
    assert _SESSION_CACHE is not None
    return _SESSION_CACHE


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch, tmp_path, session_cache):
    for name in list(os.environ):
        if _USER_VARIABLES.match(name):
            monkeypatch.delenv(name, raising=False)
    for name, value in _cache_environment(session_cache).items():
        monkeypatch.setenv(name, value)
    # The tests drive the rounds' mechanics over several rounds; the default (one longer round, another only
    # where it pays) has tests of its own (tests/test_warm_start.py), which load the settings without this.
    monkeypatch.setenv("ALDAR_ROUNDS_MUST_PAY", "false")
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(autouse=True, scope="module")
def fresh_models_per_module():
    """The per-process model cache would carry one module's LoRA adapters into the next module's
    tests; the tiny models rebuild in a fraction of a second."""
    from tools.models import clear_model_cache

    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture
def references_dir(tmp_path) -> Path:
    """A private copy of the five bundled reference pictures, ``taxonomy.json`` and ``character.json``."""
    folder = tmp_path / "references"
    folder.mkdir()
    for name in (*REFERENCE_NAMES, "taxonomy.json", "character.json"):
        shutil.copy2(BUNDLED_REFERENCES / name, folder / name)
    return folder


@pytest.fixture
def tiny_settings(tmp_path, references_dir) -> Settings:
    """Settings on the tiny profile, writing only inside ``tmp_path``; without the prompt suite (its own tests
    turn it on: it draws five more prompts per round)."""
    return load_settings(overrides={
        "profile": "tiny",
        "rounds_must_pay": False,  # several rounds, as the tests of the rounds' mechanics need
        "suite_size": 0,
        "references": str(references_dir),
        "output_dir": str(tmp_path / "results"),
        "analysis_path": str(tmp_path / "models" / "aldar_feature_analysis.json"),
    }, environ={})


@pytest.fixture(scope="module")
def profile():
    """The tiny profile on the CPU, once per module: the trainer's tests share it."""
    from tools.models import resolve_profile

    return resolve_profile(load_settings(overrides={"profile": "tiny", "device": "cpu"}))


@pytest.fixture
def tiny_profile(tiny_settings):
    from tools.models import resolve_profile

    return resolve_profile(tiny_settings)


@pytest.fixture
def clock():
    """Clocks that the providers' HTTP waits move forward instantly (tests.fakes.provider_servers)."""
    from tests.fakes.provider_servers import FakeClock

    return FakeClock()
