"""Two full rounds on the tiny profile, decided by the rule policy, with every socket connection refused."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from agent.policy import RulePolicy
from agent.session import Session

ROUND_STEPS = 8  # tiny steps for the test: the pipeline, not the learning, is under test


@pytest.fixture
def no_network(monkeypatch):
    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f"network use during an offline round: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine: oversubscribed threads only slow every process
    yield
    torch.set_num_threads(before)


def test_rule_policy_runs_two_offline_rounds(tiny_settings, no_network, one_thread):
    settings = tiny_settings.replace(images_per_prompt=2)
    with Session(settings, quiet=True) as session:
        session.params.update(steps=ROUND_STEPS, checkpoint_every=ROUND_STEPS // 2)
        start = dict(session.params)
        records = session.run_rounds(2, RulePolicy(bounds=session.bounds))
        root = session.store.root
    assert [r["round"] for r in records] == [1, 2]

    history = json.loads((root / "training_history.json").read_text())
    rounds = history["rounds"]
    assert len(rounds) == 2 and history["in_progress"] is None
    assert history["stopped"]["reason"].startswith("round limit")
    assert history["profile"]["profile"] == "tiny" and "not image quality" in history["profile"]["notice"]
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
        assert record["train"]["steps"] == record["params"]["steps"]
        for key in ("comparison_report", "feedback", "lora", "run_dir"):
            assert (root / record["paths"][key]).exists(), key
        assert re.fullmatch(r"comparisons/comparison_report_\d{8}_\d{6}_round\d\d\.json",
                            record["paths"]["comparison_report"])
        assert re.fullmatch(r"feedback/feedback_\d{8}_\d{6}_round\d\d\.json", record["paths"]["feedback"])
        feedback = json.loads((root / record["paths"]["feedback"]).read_text())
        assert feedback["round"] == record["round"] and "overfitting" in feedback
        assert feedback["profile"]["profile"] == "tiny"
        assert all(len(paths) == 2 for paths in record["paths"]["images"].values())
    assert rounds[0]["params"] == start
    # The second round trained with what the first round decided.
    assert rounds[1]["params"] == rounds[0]["next_params"]
    applied = rounds[0]["decision"]["adjustments"]
    assert all(rounds[1]["params"][k] == v for k, v in applied.items())

    best = history["best_round"]
    assert best == max(rounds, key=lambda r: (r["lora_score"], -r["round"]))["round"]
    assert (root / history["best_lora"]).read_bytes() == (root / rounds[best - 1]["paths"]["lora"]).read_bytes()

    page = (root / "report.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    images = [s for s in sources if s.startswith("comparisons/")]
    assert len(images) == 2 * 2 * 2  # rounds × generators × images
    assert all((root / s).is_file() for s in sources)
    assert "Pipeline check, not quality" in page


def test_a_finished_run_resumes_with_nothing_to_do(tiny_settings, no_network, one_thread):
    settings = tiny_settings.replace(images_per_prompt=1)
    with Session(settings, quiet=True) as session:
        session.params.update(steps=4, checkpoint_every=2)
        session.run_rounds(1, RulePolicy(bounds=session.bounds))
        first = json.loads(session.store.history_path.read_text())["rounds"]
    with Session(settings, quiet=True) as again:
        assert again.params == first[0]["next_params"]  # the next round starts from the decision
        assert again.run_rounds(1, RulePolicy(bounds=again.bounds)) == []
        assert again.history() == first
