"""LoRA files the trainer writes: diffusers format, kohya/A1111/ComfyUI format, and resumable checkpoints.

Every file lands by rename (temp file or temp folder first), so a crash or Ctrl-C never leaves a
half-written LoRA that a loader would accept.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tools.atomic import atomic_write, atomic_write_json, current_umask, staging_dir, writing
from tools.errors import TrainingError
from tools.training.data import caption_tags

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
ADAPTER_WEIGHTS = "adapter_weights.safetensors"  # raw PEFT keys, for resuming
TRAINING_STATE = "training_state.pt"
CHECKPOINT_PREFIX = "checkpoint-"
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


MAGNITUDE = ".lora_magnitude_vector"  # PEFT's DoRA magnitude (one per output feature)
KOHYA_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
SAVE_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_TEXT_ENCODER_TOP = ("text_model.", "text_projection.")
# LyCORIS weight names as peft, kohya's LyCORIS, ComfyUI and A1111 spell them (the part after the module path).
LYCORIS_MARKERS = {"lokr": ".lokr_", "loha": ".hada_"}


def adapter_kind(state_dicts: dict[str, dict[str, torch.Tensor]]) -> str:
    """``lora``, ``lokr`` or ``loha``: which adapter these PEFT state dicts hold (read from their key names)."""
    keys = [key for state in state_dicts.values() for key in state]
    for kind, marker in LYCORIS_MARKERS.items():
        if any(marker in key for key in keys):
            return kind
    return "lora"


def standard_layout(state_dicts: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT state dicts with text-encoder keys as every LoRA loader names them: ``text_model.encoder.layers.N…``.

    transformers 5 dropped ``CLIPTextModel``'s ``text_model`` child (its modules sit at the top), so PEFT
    names CLIP-L's modules ``encoder.layers.N…`` there; kohya, A1111, ComfyUI and older diffusers only know
    the original checkpoints' names and would silently skip the whole first text encoder. UNet keys pass as-is.
    """
    return {component: state if component == "unet" else
            {key if key.startswith(_TEXT_ENCODER_TOP) else "text_model." + key: value for key, value in state.items()}
            for component, state in state_dicts.items()}


def in_precision(state_dicts: dict[str, dict[str, torch.Tensor]], precision: str) -> dict[str, dict[str, torch.Tensor]]:
    """The weights cast to the ``--save-precision`` dtype (kohya's ``--save_precision``), on the CPU."""
    dtype = SAVE_PRECISIONS[precision]
    return {component: {key: value.detach().to("cpu", dtype) for key, value in state.items()}
            for component, state in state_dicts.items()}


def export_lora(lora_path: Path, kohya_path: Path, state_dicts: dict[str, dict[str, torch.Tensor]],
                lora_configs: dict[str, dict], alpha: float, metadata: dict[str, Any], precision: str = "fp16") -> None:
    """The two files a finished run hands to users: diffusers (``load_lora_weights``) and kohya (A1111/ComfyUI)."""
    weights = in_precision(standard_layout(state_dicts), precision)
    save_diffusers_lora(lora_path, weights, lora_configs)
    save_kohya_lora(kohya_path, weights, alpha, metadata, lora_configs)


def save_diffusers_lora(path: Path, state_dicts: dict[str, dict[str, torch.Tensor]],
                        lora_configs: dict[str, dict]) -> Path:
    """``StableDiffusionXLPipeline.save_lora_weights`` into a temp folder, then rename the file into place.

    The LoRA config travels in the file's metadata, so ``load_lora_weights`` restores the true alpha.
    """
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    kwargs: dict[str, Any] = {}
    lycoris = adapter_kind(state_dicts) != "lora"  # LoKr/LoHa keep peft's names, which diffusers' LoKr loader reads
    for component, state in standard_layout(state_dicts).items():
        kwargs[f"{component}_lora_layers"] = state if lycoris else convert_state_dict_to_diffusers(state)
        kwargs[f"{component}_lora_adapter_metadata"] = lora_configs[component]
    staging = staging_dir(path)
    try:
        with writing(path):
            StableDiffusionXLPipeline.save_lora_weights(staging, weight_name=path.name, safe_serialization=True,
                                                        **kwargs)
            _fsync(staging / path.name)
            os.chmod(staging / path.name, 0o666 & ~current_umask())  # safetensors writes 0600
            os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def kohya_state_dict(state_dicts: dict[str, dict[str, torch.Tensor]], alpha: float) -> dict[str, torch.Tensor]:
    """PEFT state dicts -> kohya keys (``lora_unet_*``, ``lora_te1_text_model_*``, ``lora_te2_text_model_*``)
    with the TRUE alpha.

    diffusers' ``convert_state_dict_to_kohya`` writes each ``.alpha`` as the rank, which is only right
    when alpha == rank; A1111 and ComfyUI scale by alpha/rank, so the real value is written here.
    """
    from diffusers.utils import convert_state_dict_to_kohya

    prefixed = {f"{component}.{key}": value
                for component, state in standard_layout(state_dicts).items() for key, value in state.items()}
    magnitudes = {key: prefixed.pop(key) for key in [k for k in prefixed if k.endswith(MAGNITUDE)]}
    converted = convert_state_dict_to_kohya(prefixed)
    for key in converted:
        if key.endswith(".alpha"):
            converted[key] = torch.tensor(float(alpha), dtype=torch.float32)
    for key, magnitude in magnitudes.items():  # DoRA: LyCORIS' dora_scale, one norm per output row
        component, _, module = key[:-len(MAGNITUDE)].partition(".")
        converted[f"{KOHYA_PREFIXES[component]}_{module.replace('.', '_')}.dora_scale"] = magnitude.reshape(-1, 1)
    return {key: value.contiguous() for key, value in converted.items()}


def lycoris_state_dict(state_dicts: dict[str, dict[str, torch.Tensor]], alpha: float,
                       ranks: dict[str, int]) -> dict[str, torch.Tensor]:
    """PEFT LoKr/LoHa state dicts -> the LyCORIS layout kohya, ComfyUI and A1111 load: ``lora_unet_<module>.lokr_w1``,
    ``….lokr_w2`` (or ``lokr_w2_a``/``lokr_w2_b``), ``….hada_w1_a`` … ``hada_w2_b``, and ``….alpha`` per module.

    Loaders scale by alpha / (the rank read off a low-rank factor), as peft does (alpha / r) — except a LoKr module
    whose factors are both full matrices, which loaders apply unscaled: there peft's alpha/r is folded into
    ``lokr_w1`` (exact when alpha/r is a power of two, as at the defaults).
    """
    out: dict[str, torch.Tensor] = {}
    for component, state in standard_layout(state_dicts).items():
        rank = ranks[component]
        modules: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            marker = next(m for m in LYCORIS_MARKERS.values() if m in key)
            module, _, part = key.rpartition(marker)
            modules.setdefault(module, {})[marker[1:] + part] = value
        for module, parts in modules.items():
            name = f"{KOHYA_PREFIXES[component]}_{module.replace('.', '_')}"
            if "lokr_w1" in parts and "lokr_w2" in parts:  # no low-rank factor: loaders apply it unscaled
                parts = {**parts, "lokr_w1": (parts["lokr_w1"].float() * (alpha / rank)).to(parts["lokr_w1"].dtype)}
            for part, value in parts.items():
                out[f"{name}.{part}"] = value.contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out


def save_kohya_lora(path: Path, state_dicts: dict[str, dict[str, torch.Tensor]], alpha: float,
                    metadata: dict[str, Any], lora_configs: dict[str, dict] | None = None) -> Path:
    """The kohya file, its metadata completed with the hashes kohya precomputes (``sshs_*``); LoKr/LoHa in the
    LyCORIS layout."""
    from safetensors.torch import save_file

    if adapter_kind(state_dicts) == "lora":
        tensors = kohya_state_dict(state_dicts, alpha)
    else:
        ranks = {component: int((lora_configs or {}).get(component, {}).get("r", 0)) for component in state_dicts}
        tensors = lycoris_state_dict(state_dicts, alpha, ranks)
    text_metadata = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    text_metadata.update(safetensors_hashes(tensors, text_metadata))
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=text_metadata))


def safetensors_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """``sshs_model_hash`` / ``sshs_legacy_hash`` as kohya precomputes them (sd-webui-additional-networks reads them).

    Both are taken over the file as serialised with only its ``ss_*`` metadata, so that later user metadata
    edits do not change them: the model hash is the sha256 of the tensor bytes after the header (the same in
    the final file, so anyone can recompute it), the legacy hash the first 8 hex digits of the sha256 of the
    64 KiB at offset 1 MiB.
    """
    from safetensors.torch import save

    blob = save(tensors, metadata={key: value for key, value in metadata.items() if key.startswith("ss_")})
    header_length = int.from_bytes(blob[:8], "little")
    return {"sshs_model_hash": hashlib.sha256(blob[8 + header_length:]).hexdigest(),
            "sshs_legacy_hash": hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]}


def kohya_metadata(config, profile, *, steps: int, epochs: tuple[int, int], dataset_hash: str, captions: list[str],
                   dataset_dir: str, started_at: float, finished_at: float, prediction_type: str, optimizer: str,
                   buckets: dict[str, int] | None = None) -> dict[str, str]:
    """kohya ``ss_*`` keys and the SAI model spec (what A1111, ComfyUI and Civitai read) plus aldar's own keys.

    Every value is a string, typed as the readers parse it: timestamps are epoch seconds (A1111's metadata
    editor calls ``float()`` on them), JSON where kohya writes JSON, ``str(int)`` for counts.
    """
    info = profile.describe()
    # Prodigy runs at lr 1.0 (text encoders at their ratio to the UNet): the rates the optimizer really had.
    scale = 1.0 / config.learning_rate if config.optimizer == "prodigy" else 1.0
    unet_lr, text_lr = config.learning_rate * scale, config.effective_text_encoder_learning_rate * scale
    frequency: dict[str, int] = {}
    for caption in captions:
        for tag in caption_tags(caption):
            frequency[tag] = frequency.get(tag, 0) + 1
    resolution = f"{config.resolution}x{config.resolution}"
    meta = {
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_sd_model_name": profile.base_model,
        "ss_network_module": "networks.lora" if config.adapter == "lora" else "lycoris.kohya",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": f"{config.alpha:g}",
        "ss_network_args": json.dumps({"dora": "True"} if config.use_dora else
                                      {"algo": config.adapter} if config.adapter != "lora" else {}),
        "ss_max_train_steps": str(config.steps),
        "ss_steps": str(steps),
        "ss_epoch": str(epochs[0]),  # epochs done, of
        "ss_num_epochs": str(epochs[1]),  # the epochs planned
        "ss_learning_rate": f"{unet_lr:g}",
        "ss_unet_lr": f"{unet_lr:g}",
        "ss_text_encoder_lr": f"{text_lr:g}" if config.train_text_encoder else "0",
        "ss_network_train_unet_only": str(not config.train_text_encoder),
        "ss_output_name": config.output_name,
        "ss_resolution": f"({config.resolution}, {config.resolution})",
        "ss_enable_bucket": str(config.bucketing),
        "ss_bucket_info": json.dumps({"buckets": buckets or {}}),
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_optimizer": optimizer,
        "ss_min_snr_gamma": f"{config.snr_gamma:g}",
        "ss_noise_offset": f"{config.noise_offset:g}",
        "ss_mixed_precision": config.mixed_precision,
        "ss_save_precision": config.save_precision,
        "ss_gradient_checkpointing": str(config.gradient_checkpointing),
        "ss_flip_aug": str(config.flip_augmentation),
        "ss_caption_dropout_rate": f"{config.caption_dropout:g}",
        "ss_masked_loss": str(config.masked_loss),
        "ss_prior_loss_weight": f"{config.prior_loss_weight:g}" if config.prior_preservation else "0",
        "ss_shuffle_caption": str(config.shuffle_caption_tags),
        "ss_keep_tokens": str(config.keep_tokens),
        "ss_clip_skip": "2",  # SDXL conditions on the penultimate layer of both encoders (A1111's clip skip 2)
        "ss_seed": str(config.seed),
        "ss_num_train_images": str(len(captions)),
        "ss_training_started_at": repr(float(started_at)),
        "ss_training_finished_at": repr(float(finished_at)),
        "ss_tag_frequency": json.dumps({dataset_dir: frequency}),
        "ss_dataset_dirs": json.dumps({dataset_dir: {"n_repeats": 1, "img_count": len(captions)}}),
        "ss_dataset_hash": dataset_hash,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": config.output_name,
        "modelspec.resolution": resolution,
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        "modelspec.date": datetime.fromtimestamp(finished_at, timezone.utc).isoformat(timespec="seconds"),
        "aldar_trigger_token": config.trigger_token,
        "aldar_adapter": config.adapter,
        "aldar_mask_outside_weight": f"{config.mask_outside_weight:g}",
        "aldar_normalize_masked_loss": str(config.normalize_masked_loss),
        "aldar_output_preservation_weight": (f"{config.output_preservation_weight:g}" if config.output_preservation
                                             else "0"),
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
    return sorted(found, key=checkpoint_step)


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a ``checkpoint-<step>`` folder was saved at."""
    return int(Path(checkpoint).name[len(CHECKPOINT_PREFIX):])


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def best_checkpoint(scores: list[dict]) -> dict | None:
    """The scored checkpoint with the highest ``quality`` (a tie goes to the later, longer-trained step)."""
    return max(scores, key=lambda s: (s["quality"], s["step"])) if scores else None


def guarded_checkpoint(scores: list[dict]) -> tuple[dict | None, list[str]]:
    """The checkpoint a round keeps under the suite guard (``tools.scoring.guard``, the rule the ranking of rounds
    uses): the highest-quality scored checkpoint whose editability — measured at each checkpoint on a few of the
    suite's new-context prompts (``editability``, ``editability_images``) — is not clearly worse than another
    checkpoint's; a tie goes to the later step. Returns it and, for each better-scoring checkpoint passed over,
    why. Checkpoints without an editability figure are judged on quality alone (``best_checkpoint``)."""
    from tools.scoring.guard import clearly_worse

    edits = [s["editability"] for s in scores if s.get("editability") is not None]
    if not edits:
        return best_checkpoint(scores), []
    passed: list[str] = []
    for score in sorted(scores, key=lambda s: (s["quality"], s["step"]), reverse=True):
        why = clearly_worse(score.get("editability"), None, edits, [], count=score.get("editability_images"))
        if not why:
            return score, passed
        passed.append(f"step {score['step']} ({score['quality']:.3f}): {why}")
    return best_checkpoint(scores), passed


def chosen_checkpoint(scores: list[dict], validation_losses: dict[int, float], select_best: bool, on_disk: set[int],
                      last_step: int) -> dict:
    """The checkpoint a run hands over — the guarded best-scoring one (``guarded_checkpoint``) while it is on disk,
    else the last step — with the reason (report.html shows it)."""
    best, passed = guarded_checkpoint(scores) if select_best else (None, [])
    if best is not None and best["step"] in on_disk:
        others = ", ".join(f"step {s['step']}: {s['quality']:.3f}" for s in scores if s is not best)
        guard = f"; passed over, editability clearly worse: {'; '.join(passed)}" if passed else ""
        return {**best, "why": f"highest validation quality against the references ({best['quality']:.3f}"
                               + (f"; {others}" if others else "") + ")" + guard
                + _loss_disagreement(scores, validation_losses, best["step"])}
    if not select_best:
        why = "last step (best-checkpoint selection is off)"
    elif not scores:
        why = "last step (no checkpoint was scored: no scorer or no validation images)"
    else:
        why = "last step (the best-scoring checkpoint is no longer on disk)"
    last = next((s for s in scores if s["step"] == last_step), {})
    return {**last, "step": last_step, "why": why}


def _loss_disagreement(scores: list[dict], validation_losses: dict[int, float], chosen_step: int) -> str:
    """A note when the lowest validation loss among the scored checkpoints is at another step: the loss
    measures fit to the references, the quality what the LoRA draws — they can part (overfitting)."""
    losses = {s["step"]: validation_losses[s["step"]] for s in scores if s["step"] in validation_losses}
    if len(losses) < 2:
        return ""
    lowest = min(losses, key=lambda step: (losses[step], -step))
    if lowest == chosen_step:
        return "; validation loss agrees (lowest there too)"
    return (f"; validation loss disagrees: lowest at step {lowest} ({losses[lowest]:.4f}, "
            f"{losses[chosen_step]:.4f} at step {chosen_step})")


def quality_spread(score: dict) -> float:
    """The spread of a checkpoint's validation quality: the standard error of its mean (std / √images) as the
    checkpoint scorer records it; 0 for a score without them (older runs, hand-made scores)."""
    std, images = score.get("quality_std"), score.get("images")
    try:
        return float(std) / math.sqrt(float(images)) if std is not None and images and float(images) > 0 else 0.0
    except (TypeError, ValueError):
        return 0.0


def rose_beyond_spread(later: dict, earlier: dict) -> bool:
    """``later`` scored above ``earlier`` by more than the larger of their spreads: a rise that is no noise."""
    return later["quality"] > earlier["quality"] + max(quality_spread(later), quality_spread(earlier))


def plateaued(scores: list[dict], patience: int) -> bool:
    """The last ``patience`` scored checkpoints rose nowhere beyond the spread of the best one before them:
    the validation quality is flat, further steps are spent for nothing (0 = never)."""
    if patience <= 0 or len(scores) <= patience:
        return False
    ordered = sorted(scores, key=lambda s: s["step"])
    before = best_checkpoint(ordered[:-patience])
    return not any(rose_beyond_spread(s, before) for s in ordered[-patience:])


def save_checkpoint(run_dir: Path, step: int, state_dicts: dict[str, dict[str, torch.Tensor]],
                    lora_configs: dict[str, dict], training_state: dict[str, Any], keep: int,
                    made_with: dict[str, Any] | None = None, protect: int | None = None,
                    embedding: tuple[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write ``checkpoint-<step>/`` (LoRA in diffusers and PEFT form + optimizer/scheduler/RNG state) by rename.

    Pruning to the newest ``keep`` spares checkpoint ``protect`` (the best-scoring one, the run's LoRA).
    ``embedding``: pivotal tuning's (trigger, rows), saved beside the LoRA as the run's export is.
    """
    from safetensors.torch import save_file

    for state in state_dicts.values():
        if not all(torch.isfinite(t).all() for t in state.values()):
            raise TrainingError(f"the LoRA weights hold NaN/inf at step {step}; no checkpoint was written",
                                "lower --learning-rate or use --mixed-precision bf16; resume from the last checkpoint")
    target = Path(run_dir) / f"{CHECKPOINT_PREFIX}{step:06d}"
    with writing(target, f"the checkpoint of step {step} ({target})"):
        staging = staging_dir(target)
        try:
            save_diffusers_lora(staging / DIFFUSERS_WEIGHTS, state_dicts, lora_configs)
            flat = {f"{c}.{k}": v.detach().cpu().contiguous() for c, s in state_dicts.items() for k, v in s.items()}
            atomic_write(staging / ADAPTER_WEIGHTS, lambda tmp: save_file(flat, str(tmp)))
            atomic_write(staging / TRAINING_STATE, lambda tmp: torch.save(training_state, tmp))
            if embedding is not None:
                from tools.embeddings import embedding_file, save_embedding

                save_embedding(embedding_file(staging, embedding[0]), embedding[1], embedding[0])
            atomic_write_json(staging / "checkpoint.json",
                              {**(made_with or {}), "step": step, "lora_configs": lora_configs})
            if target.exists():  # same step saved again (e.g. interrupted right after a resume)
                shutil.rmtree(target)
            os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it 0700
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if keep > 0:
        spared = f"{CHECKPOINT_PREFIX}{protect:06d}" if protect is not None else None
        for old in checkpoint_dirs(run_dir)[:-keep]:
            if old.name != spared:
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
