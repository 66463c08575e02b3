"""LoRA trainer on the tiny profile (CPU, offline): learning, files, resume, interrupts, divergence, caching."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tools.errors import ConfigError, InputError, TrainingError
from tools.training.lora_files import DIFFUSERS_WEIGHTS, load_checkpoint
from tools.models import load_sdxl_pipeline, load_toy_world_pipeline
from tools.training import losses, trainer
from tools.training.data import clear_latent_cache
from tools.training.losses import evaluation_loss
from tools.training.trainer import default_train_config, train_lora




@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> list[tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("refs")
    rng = np.random.default_rng(0)
    pairs = []
    for index, size in enumerate([(96, 80), (80, 80), (72, 100)]):  # (width, height): non-square on purpose
        pixels = np.full((size[1], size[0], 3), 40 * index, np.uint8)
        pixels[..., index] = 220
        pixels[16:56, 20:60] = rng.integers(0, 255, (40, 40, 3))
        path = folder / f"aldar{index + 1}.png"
        Image.fromarray(pixels).save(path)
        pairs.append((path, f"aldarkose, picture {index + 1}"))
    return pairs


class StopAfter(threading.Event):
    """A stop event that reads as set once ``steps`` training steps have run (checked once per step)."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps, self.checks = steps, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > self.steps


def fresh_pipeline(profile):
    """A new copy of the tiny profile's models (the toy world's), not the cached one the trainer uses."""
    pipe = load_toy_world_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe) -> np.ndarray:
    image = pipe("aldarkose, portrait", height=64, width=64, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    return np.asarray(image)


@pytest.fixture(scope="module")
def trained(profile, dataset, tmp_path_factory):
    """One full tiny run (30 steps, flips on, alpha = rank/2), with VAE encodes counted."""
    clear_latent_cache()
    pipe = load_sdxl_pipeline(profile)
    before = evaluation_loss(fresh_pipeline(profile), profile, dataset, 64)
    pristine = render(fresh_pipeline(profile))
    clear_latent_cache()
    calls = []
    original = pipe.vae.encode
    pipe.vae.encode = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    # alpha = rank/2 halves each update: double the learning rate to keep the tiny defaults' pace.
    defaults = default_train_config(profile)
    config = defaults.replace(alpha=4.0, learning_rate=2 * defaults.learning_rate, steps=30, checkpoint_every=10,
                              flip_augmentation=True, validation_images=1)
    try:
        result = train_lora(config, profile, dataset, tmp_path_factory.mktemp("run") / "run", quiet=True)
    finally:
        del pipe.vae.encode
    return dict(result=result, config=config, before=before, encodes=len(calls), pristine=pristine)


def test_training_lowers_the_denoising_loss_on_the_training_images(trained, profile, dataset):
    pipe = fresh_pipeline(profile)
    pipe.load_lora_weights(str(trained["result"].lora_path))
    after = evaluation_loss(pipe, profile, dataset, 64)
    assert after < trained["before"] * 0.97, (trained["before"], after)


def test_diffusers_lora_loads_into_a_fresh_pipeline_with_the_true_alpha(trained, profile):
    pipe = fresh_pipeline(profile)
    pipe.load_lora_weights(str(trained["result"].lora_path), adapter_name="aldar")
    layer = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert layer.scaling["aldar"] == pytest.approx(4.0 / 8)
    assert np.abs(render(pipe) - trained["pristine"]).max() > 1e-3


def test_kohya_file_has_true_alpha_metadata_and_matches_the_diffusers_file(trained, profile, dataset):
    from safetensors import safe_open

    result, config = trained["result"], trained["config"]
    with safe_open(str(result.kohya_path), "pt") as handle:
        keys, meta = list(handle.keys()), handle.metadata()
        alphas = [handle.get_tensor(k).item() for k in keys if k.endswith(".alpha")]
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert len(alphas) == len([k for k in keys if "lora_down" in k]) and set(alphas) == {4.0}
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "4"
    assert meta["ss_max_train_steps"] == "30" and meta["ss_learning_rate"] == f"{config.learning_rate:g}"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_output_name"] == config.output_name
    assert meta["aldar_trigger_token"] == "aldarkose" and meta["aldar_profile"] == "tiny" and "aldar_notice" in meta
    assert len(meta["ss_dataset_hash"]) == 64
    by_kohya, by_diffusers = fresh_pipeline(profile), fresh_pipeline(profile)
    by_kohya.load_lora_weights(str(result.kohya_path))
    by_diffusers.load_lora_weights(str(result.lora_path))
    assert np.allclose(render(by_kohya), render(by_diffusers), atol=1e-4)


def test_run_folder_holds_log_curve_checkpoints_and_validation_images(trained):
    result = trained["result"]
    rows = result.loss_log.read_text().splitlines()
    assert rows[0] == "step,loss,loss_ema,lr,elapsed_s,validation_loss" and len(rows) == 31
    assert [p.name for p in result.checkpoints] == ["checkpoint-000010", "checkpoint-000020", "checkpoint-000030"]
    with Image.open(result.loss_curve) as curve:
        assert curve.size == (800, 450)
        assert len(set(curve.convert("RGB").getdata())) > 3  # axes, grid and two lines were drawn
    assert [p.name for p in result.validation_images] == [f"step-0000{n}0-seed-42.png" for n in (1, 2, 3)]
    assert all(Image.open(p).size == (64, 64) for p in result.validation_images)
    summary = json.loads((result.run_dir / "training_summary.json").read_text())
    assert summary["profile"] == "tiny" and "notice" in summary and summary["steps"] == 30
    assert result.final_loss is not None and not result.interrupted
    assert not list(result.run_dir.glob(".*tmp*")) and not list(result.run_dir.glob(".checkpoint*"))


def test_latents_are_encoded_once_per_image_and_flip(trained):
    assert trained["encodes"] == 3 * 2  # 30 steps x batch 2 would be 60 without the cache


def test_shared_unet_is_left_clean_for_the_generator(trained, profile):
    pipe = load_sdxl_pipeline(profile)
    assert not getattr(pipe.unet, "peft_config", None)
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    assert "forward" not in pipe.unet.__dict__ and not pipe.unet.training
    assert np.allclose(render(pipe), trained["pristine"], atol=1e-5)


def test_interrupt_then_resume_matches_an_uninterrupted_run(profile, dataset, tmp_path):
    config = default_train_config(profile).replace(steps=6, checkpoint_every=3, validation_images=0,
                                                   lr_scheduler="linear", lr_warmup_steps=2)
    train_lora(config, profile, dataset, tmp_path / "straight", quiet=True)
    stopped = train_lora(config, profile, dataset, tmp_path / "resumed", quiet=True, stop=StopAfter(2))
    assert stopped.interrupted and stopped.steps == 2 and stopped.lora_path is None
    assert [p.name for p in stopped.checkpoints] == ["checkpoint-000002"]
    assert not (tmp_path / "resumed" / DIFFUSERS_WEIGHTS).exists()  # no final LoRA from an interrupted run
    fresh_pipeline(profile).load_lora_weights(str(stopped.checkpoints[0]))  # each checkpoint loads
    resumed = train_lora(config, profile, dataset, tmp_path / "resumed", quiet=True)
    assert resumed.steps == 6 and not resumed.interrupted
    lora_a, state_a = load_checkpoint(tmp_path / "straight" / "checkpoint-000006")
    lora_b, state_b = load_checkpoint(tmp_path / "resumed" / "checkpoint-000006")
    assert state_a["lr_scheduler"]["last_epoch"] == state_b["lr_scheduler"]["last_epoch"] == 6
    for slot_a, slot_b in zip(state_a["optimizer"]["state"].values(), state_b["optimizer"]["state"].values()):
        assert int(slot_a["step"]) == int(slot_b["step"]) == 6
        assert torch.allclose(slot_a["exp_avg"], slot_b["exp_avg"], atol=1e-6)
        assert torch.allclose(slot_a["exp_avg_sq"], slot_b["exp_avg_sq"], atol=1e-8)
    for key, value in lora_a["unet"].items():
        assert torch.allclose(value, lora_b["unet"][key], atol=1e-6), key
    assert len((tmp_path / "resumed" / "loss_log.csv").read_text().splitlines()) == 7


def test_ctrl_c_saves_a_checkpoint_and_returns_interrupted(profile, dataset, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = trainer.denoising_loss

    def interrupt_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "denoising_loss", interrupt_on_third)
    config = default_train_config(profile).replace(steps=5, validation_images=0)
    result = train_lora(config, profile, dataset, tmp_path / "run", quiet=True)
    assert result.interrupted and result.steps == 2
    assert [p.name for p in result.checkpoints] == ["checkpoint-000002"]
    assert not getattr(load_sdxl_pipeline(profile).unet, "peft_config", None)


def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(profile, dataset, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = trainer.denoising_loss

    def nan_from_fifth(*args, **kwargs):
        if not torch.is_grad_enabled():  # a checkpoint's validation loss, not a training step
            return real(*args, **kwargs)
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 5 else loss

    monkeypatch.setattr(trainer, "denoising_loss", nan_from_fifth)
    config = default_train_config(profile).replace(steps=8, checkpoint_every=2, validation_images=0)
    with pytest.raises(TrainingError, match="diverged.*step 5.*checkpoint-000004") as caught:
        train_lora(config, profile, dataset, tmp_path / "run", quiet=True)
    assert "--learning-rate" in caught.value.fix
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000004"]
    lora, state = load_checkpoint(tmp_path / "run" / "checkpoint-000004")
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in lora["unet"].values())
    assert not (tmp_path / "run" / DIFFUSERS_WEIGHTS).exists()
    assert not getattr(load_sdxl_pipeline(profile).unet, "peft_config", None)


def test_out_of_memory_names_the_settings_to_lower(profile, dataset, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "denoising_loss", out_of_memory)
    config = default_train_config(profile).replace(steps=3, batch_size=2, validation_images=0)
    with pytest.raises(TrainingError, match="out of GPU memory") as caught:
        train_lora(config, profile, dataset, tmp_path / "run", quiet=True)
    for hint in ("--batch-size 1", "--gradient-checkpointing", "--mixed-precision", "adamw8bit"):
        assert hint in caught.value.fix


@pytest.mark.parametrize("change, words", [
    ({"rank": 0}, "rank"), ({"learning_rate": -1e-4}, "learning_rate"), ({"resolution": 100}, "multiple of 8"),
    ({"alpha": float("nan")}, "alpha"), ({"lr_warmup_steps": 50, "steps": 10}, "warmup"),
    ({"optimizer": "sgd"}, "optimizer"), ({"mixed_precision": "fp16"}, "CUDA"), ({"optimizer": "adamw8bit"}, "CUDA"),
])
def test_bad_hyperparameters_are_rejected_before_any_work(profile, dataset, tmp_path, change, words):
    config = default_train_config(profile).replace(**change)
    with pytest.raises(ConfigError, match=words) as caught:
        train_lora(config, profile, dataset, tmp_path / "run", quiet=True)
    assert caught.value.fix and not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["run-dir", "parent"])
def test_run_dir_that_is_a_file_is_rejected_before_any_work(profile, dataset, tmp_path, monkeypatch, where):
    monkeypatch.setattr(trainer, "make_accelerator", lambda *a: pytest.fail("work started"))
    (tmp_path / "taken").write_text("a file")
    run_dir = tmp_path / "taken" if where == "run-dir" else tmp_path / "taken" / "run"
    with pytest.raises(InputError, match="is a file"):
        train_lora(default_train_config(profile), profile, dataset, run_dir, quiet=True)


def test_text_encoder_lora_under_bf16_is_exported_and_removed_afterwards(profile, dataset, tmp_path):
    from safetensors import safe_open

    pipe = load_sdxl_pipeline(profile)
    keys_before = [list(pipe.text_encoder.state_dict()), list(pipe.text_encoder_2.state_dict())]
    config = default_train_config(profile).replace(train_text_encoder=True, text_encoder_learning_rate=1e-2, steps=2,
                                                   checkpoint_every=2, validation_images=0, mixed_precision="bf16")
    result = train_lora(config, profile, dataset, tmp_path / "run", quiet=True)
    with safe_open(str(result.kohya_path), "pt") as handle:
        prefixes = {key.split("_")[1] for key in handle.keys()}
        assert handle.metadata()["ss_text_encoder_lr"] == "0.01"
    assert prefixes == {"unet", "te1", "te2"}
    _, state = load_checkpoint(result.checkpoints[-1])
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == [config.learning_rate, 1e-2, 1e-2]
    assert [list(pipe.text_encoder.state_dict()), list(pipe.text_encoder_2.state_dict())] == keys_before
    assert not hasattr(pipe.text_encoder, "peft_config") and not pipe.text_encoder.training
    for module in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):  # accelerate's autocast wrapper is gone
        assert "forward" not in module.__dict__ and "_original_forward" not in module.__dict__
    for path in (result.lora_path, result.kohya_path):  # both text encoders' parts load too, from both files
        fresh = fresh_pipeline(profile)
        fresh.load_lora_weights(str(path))
        assert any("lora" in key for key in fresh.text_encoder.state_dict()), path
        assert any("lora" in key for key in fresh.text_encoder_2.state_dict()), path


def test_text_encoder_lora_left_active_by_the_generator_is_off_while_unet_only_training(profile):
    """A previous round's LoRA with text-encoder layers must not shape the cached text embeddings."""
    from peft import LoraConfig, inject_adapter_in_model

    from tools.training.data import encode_prompts
    from tools.training.setup import lora_adapters

    pipe = fresh_pipeline(profile)

    def embeddings():
        return encode_prompts(["aldarkose, smiling"], [pipe.tokenizer, pipe.tokenizer_2],
                              [pipe.text_encoder, pipe.text_encoder_2], torch.device("cpu"))

    bare = embeddings()
    torch.manual_seed(0)
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):  # as load_lora_weights leaves them: active
        inject_adapter_in_model(LoraConfig(r=4, init_lora_weights=False, target_modules=["q_proj", "v_proj"]),
                                encoder, adapter_name="previous_round")
    with_lora = embeddings()
    assert not torch.allclose(with_lora[0], bare[0])
    with lora_adapters(pipe, default_train_config(profile).replace(train_text_encoder=False)):
        during = embeddings()
    assert all(torch.allclose(a, b) for a, b in zip(during, bare))
    assert all(torch.allclose(a, b) for a, b in zip(embeddings(), with_lora))  # switched back on afterwards


def test_latents_cached_on_disk_are_reused_by_a_new_process(profile, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("ALDAR_CACHE", str(tmp_path / "cache"))
    config = default_train_config(profile).replace(steps=1, checkpoint_every=0, validation_images=0,
                                                   cache_latents_to_disk=True, resolution=72)
    clear_latent_cache()
    train_lora(config, profile, dataset, tmp_path / "first", quiet=True)
    assert len(list((tmp_path / "cache" / "latents").glob("*.safetensors"))) == 3
    clear_latent_cache()  # as if a new process started
    pipe, calls = load_sdxl_pipeline(profile), []
    original = pipe.vae.encode
    pipe.vae.encode = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    try:
        train_lora(config, profile, dataset, tmp_path / "second", quiet=True)
    finally:
        del pipe.vae.encode
    assert calls == []


def test_crop_and_original_size_go_to_the_time_ids(dataset):
    from tools.training.data import bucket_batch, prepare_images

    image = prepare_images(dataset[:1], 64)[0]  # 96 x 80 (w x h) -> resized 77 x 64, centre crop 64 x 64
    assert image.pixels.shape == (3, 64, 64) and -1.0 <= float(image.pixels.min()) <= float(image.pixels.max()) <= 1.0
    assert image.time_ids(flipped=False).tolist() == [80, 96, 0, 6, 64, 64]
    assert image.time_ids(flipped=True).tolist() == [80, 96, 0, 7, 64, 64]  # the mirrored crop's left edge
    one_bucket = [(64, 64)] * 3
    epoch = bucket_batch(0, one_bucket, 3, seed=5) + bucket_batch(1, one_bucket, 3, seed=5)
    assert sorted(epoch[:3]) == sorted(epoch[3:]) == [0, 1, 2]  # every image once per epoch
    assert bucket_batch(1, one_bucket, 3, seed=5) == epoch[3:]  # a pure function of the position: exact resume


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_follow_kohyas_convention(prediction_type):
    # kohya's apply_snr_weight: min(SNR, gamma) / SNR on epsilon, min(SNR, gamma) / (SNR + 1) on v-prediction;
    # older diffusers examples clamped SNR + 1 on v-prediction, which differs where SNR + 1 > gamma > SNR.
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    timesteps = torch.tensor([0, 300, 600, 999])
    snr = (scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod))[timesteps]
    gamma = 5.0
    expected = torch.minimum(snr, torch.full_like(snr, gamma)) / (snr + 1 if prediction_type == "v_prediction" else snr)
    torch.testing.assert_close(losses.min_snr_weights(scheduler, timesteps, gamma), expected)
    if prediction_type == "v_prediction":
        older = torch.minimum(snr + 1, torch.full_like(snr, gamma)) / (snr + 1)
        assert not torch.allclose(older, expected)
