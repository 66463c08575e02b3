"""``aldar chat`` in a pseudo-terminal (pexpect): slash commands without any LLM, Ctrl-C, Ctrl-D, /quit."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pexpect
import pytest

from agent.repl import Repl, parse_knobs
from tools.errors import InputError

ALDAR = str(Path(sys.executable).with_name("aldar"))
PROMPT = "aldar>"  # prompt_toolkit draws the trailing space as a cursor move
# pexpect's timeouts only guard against a hung chat: far above what a loaded 2-core machine needs to start one.
EXPECT_TIMEOUT_S = 300


def spawn(tmp_path: Path, *extra: str) -> pexpect.spawn:
    env = dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", COLUMNS="160", LINES="50")
    child = pexpect.spawn(ALDAR, ["chat", "--profile", "tiny", "--yes", "--output-dir", str(tmp_path / "results"),
                                  *extra], cwd=str(tmp_path), env=env, encoding="utf-8", timeout=EXPECT_TIMEOUT_S,
                          dimensions=(50, 160))
    child.expect_exact(PROMPT)
    return child


def test_slash_commands_without_llm_and_quit(tmp_path) -> None:
    child = spawn(tmp_path)
    child.sendline("/help")
    child.expect_exact("slash commands")
    child.expect_exact("/auto N")
    child.expect_exact(PROMPT)
    child.sendline("/config")
    child.expect_exact("not configured")  # no key: the LLM line says how to configure it
    child.expect_exact("llm_max_steps")
    child.expect_exact(PROMPT)
    child.sendline("/history")
    child.expect_exact("no finished rounds yet")
    child.expect_exact(PROMPT)
    child.send("/history\x1b\r")  # Esc+Enter: a newline inside the input, not a submit
    child.sendline("now")
    child.expect_exact("unexpected argument(s) now")  # both lines arrived as one input
    child.expect_exact(PROMPT)
    child.sendline("/explain \\")  # a trailing backslash continues on the next line
    child.expect_exact("...")
    child.sendline("thin mustache")
    child.expect_exact("no feedback yet")
    child.expect_exact(PROMPT)
    child.sendline("/histroy")
    child.expect_exact("unknown command /histroy")
    child.expect_exact("did you mean /history?")
    child.expect_exact(PROMPT)
    child.sendline("how do I improve the mustache?")
    child.expect_exact("chat needs an LLM")
    child.expect_exact("DEEPSEEK_API_KEY")
    child.expect_exact(PROMPT)
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    history = (Path(os.environ["ALDAR_CACHE"]) / "chat_history").read_text()
    assert "/histroy" in history  # persistent input history


def test_ctrl_d_and_double_ctrl_c_exit(tmp_path) -> None:
    child = spawn(tmp_path)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    child = spawn(tmp_path)
    child.sendintr()
    child.expect_exact("^C again to exit")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_during_training_returns_to_the_prompt_with_a_checkpoint(tmp_path) -> None:
    from tools.lora_files import latest_checkpoint, load_checkpoint

    child = spawn(tmp_path)
    child.sendline("/train steps=60")
    child.expect(re.compile(r"training LoRA.*?\b([1-9]\d*)/60"), timeout=2 * EXPECT_TIMEOUT_S)
    child.sendintr()
    child.expect_exact("training interrupted")
    child.expect_exact("/train resumes it")
    child.expect_exact(PROMPT)
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    checkpoint = latest_checkpoint(tmp_path / "results" / "runs" / "round_01")
    assert checkpoint is not None
    state_dicts, state = load_checkpoint(checkpoint)
    assert 1 <= state["step"] < 60
    assert any(len(tensors) for tensors in state_dicts.values())


def test_message_mode_and_knob_parsing(tmp_path, tiny_settings, capsys) -> None:
    repl = Repl(tiny_settings, assume_yes=True)
    assert repl.run_once("/history") == 0
    assert "no finished rounds yet" in capsys.readouterr().out
    assert Repl(tiny_settings).run_once("/nope") == 2
    assert "unknown command /nope" in capsys.readouterr().err
    assert Repl(tiny_settings).run_once("hello") == 2  # no key: one line, no traceback
    err = capsys.readouterr().err
    assert "chat needs an LLM" in err and "Traceback" not in err
    assert parse_knobs(["steps=40", "learning_rate=1e-4", "feature_emphasis=thin mustache, round face"]) == \
        {"steps": 40, "learning_rate": 1e-4, "feature_emphasis": ["thin mustache", "round face"]}
    with pytest.raises(InputError):
        parse_knobs(["colour=red"])
    with pytest.raises(InputError):
        parse_knobs(["steps=many"])


def test_chat_text_streams_from_the_llm_and_counts_tokens(tmp_path) -> None:
    from tests.fakes.openai_server import FakeOpenAIServer, Reply

    with FakeOpenAIServer() as server:
        server.enqueue(Reply.tools(("list_rounds", "{}")),
                       Reply.text("No rounds yet. Start with **/auto 1** or ask me to train.",
                                  usage={"prompt_tokens": 300, "completion_tokens": 21, "total_tokens": 321}))
        os.environ["DEEPSEEK_API_KEY"] = "sk-pty-secret-0123456789abcdef"
        os.environ["ALDAR_LLM_BASE_URL"] = server.url
        try:
            child = spawn(tmp_path)
        finally:
            del os.environ["DEEPSEEK_API_KEY"], os.environ["ALDAR_LLM_BASE_URL"]
        child.sendline("how far along are we?")
        child.expect_exact("list_rounds")
        child.expect_exact("Start with")
        child.expect_exact("tokens: 441 this turn")  # 120 for the tool-call request + 321 for the answer
        child.expect_exact("441 this session")
        child.expect_exact(PROMPT)
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    assert len(server.requests) == 2
    assert server.requests[0].messages[0]["role"] == "system" and "Aldar" in server.requests[0].messages[0]["content"]
    tool_result = server.requests[1].messages[-1]
    assert tool_result["role"] == "tool" and '"rounds":[]' in tool_result["content"]
