"""Local SDXL (+LoRA) generation on the tiny profile: determinism, LoRA swaps, LCM fast mode, PNG metadata."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.errors import InputError, ModelNotFoundError
from tools.generation.local import (LCM_NOT_APPLIED, check_lcm_available, generate_local, loaded_adapters,
                             quiet_lora_loading, resolve_lora_file)
from tools.generation.sampling import SamplingSpec
from tools.models import ModelProfile, load_sdxl_pipeline
from tools.generation.png_metadata import format_parameters, parse_parameters, read_generation_parameters

PROMPT = "aldarkose, smiling trickster in an orange robe"
FAST = SamplingSpec(steps=3)  # a few Euler steps keep each 64 px image well under a second




def write_random_lora(folder: Path, seed: int) -> Path:
    """A diffusers-format LoRA for the tiny profile's UNet with random (non-zero) A and B, so it changes the output."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from diffusers import UNet2DConditionModel

    from tools.models import toy_world_weights

    unet = UNet2DConditionModel.from_pretrained(toy_world_weights()["sdxl"] / "unet")  # the tiny profile's UNet
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    with torch.no_grad():  # gaussian init leaves B at zero (a no-op LoRA): make it count
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    StableDiffusionXLPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("loras")
    first, second = root / "run_a", root / "run_b"
    first.mkdir()
    second.mkdir()
    return write_random_lora(first, seed=1), write_random_lora(second, seed=2)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_same_seed_gives_identical_pixels_and_image_i_uses_seed_plus_i(tiny_profile, tmp_path):
    two = SamplingSpec(steps=3, images_per_prompt=2, seed=7)
    first = generate_local(tiny_profile, [PROMPT], tmp_path / "a", two, lora_path=None, name="base", quiet=True)
    again = generate_local(tiny_profile, [PROMPT], tmp_path / "b", two, lora_path=None, name="base", quiet=True)
    assert [g.seed for g in first] == [7, 8]
    assert all(g.path.is_file() and g.generator == "base" for g in first)
    assert np.array_equal(pixels(first[0].path), pixels(again[0].path))
    assert np.array_equal(pixels(first[1].path), pixels(again[1].path))
    assert not np.array_equal(pixels(first[0].path), pixels(first[1].path))
    with Image.open(first[0].path) as image:
        assert image.size == (64, 64)
    assert not list((tmp_path / "a").glob(".*.tmp"))  # atomic writes leave no temp files


def test_a_batch_spanning_prompts_keeps_each_images_prompt_seed_and_name(tiny_profile, tmp_path):
    """The prompt suite on tiny is drawn in one batch across its prompts (``suite_batch_size``): image ``i`` of
    prompt ``p`` still has its own prompt, seed ``seed + i`` and file name, and the pixels of the per-prompt batch
    (the same noise; only batched kernels' last bits may differ)."""
    from tools.generation.local import suite_batch_size

    two = SamplingSpec(steps=3, images_per_prompt=2, seed=7)
    prompts = [PROMPT, "aldarkose, in a forest"]
    assert suite_batch_size(tiny_profile, len(prompts), 2) == 4
    spanning = generate_local(tiny_profile, prompts, tmp_path / "all", two, lora_path=None, name="base", quiet=True,
                              batch_size=4)
    per_prompt = generate_local(tiny_profile, prompts, tmp_path / "each", two, lora_path=None, name="base",
                                quiet=True, batch_size=2)
    assert [(g.prompt, g.seed, g.path.name) for g in spanning] == [
        (PROMPT, 7, "base_p00_00_s7.png"), (PROMPT, 8, "base_p00_01_s8.png"),
        (prompts[1], 7, "base_p01_00_s7.png"), (prompts[1], 8, "base_p01_01_s8.png")]
    for one, other in zip(spanning, per_prompt):
        assert np.abs(pixels(one.path) - pixels(other.path)).max() <= 2
    assert not np.array_equal(pixels(spanning[0].path), pixels(spanning[2].path))  # the prompt reached its image


def test_png_parameters_round_trip(tiny_profile, tmp_path, loras):
    sampling = SamplingSpec(steps=3, seed=3, guidance=5.5, negative_prompt="blurry, photo")
    [image] = generate_local(tiny_profile, [PROMPT], tmp_path, sampling, lora_path=loras[0], lora_scale=0.8,
                             name="lora", quiet=True)
    read = read_generation_parameters(image.path)
    aldar = read.pop("aldar")
    assert read == {"prompt": PROMPT, "negative_prompt": "blurry, photo", "steps": 3, "sampler": "Euler",
                    "cfg_scale": 5.5, "seed": 3, "width": 64, "height": 64, "model": "toy-world-sdxl",
                    "lora_name": "lora", "lora_scale": 0.8}
    assert aldar["profile"] == "tiny" and "toy world" in aldar["notice"]
    assert aldar["lora_path"] == str(loras[0].resolve()) and aldar["seed"] == 3
    with Image.open(image.path) as png:
        text = png.text["parameters"]
    assert text.splitlines()[1] == "Negative prompt: blurry, photo"
    assert text.splitlines()[2].startswith("Steps: 3, Sampler: Euler, CFG scale: 5.5, Seed: 3, Size: 64x64, ")
    assert "Lora: lora:0.8" in text


def test_parameters_text_quotes_awkward_values_and_reads_a1111_files():
    params = {"prompt": "a, b\nsecond line", "negative_prompt": "", "steps": 4, "sampler": "LCM", "cfg_scale": 1.0,
              "seed": 0, "width": 64, "height": 64, "model": 'C:\\models\\x, "y".safetensors',
              "lora_name": "run_2", "lora_scale": 1.25}
    assert parse_parameters(format_parameters(params)) == params
    a1111 = ("masterpiece, aldar\nNegative prompt: ugly\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, "
             'CFG scale: 7, Seed: 1234, Size: 832x1216, Model hash: abc, Lora hashes: "x: 1a2b, y: 3c4d"')
    parsed = parse_parameters(a1111)
    assert parsed["prompt"] == "masterpiece, aldar" and parsed["negative_prompt"] == "ugly"
    assert (parsed["steps"], parsed["seed"], parsed["width"], parsed["height"]) == (20, 1234, 832, 1216)
    assert parsed["schedule_type"] == "Karras" and parsed["lora_hashes"] == "x: 1a2b, y: 3c4d"


def test_lora_scale_changes_image_and_swaps_reuse_loaded_adapters(tiny_profile, tmp_path, loras):
    pipe = load_sdxl_pipeline(tiny_profile)
    registry = loaded_adapters(pipe)
    loads_before = registry.loads
    new_files = {str(lora.resolve()) for lora in loras} - {path for path, _, _ in registry.by_file}
    run = lambda lora, scale, sub: generate_local(tiny_profile, [PROMPT], tmp_path / sub,  # noqa: E731
                                                  SamplingSpec(steps=3, seed=11), lora_path=lora, lora_scale=scale,
                                                  quiet=True)[0].path
    full, half = run(loras[0].parent, 1.0, "full"), run(loras[0], 0.5, "half")
    zero, base = run(loras[0], 0.0, "zero"), run(None, 1.0, "base")
    other, full_again = run(loras[1], 1.0, "other"), run(loras[0], 1.0, "full_again")

    assert not np.array_equal(pixels(full), pixels(half))
    assert not np.array_equal(pixels(full), pixels(other))
    assert np.array_equal(pixels(zero), pixels(base))  # scale 0 = the base model
    assert np.array_equal(pixels(full), pixels(full_again))  # swapping back restores exactly
    assert load_sdxl_pipeline(tiny_profile) is pipe  # never reloaded
    assert registry.loads - loads_before == len(new_files)  # each file read once, however often it was used
    # a retrained LoRA at the same path (new mtime) is read again, and the stale adapter is dropped
    stat = loras[1].stat()
    os.utime(loras[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    run(loras[1], 1.0, "retrained")
    assert registry.loads - loads_before == len(new_files) + 1
    assert len(registry.by_file) == len(set(pipe.get_list_adapters()["unet"]))


def test_only_the_newest_loras_stay_loaded(tiny_profile, tmp_path, loras, monkeypatch):
    import tools.generation.local as generator

    monkeypatch.setattr(generator, "MAX_LOADED_LORAS", 2)
    pipe = load_sdxl_pipeline(tiny_profile)
    copies = []
    for index in range(3):
        (tmp_path / f"round_{index}").mkdir()
        copies.append(tmp_path / f"round_{index}" / "pytorch_lora_weights.safetensors")
        copies[-1].write_bytes(loras[index % 2].read_bytes())
        generator.activate_lora(pipe, copies[-1].resolve(), 1.0)
    held = {path for path, _, _ in loaded_adapters(pipe).by_file}
    assert str(copies[0].resolve()) not in held and {str(c.resolve()) for c in copies[1:]} <= held
    assert len(held) <= 2
    assert set(loaded_adapters(pipe).by_file.values()) == set(pipe.get_list_adapters()["unet"])


def test_base_disables_an_adapter_someone_else_added_to_the_shared_unet(tiny_profile, tmp_path):
    """The trainer adds its adapter to the cached pipeline's UNet; "base" must not draw with it."""
    import torch
    from peft import LoraConfig

    before = generate_local(tiny_profile, [PROMPT], tmp_path / "before", FAST, lora_path=None, name="base",
                            quiet=True)[0]
    pipe = load_sdxl_pipeline(tiny_profile)
    with quiet_lora_loading():
        pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                         target_modules=["to_k", "to_q", "to_v"]), adapter_name="trainer_run")
    try:
        with torch.no_grad():
            for name, param in pipe.unet.named_parameters():
                if "lora_B.trainer_run" in name:
                    param.normal_(std=0.5)
        pipe.unet.set_adapters(["trainer_run"])
        after = generate_local(tiny_profile, [PROMPT], tmp_path / "after", FAST, lora_path=None, name="base",
                               quiet=True)[0]
    finally:
        with quiet_lora_loading():
            pipe.delete_adapters("trainer_run")
    assert np.array_equal(pixels(before.path), pixels(after.path))


def test_a_lora_of_another_shape_is_refused_and_the_pipeline_still_works(tiny_profile, tmp_path, loras):
    from safetensors.torch import load_file, save_file

    weights = load_file(loras[0])
    key = next(k for k in weights if "lora.down" in k or "lora_A" in k)
    weights[key] = weights[key].new_zeros(weights[key].shape[0], weights[key].shape[1] + 8)  # wrong base width
    (tmp_path / "wrong").mkdir()
    save_file(weights, tmp_path / "wrong" / "pytorch_lora_weights.safetensors")
    with pytest.raises(InputError, match="does not fit this base model"):
        generate_local(tiny_profile, [PROMPT], tmp_path / "x", FAST, lora_path=tmp_path / "wrong", quiet=True)
    [image] = generate_local(tiny_profile, [PROMPT], tmp_path / "ok", FAST, lora_path=loras[0], quiet=True)
    assert image.path.is_file()


def test_lcm_fast_mode_runs_four_steps_and_restores_the_scheduler(tiny_profile, tmp_path):
    pipe = load_sdxl_pipeline(tiny_profile)
    standard = pipe.scheduler
    unet_calls = []
    hook = pipe.unet.register_forward_hook(lambda *args: unet_calls.append(1))
    try:
        [image] = generate_local(tiny_profile, [PROMPT], tmp_path, SamplingSpec(steps=30, guidance=7.0, use_lcm=True),
                                 lora_path=None, name="base", quiet=True)
    finally:
        hook.remove()
    assert len(unet_calls) == 4  # 4 steps, guidance 1 → no classifier-free doubling
    meta = image.metadata
    assert (meta["steps"], meta["sampler"], meta["cfg_scale"]) == (4, "LCM", 1.0)
    assert meta["lcm_lora"] == LCM_NOT_APPLIED
    assert pipe.scheduler is standard and type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"


def test_fast_mode_applies_a_local_lcm_lora_beside_the_character_lora(tiny_profile, tmp_path, loras):
    """No real LCM-LoRA fits the tiny UNet, so a random one stands in for it: both adapters must be active."""
    pipe = load_sdxl_pipeline(tiny_profile)
    common = dict(lora_path=loras[0], lora_scale=0.7, quiet=True)
    fast = SamplingSpec(use_lcm=True, steps=6, guidance=1.5)
    with_lcm_lora = SamplingSpec(use_lcm=True, steps=6, guidance=1.5, lcm_lora=str(loras[1].parent))
    without = generate_local(tiny_profile, [PROMPT], tmp_path / "without", fast, **common)[0]
    [image] = generate_local(tiny_profile, [PROMPT], tmp_path / "with", with_lcm_lora, **common)
    assert without.metadata["lcm_lora"] == LCM_NOT_APPLIED
    assert image.metadata["lcm_lora"] == str(loras[1].parent)
    assert (image.metadata["steps"], image.metadata["cfg_scale"], image.metadata["sampler"]) == (6, 1.5, "LCM")
    active = pipe.get_active_adapters()
    assert len(active) == 2 and any(name.startswith("lcm_") for name in active)
    assert not np.array_equal(pixels(without.path), pixels(image.path))
    again = generate_local(tiny_profile, [PROMPT], tmp_path / "again", with_lcm_lora, **common)[0]
    assert np.array_equal(pixels(image.path), pixels(again.path))  # LCM adapter reused, same picture


def test_fast_mode_on_sdxl_without_the_lcm_lora_names_the_fix():
    profile = ModelProfile("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "clip", "cpu", "fp32")
    with pytest.raises(ModelNotFoundError) as error:
        check_lcm_available(profile, "latent-consistency/lcm-lora-sdxl")
    assert "hf download latent-consistency/lcm-lora-sdxl" in str(error.value)
    assert "use_lcm = false" in str(error.value)


def test_bad_inputs_fail_before_any_work(tiny_profile, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        generate_local(tiny_profile, [PROMPT], tmp_path, lora_path=tmp_path / "nope.safetensors", quiet=True)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(InputError, match="has no pytorch_lora_weights"):
        resolve_lora_file(tmp_path / "empty_run")
    with pytest.raises(InputError, match="non-empty prompt"):
        generate_local(tiny_profile, ["  "], tmp_path, lora_path=None, quiet=True)
    with pytest.raises(InputError, match="images_per_prompt"):
        SamplingSpec(images_per_prompt=0)
    with pytest.raises(InputError, match="LoRA scale 5 is out of range"):
        generate_local(tiny_profile, [PROMPT], tmp_path, lora_path=None, lora_scale=5.0, quiet=True)
    assert not list(tmp_path.glob("*.png"))
