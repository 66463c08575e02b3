"""Local OpenAI-compatible servers (llama.cpp, Ollama, LM Studio, vLLM) through the loopback fake: no key,
calls written into the text, streams without usage, servers without tools, deciders that decide nothing."""

from __future__ import annotations

import json

import pytest

from agent.llm.client import (LOCAL_PLACEHOLDER_KEY, ToolsUnsupportedError, describe_endpoint,
                              make_client)
from agent.llm.decider import NOTHING, REPEATED, LLMDecider
from agent.llm.loop import ChatLoop, calls_in_content
from agent.llm.toolspec import tool_spec
from tests.fakes.openai_server import FakeOpenAIServer, Reply
from tests.llama_server import free_port
from tests.test_llm_loop import Recorder
from tests.test_llm_rounds import BOUNDS, FEEDBACK, PARAMS
from tools.errors import ConfigError
from tools.settings import load_settings
from tools.urls import url_is_loopback


@pytest.fixture
def server():
    with FakeOpenAIServer() as fake:
        yield fake


def local_settings(url: str, **overrides):
    return load_settings(overrides={"llm_base_url": url, "llm_model": "smollm2", "llm_timeout_s": 120, **overrides},
                         environ={})


def local_loop(server, recorder, **kwargs) -> ChatLoop:
    client, model = make_client(local_settings(server.url))
    return ChatLoop(client, model, [tool_spec(recorder.set_learning_rate), tool_spec(recorder.list_rounds)], **kwargs)


def test_a_loopback_server_needs_no_key_and_gets_no_deepseek_fields(server) -> None:
    recorder = Recorder()
    loop = local_loop(server, recorder)
    server.enqueue(Reply.text("hello from a local model"))
    assert loop.run_turn("hi").text == "hello from a local model"
    request = server.requests[0]
    assert request.body["model"] == "smollm2"
    assert request.headers["authorization"] == f"Bearer {LOCAL_PLACEHOLDER_KEY}"  # the client demands one; no secret
    assert "thinking" not in request.body  # Deepseek's switch goes to deepseek.com URLs only
    assert request.body["stream_options"] == {"include_usage": True}
    assert describe_endpoint(local_settings(server.url)) == f"smollm2 at {server.url} (local server, no key)"


@pytest.mark.parametrize("url, loopback", [("http://127.0.0.1:8080/v1", True), ("http://localhost:11434/v1", True),
                                           ("http://[::1]:1234/v1", True), ("http://127.1.2.3/v1", True),
                                           ("http://192.168.1.5:8000/v1", False),
                                           ("https://api.deepseek.com", False), ("http://localhost.evil.com/v1", False)])
def test_only_a_server_on_this_machine_goes_without_a_key(url, loopback) -> None:
    assert url_is_loopback(url) is loopback
    if not loopback:
        with pytest.raises(ConfigError):
            make_client(local_settings(url))


def test_the_flags_reach_the_settings() -> None:
    from agent.cli import build_parser, settings_from_args

    argv = ["chat", "--llm-base-url", "http://127.0.0.1:8080/v1", "--llm-model", "smollm2"]
    settings = settings_from_args(build_parser(argv).parse_args(argv))
    assert (settings.llm_base_url, settings.llm_model) == ("http://127.0.0.1:8080/v1", "smollm2")


@pytest.mark.parametrize("text, expected", [
    ('{"name": "list_rounds", "arguments": {}}', [("list_rounds", {})]),
    ('Sure.\n```json\n{"name": "set_learning_rate", "parameters": {"learning_rate": 0.0002}}\n```',
     [("set_learning_rate", {"learning_rate": 0.0002})]),
    ('<tool_call>\n{"name": "list_rounds", "arguments": {}}\n</tool_call>'
     '<tool_call>{"name": "set_learning_rate", "arguments": "{\\"learning_rate\\": 1e-4}"}</tool_call>',
     [("list_rounds", {}), ("set_learning_rate", {"learning_rate": 1e-4})]),
    ('[{"type": "function", "function": {"name": "list_rounds", "arguments": {}}}]', [("list_rounds", {})]),
    ("Round 1 scored 0.41 (see {the report}).", []),
    ('The round is {"round": 1, "name": "first"}.', []),  # an object with a name but no arguments is no call
])
def test_calls_written_into_the_text_are_read(text, expected) -> None:
    calls = calls_in_content(text)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == expected
    assert len({c["id"] for c in calls}) == len(calls)


def test_a_call_in_the_text_runs_and_its_result_goes_back_with_its_id(server) -> None:
    recorder = Recorder()
    loop = local_loop(server, recorder)
    server.enqueue(Reply.text('<tool_call>{"name": "set_learning_rate", "arguments": {"learning_rate": 0.0002}}'
                              '</tool_call>'),
                   Reply.text('{"name": "set_learning_rate", "arguments": {"learning_rate": 7}}'),  # out of range
                   Reply.text("Done."))
    result = loop.run_turn("lower the learning rate")
    assert result.text == "Done." and [r.ok for r in result.tool_calls] == [True, False]
    assert recorder.calls == [{"learning_rate": 0.0002, "schedule": "constant"}]
    sent = server.requests[2].messages
    calls = [c for m in sent if m.get("tool_calls") for c in m["tool_calls"]]
    answers = [m for m in sent if m["role"] == "tool"]
    assert [a["tool_call_id"] for a in answers] == [c["id"] for c in calls]  # every call has its answer
    assert "above the maximum 0.001" in json.loads(answers[1]["content"])["error"]


def test_a_stream_without_usage_is_unknown_not_zero(server) -> None:
    recorder = Recorder()
    loop = local_loop(server, recorder)
    server.enqueue(Reply.text("no usage here", usage=None))
    result = loop.run_turn("hi")
    assert result.usage.unknown_requests == 1 and result.usage.total_text() == "unknown"
    assert "unknown" in result.usage.describe()
    server.enqueue(Reply.text("counted"))  # the fake's default usage: 120 tokens
    loop.run_turn("again")
    assert loop.usage.total_text() == "120 + unknown" and loop.usage.requests == 2


@pytest.mark.parametrize("status, message", [(400, "tools param requires --jinja flag"),
                                             (422, "Unrecognized field 'tools'"),
                                             (500, "this model does not support tools")])
def test_a_server_without_tools_is_one_line_and_the_rule_policy(server, status, message) -> None:
    decider = LLMDecider(local_settings(server.url), BOUNDS)
    decider.client = decider.client.with_options(max_retries=0)
    server.enqueue(Reply.error(status, message))
    decision = decider.decide(FEEDBACK, [], PARAMS)
    assert decision.decided_by == "rule-policy"
    assert f"the LLM server does not take tools ({status}: {message})" in decision.rationale
    second = decider.decide(FEEDBACK, [], PARAMS)  # not asked again this run
    assert len(server.requests) == 1 and "does not take tools" in second.rationale

    loop = ChatLoop(decider.client, "smollm2", [tool_spec(Recorder().list_rounds)])
    server.enqueue(Reply.error(status, message))
    with pytest.raises(ToolsUnsupportedError) as caught:
        loop.run_turn("hi")
    assert "\n" not in str(caught.value) and "chatml-function-calling" in str(caught.value)


def propose(**arguments) -> Reply:
    return Reply.tools(("propose_adjustment", json.dumps(arguments)))


@pytest.mark.parametrize("replies", [
    [Reply.text("More steps, I think."), Reply.text("Yes, more steps.")],          # never calls the tool
    [propose(rationale="all fine")],                                                # nothing proposed, no stop
    [propose(rationale="  ", steps=45)],                                            # no rationale
])
def test_a_decider_that_decides_nothing_falls_back(server, replies) -> None:
    decider = LLMDecider(local_settings(server.url), BOUNDS)
    server.enqueue(*replies)
    decision = decider.decide(FEEDBACK, [], PARAMS)
    assert decision.decided_by == "rule-policy"
    assert decision.rationale.startswith(f"{NOTHING}: ") and "thin mustache" in decision.rationale
    assert decision.adjustments.get("feature_emphasis") == ["thin mustache"]  # the rule policy's own decision
    assert decision.llm_text == "\n".join(r.content for r in replies if r.content)


def test_a_stop_without_knobs_is_a_decision(server) -> None:
    decider = LLMDecider(local_settings(server.url), BOUNDS)
    server.enqueue(propose(rationale="the LoRA already matches the references", stop=True))
    decision = decider.decide(FEEDBACK, [], PARAMS)
    assert decision.decided_by == "llm:smollm2" and decision.stop and decision.adjustments == {}


def test_parameters_already_trained_are_sent_back_once(server) -> None:
    decider = LLMDecider(local_settings(server.url), BOUNDS)
    history = [{"round": 1, "params": {**PARAMS, "steps": 45}, "lora_score": 0.4}]
    server.enqueue(propose(rationale="train longer", steps=45),                 # round 1's parameters
                   propose(rationale="emphasise the mustache", feature_emphasis=["thin mustache"]))
    decision = decider.decide({**FEEDBACK, "round": 2}, history, PARAMS)
    assert decision.decided_by == "llm:smollm2" and decision.adjustments == {"feature_emphasis": ["thin mustache"]}
    assert decision.already_tried == [{"decided_by": "llm:smollm2", "adjustments": {"steps": 45}, "round": 1}]
    told = server.requests[1].messages[-1]["content"]
    assert "Round 1 already trained exactly these parameters" in told and '"steps": 45' in told
    assert server.requests[1].body["tool_choice"]["function"]["name"] == "propose_adjustment"

    server.enqueue(propose(rationale="train longer", steps=45), propose(rationale="nothing new", steps=30))
    decision = decider.decide({**FEEDBACK, "round": 2}, history, PARAMS)  # round 1's, then this round's own
    assert decision.decided_by == "rule-policy" and decision.rationale.startswith(f"{REPEATED}: ")
    assert [t["round"] for t in decision.already_tried] == [1, 2]


def test_already_trained_compares_the_knobs() -> None:
    from agent.rounds.decision import already_trained

    history = [{"round": 1, "params": {**PARAMS, "seed": 1}}, {"round": 2, "params": {**PARAMS, "steps": 40}}]
    assert already_trained({**PARAMS, "steps": 40}, history, {**PARAMS, "steps": 50}, 3) == 2
    assert already_trained(PARAMS, history[1:], PARAMS, 3) == 3
    assert already_trained({**PARAMS, "feature_emphasis": ["a"]}, history, PARAMS, 3) is None


def test_doctor_says_a_stopped_local_server_is_not_answering(capsys) -> None:
    from agent.cli import main

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    main(["doctor", "--profile", "tiny", "--llm-base-url", url])
    out = " ".join(capsys.readouterr().out.split())
    assert f"LLM server {url} not answering" in out and "start it or unset llm_base_url" in out


def test_doctor_asks_a_local_server_whether_it_takes_tools(server) -> None:
    from agent.commands.doctor import check_llm

    server.enqueue(Reply.text("pong"))
    results = {r.name: r for r in check_llm(local_settings(server.url))}
    assert results["LLM back-end"].detail == f"smollm2 at {server.url} (local server, no key)"
    assert results["LLM tools"].status == "ok" and server.requests[-1].body["tools"][0]["function"]["name"] == "ping"

    server.enqueue(Reply.error(400, "tools param requires --jinja flag"))
    results = {r.name: r for r in check_llm(local_settings(server.url))}
    assert results["LLM tools"].status == "warn" and "does not take tools" in results["LLM tools"].detail


class Scripted:
    """A decider that returns the adjustments it was given."""

    name = "scripted"

    def __init__(self, adjustments: dict) -> None:
        self.adjustments = adjustments

    def decide(self, feedback, history, params):
        from agent.rounds.decision import Decision

        return Decision(dict(self.adjustments), "as scripted.", self.name)


def test_a_decision_that_would_retrain_a_round_ends_the_run(tiny_settings) -> None:
    from agent.rounds.session import Session

    with Session(tiny_settings, quiet=True) as session:
        session._round().feedback = dict(FEEDBACK)  # a scored round 1, without training it here
        same = session.decide(Scripted({"steps": session.params["steps"]}))
        assert same.stop is True
        assert same.rationale == ("as scripted. Round 1 already trained these parameters (training them again would "
                                  "only reproduce its LoRA), so the run stops here.")
        changed = session.decide(Scripted({"steps": session.params["steps"] + 1}))
        assert changed.stop is False and changed.rationale == "as scripted."


def test_a_server_that_refuses_stream_options_is_asked_without_them(server) -> None:
    recorder = Recorder()
    loop = local_loop(server, recorder)
    server.enqueue(Reply.error(400, "Unrecognized request argument supplied: stream_options"), Reply.text("hi", usage=None),
                   Reply.text("again", usage=None))
    assert loop.run_turn("hello").text == "hi"
    assert loop.run_turn("and?").text == "again"
    assert "stream_options" in server.requests[0].body
    assert ["stream_options" in r.body for r in server.requests[1:]] == [False, False]  # never asked again
    assert loop.usage.total_text() == "unknown"


def test_run_steps_below_one_is_one_line(capsys) -> None:
    from agent.cli import main

    assert main(["run", "--profile", "tiny", "--steps", "0"]) == 2
    assert "--steps is 0 — pass --steps 1 or more" in capsys.readouterr().err
