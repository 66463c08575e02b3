"""The toy world's build (``python -m tools.world.build``) on a miniature recipe: a stage interrupted by
Ctrl-C saves a checkpoint, a rerun continues from it, and the result is the uninterrupted run's, bit for
bit — batches and noise are functions of (seed, step). Second passes start from the first passes' states;
the committed weights can seed a cache; the export pairs the UNet with the text tower it trained on."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from tools.world import build as world_build

MINI = world_build.Recipe(train_split=(1, 160), unet_split=(2, 96), heldout_split=(9, 8), clip_steps=6, clip_batch=8,
                          text_lock_step=3, vision_batch=8, vae_steps=4, encoder_lock_step=2, vae_batch=4,
                          decoder_steps=3, decoder2_steps=3, unet_steps=4, unet_batch=4)


def _prepared(tmp_path, name: str, recipe=MINI) -> world_build.Build:
    build = world_build.Build(tmp_path / name, recipe, weights=tmp_path / name / "weights")
    world_build.stage_data(build)
    world_build.stage_tokenizer(build)
    return build


def _modules(build: world_build.Build, stage: str) -> dict:
    return torch.load(build.checkpoint_path(stage), map_location="cpu", weights_only=False)["modules"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_stage_resumes_to_exactly_the_uninterrupted_weights(tmp_path, monkeypatch):
    straight = _prepared(tmp_path, "straight")
    world_build.stage_vae(straight)

    interrupted = _prepared(tmp_path, "interrupted")
    real_unit_range, calls = world_build.to_unit_range, []

    def ctrl_c_at_step_3(pixels):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_unit_range(pixels)

    monkeypatch.setattr(world_build, "to_unit_range", ctrl_c_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        world_build.stage_vae(interrupted)
    state = torch.load(interrupted.checkpoint_path("vae"), map_location="cpu", weights_only=False)
    assert state["step"] == 2  # the two finished steps are kept
    monkeypatch.setattr(world_build, "to_unit_range", real_unit_range)
    world_build.stage_vae(interrupted)  # the rerun continues at step 2

    assert _same(_modules(straight, "vae")["vae"], _modules(interrupted, "vae")["vae"])


def test_a_changed_recipe_starts_the_stage_afresh_and_the_second_pass_needs_the_first(tmp_path, capsys):
    build = _prepared(tmp_path, "cache")
    world_build.stage_vae(build)
    with pytest.raises(RuntimeError, match="decoder stage is at step 0 of 3: finish it first"):
        torch.save({"step": 0}, build.checkpoint_path("decoder"))
        world_build.stage_decoder2(build)
    build.checkpoint_path("decoder").unlink()
    world_build.stage_decoder(build)
    world_build.stage_decoder2(build)
    first, second = _modules(build, "decoder")["vae"], _modules(build, "decoder2")["vae"]
    assert not _same(first, second)  # the second pass trained on
    assert all(torch.equal(first[k], second[k]) for k in first if k.startswith(("encoder.", "quant_conv.")))

    changed = world_build.Build(build.cache, replace(MINI, decoder2_lr=1e-4), weights=build.weights)
    world_build.stage_decoder2(changed)
    assert "the recipe changed since the checkpoint: starting afresh" in capsys.readouterr().out


def test_the_committed_weights_seed_a_cache_whose_second_passes_continue_them(tmp_path):
    recipe = replace(MINI, retune2_steps=2, decoder2_steps=2)
    build = world_build.Build(tmp_path / "cache", recipe)  # weights: the committed folder (read only here)
    marked = world_build.seed_from_weights(build)
    assert {"textneg", "decoder", "retune"} <= set(marked)
    seeded_unet = _modules(build, "retune")["ema"]
    world_build.stage_retune2(build)
    world_build.stage_decoder2(build)
    after = _modules(build, "retune2")["ema"]
    assert seeded_unet.keys() == after.keys() and not _same(seeded_unet, after)
    # The tokenizer taken from the committed tokenizer.json tokenises as the committed one.
    from tools.models import load_toy_world_clip

    committed = load_toy_world_clip()[1]
    caption = "aldarkose, round face, thin mustache, orange patterned robe, steppe landscape"
    assert build.tokenizer()(caption).input_ids == committed(caption).input_ids
    with pytest.raises(RuntimeError, match="already holds checkpoints"):
        world_build.seed_from_weights(build)

    # The export carries the retune2 UNet with the text tower it trained on, in the scorer's CLIP and the pipeline.
    exported = world_build.Build(build.cache, recipe, weights=tmp_path / "weights")
    assert world_build.export(exported) == ["clip", "sdxl"]
    from safetensors.torch import load_file

    clip = load_file(tmp_path / "weights" / "clip" / "model.safetensors")
    encoder_2 = load_file(tmp_path / "weights" / "sdxl" / "text_encoder_2" / "model.safetensors")
    unet = load_file(tmp_path / "weights" / "sdxl" / "unet" / "diffusion_pytorch_model.safetensors")
    name = "text_model.final_layer_norm.weight"
    assert torch.equal(clip[name], encoder_2[name])
    assert all(torch.equal(unet[k], after[k].half()) for k in unet)
    log = json.loads((tmp_path / "weights" / "build_log.json").read_text())
    assert "taken from the committed fp16 weights" in log["seeded_from_weights"]
