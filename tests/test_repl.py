"""``aldar chat`` in a pseudo-terminal (pexpect): slash commands without any LLM, Ctrl-C, Ctrl-D, /quit."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pexpect
import pytest

from agent.rounds.knobs import parse_knob_arguments as parse_knobs
from agent.views.repl import Repl
from agent.views.ui import UI
from tools.errors import InputError

ALDAR = str(Path(sys.executable).with_name("aldar"))
PROMPT = ")>"  # the end of "aldar (tiny, round 1)> "; prompt_toolkit draws the trailing space as a cursor move
# pexpect's timeouts only guard against a hung chat: far above what a loaded 2-core machine needs to start one.
EXPECT_TIMEOUT_S = 300


def _default_sigint() -> None:
    """A terminal's ^C must reach the chat even when pytest was started in the background (``cmd &`` in a
    script starts it with SIGINT ignored, and an ignored signal stays ignored across fork and exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(tmp_path: Path, *extra: str) -> pexpect.spawn:
    env = dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", COLUMNS="160", LINES="50")
    child = pexpect.spawn(ALDAR, ["chat", "--profile", "tiny", "--yes", "--output-dir", str(tmp_path / "results"),
                                  *extra], cwd=str(tmp_path), env=env, encoding="utf-8", timeout=EXPECT_TIMEOUT_S,
                          dimensions=(50, 160), preexec_fn=_default_sigint)
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
    # A person's second ^C comes at the redrawn prompt; one sent before prompt_toolkit has the terminal
    # again can land in its set-up, where it is not a key press (seen under load).
    child.expect_exact(PROMPT)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_during_training_returns_to_the_prompt_with_a_checkpoint(tmp_path) -> None:
    from tools.training.lora_files import latest_checkpoint, load_checkpoint

    child = spawn(tmp_path)
    # Interrupted within its first 99 of 400 steps: the training cannot end before the ^C lands, however
    # slowly the terminal output reaches the test (a 60-step run once finished first under load).
    child.sendline("/train steps=400")
    child.expect(re.compile(r"training LoRA.*?\b([1-9]\d?)/400"), timeout=2 * EXPECT_TIMEOUT_S)
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
    assert 1 <= state["step"] < 400
    assert any(len(tensors) for tensors in state_dicts.values())


def test_message_mode_and_knob_parsing(tmp_path, tiny_settings, capsys) -> None:
    repl = Repl(tiny_settings, UI(assume_yes=True))
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


def test_a_knob_outside_its_valid_domain_is_refused_like_aldar_train_refuses_it(tiny_settings, capsys) -> None:
    # steps=-5 is no number of steps at all (refused); steps=500 is a valid one outside tiny's safe range (clamped).
    from agent.cli import main

    assert Repl(tiny_settings, UI(assume_yes=True)).run_once("/train steps=-5") == 2
    chat_error = capsys.readouterr().err
    assert "steps is -5" in chat_error
    assert not (Path(tiny_settings.output_dir) / "runs").exists()  # nothing trained
    cli_args = ["train", "--profile", "tiny", "--device", "cpu", "--references", str(tiny_settings.references),
                "--run-dir", str(Path(tiny_settings.output_dir) / "cli_run"), "--steps", "-5", "-q"]
    assert main(cli_args) == 2
    cli_error = capsys.readouterr().err
    assert " ".join(chat_error.split()) == " ".join(cli_error.split())  # the same one line

    from agent.rounds.knobs import SAFE_BOUNDS, clamp_adjustments

    clamped, notes = clamp_adjustments({}, {"steps": -5, "rank": 4})  # a decider gets the same refusal
    assert clamped == {"rank": 4} and any("steps is -5" in note for note in notes)
    assert clamp_adjustments({}, {"steps": 50})[0] == {"steps": SAFE_BOUNDS["steps"][0]}


def test_tab_completes_knob_names_after_train(tiny_settings) -> None:
    from prompt_toolkit.document import Document

    from agent.views.repl import SlashCompleter

    completer = SlashCompleter(Repl(tiny_settings))
    complete = lambda text: [c.text for c in completer.get_completions(Document(text), None)]  # noqa: E731
    assert complete("/tr") == ["/train"]
    assert complete("/train st") == ["steps="]
    assert complete("/train steps=40 l") == ["learning_rate=", "lora_scale="]
    assert complete("/train steps=40 st") == []  # a knob already given is not offered again
    assert "steps=" in complete("/train ")


def test_session_events_render_through_one_ui_and_missing_keys_show_once() -> None:
    import io

    from rich.console import Console

    out, err = io.StringIO(), io.StringIO()
    ui = UI(console=Console(file=out, width=200), err_console=Console(file=err, width=200), quiet=True)
    events = ui.session_events()
    for _ in range(3):  # one line per round, as Session.generate reports it
        events.on_missing_key("freepik: FREEPIK_API_KEY is not set [skipped]")
    events.on_status("round 1: training …")  # quiet: progress talk is not shown
    events.on_notice("resuming: round 2 was interrupted")  # shown even when quiet
    assert err.getvalue().count("FREEPIK_API_KEY is not set [skipped]") == 1
    assert "training" not in out.getvalue() and "resuming: round 2" in out.getvalue()


# ---------------------------------------------------------------- issue 11: what a user of the chat relies on
def quiet_ui(width: int = 80, **kwargs) -> tuple:
    import io

    from rich.console import Console

    out, err = io.StringIO(), io.StringIO()
    return UI(console=Console(file=out, width=width), err_console=Console(file=err, width=width), quiet=True,
              **kwargs), out, err


class AnsweringUI(UI):
    """Answers every question yes, and remembers the questions."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.questions: list[str] = []

    def confirm(self, question: str) -> bool:
        self.questions.append(question)
        return True


def test_confirm_shows_y_n_enter_means_no_and_an_unclear_answer_asks_again(monkeypatch) -> None:
    import builtins

    ui, out, _ = quiet_ui(width=120)
    monkeypatch.setattr(UI, "can_ask", property(lambda self: True))
    answers = iter(["maybe", ""])
    monkeypatch.setattr(builtins, "input", lambda *args: next(answers))
    assert ui.confirm("Train round 1's LoRA now?") is False  # "maybe" asks again; then Enter is the default, no
    shown = out.getvalue()
    assert shown.count("Train round 1's LoRA now? [y/N]") == 2
    assert "please answer y or n (got 'maybe')" in shown
    answers = iter(["Yes"])
    assert ui.confirm("Ask the paid APIs?") is True


def test_train_generate_score_then_train_records_the_round_and_trains_the_next(tiny_settings) -> None:
    import io
    import json

    from rich.console import Console

    from agent.rounds.knobs import params_text

    settings = tiny_settings.replace(images_per_prompt=1, competitors=[])
    results = Path(settings.output_dir)
    out = io.StringIO()
    ui = AnsweringUI(console=Console(file=out, width=80), err_console=Console(file=out, width=80), quiet=True)
    repl = Repl(settings, ui)
    assert repl.prompt_text() == "aldar (tiny, round 1)> "
    for line in ("/train steps=10", "/generate", "/score"):
        repl.handle(line)
        assert repl.outcome == "ok", out.getvalue()
    assert repl.prompt_text() == "aldar (tiny, round 1)> "  # scored, but recorded only by the next training

    repl.handle("/train steps=12 rank=4")
    assert repl.outcome == "ok", out.getvalue()
    assert ui.questions == ["Train round 1's LoRA now?", "Record round 1 (scored) and train round 2's LoRA now?"]
    assert (results / "runs" / "round_02" / "pytorch_lora_weights.safetensors").is_file()
    assert not (results / "runs" / "round_03").exists()
    (first,) = json.loads((results / "training_history.json").read_text())["rounds"]
    assert first["round"] == 1 and first["params"]["steps"] == 10 and first["decided_by"] == "user"
    assert first["decision"]["adjustments"] == {"steps": 12, "rank": 4}
    assert first["next_params"]["steps"] == 12 and first["next_params"]["rank"] == 4
    assert first["rationale"] == ("set by hand with /train (steps=12 rank=4); round 2 trains with "
                                  + params_text(first["next_params"]))  # the knobs that ran, not "{}"
    assert repl.prompt_text() == "aldar (tiny, round 2)> "

    out.truncate(0)
    out.seek(0)
    repl.handle("/auto 1")  # round 2 is trained already: /auto generates, scores and decides, and says so
    assert repl.outcome == "ok", out.getvalue()
    assert "round 2: using the LoRA already made for it in this session (not made again)" in " ".join(out.getvalue().split())
    assert not (results / "runs" / "round_03").exists()
    assert [r["round"] for r in json.loads((results / "training_history.json").read_text())["rounds"]] == [1, 2]
    repl.close()

    (transcript,) = (results / "chat").glob("transcript_*.json")
    inputs = json.loads(transcript.read_text())["inputs"]
    assert [(i["input"], i["outcome"]) for i in inputs] == [
        ("/train steps=10", "ok"), ("/generate", "ok"), ("/score", "ok"), ("/train steps=12 rank=4", "ok"),
        ("/auto 1", "ok")]


def test_a_resumed_train_says_from_which_step(tiny_settings, monkeypatch) -> None:
    from tools.training import trainer
    from tools.training.lora_files import TRAINING_STATE

    run_dir = Path(tiny_settings.output_dir) / "runs" / "round_01"
    (run_dir / "checkpoint-000012").mkdir(parents=True)
    (run_dir / "checkpoint-000012" / TRAINING_STATE).write_bytes(b"state")
    lora = run_dir / "pytorch_lora_weights.safetensors"

    def finish_training(config, profile, dataset, out_dir, **kwargs):  # what the trainer returns after resuming
        lora.write_bytes(b"lora")
        return trainer.TrainResult(out_dir, lora, None, config.steps, 0.1, [], out_dir / "loss_log.csv")

    monkeypatch.setattr(trainer, "train_lora", finish_training)
    ui, out, _ = quiet_ui(width=200, assume_yes=True)
    assert Repl(tiny_settings, ui).run_once("/train") == 0
    shown = out.getvalue()
    assert "round 1: resuming training from step 12 (runs/round_01/checkpoint-000012)" in shown
    assert re.search(r"trained \d+ steps \(resumed from step 12\) → runs/round_01/pytorch_lora_weights", shown)


def test_message_mode_exit_codes_say_whether_the_action_ran(tiny_settings, monkeypatch, capsys) -> None:
    import builtins

    from agent.cli import main

    # No terminal to ask on (pytest's stdin) and no --yes: the training did not run, and the line says why.
    argv = ["chat", "--profile", "tiny", "--references", tiny_settings.references,
            "--output-dir", tiny_settings.output_dir, "-m", "/train"]
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "training skipped: there is no terminal to ask on — pass --yes" in err
    assert not (Path(tiny_settings.output_dir) / "runs").exists()

    monkeypatch.setattr(UI, "can_ask", property(lambda self: True))  # a terminal, and the user answers no
    monkeypatch.setattr(builtins, "input", lambda *args: "n")
    ui, out, _ = quiet_ui()
    assert Repl(tiny_settings, ui).run_once("/auto 1") == 1
    assert "nothing run" in out.getvalue()
    assert not (Path(tiny_settings.output_dir) / "runs").exists()


def test_config_shows_the_next_round_params_and_a_slash_only_chat_is_saved(tiny_settings) -> None:
    import json

    ui, out, _ = quiet_ui(width=200)
    assert Repl(tiny_settings, ui).run_once("/config") == 0
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.getvalue().splitlines()
            if line.count("│") == 3}
    from agent.rounds.knobs import params_text
    from agent.rounds.params import default_params
    from tools.models import resolve_profile

    # before any /auto: the profile's defaults, as the first round will train with them
    assert rows["next round params"] == params_text(default_params(resolve_profile(tiny_settings)))
    assert "steps" in rows["next round params"] and "learning_rate" in rows["next round params"]
    assert rows["references"] == tiny_settings.references

    (transcript,) = (Path(tiny_settings.output_dir) / "chat").glob("transcript_*.json")
    saved = json.loads(transcript.read_text())
    assert saved["profile"] == "tiny" and [i["input"] for i in saved["inputs"]] == ["/config"]
    assert re.fullmatch(r"transcript_\d{8}_\d{6}\.json", transcript.name)


@pytest.mark.parametrize("question, pointer", [
    ("why is the face weak?", "without an LLM: /explain face says why it is weak, from the latest feedback"),
    ("how do I get the mustaches right?", "without an LLM: /explain mustache says why"),
    ("show me the scores", "without an LLM: /score (score this round's images"),
    ("hello there", "without an LLM: /explain [feature] (why key features are weak"),
])
def test_a_question_without_an_llm_points_to_the_slash_command_that_answers_it(tiny_settings, capsys, question,
                                                                                pointer) -> None:
    assert Repl(tiny_settings).run_once(question) == 2
    captured = capsys.readouterr()
    assert "chat needs an LLM" in captured.err
    assert pointer in " ".join(captured.out.split())


def test_explain_takes_a_word_of_the_category_too() -> None:
    from agent.llm.tools import explain_features

    feedback = {"feature_gaps": [{"feature": "friendly", "category": "expression", "lora_pass_rate": 0.1,
                                  "ceiling_pass_rate": 0.8, "against": "ceiling", "gap": 0.7},
                                 {"feature": "round face", "category": "face_shape", "lora_pass_rate": 0.2,
                                  "ceiling_pass_rate": 1.0, "against": "ceiling", "gap": 0.8}]}
    assert [item["feature"] for item in explain_features(feedback, "expression")] == ["friendly"]
    assert [item["feature"] for item in explain_features(feedback, "face")] == ["round face"]


def test_a_second_train_says_it_continues_from_the_first_ones_checkpoint(tiny_settings) -> None:
    ui = AnsweringUI(quiet=True)
    repl = Repl(tiny_settings.replace(competitors=[]), ui)
    for line in ("/train steps=4", "/train steps=6"):
        repl.handle(line)
        assert repl.outcome == "ok"
    repl.close()
    assert ui.questions == ["Train round 1's LoRA now?",
                            "Train round 1's LoRA now? It continues from step 4 to 6."]


def test_auto_past_a_stop_says_why_and_how_to_go_on_without_asking(tiny_settings, capsys) -> None:
    from agent.rounds.store import RunStore
    from tools.models import resolve_profile

    store = RunStore(tiny_settings.output_dir, resolve_profile(tiny_settings).describe())
    store.finish_round({"round": 1, "lora_score": 0.85, "band": "excellent", "params": {"steps": 4},
                        "scores": {"lora": {"quality": 0.85}}})
    store.close()
    ui = AnsweringUI()
    assert Repl(tiny_settings, ui).run_once("/auto 1") == 2
    assert ui.questions == []  # asking would promise a round that stops before training anything
    err = " ".join(capsys.readouterr().err.split())
    assert "/auto runs no round: target reached: round 1 scored 0.850 ≥ 0.8 — raise target_score" in err
    assert "ALDAR_TARGET_SCORE" in err


def test_history_fits_80_columns_and_cuts_decisions_at_a_word_with_an_ellipsis() -> None:
    from agent.views import render

    why = ("CLIP similarity 0.021 is below 0.6, so train more steps; the images miss narrow eyes, no facial hair, "
           "skullcap, orange robe, so the next captions and prompt stress them.")
    history = [{"round": n, "lora_score": 0.2, "band": "poor", "best_competitor": "base", "score_gap": 0.03,
                "params": {"steps": 120, "learning_rate": 0.002, "rank": 8}, "decided_by": "rule-policy",
                "rationale": why} for n in (1, 2)]
    ui, out, _ = quiet_ui(width=80)
    ui.show_history(history)
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert len(lines) <= 12  # 2 rounds: title, header, 2 rows, caption, a decision line each (was 35 lines)
    decisions = [line for line in lines if line.startswith("round ")]
    assert [line.split(" → ")[0] for line in decisions] == ["round 1", "round 2"]
    shown = decisions[0].split(" → ", 1)[1]
    assert shown.endswith(" …") and why.startswith(shown[:-2]) and why[len(shown) - 2] == " "  # cut between words


def test_history_shows_a_lora_ahead_as_a_positive_lead() -> None:
    from agent.views import render

    history = [{"round": 1, "lora_score": 0.64, "band": "good", "best_competitor": "base", "score_gap": -0.23,
                "params": {"steps": 60, "learning_rate": 0.005, "rank": 8}, "decided_by": "rule-policy"},
               {"round": 2, "lora_score": 0.5, "band": "average", "best_competitor": None, "score_gap": 0.1,
                "params": {"steps": 60, "learning_rate": 0.005, "rank": 8}, "decided_by": "rule-policy"}]
    ui, out, _ = quiet_ui(width=100)
    ui.show_history(history)
    text = " ".join(out.getvalue().split())
    assert "┃ lead ┃" in text and "positive: the LoRA is ahead" in text and " gap" not in text
    assert "│ 1 │ 0.640 │ good │ base │ +0.230 │" in text  # score_gap -0.23: the LoRA 0.23 ahead of the base
    assert "│ 2 │ 0.500 │ average │ reference ceiling │ -0.100 │" in text  # no rival: compared with the ceiling


def test_the_chat_llm_tool_asks_for_the_round_it_will_really_train() -> None:
    from types import SimpleNamespace

    from agent.rounds.knobs import SAFE_BOUNDS
    from agent.llm.tools import SessionTools

    questions = []
    scored_round_1 = SimpleNamespace(bounds=SAFE_BOUNDS, next_round_number=1, training_round_number=2)
    tools = SessionTools(scored_round_1, lambda question: questions.append(question) or False)
    assert tools.train_lora()["ok"] is False  # declined: nothing recorded, nothing trained
    assert questions == ["Train round 2's LoRA now?"]  # was "round 1", then it recorded round 1 and trained round 2
