"""Warm-start rounds and plateau stops (issue 25): a run may continue an earlier checkpoint's LoRA (kohya's
--network_weights), refuses one it cannot continue, resumes exactly after a kill, and stops once its validation
quality is flat beyond its spread."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tools.errors import ConfigError
from tools.models import load_toy_world_pipeline
from tools.training.lora_files import (DIFFUSERS_WEIGHTS, load_checkpoint, plateaued, quality_spread,
                                       rose_beyond_spread)
from tests.test_trainer import StopAfter, dataset  # noqa: F401 — the trainer tests' three references, a fixture
from tools.training.trainer import default_train_config, train_lora


@pytest.fixture(scope="module")
def first(profile, dataset, tmp_path_factory) -> Path:
    """A 4-step run's last checkpoint: what a later round continues."""
    config = default_train_config(profile).replace(steps=4, checkpoint_every=2, validation_images=0)
    run = tmp_path_factory.mktemp("first") / "run"
    train_lora(config, profile, dataset, run, quiet=True)
    return run / "checkpoint-000004"


def warm_config(profile, first: Path, **changes):
    return default_train_config(profile).replace(steps=6, checkpoint_every=3, validation_images=0,
                                                 init_weights=str(first), **changes)


def test_a_warm_run_starts_from_the_checkpoint_and_its_lora_loads_alone(profile, dataset, first, tmp_path):
    start, _ = load_checkpoint(first)
    # At a vanishing learning rate the continued LoRA is the checkpoint's: it started from those weights.
    still = train_lora(warm_config(profile, first, learning_rate=1e-12), profile, dataset, tmp_path / "still",
                       quiet=True)
    ended, _ = load_checkpoint(tmp_path / "still" / "checkpoint-000006")
    for key, value in start["unet"].items():
        assert torch.allclose(value, ended["unet"][key], atol=1e-6), key
    assert json.loads((tmp_path / "still" / "train_config.json").read_text())["config"]["init_weights"] == str(first)
    # The exported LoRA file is whole: a fresh pipeline loads it with no reference to the checkpoint it came from.
    shutil.copy(still.lora_path, tmp_path / DIFFUSERS_WEIGHTS)
    load_toy_world_pipeline().load_lora_weights(str(tmp_path), weight_name=DIFFUSERS_WEIGHTS)


def test_a_warm_start_is_refused_from_a_deleted_folder_another_rank_or_other_models(profile, dataset, first,
                                                                                    tmp_path):
    cases = {"deleted": (tmp_path / "gone", {}), "rank": (first, {"rank": 4, "alpha": 4.0})}
    other = tmp_path / "other_models"
    shutil.copytree(first, other)
    made = json.loads((other / "checkpoint.json").read_text())
    (other / "checkpoint.json").write_text(json.dumps({**made, "base_model": "stabilityai/sdxl-other"}))
    cases["models"] = (other, {})
    words = {"deleted": "no LoRA checkpoint there", "rank": "rank 8, not 4", "models": "base model 'stabilityai"}
    for name, (source, changes) in cases.items():
        with pytest.raises(ConfigError) as caught:
            train_lora(warm_config(profile, source, **changes), profile, dataset, tmp_path / name, quiet=True)
        assert words[name] in caught.value.problem and "\n" not in str(caught.value)
        assert not (tmp_path / name / "checkpoint-000003").exists()  # refused before any work


def test_a_killed_warm_run_resumes_exactly_even_with_its_source_gone(profile, dataset, first, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(first, source)
    config = warm_config(profile, source)
    train_lora(config, profile, dataset, tmp_path / "straight", quiet=True)
    stopped = train_lora(config, profile, dataset, tmp_path / "resumed", quiet=True, stop=StopAfter(4))
    assert stopped.interrupted and stopped.steps == 4
    shutil.rmtree(source)  # the resumed run continues its own checkpoint; the warm start is behind it
    resumed = train_lora(config, profile, dataset, tmp_path / "resumed", quiet=True)
    assert resumed.steps == 6 and not resumed.interrupted
    lora_a, state_a = load_checkpoint(tmp_path / "straight" / "checkpoint-000006")
    lora_b, state_b = load_checkpoint(tmp_path / "resumed" / "checkpoint-000006")
    for key, value in lora_a["unet"].items():
        assert torch.allclose(value, lora_b["unet"][key], atol=1e-6), key
    for slot_a, slot_b in zip(state_a["optimizer"]["state"].values(), state_b["optimizer"]["state"].values()):
        assert torch.allclose(slot_a["exp_avg"], slot_b["exp_avg"], atol=1e-6)


def test_plateau_needs_a_flat_curve_beyond_the_spread():
    def scores(qualities, std=0.08, images=4):
        return [{"step": 40 * (i + 1), "quality": q, "quality_std": std, "images": images}
                for i, q in enumerate(qualities)]

    assert quality_spread(scores([0.5])[0]) == pytest.approx(0.04)
    assert quality_spread({"step": 1, "quality": 0.5}) == 0.0  # an older score: no spread known
    # Best at step 80, then three checkpoints none of which beats it beyond 0.04: flat.
    assert plateaued(scores([0.47, 0.66, 0.54, 0.51, 0.69]), 3)
    assert not plateaued(scores([0.47, 0.66, 0.54, 0.51, 0.71]), 3)  # 0.71 > 0.66 + 0.04: a real rise
    assert not plateaued(scores([0.47, 0.66, 0.54]), 3)  # not enough checkpoints yet
    assert not plateaued(scores([0.47, 0.66, 0.54, 0.51, 0.50]), 0)  # off
    assert rose_beyond_spread({"quality": 0.601}, {"quality": 0.6})  # no spread: any rise counts
    assert not rose_beyond_spread(scores([0.601])[0], scores([0.6])[0])


def test_a_plateau_stops_training_and_a_resume_after_it_stops_at_once(profile, dataset, tmp_path, monkeypatch):
    qualities = iter([0.5, 0.7, 0.6, 0.65, 0.62, 0.9, 0.9, 0.9])

    def scorer(images):
        return {"quality": next(qualities), "quality_std": 0.08, "images": 4.0}

    config = default_train_config(profile).replace(steps=16, checkpoint_every=2, validation_images=1,
                                                   validation_inference_steps=1, plateau_checkpoints=3)
    result = train_lora(config, profile, dataset, tmp_path / "run", quiet=True, score_checkpoint=scorer)
    # Steps 6, 8 and 10 never beat step 4's 0.7 by more than its spread 0.04: it stops at 10 of 16.
    assert result.steps == 10 and not result.interrupted
    assert "flat over the last 3 checkpoints (best step 4)" in result.stopped_early
    assert result.chosen_checkpoint["step"] == 4
    again = train_lora(config, profile, dataset, tmp_path / "run", quiet=True, score_checkpoint=scorer)
    assert again.steps == 10  # resumed past its plateau: stops as it did, trains nothing more


def _finished_round(store_root: Path, checkpoint: Path | None, step: int = 4, score: float = 0.6) -> dict:
    """A finished round 1 whose chosen checkpoint is ``checkpoint`` (copied into its run folder)."""
    run_dir = store_root / "runs" / "round_01"
    if checkpoint is not None:
        shutil.copytree(checkpoint, run_dir / f"checkpoint-{step:06d}")
    return {"round": 1, "lora_score": score, "params": {}, "scores": {"lora": {"quality": score}},
            "train": {"steps": step, "chosen_checkpoint": {"step": step, "quality": score, "why": "highest"}},
            "paths": {"run_dir": "runs/round_01"}}


def test_a_round_continues_the_best_rounds_checkpoint_or_says_in_one_line_why_not(tiny_settings, first):
    from agent.rounds.documents import round_of
    from agent.rounds.session import Session, SessionEvents

    said: list[str] = []
    with Session(tiny_settings, quiet=True, events=SessionEvents(on_notice=said.append)) as session:
        root = session.store.root
        session.store.rounds.append(round_of(_finished_round(root, first)))
        session.params.update(warm_start=True, steps=10, checkpoint_every=2)
        warm = session.warm_start(2)
        assert warm == {"from_round": 1, "from_step": 4, "checkpoint": "runs/round_01/checkpoint-000004",
                        "lora_steps_before": 4, "steps": 6}
        assert said[-1] == "round 2: continues round 1's LoRA from step 4 for 6 more steps"
        config = session.round_train_config(warm)
        assert config.steps == 6 and config.init_weights == str(root / "runs/round_01/checkpoint-000004")
        # Another rank: a fresh LoRA, and one line saying why.
        session.params.update(rank=4, alpha=4.0)
        assert session.warm_start(2) is None
        assert said[-1].startswith("round 2: trains a fresh LoRA (cannot start from ") and "rank 8, not 4" in said[-1]
        session.params.update(rank=8, alpha=8.0)
        # No steps left beyond those the checkpoint had: fresh.
        session.params.update(steps=5)
        assert session.warm_start(2) is None and "leave no checkpoint's worth beyond the 4 steps" in said[-1]
        # The round folder deleted by hand: fresh.
        session.params.update(steps=10)
        shutil.rmtree(root / "runs" / "round_01")
        assert session.warm_start(2) is None and "no LoRA checkpoint there" in said[-1]
        assert all("\n" not in line for line in said)
        # Warm starts off: fresh, silently.
        session.params["warm_start"] = False
        count = len(said)
        assert session.warm_start(2) is None and len(said) == count
        session.store.rounds.clear()


def test_rounds_must_pay_trains_one_longer_round_and_another_only_where_it_pays(tiny_settings):
    from agent.rounds.payoff import LONG_ROUND, session_defaults, unpaid_round
    from agent.rounds.params import default_params, planned_params
    from tools.models import resolve_profile

    profile = resolve_profile(tiny_settings)
    paying = tiny_settings.replace(rounds_must_pay=True)
    defaults = default_params(profile)
    assert session_defaults(paying, defaults)["steps"] == LONG_ROUND * defaults["steps"]
    assert session_defaults(paying, defaults)["plateau_checkpoints"] == 0  # every step of the longer round
    assert session_defaults(tiny_settings, defaults)["steps"] == defaults["steps"]  # rounds_must_pay off
    assert planned_params(paying)["steps"] == LONG_ROUND * defaults["steps"]
    assert defaults["plateau_checkpoints"] == 3 and defaults["warm_start"] is True

    def fed(score=0.64, spread=0.03, **training):
        return {"lora_score": score, "lora_spread": spread,
                "overfitting": {"max_reference_clip": 0.8, "max_reference_ssim": 0.3, "variety": 0.2},
                "training": {"steps": 200, "best_step": 80, "still_rising": False, "spread": 0.04, **training}}

    # Round 1 peaked early and was flat after: another round would not pay.
    said = unpaid_round(fed(), [])
    assert said.startswith("Another round would not pay (its validation quality peaked at step 80 of 200")
    assert "rounds_must_pay = false" in said
    assert unpaid_round(fed(best_step=200, still_rising=True), []) == ""  # still rising: more steps pay
    assert unpaid_round({**fed(), "metric_gaps": {"clip": {"lora": 0.5}}}, []) == ""  # low CLIP: train harder
    assert unpaid_round({**fed(), "overfitting": {"variety": 0.01}}, []) == ""  # overfitting: a fix pays
    # the prompt suite's overfitting (identity learnt, new scenes' prompts overridden): its fix pays too
    assert unpaid_round({**fed(), "identity": {"score": 0.63}, "editability": {"rate": 0.54, "base": 0.96}}, []) == ""
    best = [{"round": 1, "lora_score": 0.60, "scores": {"lora": {"quality": 0.60}}}]
    assert unpaid_round(fed(score=0.64), best) == ""  # beat round 1 beyond the spread: rounds are paying
    assert "not above round 1's 0.600 beyond its spread ±0.030" in unpaid_round(fed(score=0.62), best)


def test_rounds_must_pay_keeps_the_runs_steps_within_three_times_the_profiles(tiny_settings):
    """Issue 25's bound: with rounds_must_pay the rounds together train at most STEP_BUDGET × the profile's steps:
    the round that would cross it trains what is left (said once), and none starts with under a checkpoint left."""
    import dataclasses

    from agent.rounds.documents import round_of
    from agent.rounds.params import default_params
    from agent.rounds.payoff import STEP_BUDGET, budget_capped, step_budget, steps_left, why_no_round_pays
    from agent.rounds.session import Session
    from tools.models import resolve_profile

    paying = tiny_settings.replace(rounds_must_pay=True)
    defaults = default_params(resolve_profile(tiny_settings))
    budget = step_budget(paying, defaults)
    assert budget == STEP_BUDGET * defaults["steps"] == 600 and step_budget(tiny_settings, defaults) is None
    history = [round_of({"round": 1, "lora_score": 0.6, "train": {"steps": 400}}),
               round_of({"round": 2, "lora_score": 0.62, "train": {"steps": 130}})]
    assert steps_left(budget, history) == 70 and steps_left(budget, history, 50) == 20
    assert steps_left(None, history) is None

    with Session(paying, quiet=True) as session:
        said: list[str] = []
        config = session.round_train_config()
        capped = budget_capped(config, 70, said.append)
        assert capped.steps == 70 and capped.lr_warmup_steps < 70 and len(said) == 1
        assert "trains 70 of its 400 steps" in said[0] and f"{STEP_BUDGET}× the profile's steps" in said[0]
        assert budget_capped(config, 1_000, said.append) is config and len(said) == 1  # it fits: as it is
        assert budget_capped(config, None, said.append) is config  # no budget (rounds_must_pay off)

    # A round that still rises would pay, but 20 steps left are under a checkpoint's worth (40 on tiny): stop.
    rising = {"lora_score": 0.66, "lora_spread": 0.01,
              "training": {"steps": 50, "best_step": 50, "still_rising": True, "spread": 0.01}}
    params = {**defaults, "checkpoint_every": 40}
    why = why_no_round_pays(rising, history, paying, budget, 50, params)
    assert why.startswith("Another round would not pay (the rounds have trained all but 20 of the steps")
    assert why_no_round_pays(rising, history[:1], paying, budget, 50, params) == ""  # 150 left: it may run
    assert why_no_round_pays(rising, history, tiny_settings, budget, 50, params) == ""  # rounds_must_pay off
    assert dataclasses.is_dataclass(history[0])


def test_the_llm_briefing_carries_each_rounds_compute_spread_and_steps_to_likeness():
    from agent.llm.tools import feedback_summary, round_summary

    record = {"round": 2, "lora_score": 0.65, "params": {"steps": 200},
              "scores": {"lora": {"quality": 0.65, "quality_std": 0.08, "count": 4}}, "ceiling": {"quality": 0.7},
              "train": {"steps": 120, "seconds": 41.234, "stopped_early": "",
                        "checkpoint_scores": [{"step": 40, "quality": 0.6}, {"step": 80, "quality": 0.64}],
                        "warm_start": {"from_round": 1, "from_step": 80, "lora_steps_before": 80, "steps": 120}}}
    summary = round_summary(record)
    assert summary["compute"] == {"optimizer_steps": 120, "train_seconds": 41.234,
                                  "warm_start": {"from_round": 1, "from_step": 80}, "stopped_early": None}
    assert summary["spread"] == 0.04 and summary["steps_to_likeness"] == 80  # 0.64 ≥ 0.9 × 0.7
    assert feedback_summary({"lora_spread": 0.0412})["lora_spread"] == 0.041


def _default_settings(tiny_settings):
    """``tiny_settings`` with rounds_must_pay as the product ships it (no aldar.toml, no ALDAR_* variable)."""
    from tools.settings import load_settings

    default = load_settings(overrides={"profile": "tiny", "suite_size": 0, "references": tiny_settings.references,
                                       "output_dir": tiny_settings.output_dir,
                                       "analysis_path": tiny_settings.analysis_path}, environ={})
    assert default.rounds_must_pay is True  # issue 25's fallback: the loop did not beat one longer run by +0.03
    return default


def test_by_default_the_first_round_is_the_longer_one(tiny_settings):
    from agent.rounds.params import default_params, planned_params
    from agent.rounds.payoff import LONG_ROUND
    from agent.rounds.session import Session

    settings = _default_settings(tiny_settings)
    with Session(settings, quiet=True) as session:
        profile_steps = default_params(session.profile)["steps"]
        assert session.params["steps"] == LONG_ROUND * profile_steps == 400  # tiny: 200 steps, twice
        assert session.params["plateau_checkpoints"] == 0  # ... every step trained, best checkpoint kept
        assert session.bounds["steps"][1] >= session.params["steps"]  # the tiny step cap does not shorten it
    assert planned_params(settings)["steps"] == LONG_ROUND * profile_steps
    with Session(tiny_settings, quiet=True) as session:  # rounds_must_pay = false: the profile's steps
        assert session.params["steps"] == profile_steps


def test_by_default_a_round_that_does_not_pay_stops_the_run(tiny_settings, monkeypatch):
    from agent.rounds.documents import round_of
    from agent.rounds.policy import RulePolicy
    from agent.rounds.session import Session, SessionEvents

    said: list[str] = []  # the run's notices: its last line says why it stopped
    # A key feature missed (so the policy proposes a change, not the round's own parameters again).
    flat = {"lora_score": 0.64, "lora_spread": 0.03, "metric_gaps": {"clip": {"lora": 0.7}},
            "feature_gaps": [{"feature": "skullcap", "lora_pass_rate": 0.25}],
            "overfitting": {"max_reference_clip": 0.8, "max_reference_ssim": 0.3, "variety": 0.2},
            "training": {"steps": 400, "best_step": 80, "still_rising": False, "best_early": True, "spread": 0.04}}
    rising = {**flat, "training": {**flat["training"], "best_step": 400, "still_rising": True, "best_early": False}}

    def rounds_run(settings, feedback: dict) -> list:
        """run_rounds(3) where every round scores ``feedback`` (the stages stubbed: only decide() runs)."""
        decisions = []
        with Session(settings, quiet=True, events=SessionEvents(on_notice=said.append)) as session:
            def one_round(decider):
                session._round().feedback = feedback
                decision = session.decide(decider)
                decisions.append(decision)
                record = round_of({"round": len(decisions), "lora_score": feedback["lora_score"], "params": {},
                                   "scores": {"lora": {"quality": 0.64}}, "rationale": decision.rationale,
                                   "decided_by": decision.decided_by, "decision": {"stop": decision.stop}})
                session.store.rounds.append(record)
                session.current = None
                return record

            monkeypatch.setattr(session, "run_round", one_round)
            monkeypatch.setattr(session, "stop_before",
                                lambda rounds: "round limit" if len(decisions) >= rounds else "")
            session.run_rounds(3, RulePolicy(bounds=session.bounds))
        return decisions

    # Round 1 peaked early and was flat after it: the run stops after it and says why.
    stopped = rounds_run(_default_settings(tiny_settings), flat)
    assert len(stopped) == 1 and stopped[0].stop
    assert "Another round would not pay (" in stopped[0].rationale
    assert "rounds_must_pay = false" in stopped[0].rationale
    assert said[-1].startswith("stopped: Another round would not pay (its validation quality peaked at step 80")
    # Still rising at the last checkpoint: round 2 pays and runs.
    assert len(rounds_run(_default_settings(tiny_settings), rising)) >= 2
    # rounds_must_pay = false: every round runs.
    assert len(rounds_run(tiny_settings, flat)) == 3
