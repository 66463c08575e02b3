"""Start-up stays light: the answers that need no model never load the model stack or the LLM client.

Each case runs ``agent.cli.main`` (what the ``aldar`` entry point calls) in a fresh interpreter and
reports which heavy packages ended up imported. Speed itself is measured by ``bench/startup.py``;
this checks the reason it is fast, which does not depend on the machine's load.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.cli import COMMAND_MODULES

HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate", "skimage", "openai", "httpx2")
COMMANDS = [name.rsplit(".", 1)[1] for name in COMMAND_MODULES]

# Runs main() once per argument list (from argv, as JSON), then prints a line of its own (the chat's last
# prompt has no newline) naming the heavy modules loaded.
MARK = "probe: "
PROBE = f"""
MARK = {MARK!r}
import json, sys
from agent.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        codes.append(main(argv))
    except SystemExit as stop:
        codes.append(stop.code)
print("\\n" + MARK + json.dumps({{"codes": codes, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def probe(tmp_path, *argvs: list[str], stdin: str = "") -> tuple[dict, str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs)], cwd=tmp_path, input=stdin,
                          capture_output=True, text=True, timeout=120)
    output, _, report = done.stdout.rpartition("\n" + MARK)
    assert report, f"the probe did not finish: {done.stderr[-2000:]}"
    return json.loads(report), output, done.stderr


def test_version_loads_nothing_heavy(tmp_path):
    result, out, _ = probe(tmp_path, ["--version"])
    assert result == {"codes": [0], "loaded": []}
    assert out.strip() == "aldar 0.1.0"


def test_help_of_aldar_and_of_every_command_loads_nothing_heavy(tmp_path):
    result, out, _ = probe(tmp_path, ["--help"], *[[command, "--help"] for command in COMMANDS])
    assert result == {"codes": [0] * (len(COMMANDS) + 1), "loaded": []}
    assert all(command in out for command in COMMANDS)
    assert "--learning-rate" in out and "--rounds" in out and "freepik" in out  # each command's own flags


@pytest.mark.parametrize("argv, message", [
    (["run", "--profile", "tiny", "--rounds", "-1"], "error: --rounds is -1 — pass --rounds 1 or more"),
    (["run", "--rounds", "two"], "argument --rounds: invalid int value: 'two'"),
    (["train", "--profile", "tiny", "--steps", "-5"], "error: steps is -5 — set steps to a whole number >= 1"),
    (["story", "Aldar tricks the bai"], "error: no LLM API key is set — set DEEPSEEK_API_KEY"),
])
def test_input_errors_stop_before_anything_heavy_loads(tmp_path, argv, message):
    result, _, err = probe(tmp_path, argv)
    assert result == {"codes": [2], "loaded": []}
    assert message in " ".join(err.split())
    assert list(tmp_path.iterdir()) == []  # nothing half-written either


def test_chat_reaches_its_prompt_and_answers_slash_commands_without_torch_or_the_llm_client(tmp_path):
    result, out, _ = probe(tmp_path, ["chat", "--profile", "tiny"], stdin="/help\n/config\n")
    assert result == {"codes": [0], "loaded": []}
    # the prompt before /help, before /config, and before the end of input
    assert out.count("aldar (tiny, round 1)> ") == 3
    assert "next round params" in out  # /config shows them without opening the results folder (torch)
    assert "/auto N" in out and "toy world" in out  # /help's table and /config's profile line
