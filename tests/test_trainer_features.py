"""Trainer features on the tiny profile: kohya metadata, aspect-ratio buckets, Prodigy / DoRA, caption
dropout and tag shuffling, TensorBoard, and the best checkpoint chosen by score."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tools.errors import ConfigError
from tools.models import load_toy_world_pipeline
from tools.training.data import prepare_images, training_caption
from tools.training.lora_files import DIFFUSERS_WEIGHTS, best_checkpoint
from tools.training.trainer import default_train_config, train_lora

CAPTIONS = ["aldarkose, smiling, blue chapan", "aldarkose, blue chapan", "aldarkose, riding, donkey"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> list[tuple[Path, str]]:
    """Tall, wide and square references; each tall/wide one has a red top row and a blue bottom row/edge."""
    folder = tmp_path_factory.mktemp("aldar_refs")
    pairs = []
    for index, (width, height) in enumerate([(112, 144), (144, 112), (96, 96)]):
        pixels = np.full((height, width, 3), 128, np.uint8)
        pixels[:4] = (255, 0, 0)     # the head
        pixels[-4:] = (0, 0, 255)    # the feet
        path = folder / f"ref{index}.png"
        Image.fromarray(pixels).save(path)
        pairs.append((path, CAPTIONS[index]))
    return pairs


def quick(profile, **changes):
    return default_train_config(profile).replace(**{"steps": 2, "checkpoint_every": 0, "validation_images": 0,
                                                    **changes})


def fresh_pipeline(profile):
    """A new copy of the tiny profile's models (the toy world's), not the cached one the trainer uses."""
    pipe = load_toy_world_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------- metadata
def test_kohya_metadata_is_typed_as_the_clients_read_it(profile, shapes, tmp_path):
    from safetensors.torch import load_file, save

    old_mask = os.umask(0o022)
    try:
        result = train_lora(quick(profile), profile, shapes, tmp_path / "run", quiet=True)
    finally:
        os.umask(old_mask)
    with safe_open(str(result.kohya_path), "pt") as handle:
        meta = handle.metadata()
        dtypes = {handle.get_tensor(k).dtype for k in handle.keys() if not k.endswith(".alpha")}
    started, finished = float(meta["ss_training_started_at"]), float(meta["ss_training_finished_at"])
    assert 1.7e9 < started <= finished  # epoch seconds, as A1111's metadata editor float()s them
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.title"] == "aldar_kose_lora" and meta["modelspec.resolution"] == "64x64"
    assert meta["modelspec.prediction_type"] == "epsilon" and meta["modelspec.date"].startswith("20")
    assert json.loads(meta["ss_tag_frequency"]) == {shapes[0][0].parent.name: {
        "aldarkose": 3, "smiling": 1, "blue chapan": 2, "riding": 1, "donkey": 1}}
    assert json.loads(meta["ss_dataset_dirs"]) == {shapes[0][0].parent.name: {"n_repeats": 1, "img_count": 3}}
    assert int(meta["ss_num_epochs"]) >= 1 and int(meta["ss_clip_skip"]) == 2 and int(meta["ss_steps"]) == 2
    assert meta["ss_save_precision"] == "fp16" and dtypes == {torch.float16}
    # the hashes, recomputed from the file as kohya defines them
    data = result.kohya_path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + header:]).hexdigest()
    only_ss = save(load_file(str(result.kohya_path)), metadata={k: v for k, v in meta.items() if k.startswith("ss_")})
    assert meta["sshs_legacy_hash"] == hashlib.sha256(only_ss[0x100000:0x110000]).hexdigest()[:8]
    with safe_open(str(result.lora_path), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float16}
    for path in (result.kohya_path, result.lora_path, result.run_dir / "training_summary.json"):
        assert path.stat().st_mode & 0o777 == 0o644, path  # the umask's mode, not mkstemp's 0600


def test_save_precision_fp32_keeps_full_precision(profile, shapes, tmp_path):
    result = train_lora(quick(profile, save_precision="fp32", steps=1), profile, shapes, tmp_path / "run", quiet=True)
    for path in (result.kohya_path, result.lora_path):
        with safe_open(str(path), "pt") as handle:
            assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float32}


# --------------------------------------------------------------------------- buckets
def test_three_aspect_ratios_train_at_their_own_buckets_uncropped(profile, shapes, tmp_path):
    images = prepare_images(shapes, 64, bucket_step=8)
    assert [image.bucket for image in images] == [(72, 56), (56, 72), (64, 64)]  # (height, width)
    for image, (path, _) in zip(images, shapes):
        assert image.crop_top_left == (0, 0)  # the whole picture: aspect ratio equal to its bucket's
        top, bottom = image.pixels[:, 0].mean(dim=1), image.pixels[:, -1].mean(dim=1)
        assert top[0] > 0.9 and bottom[2] > 0.9  # head (red) and feet (blue) are both still there
        height, width = image.bucket
        assert image.time_ids(False).tolist() == [*Image.open(path).size[::-1], 0, 0, height, width]
    config = quick(profile, steps=3, batch_size=2)
    result = train_lora(config, profile, shapes, tmp_path / "run", quiet=True)
    meta = safe_open(str(result.kohya_path), "pt").metadata()
    assert json.loads(meta["ss_bucket_info"]) == {"buckets": {"56x72": 1, "64x64": 1, "72x56": 1}}
    assert meta["ss_enable_bucket"] == "True"
    pipe = fresh_pipeline(profile)
    pipe.load_lora_weights(str(result.lora_path))


def test_latents_are_cached_per_bucket(profile, shapes):
    from tools.models import load_sdxl_pipeline
    from tools.training.data import cached_latent_distributions, clear_latent_cache

    clear_latent_cache()
    pipe = load_sdxl_pipeline(profile)
    latents = cached_latent_distributions(prepare_images(shapes, 64, 8), pipe.vae, "test-vae", False, None)
    assert [latents[(i, False)][0].shape[1:] for i in range(3)] == [(9, 7), (7, 9), (8, 8)]


# --------------------------------------------------------------------------- optimizers, DoRA
@pytest.mark.parametrize("changes", [dict(optimizer="adamw"), dict(optimizer="prodigy"),
                                     dict(optimizer="adamw", use_dora=True)], ids=["adamw", "prodigy", "dora"])
def test_each_optimizer_and_dora_train_a_lora_that_loads_in_diffusers(profile, shapes, tmp_path, changes):
    config = quick(profile, steps=3, checkpoint_every=3, **changes)
    result = train_lora(config, profile, shapes, tmp_path / "run", quiet=True)
    pipe = fresh_pipeline(profile)
    pipe.load_lora_weights(str(result.lora_path), adapter_name="aldar")
    layer = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert "aldar" in layer.lora_A and bool(layer.lora_B["aldar"].weight.abs().sum() > 0)
    if changes.get("use_dora"):
        assert "aldar" in layer.lora_magnitude_vector
    from tools.training.lora_files import load_checkpoint

    groups = load_checkpoint(result.checkpoints[-1])[1]["optimizer"]["param_groups"]
    if changes["optimizer"] == "prodigy":  # the settings Prodigy's authors recommend
        assert groups[0]["lr"] == 1.0 and groups[0]["use_bias_correction"] and groups[0]["safeguard_warmup"]
        assert groups[0]["betas"] == (0.9, 0.99) and groups[0]["d"] > 0
        meta = safe_open(str(result.kohya_path), "pt").metadata()
        assert meta["ss_optimizer"] == "prodigyopt.prodigy.Prodigy" and meta["ss_learning_rate"] == "1"


def test_dora_with_text_encoders_is_refused(profile, shapes, tmp_path):
    with pytest.raises(ConfigError, match="DoRA"):
        train_lora(quick(profile, use_dora=True, train_text_encoder=True), profile, shapes, tmp_path / "r", quiet=True)


# --------------------------------------------------------------------------- captions
def test_caption_dropout_and_shuffling_keep_the_first_tokens():
    caption = "aldarkose, smiling, blue chapan, donkey, steppe"
    seen = set()
    for seed in range(40):
        shuffled = training_caption(caption, torch.Generator().manual_seed(seed), 0.0, True, 1)
        assert shuffled.split(", ")[0] == "aldarkose" and sorted(shuffled.split(", ")) == sorted(caption.split(", "))
        seen.add(shuffled)
    assert len(seen) > 5
    again = training_caption(caption, torch.Generator().manual_seed(3), 0.0, True, 1)
    assert again == training_caption(caption, torch.Generator().manual_seed(3), 0.0, True, 1)  # resume replays it
    dropped = [training_caption(caption, torch.Generator().manual_seed(s), 0.5, False, 1) for s in range(200)]
    assert 60 < dropped.count("") < 140 and set(dropped) == {"", caption}


def test_shuffled_captions_and_dropout_train(profile, shapes, tmp_path):
    result = train_lora(quick(profile, caption_dropout=0.3, shuffle_caption_tags=True, keep_tokens=1), profile,
                        shapes, tmp_path / "run", quiet=True)
    meta = safe_open(str(result.kohya_path), "pt").metadata()
    assert meta["ss_shuffle_caption"] == "True" and meta["ss_keep_tokens"] == "1"
    assert meta["ss_caption_dropout_rate"] == "0.3"


# --------------------------------------------------------------------------- TensorBoard
def test_tensorboard_gets_loss_and_lr_per_step_and_validation_images(profile, shapes, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = quick(profile, steps=2, checkpoint_every=2, validation_images=1, report_to="tensorboard")
    result = train_lora(config, profile, shapes, tmp_path / "run", quiet=True)
    events = sorted((result.run_dir / "logs").rglob("events.out.tfevents.*"))
    assert events
    scalars, images = {}, {}
    for event_file in events:
        accumulator = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars[tag] = [e.step for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["images"]:
            images[tag] = [e.step for e in accumulator.Images(tag)]
    assert scalars["loss"] == [1, 2] and scalars["lr"] == [1, 2]
    assert any(steps == [2] for tag, steps in images.items() if tag.startswith("validation"))


# --------------------------------------------------------------------------- best checkpoint
def test_best_checkpoint_is_the_one_with_the_highest_recorded_score():
    scores = [{"step": 10, "quality": 0.4}, {"step": 20, "quality": 0.7}, {"step": 30, "quality": 0.5}]
    assert best_checkpoint(scores)["step"] == 20
    assert best_checkpoint(scores + [{"step": 40, "quality": 0.7}])["step"] == 40  # a tie: the longer-trained
    assert best_checkpoint([]) is None


def fake_scorer(by_step: dict[int, float]):
    def score(images: list[Path]) -> dict[str, float]:
        step = int(images[0].name.split("-")[1])
        return {"quality": by_step[step], "clip": by_step[step] / 2}
    return score


@pytest.mark.parametrize("select", [True, False])
def test_the_run_hands_over_the_best_scoring_checkpoint(profile, shapes, tmp_path, select):
    from safetensors.torch import load_file

    config = quick(profile, steps=3, checkpoint_every=1, validation_images=1, checkpoints_to_keep=1,
                   select_best_checkpoint=select, save_precision="fp32")
    result = train_lora(config, profile, shapes, tmp_path / "run", quiet=True,
                        score_checkpoint=fake_scorer({1: 0.2, 2: 0.9, 3: 0.5}))
    assert [s["step"] for s in result.checkpoint_scores] == [1, 2, 3]
    chosen = 2 if select else 3
    assert result.chosen_checkpoint["step"] == chosen
    assert ("highest" in result.chosen_checkpoint["why"]) == select
    assert (result.run_dir / "checkpoint-000002").is_dir() == select  # kept past checkpoints_to_keep=1
    exported = load_file(str(result.lora_path))
    saved = load_file(str(result.run_dir / f"checkpoint-{chosen:06d}" / DIFFUSERS_WEIGHTS))
    assert exported.keys() == saved.keys() and all(torch.equal(exported[k], saved[k]) for k in saved)
    summary = json.loads((result.run_dir / "training_summary.json").read_text())
    assert summary["chosen_checkpoint"]["step"] == chosen
    assert [s["quality"] for s in summary["checkpoint_scores"]] == [0.2, 0.9, 0.5]
    assert int(safe_open(str(result.kohya_path), "pt").metadata()["ss_steps"]) == chosen
    from tools.training.report import BEST_COLOUR, SCORE_COLOUR

    colours = set(Image.open(result.loss_curve).convert("RGB").getdata())
    assert SCORE_COLOUR in colours and (BEST_COLOUR in colours) == select  # scores drawn, the chosen one ringed


def test_validation_images_are_drawn_as_the_rounds_draw_the_loras_images(profile, shapes, tmp_path):
    """A checkpoint is judged on the picture the round will generate with its LoRA: same prompt, seed, steps,
    guidance (``validation_guidance_scale``; 0 would mean diffusers' default 5) and negative prompt."""
    from tools.generation.local import generate_local
    from tools.generation.sampling import SamplingSpec

    negative = "green background, photo"
    config = quick(profile, steps=2, checkpoint_every=2, validation_images=1, validation_guidance_scale=7.0,
                   validation_inference_steps=6, save_precision="fp32", validation_prompt="aldarkose, blue chapan",
                   validation_negative_prompt=negative)
    result = train_lora(config, profile, shapes, tmp_path / "run", quiet=True)
    validation = np.asarray(Image.open(result.validation_images[-1]).convert("RGB"), dtype=np.float32)

    def drawn(guidance: float, negative_prompt: str = negative) -> np.ndarray:
        sampling = SamplingSpec(seed=config.seed, steps=6, guidance=guidance, negative_prompt=negative_prompt)
        image = generate_local(profile, [config.validation_prompt], tmp_path / f"g{guidance}{bool(negative_prompt)}",
                               sampling, lora_path=result.lora_path, quiet=True)[0]
        return np.asarray(Image.open(image.path).convert("RGB"), dtype=np.float32)

    assert np.abs(drawn(7.0) - validation).mean() < 1.0  # the same picture (measured: identical)
    assert np.abs(drawn(5.0) - validation).mean() > 3.0  # another guidance draws another picture
    assert np.abs(drawn(7.0, negative_prompt="") - validation).mean() > 3.0  # so does no negative prompt
    assert config.replace(validation_guidance_scale=0.0).effective_validation_guidance_scale == 5.0
    # aldar run and aldar train fill in only what was left unset: the images' guidance and negative prompt.
    unset = config.replace(validation_guidance_scale=0.0, validation_negative_prompt="")
    filled = unset.judged_as_drawn(SamplingSpec(guidance=6.0, negative_prompt="photo"))
    assert (filled.validation_guidance_scale, filled.validation_negative_prompt) == (6.0, "photo")
    kept = config.judged_as_drawn(SamplingSpec(guidance=6.0, negative_prompt="photo"))
    assert (kept.validation_guidance_scale, kept.validation_negative_prompt) == (7.0, negative)
    with pytest.raises(ConfigError, match="validation_guidance_scale is -1"):
        config.replace(validation_guidance_scale=-1.0).validate()
