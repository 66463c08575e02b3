"""Two autonomous rounds decided by an LLM (the loopback fake, through the real openai client),
then a chat turn over the same results: tool errors go back to the model, history records the LLM."""

from __future__ import annotations

import json

from agent.views.repl import Repl
from agent.views.ui import UI
from tests.fakes.openai_server import FakeOpenAIServer, Reply
from tools.settings import load_settings

SECRET = "sk-rounds-secret-key-9876543210"
MODEL = "deepseek-v4-flash"


def decision_script(steps: int) -> list[Reply]:
    """One decide(): a lookup, a malformed call and an unknown tool, then a valid proposal."""
    return [
        Reply.tools(("read_feedback", "{}"),
                    ("propose_adjustment", '{"rationale": "more steps", "steps": '),  # cut-off JSON
                    ("delete_all_rounds", "{}"),  # no such tool
                    reasoning_content="Check the feedback first."),
        Reply.tools(("propose_adjustment", json.dumps({"rationale": "CLIP is low, so train a bit longer",
                                                       "steps": steps, "feature_emphasis": ["round face"]})),
                    reasoning_content="Now the decision."),
    ]


def test_two_llm_rounds_then_chat(tiny_settings, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DEEPSEEK_API_KEY", SECRET)
    with FakeOpenAIServer() as server:
        settings = load_settings(overrides={**{k: getattr(tiny_settings, k) for k in
                                               ("profile", "references", "output_dir", "analysis_path")},
                                            "llm_base_url": server.url, "images_per_prompt": 1,
                                            "competitors": "", "llm_timeout_s": 120,
                                            "target_score": 1.0, "patience": 5, "num_inference_steps": 2,
                                            "rounds_must_pay": False},
                                 environ={})
        server.enqueue(*decision_script(1), *decision_script(2))
        repl = Repl(settings, UI(assume_yes=True, quiet=True))
        repl.session.params["steps"] = 2  # seconds, not minutes: the pipeline is what is checked here
        assert repl.run_once("/auto 2") == 0

        results = tmp_path / "results"
        history = json.loads((results / "training_history.json").read_text())
        rounds = history["rounds"]
        assert [r["round"] for r in rounds] == [1, 2]
        assert [r["decided_by"] for r in rounds] == [f"llm:{MODEL}"] * 2
        assert rounds[0]["rationale"] == "CLIP is low, so train a bit longer"
        assert rounds[0]["decision"]["adjustments"] == {"steps": 1, "feature_emphasis": ["round face"]}
        assert rounds[1]["params"]["steps"] == 1 and rounds[1]["next_params"]["steps"] == 2
        for record in rounds:
            assert (results / record["paths"]["feedback"]).is_file()
            assert (results / record["paths"]["comparison_report"]).is_file()
        assert len(list((results / "feedback").glob("feedback_*.json"))) == 2

        assert len(server.requests) == 4
        for first, second in ((0, 1), (2, 3)):
            sent = server.requests[second].messages
            assistant = next(m for m in sent if m.get("tool_calls"))
            assert assistant["reasoning_content"] == "Check the feedback first."
            ids = [c["id"] for c in assistant["tool_calls"]]
            tools = [m for m in sent if m["role"] == "tool"]
            assert [m["tool_call_id"] for m in tools] == ids
            results_sent = [json.loads(m["content"]) for m in tools]
            assert results_sent[0]["ok"] is True and "lora_score" in results_sent[0]
            assert results_sent[1]["ok"] is False and "not valid JSON" in results_sent[1]["error"]
            assert results_sent[2]["ok"] is False and "unknown tool 'delete_all_rounds'" in results_sent[2]["error"]
            briefing = server.requests[first].messages[1]["content"]
            assert "rule_policy_would" in briefing and "current_params" in briefing
            assert "propose_adjustment" in {t["function"]["name"] for t in server.requests[first].body["tools"]}
        for request in server.requests:
            assert SECRET not in json.dumps(request.body)

        # A chat turn over the finished rounds: read-only tools, an out-of-range adjustment corrected.
        server.enqueue(
            Reply.tools(("list_rounds", ""), ("compare_rounds", '{"first": 1, "second": 2}'),
                        ("explain_feature", "{}"), ("apply_adjustment", '{"rationale": "x", "lora_scale": 9}')),
            Reply.tools(("apply_adjustment", '{"rationale": "images look overcooked", "lora_scale": 0.8}')),
            Reply.text("Round 2 is in; next round uses **lora_scale 0.8**."))
        chat = Repl(settings, UI(assume_yes=True, quiet=True))
        assert chat.run_once("what should change next?") == 0
        sent = server.requests[5].messages
        outcomes = {m["tool_call_id"]: json.loads(m["content"]) for m in sent if m["role"] == "tool"}
        calls = {c["id"]: c["function"]["name"] for m in sent if m.get("tool_calls") for c in m["tool_calls"]}
        by_name = {calls[i]: outcome for i, outcome in outcomes.items()}
        assert [r["round"] for r in by_name["list_rounds"]["rounds"]] == [1, 2]
        assert by_name["compare_rounds"]["changed_params"]["steps"] == {"from": 2, "to": 1}
        assert by_name["explain_feature"]["ok"] is True
        assert "lora_scale = 9 is above the maximum 1.5" in by_name["apply_adjustment"]["error"]
        final = server.requests[6].messages[-1]
        assert json.loads(final["content"])["next_params"]["lora_scale"] == 0.8
        last = json.loads((results / "training_history.json").read_text())["rounds"][-1]
        assert last["next_params"]["lora_scale"] == 0.8  # the next chat or run starts from it
        assert last["next_params_changes"] == [{"adjustments": {"lora_scale": 0.8},
                                                "rationale": "images look overcooked", "decided_by": f"llm:{MODEL}"}]
        # one transcript per chat: the /auto one (inputs only) and this LLM chat's, with its messages
        transcripts = [path.read_text() for path in (results / "chat").glob("transcript_*.json")]
        assert len(transcripts) == 2 and all(SECRET not in text for text in transcripts)
        (llm_chat,) = [text for text in transcripts if '"messages"' in text]
        assert "lora_scale 0.8" in llm_chat and "what should change next?" in llm_chat


FEEDBACK = {"round": 1, "lora_score": 0.45, "band": "average", "best_competitor": "freepik", "competitor_score": 0.7,
            "score_gap": 0.25, "metric_gaps": {"clip": {"lora": 0.5, "competitor": 0.7, "vs_competitor": 0.2}},
            "feature_gaps": [{"feature": "thin mustache", "category": "facial_hair", "lora_pass_rate": 0.0,
                              "competitor_pass_rate": 1.0, "gap": 1.0, "against": "freepik"}],
            "overfitting": {"max_reference_clip": 0.5, "max_reference_ssim": 0.2, "variety": 0.3},
            "training": {"steps": 30, "best_step": 20, "scored_checkpoints": 3, "still_rising": False}}
PARAMS = {"steps": 30, "learning_rate": 2e-3, "rank": 4, "alpha": 4.0, "lora_scale": 1.0, "feature_emphasis": []}
BOUNDS = {"steps": (1, 60), "learning_rate": (1e-6, 1e-2), "rank": (1, 128), "alpha": (0.5, 256),
          "lora_scale": (0.3, 1.5), "feature_emphasis": (0, 4)}


def make_decider(server, monkeypatch, **overrides):
    from agent.llm.decider import LLMDecider

    monkeypatch.setenv("DEEPSEEK_API_KEY", SECRET)
    settings = load_settings(overrides={"llm_base_url": server.url, "llm_timeout_s": 120, **overrides}, environ={})
    return LLMDecider(settings, BOUNDS)


def test_decider_validates_clamps_and_reminds(monkeypatch) -> None:
    with FakeOpenAIServer() as server:
        decider = make_decider(server, monkeypatch)
        server.enqueue(Reply.text("I think more steps would help."),  # no call: one reminder follows
                       Reply.tools(("propose_adjustment", '{"rationale": "mustache missing", "steps": 500}')),
                       Reply.tools(("propose_adjustment", '{"rationale": "the mustache is missing", "steps": 45, '
                                    '"feature_emphasis": ["thin mustache", "a", "b", "c", "d"]}')))
        decision = decider.decide(FEEDBACK, [], PARAMS)
    assert decision.decided_by == "llm:deepseek-v4-flash"
    assert decision.adjustments == {"steps": 45, "feature_emphasis": ["thin mustache", "a", "b", "c"]}
    assert decision.rationale.startswith("the mustache is missing") and "cut from 5 to 4" in decision.rationale
    reminder = server.requests[1].messages
    assert "have not called propose_adjustment" in reminder[-1]["content"]
    assert server.requests[1].body["tool_choice"] == {"type": "function", "function": {"name": "propose_adjustment"}}
    out_of_range = json.loads(server.requests[2].messages[-1]["content"])
    assert out_of_range["ok"] is False and "steps = 500 is above the maximum 60" in out_of_range["error"]
    briefing = server.requests[0].messages[1]["content"]
    assert '"rule_policy_would"' in briefing and "thin mustache" in briefing
    # The model reads where the round's validation quality peaked, as the rule policy does.
    assert '"training": {"steps": 30, "best_step": 20, "scored_checkpoints": 3, "still_rising": false}' in briefing
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in server.requests[0].body["tools"]}
    assert schema["propose_adjustment"]["properties"]["learning_rate"]["maximum"] == 1e-2  # the session's bounds
    assert decider.usage.requests == 3


def test_decider_falls_back_to_the_rule_policy(monkeypatch, caplog) -> None:
    with FakeOpenAIServer() as server:
        decider = make_decider(server, monkeypatch)
        server.enqueue(Reply.error(402, "Insufficient Balance"))
        decision = decider.decide(FEEDBACK, [], PARAMS)
        assert len(server.requests) == 1  # 402 is not retried
        assert decision.decided_by == "rule-policy"
        assert "insufficient balance (402)" in decision.rationale
        assert "thin mustache" in decision.adjustments.get("feature_emphasis", [])
        assert "fell back to the rule policy" in caplog.text

        server.enqueue(Reply.text("no idea"), Reply.text("still no idea"))
        decision = decider.decide(FEEDBACK, [], PARAMS)
        assert decision.decided_by == "rule-policy"
        assert decision.rationale.startswith("LLM proposed nothing — rule policy: ")
        assert decision.llm_text == "no idea\nstill no idea"  # the model's words, kept for the record


def test_the_rule_policy_standing_in_for_the_llm_ranks_rounds_as_configured(monkeypatch) -> None:
    """Without a key, and when the LLM fails, the rule policy that decides goes back to the round that
    ``round_ranking`` calls the best — the same as ``aldar run --no-llm`` — not to the default ranking's."""
    from agent.llm import decider as decider_module

    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    settings = load_settings(overrides={"round_ranking": "quality"}, environ={})
    policy, reason = decider_module.make_decider(settings, BOUNDS)
    assert policy.ranking == "quality" and "DEEPSEEK_API_KEY" in reason

    rankings = []
    real = decider_module.RulePolicy
    monkeypatch.setattr(decider_module, "RulePolicy", lambda bounds, ranking="guarded": rankings.append(ranking)
                        or real(bounds, ranking))
    with FakeOpenAIServer() as server:
        decider = make_decider(server, monkeypatch, round_ranking="quality")
        server.enqueue(Reply.error(402, "Insufficient Balance"))
        assert decider.decide(FEEDBACK, [], PARAMS).decided_by == "rule-policy"
    assert rankings == ["quality"]
