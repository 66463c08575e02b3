"""LoRA files the trainer writes: diffusers format, kohya/A1111/ComfyUI format, and resumable checkpoints.

Every file lands by rename (temp file or temp folder first), so a crash or Ctrl-C never leaves a
half-written LoRA that a loader would accept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tools.atomic import atomic_write, atomic_write_json, staging_dir
from tools.errors import TrainingError

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
ADAPTER_WEIGHTS = "adapter_weights.safetensors"  # raw PEFT keys, for resuming
TRAINING_STATE = "training_state.pt"
CHECKPOINT_PREFIX = "checkpoint-"
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def save_diffusers_lora(path: Path, state_dicts: dict[str, dict[str, torch.Tensor]],
                        lora_configs: dict[str, dict]) -> Path:
    """``StableDiffusionXLPipeline.save_lora_weights`` into a temp folder, then rename the file into place.

    The LoRA config travels in the file's metadata, so ``load_lora_weights`` restores the true alpha.
    """
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    kwargs: dict[str, Any] = {}
    for component, state in state_dicts.items():
        kwargs[f"{component}_lora_layers"] = convert_state_dict_to_diffusers(state)
        kwargs[f"{component}_lora_adapter_metadata"] = lora_configs[component]
    staging = staging_dir(path)
    try:
        StableDiffusionXLPipeline.save_lora_weights(staging, weight_name=path.name, safe_serialization=True, **kwargs)
        _fsync(staging / path.name)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def kohya_state_dict(state_dicts: dict[str, dict[str, torch.Tensor]], alpha: float) -> dict[str, torch.Tensor]:
    """PEFT state dicts -> kohya keys (``lora_unet_*``, ``lora_te1_*``, ``lora_te2_*``) with the TRUE alpha.

    diffusers' ``convert_state_dict_to_kohya`` writes each ``.alpha`` as the rank, which is only right
    when alpha == rank; A1111 and ComfyUI scale by alpha/rank, so the real value is written here.
    """
    from diffusers.utils import convert_state_dict_to_kohya

    prefixed = {f"{component}.{key}": value for component, state in state_dicts.items() for key, value in state.items()}
    converted = convert_state_dict_to_kohya(prefixed)
    for key in converted:
        if key.endswith(".alpha"):
            converted[key] = torch.tensor(float(alpha), dtype=torch.float32)
    return {key: value.contiguous() for key, value in converted.items()}


def save_kohya_lora(path: Path, state_dicts: dict[str, dict[str, torch.Tensor]], alpha: float,
                    metadata: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    tensors = kohya_state_dict(state_dicts, alpha)
    text_metadata = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=text_metadata))


def kohya_metadata(config, profile, *, steps: int, dataset_hash: str, num_images: int, started_at: str,
                   finished_at: str) -> dict[str, str]:
    """kohya ``ss_*`` keys (what A1111/ComfyUI metadata viewers read) plus aldar's own keys."""
    info = profile.describe()
    meta = {
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_sd_model_name": profile.base_model,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": f"{config.alpha:g}",
        "ss_max_train_steps": str(config.steps),
        "ss_steps": str(steps),
        "ss_learning_rate": f"{config.learning_rate:g}",
        "ss_unet_lr": f"{config.learning_rate:g}",
        "ss_text_encoder_lr": f"{config.effective_text_encoder_learning_rate:g}" if config.train_text_encoder else "0",
        "ss_network_train_unet_only": str(not config.train_text_encoder),
        "ss_output_name": config.output_name,
        "ss_resolution": f"({config.resolution}, {config.resolution})",
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_optimizer": config.optimizer,
        "ss_min_snr_gamma": f"{config.snr_gamma:g}",
        "ss_noise_offset": f"{config.noise_offset:g}",
        "ss_mixed_precision": config.mixed_precision,
        "ss_gradient_checkpointing": str(config.gradient_checkpointing),
        "ss_flip_aug": str(config.flip_augmentation),
        "ss_seed": str(config.seed),
        "ss_num_train_images": str(num_images),
        "ss_training_started_at": started_at,
        "ss_training_finished_at": finished_at,
        "ss_tag_frequency": json.dumps({config.output_name: {config.trigger_token: num_images}}),
        "ss_dataset_hash": dataset_hash,
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.title": config.output_name,
        "aldar_trigger_token": config.trigger_token,
        "aldar_dataset_sha256": dataset_hash,
        "aldar_profile": info["profile"],
        "aldar_profile_info": json.dumps(info),
    }
    if "notice" in info:
        meta["aldar_notice"] = info["notice"]
    return meta


# --------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints (folders appear only by rename), oldest first."""
    found = [p for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and (p / TRAINING_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, step: int, state_dicts: dict[str, dict[str, torch.Tensor]],
                    lora_configs: dict[str, dict], training_state: dict[str, Any], keep: int,
                    made_with: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoint-<step>/`` (LoRA in diffusers and PEFT form + optimizer/scheduler/RNG state) by rename."""
    from safetensors.torch import save_file

    for state in state_dicts.values():
        if not all(torch.isfinite(t).all() for t in state.values()):
            raise TrainingError(f"the LoRA weights hold NaN/inf at step {step}; no checkpoint was written",
                                "lower --learning-rate or use --mixed-precision bf16; resume from the last checkpoint")
    target = Path(run_dir) / f"{CHECKPOINT_PREFIX}{step:06d}"
    staging = staging_dir(target)
    try:
        save_diffusers_lora(staging / DIFFUSERS_WEIGHTS, state_dicts, lora_configs)
        flat = {f"{c}.{k}": v.detach().cpu().contiguous() for c, s in state_dicts.items() for k, v in s.items()}
        atomic_write(staging / ADAPTER_WEIGHTS, lambda tmp: save_file(flat, str(tmp)))
        atomic_write(staging / TRAINING_STATE, lambda tmp: torch.save(training_state, tmp))
        atomic_write_json(staging / "checkpoint.json", {**(made_with or {}), "step": step, "lora_configs": lora_configs})
        if target.exists():  # same step saved again (e.g. interrupted right after a resume)
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if keep > 0:
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(PEFT state dicts per component, training state) of a checkpoint folder."""
    from safetensors.torch import load_file

    flat = load_file(str(Path(path) / ADAPTER_WEIGHTS))
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        component, _, rest = key.partition(".")
        state_dicts.setdefault(component, {})[rest] = value
    training_state = torch.load(Path(path) / TRAINING_STATE, map_location="cpu", weights_only=False)
    return state_dicts, training_state


def capture_rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [x.tolist() if hasattr(x, "tolist") else x for x in np.random.get_state()]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
