"""Two full rounds on the tiny profile, decided by the rule policy, with every socket connection refused."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from agent.rounds.documents import feedback_of, rounds_of
from agent.rounds.params import emphasise
from agent.rounds.policy import RulePolicy
from agent.rounds.session import Session
from tools.errors import InputError
from tools.training.lora_files import guarded_checkpoint

ROUND_STEPS = 8  # tiny steps for the test: the pipeline, not the learning, is under test


@pytest.fixture
def no_network(monkeypatch):
    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f"network use during an offline round: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)




def test_rule_policy_runs_two_offline_rounds(tiny_settings, no_network):
    from agent.rounds.session import SessionEvents
    from agent.views.render import record_scores
    from agent.views.report import ReportWriter

    # Both rounds run, whatever they score; a suite of two prompts (one new context, one without the trigger).
    settings = tiny_settings.replace(images_per_prompt=2, target_score=1.0, suite_size=2)
    said = []
    report = ReportWriter()
    events = SessionEvents(on_status=said.append, on_notice=said.append, on_round_recorded=report)
    with Session(settings, quiet=True, events=events) as session:
        session.params.update(steps=ROUND_STEPS, checkpoint_every=ROUND_STEPS // 2)
        start = dict(session.params)
        records = session.run_rounds(2, RulePolicy(bounds=session.bounds))
        root = session.store.root
    assert [r.round for r in records] == [1, 2]
    # Each decision is said once, and the last round's not at all (no plan for a round that will not run):
    # the run says why it stopped instead. The score table's caption holds the verdict and notes, not the decision.
    assert [line for line in said if records[0].rationale in line] == [
        f"next, round 2 (rule-policy): {records[0].rationale}"]
    assert not [line for line in said if line.startswith("next, round 3")]
    assert said[-1] == "stopped: round limit reached (2 of 2)"
    assert all(record.rationale not in record_scores(record).caption for record in records)

    history = json.loads((root / "training_history.json").read_text())
    rounds = history["rounds"]
    assert len(rounds) == 2 and history["in_progress"] is None
    assert history["stopped"]["reason"].startswith("round limit")
    assert history["profile"]["profile"] == "tiny" and "toy world" in history["profile"]["notice"]
    for record in rounds:
        assert record["decided_by"] == "rule-policy"
        assert record["rationale"].endswith(".") and len(record["rationale"]) > 20
        assert record["params"]["rank"] >= 1 and record["params"]["learning_rate"] > 0
        assert set(record["scores"]) == {"lora", "base"}  # no keys: every hosted competitor sat out
        assert 0.0 <= record["scores"]["lora"]["quality"] <= 1.0
        assert record["lora_score"] == pytest.approx(record["scores"]["lora"]["quality"])
        assert record["ceiling"]["quality"] is not None
        assert len(record["skipped_competitors"]) == 3
        assert record["profile"]["profile"] == "tiny"
        inherited = (record["train"].get("warm_start") or {}).get("lora_steps_before") or 0
        assert record["train"]["steps"] + inherited == record["params"]["steps"] or record["train"]["stopped_early"]
        for key in ("comparison_report", "feedback", "lora", "run_dir"):
            assert (root / record["paths"][key]).exists(), key
        assert re.fullmatch(r"comparisons/comparison_report_\d{8}_\d{6}_round\d\d\.json",
                            record["paths"]["comparison_report"])
        assert re.fullmatch(r"feedback/feedback_\d{8}_\d{6}_round\d\d\.json", record["paths"]["feedback"])
        feedback = json.loads((root / record["paths"]["feedback"]).read_text())
        assert feedback["round"] == record["round"] and "overfitting" in feedback
        # The deciders see where the round's best checkpoint lay (the rule policy trains more when it was the last).
        scores = record["train"]["checkpoint_scores"]
        # a round scores every checkpoint (a warm-started one trains only the steps beyond its start: maybe one)
        assert len(scores) >= 2 or record["train"]["warm_start"]
        best = max(scores, key=lambda s: (s["quality"], s["step"]))
        # the best one not clearly worse in new scenes became the LoRA: each checkpoint drew the suite's new context
        assert all(s["editability_images"] == 2 and 0.0 <= s["editability"] <= 1.0 for s in scores)
        assert guarded_checkpoint(scores)[0]["step"] == record["train"]["chosen_checkpoint"]["step"]
        assert record["compute_s"]["checkpoint_suite"] > 0
        training = feedback["training"]
        assert {k: training[k] for k in ("steps", "scored_checkpoints", "best_step")} == \
            {"steps": record["train"]["steps"], "scored_checkpoints": len(scores), "best_step": best["step"]}
        if training["still_rising"]:  # a rise beyond the spread ends at the last checkpoint
            assert best["step"] == max(s["step"] for s in scores)
        assert training["spread"] > 0 and "lora_spread" in feedback
        assert feedback["profile"]["profile"] == "tiny"
        assert all(len(paths) == 2 for paths in record["paths"]["images"].values())
        assert record["prompts"] == [emphasise(settings.test_prompt, record["params"]["feature_emphasis"],
                                               settings.trigger_token)]
        # The prompt suite: listed in the record, drawn by the LoRA and the base at images_per_prompt each, scored.
        suite = record["suite"]
        assert [p["kind"] for p in suite["prompts"]] == ["new_context", "no_trigger"]
        assert settings.trigger_token in suite["prompts"][0]["text"]
        assert settings.trigger_token not in suite["prompts"][1]["text"]
        assert {name: [len(group) for group in groups] for name, groups in suite["images"].items()} == \
            {"lora": [2, 2], "base": [2, 2]}
        assert all((root / p).is_file() for groups in suite["images"].values() for group in groups for p in group)
        for name, key in (("identity", "score"), ("editability", "rate"), ("bleed", "score")):
            assert isinstance(suite["scores"][name][key], float), name
            assert feedback[name] == suite["scores"][name]  # the deciders read the same blocks
        assert 0.0 <= suite["scores"]["identity"]["score"] <= 1.0
        assert suite["scores"]["bleed"]["score"] == pytest.approx(
            suite["scores"]["bleed"]["lora_clip"] - suite["scores"]["bleed"]["base_clip"])
        assert (root / suite["report"]).is_file()
    # The base's suite images depend on the prompts, sampling and models only: round 2 reuses round 1's.
    assert rounds[0]["suite"]["base_from_round"] is None and rounds[1]["suite"]["base_from_round"] == 1
    assert rounds[1]["suite"]["images"]["base"] == rounds[0]["suite"]["images"]["base"]
    assert rounds[1]["suite"]["prompts"] == rounds[0]["suite"]["prompts"]  # deterministic from analysis and seed
    assert rounds[0]["params"] == start
    # The second round trained with what the first round decided.
    assert rounds[1]["params"] == rounds[0]["next_params"]
    applied = rounds[0]["decision"]["adjustments"]
    assert all(rounds[1]["params"][k] == v for k, v in applied.items())

    # The best round: the highest quality, unless its suite is clearly worse than the other's (the guarded ranking).
    from agent.rounds.ranking import best_round, clearly_worse

    best = history["best_round"]
    assert best == best_round(records, settings.round_ranking).round
    if not any(clearly_worse(r, records) for r in records):
        assert best == max(rounds, key=lambda r: (r["lora_score"], -r["round"]))["round"]
    assert (root / history["best_lora"]).read_bytes() == (root / rounds[best - 1]["paths"]["lora"]).read_bytes()

    assert report.written == root / "report.html"  # written by the listener of "round recorded", not the Session
    page = report.written.read_text()
    for record in rounds:  # each round's LoRA is its best-scoring checkpoint, and the report says so
        scores, chosen = record["train"]["checkpoint_scores"], record["train"]["chosen_checkpoint"]
        # the steps the round trained (a warm-started round: those beyond its starting checkpoint)
        steps, every = record["train"]["steps"], record["params"]["checkpoint_every"]
        assert [s["step"] for s in scores] == sorted({*range(every, steps + 1, every), steps})
        assert all(0.0 <= s["quality"] <= 1.0 for s in scores)
        assert chosen["step"] == max(scores, key=lambda s: (s["quality"], s["step"]))["step"]
        assert f"LoRA used: checkpoint at step {chosen['step']}" in page and "highest validation quality" in page
    sources = re.findall(r'src="([^"]+)"', page)
    images = [s for s in sources if s.startswith("comparisons/") and "/suite/" not in s]
    assert len(set(images)) == 2 * 2 * 2  # rounds × generators × images
    suite_images = [s for s in sources if "/suite/" in s]
    assert len(set(suite_images)) == 2 * 2 * 2 + 2 * 2  # LoRA: rounds × prompts × images; base: drawn once
    assert "in new scenes" in page and "new background:" in page
    assert all(images.count(s) == 2 for s in images)  # each in its round's grid and in its full-size view
    assert all((root / s).is_file() for s in sources)
    assert "Toy world, not real SDXL" in page


def test_a_finished_run_resumes_with_nothing_to_do(tiny_settings, no_network):
    settings = tiny_settings.replace(images_per_prompt=1)
    with Session(settings, quiet=True) as session:
        session.params.update(steps=4, checkpoint_every=2)
        session.run_rounds(1, RulePolicy(bounds=session.bounds))
        first = json.loads(session.store.history_path.read_text())["rounds"]
    with Session(settings, quiet=True) as again:
        assert again.params == first[0]["next_params"]  # the next round starts from the decision
        assert again.run_rounds(1, RulePolicy(bounds=again.bounds)) == []
        assert again.history() == rounds_of(first)


def test_bad_input_is_refused_before_any_work(tiny_settings, tmp_path):
    from tools.errors import InputError

    with pytest.raises(InputError, match="unknown competitor 'midjourney'"):
        Session(tiny_settings.replace(competitors=["freepik", "midjourney"]), quiet=True)
    with pytest.raises(InputError, match="does not exist"):
        Session(tiny_settings.replace(references=str(tmp_path / "missing")), quiet=True)
    assert not Path(tiny_settings.output_dir).exists()


def test_a_session_names_the_skipped_files_of_the_references_folder_once(tiny_settings):
    from agent.rounds.session import SessionEvents

    (Path(tiny_settings.references) / "notes.txt").write_text("the cap is red")
    warnings = []
    with Session(tiny_settings, quiet=True, events=SessionEvents(on_warning=warnings.append)) as session:
        session.analyze()
        session.prompt()
    assert warnings == [f"references folder {tiny_settings.references}: skipped 1 file(s) that are not png/jpg/webp "
                        "images: notes.txt"]


def test_checkpoints_are_judged_with_the_prompt_guidance_and_negative_prompt_the_round_draws_with(tiny_settings):
    from tools.settings import DEFAULT_NEGATIVE_PROMPT

    settings = tiny_settings.replace(guidance_scale=6.0, negative_prompt="green background")
    with Session(settings, quiet=True) as session:
        session.params["feature_emphasis"] = ["skullcap"]
        config = session.round_train_config()
        assert (config.validation_prompt, config.validation_guidance_scale, config.validation_negative_prompt) == \
            (session.prompt(), 6.0, "green background")
        assert config.validation_prompt.startswith(f"{settings.trigger_token}, skullcap")
    # tiny samples without SDXL's default negative prompt, and so do its checkpoints; a setting of the knob wins.
    with Session(tiny_settings.replace(negative_prompt=DEFAULT_NEGATIVE_PROMPT), quiet=True) as session:
        assert session.round_train_config().validation_negative_prompt == ""
        session.params["validation_negative_prompt"] = "blurry"
        assert session.round_train_config().validation_negative_prompt == "blurry"


def test_decider_is_the_llm_only_with_a_key(tiny_settings, monkeypatch):
    from agent.commands.run import choose_decider

    with Session(tiny_settings, quiet=True) as session:
        assert isinstance(choose_decider(session, use_llm=True), RulePolicy)
        monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test-key-0123456789")
        llm = choose_decider(session, use_llm=True)
        assert llm.name == f"llm:{tiny_settings.llm_model}" and llm.bounds == session.bounds
        assert isinstance(choose_decider(session, use_llm=False), RulePolicy)  # --no-llm


def test_cli_rejects_zero_rounds_with_one_line(tiny_settings, capsys):
    from agent.cli import main

    code = main(["run", "--profile", "tiny", "--rounds", "0", "--references", tiny_settings.references,
                 "--output-dir", tiny_settings.output_dir])
    assert code == 2
    err = capsys.readouterr().err
    assert "--rounds is 0" in err and len(err.strip().splitlines()) <= 2


def test_interrupted_round_resumes_with_its_own_params_or_retrains_stale_checkpoints(tiny_settings):
    settings = tiny_settings.replace(images_per_prompt=1)
    with Session(settings, quiet=True) as session:
        session.train({"steps": 2, "feature_emphasis": ["topknot"]})  # round 1 trained, then "killed"
        trained = dict(session.params)
    with Session(settings, quiet=True) as again:
        assert again.params == trained  # the in-progress round's params, not the defaults
        assert again.store.state.in_progress.stage == "train"
        again.params["rank"] = trained["rank"] * 2  # its checkpoints no longer fit
        result = again.train()
        assert result["steps"] == 2
    stale = list((Path(settings.output_dir) / "runs").glob("round_01_stale_*"))
    assert len(stale) == 1 and list(stale[0].glob("checkpoint-*"))


def test_analysis_is_reused_while_the_references_are_unchanged_and_refused_once_they_change(tiny_settings, references_dir, monkeypatch):
    import tools.scoring.analyzer

    with Session(tiny_settings, quiet=True) as session:
        first = session.analyze()
    calls = []
    real = tools.scoring.analyzer.analyze_references
    monkeypatch.setattr(tools.scoring.analyzer, "analyze_references", lambda *a, **k: calls.append(a) or real(*a, **k))
    with Session(tiny_settings, quiet=True) as session:
        assert session.analyze() == first and calls == []  # read back from analysis_path
    (references_dir / "aldar5.png").unlink()
    # pictures changed under a saved analysis: refused, never silently re-made into the run's history
    with pytest.raises(InputError, match=r"when it held 5 pictures that have changed since \(now 4\)") as error:
        Session(tiny_settings, quiet=True)
    assert "rerun `aldar analyze --references" in error.value.fix and calls == []


def test_hosted_competitors_compete_and_a_failing_one_sits_out(tiny_settings, monkeypatch):
    from tests.fakes.provider_servers import DeepAIFake, FreepikFake
    from tools.generation.png_metadata import read_generation_parameters

    monkeypatch.setenv("FREEPIK_API_KEY", "fpk-round-key-0123456789")
    monkeypatch.setenv("DEEPAI_API_KEY", "wrong-deepai-key-0123456789")  # the fake answers 401
    with FreepikFake(key="fpk-round-key-0123456789") as freepik, DeepAIFake(key="right-key") as deepai:
        settings = tiny_settings.replace(images_per_prompt=2, freepik_base_url=freepik.base_url,
                                         deepai_base_url=deepai.base_url)
        with Session(settings, quiet=True) as session:
            session.params.update(steps=2, checkpoint_every=1)
            session.run_round(RulePolicy(bounds=session.bounds))
            root = session.store.root
    record = json.loads((root / "training_history.json").read_text())["rounds"][-1]  # as written
    assert set(record["scores"]) == {"lora", "base", "freepik"}
    assert len(record["paths"]["images"]["freepik"]) == 2
    assert [r["generator"] for r in record["ranking"]].count("freepik") == 1
    skipped = " ".join(record["skipped_competitors"])
    assert "deepai:" in skipped and "GEMINI_API_KEY is not set" in skipped
    (request,) = freepik.requests
    sent = request.json()
    # The same prompt and seed as the LoRA's images.
    lora_image = read_generation_parameters(root / record["paths"]["images"]["lora"][0])["aldar"]
    assert sent["prompt"] == lora_image["prompt"] and sent["seed"] == lora_image["seed"] == settings.seed
    assert sent["num_images"] == 2
    assert "fpk-round-key" not in json.dumps(record)


def test_the_rounds_draw_with_the_configured_sampler_and_lcm_lora(tiny_settings, tmp_path):
    """aldar run draws as the settings say: fast mode with the configured LCM-LoRA (it fell back to the
    default one before), the tiny profile's step cap, the images per prompt."""
    from tests.test_generator import write_random_lora
    from tools.generation.png_metadata import read_generation_parameters

    (tmp_path / "character").mkdir()
    (tmp_path / "lcm").mkdir()
    character = write_random_lora(tmp_path / "character", seed=1)
    write_random_lora(tmp_path / "lcm", seed=2)
    settings = tiny_settings.replace(competitors=[], images_per_prompt=1, use_lcm=True, lcm_lora=str(tmp_path / "lcm"),
                                     num_inference_steps=6, guidance_scale=1.5)
    with Session(settings, quiet=True) as session:
        session._round().train = {"run_dir": None, "lora_path": str(character), "steps": 3, "final_loss": 0.5,
                                  "interrupted": False}
        images = session.generate(["aldarkose, smiling"])
    for name in ("lora", "base"):
        (image,) = images[name]
        drawn = read_generation_parameters(image)
        assert drawn["aldar"]["lcm_lora"] == str(tmp_path / "lcm")
        assert (drawn["steps"], drawn["cfg_scale"], drawn["sampler"]) == (6, 1.5, "LCM")


def test_auto_after_manual_stages_does_not_train_or_generate_the_round_again(tiny_settings, monkeypatch):
    """/train, /generate, /score, then /auto: the round is decided and recorded as it is (no second paid call)."""
    with Session(tiny_settings.replace(competitors=[]), quiet=True) as session:
        state = session._round()
        state.train = {"run_dir": None, "lora_path": None, "steps": 3, "final_loss": 0.5, "interrupted": False}
        state.images = {"lora": []}
        state.report, state.feedback = {}, feedback_of({"lora_score": 0.42})
        monkeypatch.setattr(session, "analyze", lambda force=False: {})
        for stage in ("train", "generate", "score"):
            monkeypatch.setattr(session, stage, lambda *a, _stage=stage, **k: pytest.fail(f"{_stage} ran again"))
        record = session.run_round(RulePolicy(session.bounds))
        assert record.round == 1 and record.lora_score == 0.42 and record.train.steps == 3


def test_training_again_drops_the_images_and_feedback_of_the_previous_lora(tiny_settings, monkeypatch):
    import agent.rounds.session as session_module
    import tools.training.trainer

    class Result:
        run_dir, lora_path, kohya_path, steps, final_loss, interrupted = "r", "r/l.safetensors", None, 3, 0.5, False
        checkpoint_scores, chosen_checkpoint, edit_check_s = [], {"step": 3, "why": "last step"}, 0.0

    monkeypatch.setattr(tools.training.trainer, "train_lora", lambda *a, **k: Result())
    monkeypatch.setattr(session_module, "training_dataset", lambda *a, **k: [])
    with Session(tiny_settings.replace(competitors=[]), quiet=True) as session:
        monkeypatch.setattr(session, "analyze", lambda force=False: {})
        state = session._round()
        state.images, state.report, state.feedback = {"lora": [Path("old.png")]}, {}, feedback_of({"lora_score": 0.1})
        session.train()
        assert state.train["steps"] == 3
        assert state.images is None and state.report is None and state.feedback is None


class Killed(BaseException):
    """Stands in for kill -9 at one write: nothing after it in that process runs."""


def _rounds_killed_at(settings, rounds, monkeypatch, module, name, target_name, nth=1) -> Path:
    """Run ``rounds`` short rounds whose writer ``module.name`` (taking the target path first) dies on its
    ``nth`` write of ``target_name``; returns the results folder as the kill left it."""
    original, seen = getattr(module, name), []

    def writer(path, *args, **kwargs):
        if Path(path).name == target_name:
            seen.append(path)
            if len(seen) == nth:
                raise Killed(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(module, name, writer)
    from agent.rounds.session import SessionEvents
    from agent.views.report import ReportWriter

    # target 1.0: the toy world's round 1 can reach the default target, and that stop would end the run
    # before the kill in a later round. The report is written as aldar run writes it: by a listener.
    settings = settings.replace(images_per_prompt=1, competitors=[], target_score=1.0)
    with Session(settings, quiet=True, events=SessionEvents(on_round_recorded=ReportWriter())) as session:
        session.params.update(steps=2, checkpoint_every=0)
        with pytest.raises(Killed):
            session.run_rounds(rounds, RulePolicy(bounds=session.bounds))
    monkeypatch.undo()
    return session.store.root


def _rerun(settings, rounds, capsys):
    from agent.cli import main

    capsys.readouterr()
    code = main(["run", "--profile", "tiny", "--rounds", str(rounds), "--references", settings.references,
                 "--output-dir", settings.output_dir, "--competitors", "none", "-q"])
    return code, capsys.readouterr().out


def test_a_kill_during_the_best_lora_copy_of_the_last_round_is_made_good_by_the_rerun(tiny_settings, monkeypatch,
                                                                                        capsys):
    import agent.rounds.store

    root = _rounds_killed_at(tiny_settings, 1, monkeypatch, agent.rounds.store, "atomic_write",
                             "pytorch_lora_weights.safetensors")
    killed = json.loads((root / "training_history.json").read_text())
    assert [r["round"] for r in killed["rounds"]] == [1] and killed["best_round"] is None
    assert not (root / "report.html").exists()

    code, out = _rerun(tiny_settings, 1, capsys)  # the round limit is already reached: no round runs

    history = json.loads((root / "training_history.json").read_text())
    assert code == 0 and history["best_round"] == 1
    round_one = history["rounds"][0]
    assert (root / history["best_lora"]).read_bytes() == (root / round_one["paths"]["lora"]).read_bytes()
    assert json.loads((root / "best_lora" / "best_lora.json").read_text())["round"] == 1
    assert (root / "report.html").is_file() and (root / "score_chart.png").is_file()
    unwrapped = "".join(out.split())  # the terminal wraps long paths
    assert f"report:{root / 'report.html'}" in unwrapped and "bestround:1" in unwrapped


def test_a_kill_while_the_chart_of_the_last_round_is_written_is_made_good_by_the_rerun(tiny_settings, monkeypatch,
                                                                                         capsys):
    import agent.views.report
    from PIL import Image

    root = _rounds_killed_at(tiny_settings, 2, monkeypatch, agent.views.report, "atomic_write_bytes", "score_chart.png", nth=2)
    assert len(json.loads((root / "training_history.json").read_text())["rounds"]) == 2
    assert "<p class=\"summary\">1 round;" in (root / "report.html").read_text()  # the page still shows round 1 only

    code, out = _rerun(tiny_settings, 2, capsys)

    page = (root / "report.html").read_text()
    assert code == 0 and "<p class=\"summary\">2 rounds;" in page and "<h2>Round 2" in page
    rounds = json.loads((root / "training_history.json").read_text())["rounds"]
    with Image.open(root / "score_chart.png") as chart:  # the chart of both rounds, not of round 1
        assert chart.convert("RGB").tobytes() == agent.views.report.draw_score_chart(rounds).tobytes()
    assert "report:" in out
