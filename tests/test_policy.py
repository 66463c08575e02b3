"""The rule policy, rule by rule: a feedback dict in, an adjustment and its rationale out, inside the bounds."""

from __future__ import annotations

import copy

import pytest

from agent.rounds.knobs import SAFE_BOUNDS, bounds_for, clamp_adjustments
from agent.rounds.params import emphasise
from agent.rounds.policy import COPY_CLIP, COPY_SSIM, LOW_CLIP, LOW_VARIETY, RulePolicy, read_signals
from agent.rounds.ranking import stop_reason

PARAMS = {"steps": 1500, "learning_rate": 1e-4, "rank": 32, "alpha": 16.0, "lora_scale": 1.0, "feature_emphasis": []}


def feedback(clip=0.75, features=0.8, ssim=0.4, feature_gaps=(), overfitting=None, lora_score=0.7) -> dict:
    """A feedback dict shaped as tools.scoring.scorer.build_feedback writes it, plus Session's overfitting block."""
    return {
        "schema": "aldar.feedback/1", "lora_generator": "lora", "lora_score": lora_score,
        "best_competitor": "freepik", "competitor_score": 0.82, "score_gap": 0.82 - lora_score,
        "band": "good", "needs_improvement": True,
        "metric_gaps": {"clip": {"lora": clip, "competitor": 0.85}, "features": {"lora": features},
                        "ssim": {"lora": ssim}},
        "feature_gaps": list(feature_gaps), "recommendations": [],
        "overfitting": overfitting or {"max_reference_clip": 0.8, "max_reference_ssim": 0.3, "variety": 0.2},
    }


def gap(feature: str, lora_pass_rate: float) -> dict:
    return {"feature": feature, "category": "x", "lora_pass_rate": lora_pass_rate, "competitor_pass_rate": 1.0,
            "gap": 1.0 - lora_pass_rate, "against": "freepik"}


def decide(fb: dict, params: dict = PARAMS, bounds=None):
    return RulePolicy(bounds=bounds).decide(fb, [], copy.deepcopy(params))


def test_low_clip_similarity_trains_more_steps():
    decision = decide(feedback(clip=LOW_CLIP - 0.1))
    assert decision.adjustments == {"steps": 2250}
    assert decision.decided_by == "rule-policy"
    assert "CLIP similarity 0.500" in decision.rationale and "more steps" in decision.rationale
    assert decision.rationale.endswith(".") and decision.rationale.count(".") <= 4  # one sentence (decimals aside)


def test_validation_quality_still_rising_at_the_last_checkpoint_trains_more_steps():
    from agent.rounds.records import training_curve

    def curve(qualities: list[float], chosen: int = 1500, **train) -> dict:
        scores = [{"step": 500 * (i + 1), "quality": q} for i, q in enumerate(qualities)]
        return training_curve({"steps": 1500, "checkpoint_scores": scores,
                               "chosen_checkpoint": {"step": chosen, "why": "highest"}, **train})

    rising = curve([0.5, 0.55, 0.6])
    assert rising == {"steps": 1500, "best_step": 1500, "scored_checkpoints": 3, "still_rising": True}
    decision = decide({**feedback(), "training": rising})
    assert decision.adjustments == {"steps": 2250}
    assert "still rising at the last checkpoint (step 1500)" in decision.rationale
    # The peak came earlier — even when the last step was exported (selection off, or the best checkpoint
    # pruned) — or one checkpoint alone was scored, or none was: nothing to read, no change.
    peaked = curve([0.5, 0.6, 0.55], chosen=1000)
    exported_last = curve([0.5, 0.6, 0.55], chosen=1500)
    alone = curve([0.6])
    unscored = training_curve({"steps": 1500, "chosen_checkpoint": {"step": 1500, "why": "last step"}})
    assert peaked["best_step"] == exported_last["best_step"] == 1000 and unscored["best_step"] is None
    for still in (peaked, exported_last, alone, unscored):
        assert not still["still_rising"]
        assert decide({**feedback(), "training": still}).adjustments == {}
    # A record from an older or hand-edited history: unreadable scores count as unscored, never as a rise.
    edited = training_curve({"steps": "1500", "checkpoint_scores": [
        {"step": 500, "quality": 0.5}, {"step": 1000, "quality": 0.6}, {"step": 1500, "quality": float("nan")},
        {"quality": 0.9}, {"step": None, "quality": 0.9}, "junk"]})
    assert edited == {"steps": None, "best_step": 1000, "scored_checkpoints": 2, "still_rising": False}
    for junk in ([1], {"still_rising": "false", "best_step": "80"}, {"still_rising": True, "best_step": None}):
        signals = read_signals({**feedback(), "training": junk})
        assert signals.still_rising is (junk == {"still_rising": True, "best_step": None})
    assert "(step" not in decide({**feedback(), "training": {"still_rising": True}}).rationale
    # Overfitting outranks it: a LoRA that copies a reference never trains harder.
    copying = decide({**feedback(overfitting={"reference_copies": 1}), "training": rising})
    assert copying.adjustments == {"steps": 1050, "learning_rate": pytest.approx(5e-5)}


def test_low_clip_with_steps_at_cap_raises_rank_and_alpha_together():
    params = {**PARAMS, "steps": SAFE_BOUNDS["steps"][1]}
    decision = decide(feedback(clip=0.3), params)
    assert decision.adjustments == {"rank": 64, "alpha": 32}
    assert "rank" in decision.rationale


def test_rank_increase_stops_at_the_cap_keeping_alpha_over_rank():
    params = {**PARAMS, "steps": SAFE_BOUNDS["steps"][1], "rank": 100, "alpha": 50}
    decision = decide(feedback(clip=0.3), params)
    assert decision.adjustments == {"rank": SAFE_BOUNDS["rank"][1], "alpha": 64}
    at_caps = decide(feedback(clip=0.3), {**params, "rank": SAFE_BOUNDS["rank"][1]})
    assert at_caps.adjustments == {} and "caps" in at_caps.rationale


def test_missed_key_feature_is_emphasised_but_shown_features_are_not():
    decision = decide(feedback(feature_gaps=[gap("thin mustache", 0.25), gap("orange robe", 0.75)]))
    assert decision.adjustments == {"feature_emphasis": ["thin mustache"]}
    assert "thin mustache" in decision.rationale and "orange robe" not in decision.rationale


def test_missed_features_are_named_as_quoted_phrases_in_a_sentence():
    # "the images miss skullcap, friendly" read as broken English: the phrases are quoted taxonomy entries
    decision = decide(feedback(feature_gaps=[gap("skullcap", 0.0), gap("friendly", 0.25)]))
    assert decision.rationale == ("Under 50% of the LoRA's images show 'skullcap', 'friendly', so the next captions "
                                  "and prompt stress them.")


def test_missed_features_are_capped_at_four():
    gaps = [gap(f"feature {i}", 0.0) for i in range(6)]
    decision = decide(feedback(feature_gaps=gaps))
    assert decision.adjustments["feature_emphasis"] == [f"feature {i}" for i in range(4)]


@pytest.mark.parametrize("overfit, phrase", [
    ({"max_reference_clip": 0.99, "max_reference_ssim": 0.9, "reference_copies": 1, "variety": 0.3}, "copies"),
    # feedback written before reference_copies was counted: its closest CLIP and SSIM decide
    ({"max_reference_clip": COPY_CLIP + 0.01, "max_reference_ssim": COPY_SSIM + 0.05, "variety": 0.3}, "copies"),
    ({"max_reference_clip": 0.7, "max_reference_ssim": 0.2, "variety": LOW_VARIETY / 2}, "variety"),
])
def test_overfitting_means_fewer_steps_and_lower_learning_rate(overfit, phrase):
    # Low CLIP would ask for more steps: overfitting wins, nothing trains harder.
    decision = decide(feedback(clip=0.3, overfitting=overfit))
    assert decision.adjustments["steps"] == 1050
    assert decision.adjustments["learning_rate"] == pytest.approx(5e-5)
    assert "rank" not in decision.adjustments
    assert phrase in decision.rationale and "fewer steps" in decision.rationale


@pytest.mark.parametrize("overfit", [
    {"max_reference_clip": COPY_CLIP + 0.01, "max_reference_ssim": 0.2, "variety": 0.3},   # same content, other layout
    {"max_reference_clip": 0.7, "max_reference_ssim": COPY_SSIM + 0.05, "variety": 0.3},   # flat pictures alike
    {"max_reference_clip": 0.99, "max_reference_ssim": 0.9, "reference_copies": 0, "variety": 0.3},  # two references
])
def test_one_close_figure_alone_is_no_reference_copy(overfit):
    # A copy is close to one reference in CLIP and SSIM both (tools.scoring.copies, the scorer's definition).
    decision = decide(feedback(overfitting=overfit))
    assert "copies" not in decision.rationale and "steps" not in decision.adjustments


def test_falling_variety_against_the_previous_round_is_overfitting():
    earlier = [{"round": 1, "overfitting": {"variety": 0.4}}]
    fb = feedback(overfitting={"max_reference_clip": 0.7, "max_reference_ssim": 0.2, "variety": 0.15})
    decision = RulePolicy().decide(fb, earlier, dict(PARAMS))
    assert decision.adjustments == {"steps": 1050, "learning_rate": pytest.approx(5e-5)}
    assert "fell from 0.400 to 0.150" in decision.rationale
    steady = RulePolicy().decide(feedback(overfitting={"variety": 0.3}), earlier, dict(PARAMS))
    assert steady.adjustments == {}  # 0.3 is not below half of 0.4


def test_overfitting_and_missed_feature_combine():
    decision = decide(feedback(overfitting={"reference_copies": 2}, feature_gaps=[gap("topknot", 0.0)]))
    assert set(decision.adjustments) == {"steps", "learning_rate", "feature_emphasis"}
    assert "topknot" in decision.rationale


def test_fewer_steps_never_go_below_the_lower_bound():
    params = {**PARAMS, "steps": 120}
    decision = decide(feedback(overfitting={"variety": 0.0}), params)
    assert decision.adjustments["steps"] == SAFE_BOUNDS["steps"][0]


def test_no_rule_fired_keeps_parameters():
    decision = decide(feedback())
    assert decision.adjustments == {}
    assert "stay" in decision.rationale and not decision.stop


def test_signals_tolerate_missing_blocks():
    signals = read_signals({"lora_score": 0.5})
    assert signals.clip is None and signals.missed_features == [] and signals.variety is None
    assert decide({"lora_score": 0.5}).adjustments == {}


def test_clamp_adjustments_clamps_rounds_and_drops_with_notes():
    clamped, notes = clamp_adjustments(PARAMS, {"steps": 99999.6, "learning_rate": 5.0, "rank": 7.6,
                                                "optimizer": "sgd", "alpha": "lots",
                                                "feature_emphasis": "round face"})
    assert clamped == {"steps": 5000, "learning_rate": 1e-3, "rank": 8, "feature_emphasis": ["round face"]}
    assert isinstance(clamped["steps"], int) and isinstance(clamped["rank"], int)
    assert any("optimizer" in n for n in notes) and any("alpha" in n for n in notes)
    assert any("steps" in n and "5000" in n for n in notes)


def test_tiny_bounds_cap_steps_near_the_default_and_allow_higher_lr():
    bounds = bounds_for({"steps": 30}, tiny=True)
    assert bounds["steps"] == (1, 60) and bounds["learning_rate"][1] == 1e-2
    assert bounds_for({"steps": 30}, tiny=False) is SAFE_BOUNDS
    assert bounds_for({"steps": 30, "learning_rate": 3e-2}, tiny=True)["learning_rate"] == (1e-6, 3e-2)
    params = {**PARAMS, "steps": 50, "learning_rate": 2e-3}
    decision = decide(feedback(clip=0.2), params, bounds=bounds)
    assert decision.adjustments == {"steps": 60}  # 75 wanted, capped at the tiny cap
    at_cap = decide(feedback(clip=0.2), {**params, "steps": 60}, bounds=bounds)
    assert at_cap.adjustments == {"rank": 64, "alpha": 32}


def test_emphasis_goes_right_after_the_trigger_without_repeats():
    text = "aldarkose, smiling, thin mustache, orange robe"
    assert emphasise(text, ["thin mustache", "topknot"], "aldarkose") == \
        "aldarkose, thin mustache, topknot, smiling, orange robe"
    assert emphasise(text, [], "aldarkose") == text


def test_stop_reasons():
    def rounds(*scores):
        return [{"round": i + 1, "lora_score": s} for i, s in enumerate(scores)]

    assert stop_reason(rounds(0.5, 0.6), 2, 0.8, 2) == "round limit reached (2 of 2)"
    # --rounds 2 on a folder with 4 finished rounds: no "(4 of 2)", the line says what the limit counts
    assert stop_reason(rounds(0.1, 0.2, 0.3, 0.4), 2, 0.8, 2) == \
        "round limit reached: 4 rounds are finished already, the limit is 2"
    assert stop_reason(rounds(0.5, 0.85), 5, 0.8, 2).startswith("target reached")
    assert stop_reason(rounds(0.6, 0.5, 0.55), 5, 0.8, 2).startswith("no improvement for 2")
    assert stop_reason(rounds(0.6, 0.5, 0.7), 5, 0.8, 2) == ""
    assert stop_reason([], 3, 0.8, 2) == ""


def test_clamp_adjustments_drops_nan_and_infinity():
    # NaN passes min(max(...)) unchanged; it must not reach training or the history JSON.
    clamped, notes = clamp_adjustments(PARAMS, {"learning_rate": float("nan"), "lora_scale": float("inf"),
                                                "steps": 10**400})
    assert clamped == {}
    assert len(notes) == 3 and all("not a number" in n for n in notes)


def _round(number: int, score: float, params: dict, **record) -> dict:
    return {"round": number, "lora_score": score, "params": copy.deepcopy(params), "scores": {}, **record}


def test_a_round_below_the_best_goes_back_with_half_the_change_tried_from_it():
    best = {**PARAMS, "feature_emphasis": []}
    tried = {**PARAMS, "steps": 2500, "learning_rate": 4e-4, "feature_emphasis": ["topknot", "skullcap", "smiling"]}
    history = [_round(1, 0.65, best)]
    fb = feedback(lora_score=0.60, feature_gaps=[gap("round face", 0.0)])
    decision = RulePolicy().decide(fb, history, copy.deepcopy(tried))
    # Steps at the midpoint, the learning rate at the geometric one, the first of the three phrases; and no new
    # emphasis from this round's misses: the change just tried is what went wrong.
    assert decision.adjustments == {"steps": 2000, "learning_rate": pytest.approx(2e-4), "feature_emphasis": ["topknot"]}
    assert "below round 1's 0.650" in decision.rationale and "back to round 1's parameters" in decision.rationale
    assert "feature_emphasis topknot" in decision.rationale and decision.rationale.endswith(".")
    # The next step back is the half of that half; one phrase cannot be halved, so it goes.
    half = {**tried, **decision.adjustments}
    again = RulePolicy().decide(feedback(lora_score=0.62), [*history, _round(2, 0.60, tried)], copy.deepcopy(half))
    assert again.adjustments == {"steps": 1750, "learning_rate": pytest.approx(2e-4 ** 0.5 * 1e-4 ** 0.5),
                                 "feature_emphasis": []}


def test_no_backtrack_from_the_best_round_or_onto_parameters_already_tried():
    best = {**PARAMS, "feature_emphasis": []}
    one_phrase = {**PARAMS, "feature_emphasis": ["topknot"]}
    missed = [gap("skullcap", 0.0)]
    history = [_round(1, 0.65, best)]
    # At or above the best: the other rules go on (here: emphasise what this round missed).
    assert decide_with(history, feedback(lora_score=0.65, feature_gaps=missed), one_phrase) == {
        "feature_emphasis": ["skullcap"]}
    # Below it, but halving one phrase leads back to round 1's parameters, already tried: the rules go on.
    assert decide_with(history, feedback(lora_score=0.5, feature_gaps=missed), one_phrase) == {
        "feature_emphasis": ["skullcap"]}
    # Below it, and the half-step was tried in an earlier round: no second try.
    two = {**PARAMS, "feature_emphasis": ["topknot", "skullcap"]}
    tried = [*history, _round(2, 0.6, one_phrase)]
    assert decide_with(tried, feedback(lora_score=0.55), two) == {}
    # A memorised round never counts as the best to go back to; overfitting outranks going back.
    copied = [_round(1, 0.9, best, scores={"lora": {"reference_copies": 1}})]
    assert decide_with(copied, feedback(lora_score=0.5), two) == {}
    overfit = feedback(lora_score=0.5, overfitting={"reference_copies": 1})
    assert set(decide_with(history, overfit, two)) == {"steps", "learning_rate"}


def decide_with(history: list[dict], fb: dict, params: dict) -> dict:
    return RulePolicy().decide(fb, copy.deepcopy(history), copy.deepcopy(params)).adjustments
