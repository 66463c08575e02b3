"""The rule policy's lever rules (issue 26): a lever is switched on only where bench/levers.py measured it to help."""

from __future__ import annotations

import pytest

import agent.rounds.lever_rules as lever_rules
from agent.rounds.lever_rules import Evidence
from agent.rounds.policy import RulePolicy

PARAMS = {"steps": 200, "learning_rate": 5e-3, "rank": 8, "alpha": 8.0, "lora_scale": 1.0, "feature_emphasis": [],
          "prior_preservation": False, "masked_loss": False, "output_preservation": False}


def feedback(bleed: float = 0.0, background: tuple[float, float] = (1.0, 1.0),
             features: tuple[float, float] = (0.7, 0.3)) -> dict:
    """A round whose suite found ``bleed`` and the background drawn as prompted in (LoRA, base) shares, and whose
    key features passed in (LoRA, base) shares of the images of its own prompt."""
    return {"lora_score": 0.6, "metric_gaps": {"clip": {"lora": 0.8},
                                               "features": {"lora": features[0], "base": features[1]}},
            "feature_gaps": [], "overfitting": {},
            "identity": {"score": 0.7},
            "editability": {"rate": 0.9, "base": 1.0,
                            "by_category": {"background": {"lora": background[0], "base": background[1]},
                                            "style": {"lora": 0.9, "base": 0.9}}},
            "bleed": {"score": bleed}}


HELPS = {"PRIOR_AGAINST_BLEED": Evidence("prior_preservation", "bleed", True, (0.10, 0.01), (0.02, 0.01)),
         "MASKED_FOR_BACKGROUND": Evidence("masked_loss", "background follow", False, (0.6, 0.05), (0.9, 0.05)),
         "OUTPUT_PRESERVATION_FOR_LEAD": Evidence("output_preservation", "key-feature lead over the base", False,
                                                  (-0.03, 0.09), (0.12, 0.06))}
FAILS = {"PRIOR_AGAINST_BLEED": Evidence("prior_preservation", "bleed", True, (0.035, 0.059), (0.044, 0.031)),
         "MASKED_FOR_BACKGROUND": Evidence("masked_loss", "background follow", False, (0.917, 0.062), (0.883, 0.062)),
         "OUTPUT_PRESERVATION_FOR_LEAD": Evidence("output_preservation", "key-feature lead over the base", False,
                                                  (0.05, 0.12), (0.10, 0.08))}


def test_evidence_helps_only_beyond_both_spreads():
    assert HELPS["PRIOR_AGAINST_BLEED"].helps() and HELPS["MASKED_FOR_BACKGROUND"].helps()
    assert not FAILS["PRIOR_AGAINST_BLEED"].helps() and not FAILS["MASKED_FOR_BACKGROUND"].helps()
    assert not Evidence("masked_loss", "x", False, (0.5, 0.1), (0.58, 0.05)).helps()  # gain 0.08 < spread 0.1
    assert "0.044 ± 0.031 with it vs 0.035 ± 0.059 without" in FAILS["PRIOR_AGAINST_BLEED"].figures()
    # Measured in pairs (same character and seed both ways), the paired difference decides: beyond 2 standard errors.
    spread_out = Evidence("output_preservation", "lead", False, (0.036, 0.154), (0.127, 0.094), paired=(0.090, 0.044, 9))
    assert spread_out.helps() and "per run +0.090 ± 0.044 (standard error, 9 runs)" in spread_out.figures()
    assert not Evidence("output_preservation", "lead", False, (0.036, 0.154), (0.127, 0.094),
                        paired=(0.090, 0.050, 9)).helps()
    assert Evidence("prior_preservation", "bleed", True, (0.1, 0.2), (0.0, 0.2), paired=(-0.1, 0.04, 9)).helps()


@pytest.mark.parametrize("evidence", [HELPS, FAILS], ids=["measured to help", "measured not to help"])
def test_bleed_switches_prior_preservation_on_only_where_it_was_measured_to_help(monkeypatch, evidence):
    for name, value in evidence.items():
        monkeypatch.setattr(lever_rules, name, value)
    decision = RulePolicy().decide(feedback(bleed=0.12), [], dict(PARAMS))
    assert decision.adjustments["steps"] < 200  # the usual remedy stands either way
    if evidence is HELPS:
        assert decision.adjustments["prior_preservation"] is True
        assert "switch on prior preservation, measured to help: bleed 0.020 ± 0.010 with it" in decision.rationale
    else:
        assert "prior_preservation" not in decision.adjustments
        assert "prior preservation stays off, as measured it did not help beyond the seeds' spread: bleed 0.044" in decision.rationale
    assert "masked" not in decision.rationale  # the background was followed


@pytest.mark.parametrize("evidence", [HELPS, FAILS], ids=["measured to help", "measured not to help"])
def test_a_kept_background_switches_masked_loss_on_only_where_it_was_measured_to_help(monkeypatch, evidence):
    for name, value in evidence.items():
        monkeypatch.setattr(lever_rules, name, value)
    decision = RulePolicy().decide(feedback(background=(0.5, 1.0)), [], dict(PARAMS))
    assert "draws a prompted background in 50% of its new-scene images, under 85% of the base's 100%" \
        in decision.rationale
    assert ("masked_loss" in decision.adjustments) is (evidence is HELPS)
    assert "prior" not in decision.rationale  # no bleed


@pytest.mark.parametrize("evidence", [HELPS, FAILS], ids=["measured to help", "measured not to help"])
def test_key_features_barely_ahead_of_the_base_switch_output_preservation_on_where_measured_to_help(monkeypatch,
                                                                                                  evidence):
    for name, value in evidence.items():
        monkeypatch.setattr(lever_rules, name, value)
    decision = RulePolicy().decide(feedback(features=(0.40, 0.35)), [], dict(PARAMS))
    assert "key features lead the base's by +0.050 (under 0.1)" in decision.rationale
    assert decision.adjustments.get("output_preservation") is (True if evidence is HELPS else None)
    if evidence is HELPS:
        assert "switch on output preservation, measured to help: key-feature lead over the base 0.120" \
            in decision.rationale
    else:
        assert "output preservation stays off, as measured it did not help" in decision.rationale
    ahead = RulePolicy().decide(feedback(features=(0.70, 0.35)), [], dict(PARAMS))
    assert "output" not in ahead.rationale and "output_preservation" not in ahead.adjustments
    # older feedback has no base figure: the rule stays silent
    older = feedback(features=(0.40, 0.35))
    del older["metric_gaps"]["features"]["base"]
    assert "output" not in RulePolicy().decide(older, [], dict(PARAMS)).rationale


def test_no_lever_is_named_when_it_is_on_already_or_nothing_shows(monkeypatch):
    for name, value in HELPS.items():
        monkeypatch.setattr(lever_rules, name, value)
    on = {**PARAMS, "prior_preservation": True, "masked_loss": True, "output_preservation": True}
    decision = RulePolicy().decide(feedback(bleed=0.12, background=(0.5, 1.0), features=(0.3, 0.3)), [], on)
    assert not {"prior_preservation", "masked_loss", "output_preservation"} & set(decision.adjustments)
    quiet = RulePolicy().decide(feedback(), [], dict(PARAMS))
    assert "prior" not in quiet.rationale and "masked" not in quiet.rationale and "output" not in quiet.rationale
    # Without a suite (no editability or bleed blocks) the rules stay silent.
    assert lever_rules.lever_rules({"lora_score": 0.6}, PARAMS, 0.05, 0.85, 0.1) == ({}, [])
