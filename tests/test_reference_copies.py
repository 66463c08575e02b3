"""A generated image that is a copy of a reference is flagged as memorised and never ranked the winner:
in the feedback JSON, the score table `aldar score` prints, the rule policy's decision and report.html."""

from __future__ import annotations

import json
import random

import pytest

from agent.cli import main
from agent.rounds.policy import RulePolicy
from agent.rounds.ranking import ranked_rounds
from agent.rounds.records import overfitting_signals, scores_by_generator
from agent.rounds.store import HistoryState
from agent.views.report import render_html
from tools.scoring.copies import MEMORISED, is_reference_copy
from tools.world.attributes import sample_character
from tools.world.draw import draw_character


def test_near_copy_needs_content_and_layout_of_one_reference():
    assert is_reference_copy(1.0, 1.0) and is_reference_copy(0.95, 0.85)
    assert not is_reference_copy(0.99, 0.5)  # the same character, drawn otherwise
    assert not is_reference_copy(0.5, 0.99)  # flat pictures share structure without sharing content
    assert not is_reference_copy(None, None)


@pytest.fixture
def scored_copy(tmp_path, references_dir, monkeypatch, capsys):
    """`aldar score` of a bundled reference as the LoRA's image beside a toy-world stranger as base."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    stranger = tmp_path / "base" / "stranger.png"
    stranger.parent.mkdir()
    draw_character(sample_character(random.Random(7)), seed=7, size=64).save(stranger)
    code = main(["score", "--profile", "tiny", "--device", "cpu", "-q", "--references", str(references_dir),
                 "--output-dir", str(tmp_path / "out"), "--analysis", str(tmp_path / "analysis.json"),
                 "--images", f"lora={references_dir / 'aldar1.png'}", f"base={stranger}"])
    out = capsys.readouterr().out
    [report_file] = (tmp_path / "out" / "comparisons").glob("comparison_report_*.json")
    [feedback_file] = (tmp_path / "out" / "feedback").glob("feedback_*.json")
    return code, out, json.loads(report_file.read_text()), json.loads(feedback_file.read_text())


def test_a_scored_reference_is_a_memorised_copy_everywhere_and_never_the_winner(scored_copy, tmp_path):
    code, out, report, feedback = scored_copy
    assert code == 0

    # comparison report: base is ranked first; the copy is last, unranked, and names the reference it copies
    assert [(r["generator"], r["rank"], r["reference_copy"]) for r in report["ranking"]] == \
        [("base", 1, False), ("lora", None, True)]
    assert report["generators"]["lora"]["quality"]["mean"] > report["generators"]["base"]["quality"]["mean"]
    [copy] = [row for row in report["images"] if row["generator"] == "lora"]
    assert copy["reference_copy"] is True and copy["copied_reference"] == "aldar1.png"

    # feedback JSON: flagged, no "ahead of the ceiling", memorisation is the first recommendation
    assert feedback["reference_copy"] is True and feedback["needs_improvement"] is True
    assert [c["copied_reference"] for c in feedback["reference_copies"]] == ["aldar1.png"]
    assert feedback["score_gap"] is None and feedback["compared_against"] is None
    first = feedback["recommendations"][0]
    assert first["area"] == "memorisation" and first["priority"] == "high" and "aldar1.png" in first["message"]

    # the table the user reads
    lora_row = next(line for line in out.splitlines() if "│ lora" in line)
    assert MEMORISED in lora_row and lora_row.startswith("│ lora ")  # no rank number
    assert any("│ 1. base" in line for line in out.splitlines())
    assert "ahead of" not in out and f"LoRA lora: {feedback['lora_score']:.3f} — {MEMORISED}, not ranked" in out

    # the rule policy reads the same definition: it trains less, never more
    decision = RulePolicy().decide({**feedback, "overfitting": overfitting_signals(report)}, [],
                                   {"steps": 1000, "learning_rate": 1e-4})
    assert "nearly copies one reference" in decision.rationale and decision.adjustments["steps"] == 700

    # report.html: the round's table marks it, the verdict says so, and the round cannot be the best one
    record = {"round": 1, "scores": scores_by_generator(report), "lora_score": feedback["lora_score"],
              "ceiling": {"quality": report["ceiling"]["quality"]["mean"]}, "rationale": decision.rationale,
              "decided_by": "rule-policy", "decision": {"adjustments": decision.adjustments}, "paths": {}}
    page = render_html([record], HistoryState(profile={"profile": "tiny"}), [], "score_chart.png")
    assert '<tr class="copy"><td>lora</td>' in page and f"<td>{MEMORISED}</td>" in page
    assert "Only base was ranked" in page and f"The LoRA&#x27;s images copy the references ({MEMORISED})" in page
    assert ranked_rounds([record]) == []
