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
from pathlib import Path

import pytest

from tools.settings import BUNDLED_REFERENCES, Settings, load_settings

REFERENCE_NAMES = tuple(f"aldar{i}.png" for i in range(1, 6))
_USER_VARIABLES = re.compile(r"^(ALDAR_.*|.*_API_KEY|OPENAI_BASE_URL|HF_TOKEN|HUGGING_FACE_HUB_TOKEN)$")


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One cache folder for the whole session (tiny tokenizer, an empty HF cache)."""
    return tmp_path_factory.mktemp("aldar-cache")


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch, tmp_path, session_cache):
    for name in list(os.environ):
        if _USER_VARIABLES.match(name):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALDAR_CACHE", str(session_cache))
    monkeypatch.setenv("HF_HOME", str(session_cache / "huggingface"))
    monkeypatch.setenv("HF_HUB_CACHE", str(session_cache / "huggingface" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def references_dir(tmp_path) -> Path:
    """A private copy of the five bundled reference pictures and ``taxonomy.json``."""
    folder = tmp_path / "references"
    folder.mkdir()
    for name in (*REFERENCE_NAMES, "taxonomy.json"):
        shutil.copy2(BUNDLED_REFERENCES / name, folder / name)
    return folder


@pytest.fixture
def tiny_settings(tmp_path, references_dir) -> Settings:
    """Settings on the tiny profile, writing only inside ``tmp_path``."""
    return load_settings(overrides={
        "profile": "tiny",
        "references": str(references_dir),
        "output_dir": str(tmp_path / "results"),
        "analysis_path": str(tmp_path / "models" / "aldar_feature_analysis.json"),
    }, environ={})


@pytest.fixture
def tiny_profile(tiny_settings):
    from tools.models import resolve_profile

    return resolve_profile(tiny_settings)
