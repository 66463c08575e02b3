"""The function-calling loop against a loopback fake server, through the real openai client."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import pytest

from agent.llm.client import make_client, provider_error, thinking_extra_body
from agent.llm.loop import ChatLoop, LoopEvents
from agent.llm.toolspec import Range, tool_spec
from tests.fakes.openai_server import FakeOpenAIServer, Reply
from tools.errors import ConfigError, ProviderError
from tools.settings import load_settings

SECRET = "sk-test-very-secret-key-0123456789"
# Only a guard against a hung test: no test here depends on it, so it is far above any loaded machine's delay.
LLM_TIMEOUT_S = 120


class Recorder:
    """Two small tools with ranges and an enum; records the calls that actually ran."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def set_learning_rate(self, learning_rate: Annotated[float, Range(1e-6, 1e-3)],
                          schedule: Literal["constant", "cosine"] = "constant") -> dict:
        """Set the learning rate of the next round.

        Args:
            learning_rate: The new learning rate.
            schedule: How the rate changes over training.
        """
        self.calls.append({"learning_rate": learning_rate, "schedule": schedule})
        return {"learning_rate": learning_rate, "schedule": schedule}

    def list_rounds(self) -> list[dict]:
        """List the finished rounds."""
        self.calls.append({"list_rounds": True})
        return [{"round": 1, "lora_score": 0.41}]


@pytest.fixture
def server():
    with FakeOpenAIServer() as fake:
        yield fake


def make_loop(server, monkeypatch, recorder, **kwargs):
    monkeypatch.setenv("DEEPSEEK_API_KEY", SECRET)
    settings = load_settings(overrides={"llm_base_url": server.url, "llm_timeout_s": LLM_TIMEOUT_S}, environ={})
    client, model = make_client(settings)
    tools = [tool_spec(recorder.set_learning_rate), tool_spec(recorder.list_rounds)]
    return ChatLoop(client, model, tools, system_prompt="You help.", **kwargs)


def test_errors_go_back_to_the_model_as_tool_messages(server, monkeypatch) -> None:
    recorder = Recorder()
    loop = make_loop(server, monkeypatch, recorder)
    server.enqueue(
        Reply.tools(("set_learning_rate", '{"learning_rate": 0.0001'),         # malformed JSON
                    ("fly_to_moon", "{}"),                                      # unknown tool
                    ("set_learning_rate", '{"learning_rate": 5}'),             # out of range
                    reasoning_content="Let me try a few things."),
        Reply.tools(("set_learning_rate", '{"learning_rate": 0.0002, "schedule": "cosine"}'),
                    reasoning_content="Now properly."),
        Reply.text("Done: the learning rate is 0.0002."))
    result = loop.run_turn("lower the learning rate")

    assert result.stop_reason == "answer" and result.text == "Done: the learning rate is 0.0002."
    assert recorder.calls == [{"learning_rate": 0.0002, "schedule": "cosine"}]  # never called with {} or bad values
    assert [r.ok for r in result.tool_calls] == [False, False, False, True]

    second = server.requests[1].messages
    assistant = second[-4]
    assert assistant["role"] == "assistant"
    assert assistant["reasoning_content"] == "Let me try a few things."
    ids = [call["id"] for call in assistant["tool_calls"]]
    tool_messages = second[-3:]
    assert [m["role"] for m in tool_messages] == ["tool"] * 3
    assert [m["tool_call_id"] for m in tool_messages] == ids
    errors = [json.loads(m["content"]) for m in tool_messages]
    assert all(e["ok"] is False for e in errors)
    assert "not valid JSON" in errors[0]["error"]
    assert "unknown tool 'fly_to_moon'" in errors[1]["error"] and "set_learning_rate" in errors[1]["error"]
    assert "learning_rate = 5 is above the maximum 0.001" in errors[2]["error"]
    # the raw (even malformed) arguments are echoed back exactly as the model sent them
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"learning_rate": 0.0001'

    third = server.requests[2].messages
    assert third[-2]["reasoning_content"] == "Now properly."
    assert json.loads(third[-1]["content"]) == {"ok": True, "result": {"learning_rate": 0.0002, "schedule": "cosine"}}
    # every request advertised both tools with their derived schemas
    tools = {t["function"]["name"]: t["function"] for t in server.requests[0].body["tools"]}
    assert tools["set_learning_rate"]["parameters"]["properties"]["learning_rate"]["maximum"] == 1e-3
    assert server.requests[0].body["stream"] is True
    assert server.requests[0].body["stream_options"] == {"include_usage": True}


def test_streaming_text_usage_and_no_key_in_requests_or_transcript(server, monkeypatch, tmp_path) -> None:
    recorder = Recorder()
    pieces: list[str] = []
    loop = make_loop(server, monkeypatch, recorder, events=LoopEvents(on_text=pieces.append))
    server.enqueue(Reply.tools(("list_rounds", ""), usage={"prompt_tokens": 50, "completion_tokens": 5,
                                                          "total_tokens": 55}, keepalive_lines=3),
                   Reply.text("Round 1 scored **0.41**; the LoRA is still poor.",
                              usage={"prompt_tokens": 70, "completion_tokens": 12, "total_tokens": 82}))
    result = loop.run_turn("how did round 1 go?")
    assert "".join(pieces) == "Round 1 scored **0.41**; the LoRA is still poor." == result.text
    assert len(pieces) > 3  # it really arrived in pieces
    assert recorder.calls == [{"list_rounds": True}]  # empty argument string is a call without arguments
    assert result.usage.as_dict() == {"prompt_tokens": 120, "completion_tokens": 17, "total_tokens": 137,
                                      "requests": 2, "unknown_requests": 0}
    server.enqueue(Reply.text("ok", usage={"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}))
    second = loop.run_turn("thanks")
    assert second.usage.total_tokens == 11 and loop.usage.total_tokens == 148 and loop.usage.requests == 3

    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"  # sent only as the header
    for request in server.requests:
        assert SECRET not in json.dumps(request.body)
    transcript = json.dumps(loop.transcript())
    assert SECRET not in transcript and "Round 1 scored" in transcript


def test_step_limit_ends_the_turn(server, monkeypatch) -> None:
    recorder = Recorder()
    loop = make_loop(server, monkeypatch, recorder, max_steps=2)
    server.enqueue(Reply.tools(("list_rounds", "{}")), Reply.tools(("list_rounds", "{}")), Reply.text("never read"))
    result = loop.run_turn("loop forever")
    assert result.stop_reason == "step_limit" and result.steps == 2
    assert "llm_max_steps" in result.text
    assert len(server.requests) == 2 and len(recorder.calls) == 2


def test_same_failing_call_three_times_stops(server, monkeypatch) -> None:
    recorder = Recorder()
    loop = make_loop(server, monkeypatch, recorder, max_steps=10)
    bad = ("set_learning_rate", '{"learning_rate": 2}')
    server.enqueue(Reply.tools(bad), Reply.tools(("set_learning_rate", '{ "learning_rate" : 2 }')), Reply.tools(bad))
    result = loop.run_turn("set it to 2")
    assert result.stop_reason == "repeated_failure" and len(server.requests) == 3
    assert "failed 3 times" in result.text and "above the maximum" in result.text
    assert recorder.calls == []
    # the conversation stays valid: every tool call has its answer, so the next turn works
    server.enqueue(Reply.text("fine"))
    assert loop.run_turn("never mind").text == "fine"
    last = server.requests[-1].messages
    answered = {m["tool_call_id"] for m in last if m["role"] == "tool"}
    asked = {c["id"] for m in last if m.get("tool_calls") for c in m["tool_calls"]}
    assert asked == answered


def test_non_streaming_mode_and_thinking_switch(server, monkeypatch) -> None:
    recorder = Recorder()
    loop = make_loop(server, monkeypatch, recorder, stream=False)
    server.enqueue(Reply.tools(("list_rounds", "{}"), reasoning_content="think"), Reply.text("one round"))
    assert loop.run_turn("rounds?").text == "one round"
    assert server.requests[1].messages[-2]["reasoning_content"] == "think"
    assert "stream" not in server.requests[0].body or server.requests[0].body["stream"] is False
    assert "thinking" not in server.requests[0].body  # a loopback URL is not Deepseek
    assert thinking_extra_body("https://api.deepseek.com", True) == {"thinking": {"type": "enabled"}}
    assert thinking_extra_body("https://api.deepseek.com/beta", False) == {"thinking": {"type": "disabled"}}
    assert thinking_extra_body("http://localhost:11434/v1", True) is None


@pytest.mark.parametrize("status, words", [(401, "rejected the API key"), (402, "insufficient balance"),
                                           (429, "rate limiting"), (503, "server failed (503")])
def test_api_errors_become_one_line_and_keep_the_conversation(server, monkeypatch, status, words) -> None:
    recorder = Recorder()
    loop = make_loop(server, monkeypatch, recorder)
    loop.client = loop.client.with_options(max_retries=0)
    server.enqueue(Reply.error(status, f"boom {SECRET}"))
    with pytest.raises(ProviderError) as caught:
        loop.run_turn("hello")
    message = str(caught.value)
    assert words in message and "\n" not in message and SECRET not in message
    assert [m["role"] for m in loop.messages] == ["system"]  # the failed turn left nothing behind


def test_total_deadline_beats_keepalive_lines(server, monkeypatch) -> None:
    recorder = Recorder()
    monkeypatch.setenv("DEEPSEEK_API_KEY", SECRET)
    settings = load_settings(overrides={"llm_base_url": server.url, "llm_timeout_s": 0.5}, environ={})
    client, model = make_client(settings)
    loop = ChatLoop(client.with_options(max_retries=0), model, [tool_spec(recorder.list_rounds)])
    server.enqueue(Reply.text("too late", keepalive_lines=40))  # 2 s of keep-alive lines
    with pytest.raises(ProviderError) as caught:
        loop.run_turn("hello")
    assert "did not answer within" in str(caught.value)


def test_no_key_names_the_variables(monkeypatch) -> None:
    with pytest.raises(ConfigError) as caught:
        make_client(load_settings(environ={}))
    assert "DEEPSEEK_API_KEY" in str(caught.value) and "OPENAI_API_KEY" in str(caught.value)


def test_openai_compatible_local_server(server, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "ollama-local-key")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_MODEL", "qwen3:8b")
    client, model = make_client(load_settings(environ={}))
    assert model == "qwen3:8b" and str(client.base_url).startswith(server.url)
    server.enqueue(Reply.text("hi"))
    assert ChatLoop(client, model, []).run_turn("hello").text == "hi"
    assert server.requests[0].body["model"] == "qwen3:8b"
    assert "tools" not in server.requests[0].body


def test_api_error_for_timeouts_names_the_setting() -> None:
    import httpx2
    import openai

    settings = load_settings(environ={})
    error = provider_error(openai.APITimeoutError(request=httpx2.Request("POST", "http://x")), settings.llm_timeout_s)
    assert error.problem == "the LLM did not answer within llm_timeout_s = 120 s"
    assert error.fix == "retry, or raise llm_timeout_s in aldar.toml"


@pytest.mark.parametrize("hostile, words", [
    ('{"learning_rate": ' + "[" * 49_000 + "]" * 49_000 + "}", "nested 49,001 levels deep"),
    ('{"learning_rate": "' + "x" * 200_000 + '"}', "over the limit of 100,000"),
    ('{"learning_rate": ' + "9" * 5000 + "}", "cannot be parsed"),
])
def test_hostile_arguments_become_a_tool_error_and_the_chat_goes_on(server, monkeypatch, hostile, words) -> None:
    recorder = Recorder()
    loop = make_loop(server, monkeypatch, recorder, stream=False)  # the fake streams 5 characters per event
    server.enqueue(Reply.tools(("set_learning_rate", hostile)), Reply.text("sorry, fixed"))
    result = loop.run_turn("lower the learning rate")

    assert result.stop_reason == "answer" and result.text == "sorry, fixed"
    assert recorder.calls == [] and [r.ok for r in result.tool_calls] == [False]
    error = json.loads(server.requests[1].messages[-1]["content"])["error"]
    assert words in error and "set_learning_rate" in error
    server.enqueue(Reply.text("still here"))
    assert loop.run_turn("and now?").text == "still here"


def test_the_same_hostile_call_three_times_stops_the_turn_cleanly(server, monkeypatch) -> None:
    recorder = Recorder()
    loop = make_loop(server, monkeypatch, recorder, stream=False)
    deep = ("set_learning_rate", "[" * 49_000 + "]" * 49_000)
    server.enqueue(Reply.tools(deep), Reply.tools(deep), Reply.tools(deep))
    result = loop.run_turn("go")
    assert result.stop_reason == "repeated_failure" and "nested" in result.text


def test_a_key_the_model_echoes_reaches_no_tool_history_or_answer(server, monkeypatch) -> None:
    from tests.fakes.openai_server import BEARER_KEY

    received: list[str] = []

    def remember(note: str) -> dict:
        """Keep a note.

        Args:
            note: The text to keep.
        """
        received.append(note)
        return {"kept": note}

    monkeypatch.setenv("DEEPSEEK_API_KEY", SECRET)
    settings = load_settings(overrides={"llm_base_url": server.url, "llm_timeout_s": LLM_TIMEOUT_S}, environ={})
    client, model = make_client(settings)
    shown: list[str] = []
    streamed: list[str] = []  # what a terminal shows while the answer streams in, piece by piece
    loop = ChatLoop(client, model, [tool_spec(remember)], events=LoopEvents(
        on_tool_start=lambda n, a: shown.append(a), on_text=streamed.append, on_reasoning=streamed.append))
    server.enqueue(Reply.tools(("remember", json.dumps({"note": f"the key is {BEARER_KEY}"})),
                               reasoning_content=f"I was called with {BEARER_KEY}"),
                   Reply.text(f"Your key: {BEARER_KEY}."))
    result = loop.run_turn("what is my key?")

    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"  # the fake did echo this one
    assert result.text == "Your key: ***." and "".join(streamed).endswith("Your key: ***.")
    assert not any(SECRET[:8] in "".join(streamed[:n]) for n in range(len(streamed) + 1))  # not even in part
    assert received == ["the key is ***"] and SECRET not in "".join(shown)
    assert SECRET not in json.dumps(loop.messages) and SECRET not in json.dumps(server.requests[1].body)


def test_read_feedback_refuses_round_numbers_that_cannot_be(server, monkeypatch, tiny_settings) -> None:
    from agent.llm.tools import SessionTools
    from agent.rounds.session import Session

    monkeypatch.setenv("DEEPSEEK_API_KEY", SECRET)
    settings = load_settings(overrides={"llm_base_url": server.url, "llm_timeout_s": LLM_TIMEOUT_S}, environ={})
    client, model = make_client(settings)
    with Session(tiny_settings, quiet=True) as session:
        tools = [spec for spec in SessionTools(session, lambda question: False).specs() if spec.name == "read_feedback"]
        loop = ChatLoop(client, model, tools)
        server.enqueue(Reply.tools(("read_feedback", '{"round_number": -1}'), ("read_feedback", '{"round_number": 0}'),
                                   ("read_feedback", '{"round_number": 1e20}'), ("read_feedback", "{}")),
                       Reply.text("ok"))
        assert loop.run_turn("feedback?").text == "ok"
    errors = [json.loads(m["content"])["error"] for m in server.requests[1].messages if m["role"] == "tool"]
    assert "round_number = -1 is below the minimum 1" in errors[0]
    assert "round_number = 0 is below the minimum 1" in errors[1]
    assert errors[2] == "there is no round 100000000000000000000 — rounds so far: none"
    assert errors[3].startswith("no feedback yet")  # no round asked for: the honest answer
