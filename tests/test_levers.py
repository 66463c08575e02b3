"""The levers character trainers rely on (issue 26), on the tiny profile: validation loss, LoKr/LoHa, masked loss,
identity-free captions and prior preservation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tools.models import resolve_profile
from tools.settings import load_settings
from tools.training.trainer import default_train_config, train_lora

CAPTIONS = ["aldarkose, smiling, blue chapan", "aldarkose, blue chapan", "aldarkose, riding, donkey"]


@pytest.fixture(scope="module")
def profile():
    return resolve_profile(load_settings(overrides={"profile": "tiny", "device": "cpu"}))


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> list[tuple[Path, str]]:
    """Three 64 px pictures: a figure (a dark square in the middle) on three backgrounds."""
    folder = tmp_path_factory.mktemp("refs")
    pairs = []
    for index, background in enumerate([(200, 60, 60), (60, 200, 60), (60, 60, 200)]):
        pixels = np.full((64, 64, 3), background, np.uint8)
        pixels[16:48, 20:44] = (30, 30, 30)
        path = folder / f"ref{index}.png"
        Image.fromarray(pixels).save(path)
        pairs.append((path, CAPTIONS[index]))
    return pairs


def quick(profile, **changes):
    return default_train_config(profile).replace(**{"steps": 2, "checkpoint_every": 0, "validation_images": 0,
                                                    **changes})


def fake_scorer(by_step: dict[int, float]):
    def score(images: list[Path]) -> dict[str, float]:
        return {"quality": by_step[int(images[0].name.split("-")[1])]}
    return score


# --------------------------------------------------------------------------- validation loss
def test_validation_loss_is_deterministic_and_logged_at_every_checkpoint(profile, references, tmp_path):
    config = quick(profile, steps=4, checkpoint_every=2, validation_images=1, report_to="tensorboard")
    first = train_lora(config, profile, references, tmp_path / "a", quiet=True,
                       score_checkpoint=fake_scorer({2: 0.4, 4: 0.6}))
    second = train_lora(config, profile, references, tmp_path / "b", quiet=True,
                        score_checkpoint=fake_scorer({2: 0.4, 4: 0.6}))
    assert sorted(first.validation_losses) == [2, 4]
    assert first.validation_losses == second.validation_losses  # fixed noise and timesteps: the same figures
    assert all(np.isfinite(v) and v > 0 for v in first.validation_losses.values())
    with open(first.loss_log, newline="") as handle:
        logged = {int(r["step"]): r["validation_loss"] for r in csv.DictReader(handle)}
    assert logged[1] == "" and float(logged[2]) == pytest.approx(first.validation_losses[2], rel=1e-5)
    assert [s["validation_loss"] for s in first.checkpoint_scores] == [first.validation_losses[2],
                                                                       first.validation_losses[4]]
    record = json.loads((first.run_dir / "checkpoint-000004" / "checkpoint.json").read_text())
    assert record["validation_loss"] == first.validation_losses[4]
    assert "validation loss" in first.chosen_checkpoint["why"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for event_file in (first.run_dir / "logs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        if "validation_loss" in accumulator.Tags()["scalars"]:
            steps += [e.step for e in accumulator.Scalars("validation_loss")]
    assert steps == [2, 4]


def test_the_choice_says_when_validation_loss_and_quality_disagree(profile, references, tmp_path):
    config = quick(profile, steps=4, checkpoint_every=1, validation_images=1)
    result = train_lora(config, profile, references, tmp_path / "run", quiet=True,
                        score_checkpoint=fake_scorer({1: 0.9, 2: 0.1, 3: 0.1, 4: 0.1}))
    losses = result.validation_losses
    lowest = min(losses, key=losses.get)
    why = result.chosen_checkpoint["why"]
    assert result.chosen_checkpoint["step"] == 1
    assert ("disagrees" in why) == (lowest != 1) and ("agrees" in why), why
    if lowest != 1:
        assert f"lowest at step {lowest}" in why
