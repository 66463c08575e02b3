"""The prompt suite: built from the analysis and the seed, refused when it cannot mean anything, read by the
rule policy and the round ranking (the scores themselves are checked on real tiny rounds in test_rounds)."""

from __future__ import annotations

import json

import pytest

from agent.rounds.policy import RulePolicy
from agent.rounds.ranking import best_round
from tools.errors import InputError
from tools.scoring.suite import NEW_CONTEXT, NO_TRIGGER, SuitePrompt, build_suite, check_suite
from tools.settings import BUNDLED_TAXONOMY

KEY = {"face_shape": "round face", "eyes": "narrow eyes", "facial_hair": "thin mustache", "hairstyle": "skullcap",
       "clothing_color": "orange patterned robe", "style": "children's book style", "expression": "smiling",
       "background": "steppe landscape"}
SHOWN_BACKGROUNDS = ("steppe landscape", "plain background")


def analysis(taxonomy: dict | None = None, trigger: str = "aldarkose") -> dict:
    """An analysis as analyze_references writes it: five references, two of them on a plain page."""
    taxonomy = taxonomy or json.loads(BUNDLED_TAXONOMY.read_text())
    per_image = {f"ref{i}.png": {c: {"top": [{"feature": SHOWN_BACKGROUNDS[i % 2] if c == "background" else v,
                                              "probability": 0.9}]} for c, v in KEY.items()} for i in range(5)}
    return {"trigger_token": trigger, "taxonomy": {"templates": ["{}"], **taxonomy},
            "key_features": list(KEY.values()),
            "key_feature_details": [{"feature": v, "category": c} for c, v in KEY.items()], "per_image": per_image}


def test_the_suite_asks_for_new_scenes_and_for_another_character_without_the_trigger():
    suite = build_suite(analysis(), seed=42)
    assert [p.kind for p in suite] == [NEW_CONTEXT] * 3 + [NO_TRIGGER] * 2
    contexts = [p for p in suite if p.kind == NEW_CONTEXT]
    # Background and style, in turn; each value one no reference shows.
    assert [p.category for p in contexts] == ["background", "style", "background"]
    assert all(p.value not in SHOWN_BACKGROUNDS and p.value != "children's book style" for p in contexts)
    assert len({p.value for p in contexts}) == 3
    for prompt in contexts:  # the character's identity traits, the trigger first, the new value in place of the old
        assert prompt.text.startswith("aldarkose, round face, narrow eyes, thin mustache, skullcap")
        assert prompt.value in prompt.text
        assert ("steppe landscape" in prompt.text) == (prompt.category != "background")
    for prompt in suite[3:]:
        parts = prompt.text.split(", ")
        assert "aldarkose" not in parts
        assert not {"round face", "narrow eyes", "thin mustache", "skullcap", "orange patterned robe"} & set(parts)
    # The expression is context, not identity: a new scene may change it (kept as the references show it,
    # not varied: the toy base draws a prompted expression 45 % of the time).
    assert all("smiling" in p.text.split(", ") for p in contexts)
    # Deterministic from the analysis and the seed; another seed may pick other values.
    assert build_suite(analysis(), seed=42) == suite
    assert build_suite(analysis(), seed=7) != suite
    assert len(build_suite(analysis(), seed=42, size=2)) == 2


def test_a_taxonomy_names_its_context_categories():
    taxonomy = json.loads(BUNDLED_TAXONOMY.read_text())
    suite = build_suite(analysis({**taxonomy, "context": ["expression"]}), seed=1, size=4)
    assert {p.category for p in suite if p.kind == NEW_CONTEXT} == {"expression"}
    assert all("smiling" not in p.text.split(", ") for p in suite if p.kind == NEW_CONTEXT)
    with pytest.raises(InputError, match="context category 'pose' is not one of its categories"):
        build_suite(analysis({**taxonomy, "context": ["pose"]}), seed=1)


@pytest.mark.parametrize("size", [0, 1, 13])
def test_a_suite_size_out_of_range_is_one_line(size):
    with pytest.raises(InputError, match=f"suite size {size} is out of range"):
        build_suite(analysis(), seed=1, size=size)


def test_an_empty_or_repeated_or_triggered_suite_prompt_is_refused():
    with pytest.raises(InputError, match="suite prompt 2 is empty"):
        check_suite([SuitePrompt(NEW_CONTEXT, "a"), SuitePrompt(NEW_CONTEXT, "  ")], "t")
    with pytest.raises(InputError, match="suite prompt 2 repeats an earlier one"):
        check_suite([SuitePrompt(NEW_CONTEXT, "a, b"), SuitePrompt(NO_TRIGGER, "A,  b")], "t")
    with pytest.raises(InputError, match="meant to have no trigger but holds 'bob'"):
        check_suite([SuitePrompt(NO_TRIGGER, "bob, red robe")], "bob")


def feedback(identity, editability, base_editability, bleed) -> dict:
    return {"lora_score": 0.6, "metric_gaps": {"clip": {"lora": 0.8}}, "feature_gaps": [], "overfitting": {},
            "identity": {"score": identity}, "editability": {"rate": editability, "base": base_editability},
            "bleed": {"score": bleed}}


PARAMS = {"steps": 200, "learning_rate": 5e-3, "rank": 8, "alpha": 8.0, "lora_scale": 1.0, "feature_emphasis": []}


@pytest.mark.parametrize("editability,bleed,why", [(0.6, 0.0, "draws what the prompt asks in 60%"),
                                                   (1.0, 0.12, "closer to the references than the base")])
def test_a_lora_that_overrides_the_prompt_or_bleeds_trains_less_and_draws_weaker(editability, bleed, why):
    decision = RulePolicy().decide(feedback(0.7, editability, 1.0, bleed), [], PARAMS)
    assert decision.adjustments["steps"] < 200 and decision.adjustments["learning_rate"] < 5e-3
    assert decision.adjustments["lora_scale"] == pytest.approx(0.85)
    assert why in decision.rationale


def test_a_faint_identity_that_follows_the_prompt_trains_harder():
    decision = RulePolicy().decide(feedback(0.45, 0.95, 1.0, 0.0), [], PARAMS)
    assert decision.adjustments["steps"] > 200
    assert "identity is 0.45" in decision.rationale
    # A faint identity that also ignores the prompt is not "learnt but overriding": no overfitting remedy.
    neither = RulePolicy().decide(feedback(0.45, 0.5, 1.0, 0.0), [], PARAMS)
    assert "lora_scale" not in neither.adjustments


def record(number: int, score: float, editability: float | None, bleed: float | None) -> dict:
    suite = None if editability is None else {"scores": {"editability": {"rate": editability},
                                                         "bleed": {"score": bleed}}}
    return {"round": number, "lora_score": score, "scores": {"lora": {"quality": score}}, "suite": suite}


def test_a_round_clearly_worse_in_new_scenes_does_not_win_on_quality_alone():
    rounds = [record(1, 0.60, 0.95, 0.00), record(2, 0.65, 0.70, 0.00), record(3, 0.63, 0.90, 0.01)]
    assert best_round(rounds).round == 3  # round 2's editability is 0.25 below round 1's
    assert best_round(rounds, "quality").round == 2
    bleeding = [record(1, 0.60, 0.95, 0.00), record(2, 0.65, 0.95, 0.09)]
    assert best_round(bleeding).round == 1
    # Bleed at or below 0 is none: a round at +0.04 is not clearly worse than one at −0.08.
    assert best_round([record(1, 0.60, 0.95, -0.08), record(2, 0.65, 0.95, 0.04)]).round == 2
    # Within the margins (noise), and without a suite, quality decides.
    assert best_round([record(1, 0.60, 0.95, 0.0), record(2, 0.65, 0.85, 0.04)]).round == 2
    assert best_round([record(1, 0.60, None, None), record(2, 0.65, None, None)]).round == 2


def test_the_checkpoint_a_round_keeps_is_guarded_as_the_rounds_are():
    from tools.training.lora_files import guarded_checkpoint

    def checkpoint(step, quality, editability=None, images=4):
        return {"step": step, "quality": quality,
                **({} if editability is None else {"editability": editability, "editability_images": images})}

    # Step 120 wins quality but draws the asked background or style on 1 of 4 images, step 80 on 4 of 4.
    scores = [checkpoint(40, 0.50, 0.75), checkpoint(80, 0.58, 1.0), checkpoint(120, 0.62, 0.25)]
    best, passed = guarded_checkpoint(scores)
    assert best["step"] == 80 and passed == ["step 120 (0.620): editability 0.25 < 1.00 − 0.30"]
    # One image of four is within the two shares' spread (0.30, above the rounds' 0.15 margin): quality decides.
    assert guarded_checkpoint([checkpoint(80, 0.58, 1.0), checkpoint(120, 0.62, 0.75)])[0]["step"] == 120
    # On more images a smaller gap is clear: 5 of 8 against 8 of 8.
    assert guarded_checkpoint([checkpoint(80, 0.58, 1.0, 8), checkpoint(120, 0.62, 0.625, 8)])[0]["step"] == 80
    # Without the edit check (the quality ranking, aldar train), quality alone, as before.
    assert guarded_checkpoint([checkpoint(80, 0.58), checkpoint(120, 0.62)]) == (checkpoint(120, 0.62), [])


def test_the_edit_check_draws_the_suites_first_new_contexts_at_its_seeds():
    from tools.scoring.suite import edit_check

    suite = build_suite(analysis(), seed=42)
    check = edit_check(suite, analysis(), profile=None, seed=42, images_per_prompt=8)
    assert check.prompts == [suite[0].text, suite[1].text]  # a background and a style
    assert check.seeds == [42, 43]
    assert edit_check(suite, analysis(), None, 7, images_per_prompt=1).seeds == [7]
    assert edit_check([p for p in suite if p.kind == NO_TRIGGER], analysis(), None, 42, 8) is None


def test_the_llm_briefing_carries_the_three_scores_and_what_each_prompt_asked():
    from agent.llm.tools import feedback_summary, round_summary

    brief = feedback(0.712345, 0.8, 1.0, 0.0412345)
    brief["suite_prompts"] = [{"kind": "new_context", "text": "t, x", "category": "background", "value": "forest"},
                              {"kind": "no_trigger", "text": "y"}]
    summary = feedback_summary(brief)
    assert summary["identity"] == {"score": 0.712} and summary["bleed"] == {"score": 0.041}
    assert summary["suite_prompts"] == [{"kind": "new_context", "asks": "background: forest"}, {"kind": "no_trigger"}]
    assert "identity" not in feedback_summary({"lora_score": 0.5})
    past = round_summary({"round": 1, "lora_score": 0.6, **record(1, 0.6, 0.9, 0.02)})
    assert past["suite"] == {"editability": 0.9, "bleed": 0.02}
