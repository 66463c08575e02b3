"""SDXL LoRA training with diffusers + peft, driven by accelerate.

``train_lora`` reads top to bottom like diffusers' ``train_dreambooth_lora_sdxl.py``: check the
settings, prepare images, cache VAE latents and text embeddings, add the LoRA adapter, build the
optimizer and schedule, then loop: sample a batch, add noise, predict it, min-SNR-weighted MSE,
backward, step — checkpointing and rendering validation images every N steps — and export the LoRA
in diffusers and kohya formats.

The base SDXL pipeline comes from ``tools.models.load_sdxl_pipeline`` (loaded once per process), so
rounds never reload it. The adapter is added under its own name and deleted afterwards, leaving the
shared UNet exactly as it was for the local generator that loads the LoRA file next.

Several GPUs: ``accelerate launch -m agent.cli train ...`` — nothing here changes.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from tools.atomic import atomic_write, atomic_write_json
from tools.errors import ConfigError, TrainingError
from tools.lora_files import (DIFFUSERS_WEIGHTS, capture_rng_state, checkpoint_dirs, kohya_metadata, latest_checkpoint,
                              load_checkpoint, restore_rng_state, save_checkpoint, save_diffusers_lora, save_kohya_lora)
from tools.progress import progress_bar
from tools.train_config import (TEXT_ENCODER_TARGETS, UNET_TARGETS, TrainConfig, bitsandbytes_available,
                                default_train_config)
from tools.train_data import (TrainingImage, batch_indices, cached_latent_distributions, dataset_sha256,
                              default_latent_cache_dir, encode_prompts, prepare_images, sample_latents, vae_identity)
from tools.train_report import LOSS_CURVE, LOSS_LOG, draw_loss_curve, read_loss_log, write_loss_log

__all__ = ["TrainConfig", "TrainResult", "default_train_config", "train_lora", "denoising_loss", "evaluation_loss"]

ADAPTER_NAME = "aldar_training"  # never "default": the generator's own LoRA may already live in the UNet
EMA_DECAY = 0.9
RUN_CONFIG = "train_config.json"


@dataclass
class TrainResult:
    run_dir: Path
    lora_path: Path | None       # diffusers pytorch_lora_weights.safetensors (None when interrupted)
    kohya_path: Path | None      # lora_unet_* file for A1111 / ComfyUI (None when interrupted)
    steps: int                   # optimizer steps done
    final_loss: float | None     # moving average of the loss at the last step
    checkpoints: list[Path]
    loss_log: Path
    interrupted: bool = False
    loss_curve: Path | None = None
    validation_images: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_lora(config: TrainConfig, profile, dataset: list[tuple[Path, str]], run_dir: Path, quiet: bool = False,
               stop: threading.Event | None = None, *, resume: bool = True) -> TrainResult:
    """Train a LoRA on ``dataset`` ((image, caption) pairs) into ``run_dir``; continue its latest checkpoint.

    Ctrl-C or ``stop.set()`` saves a checkpoint and returns ``interrupted=True``. NaN loss and CUDA
    out-of-memory raise ``TrainingError`` (the last good checkpoint stays).
    """
    config.validate(profile)
    images = prepare_images(dataset, config.resolution)
    run_dir = Path(run_dir)
    checkpoint = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if checkpoint and not resume:
        raise ConfigError(f"{run_dir} already holds training checkpoints",
                          "pass --resume to continue it, or choose a new --run-dir")
    _check_resumable(run_dir, config, profile, images, checkpoint)
    accelerator = _make_accelerator(config, profile)
    from tools.models import load_sdxl_pipeline

    pipe = load_sdxl_pipeline(profile)
    try:
        with _lora_adapters(pipe, config) as modules:
            run = _Run(config, profile, images, run_dir, accelerator, pipe, modules)
            return run.train(checkpoint, quiet, stop)
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if "out of memory" not in str(error).lower():
            raise
        raise _out_of_memory(config) from None
    finally:
        accelerator.free_memory()


# --------------------------------------------------------------------------- the training run
class _Run:
    """State of one training run: models, optimizer, caches, step counter, loss rows."""

    def __init__(self, config, profile, images, run_dir, accelerator, pipe, modules) -> None:
        self.config, self.profile, self.images, self.run_dir = config, profile, images, run_dir
        self.accelerator, self.pipe, self.modules = accelerator, pipe, modules
        self.device = accelerator.device
        self.dataset_hash = dataset_sha256(images)
        self.started_at = _now()
        self.step, self.rows, self.ema = 0, [], None
        self.validation_paths: list[Path] = []
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.latents = self._cache_latents()
        self.text_cache = None if config.train_text_encoder else self._cache_text()

    # ---- caches
    def _cache_latents(self):
        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:  # SDXL's VAE overflows in fp16
            vae.to(torch.float32)
        try:
            disk = default_latent_cache_dir() if self.config.cache_latents_to_disk else None
            return cached_latent_distributions(self.images, vae, vae_identity(self.profile, vae),
                                               self.config.resolution, self.config.flip_augmentation, disk)
        finally:
            if upcast:
                vae.to(torch.float16)

    @torch.no_grad()
    def _cache_text(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        captions = sorted({image.caption for image in self.images})
        cache = {}
        for caption in captions:
            embeds, pooled = self._encode([caption])
            cache[caption] = (embeds[0], pooled[0])
        return cache

    def _encode(self, captions: list[str]):
        models = getattr(self, "wrapped", self.modules)  # DDP-wrapped once prepared
        encoders = [models.get("text_encoder", self.pipe.text_encoder),
                    models.get("text_encoder_2", self.pipe.text_encoder_2)]
        return encode_prompts(captions, [self.pipe.tokenizer, self.pipe.tokenizer_2], encoders, self.device)

    # ---- main loop
    def train(self, checkpoint: Path | None, quiet: bool, stop: threading.Event | None) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        params = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        optimizer, self.optimizer_name = _make_optimizer(config, params, self.device.type)
        from diffusers.optimization import get_scheduler

        lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=optimizer,
                                     num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.steps)
        names = list(self.modules)
        prepared = accelerator.prepare(*self.modules.values(), optimizer)
        self.wrapped = dict(zip(names, prepared[:-1]))
        self.optimizer, self.lr_scheduler = prepared[-1], lr_scheduler
        if checkpoint is not None:
            self._resume(checkpoint)
        else:
            self._write_run_config()
        interrupted, start_step, clock = False, self.step, time.monotonic()
        self.clock_origin = clock - (self.rows[-1]["elapsed_s"] if self.rows else 0.0)
        with progress_bar(f"training LoRA ({self.profile.name})", config.steps, quiet) as advance:
            advance(self.step, status=f"resumed at step {self.step}" if self.step else "")
            try:
                while self.step < config.steps:
                    if stop is not None and stop.is_set():
                        raise KeyboardInterrupt
                    self._optimizer_step()
                    rate = (self.step - start_step) / max(time.monotonic() - clock, 1e-9)
                    eta = (config.steps - self.step) / rate if rate else 0.0
                    advance(1, status=f"loss {self.ema:.4f} · {rate:.2f} it/s · eta {_duration(eta)}")
                    if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                        self._checkpoint()
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            if self.step > 0 and not (self.run_dir / f"checkpoint-{self.step:06d}").is_dir():
                self._checkpoint(render=False)
            return self._result(interrupted=True)
        return self._finish()

    def _optimizer_step(self) -> None:
        config, accelerator = self.config, self.accelerator
        unet = self.wrapped["unet"]
        losses = []
        for micro in range(config.gradient_accumulation):
            with accelerator.accumulate(*self.wrapped.values()):
                with accelerator.autocast():
                    loss = self._micro_batch_loss(unet, micro)
                if not torch.isfinite(loss.detach()).all():
                    raise self._diverged(loss.item())
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    params = [p for m in self.wrapped.values() for p in m.parameters() if p.requires_grad]
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(accelerator.reduce(loss.detach(), "mean").item())
        self.lr_scheduler.step()
        self.step += 1
        step_loss = sum(losses) / len(losses)
        self.ema = step_loss if self.ema is None else EMA_DECAY * self.ema + (1 - EMA_DECAY) * step_loss
        self.rows.append({"step": self.step, "loss": step_loss, "loss_ema": self.ema,
                          "lr": self.lr_scheduler.get_last_lr()[0], "elapsed_s": round(time.monotonic() - self.clock_origin, 3)})

    def _micro_batch_loss(self, unet, micro: int) -> torch.Tensor:
        """One batch: sample latents, noise and timesteps from a generator seeded by the position (exact resume)."""
        config, rank = self.config, self.accelerator.process_index
        generator = torch.Generator().manual_seed(hash((config.seed, rank, self.step, micro)) & 0x7FFF_FFFF)
        counter = (self.step * config.gradient_accumulation + micro) * config.batch_size
        indices = batch_indices(counter, config.batch_size, len(self.images), config.seed + 7919 * rank)
        flips = (torch.rand(len(indices), generator=generator) < 0.5).tolist() if config.flip_augmentation \
            else [False] * len(indices)
        vae_config = self.pipe.vae.config
        latents = sample_latents([self.latents[(i, f)] for i, f in zip(indices, flips)], generator,
                                 vae_config.scaling_factor, getattr(vae_config, "shift_factor", None))
        noise = torch.randn(latents.shape, generator=generator)
        if config.noise_offset:
            noise += config.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(indices),),
                                  generator=generator)
        captions = [self.images[i].caption for i in indices]
        if self.text_cache is not None:
            embeds = torch.stack([self.text_cache[c][0] for c in captions])
            pooled = torch.stack([self.text_cache[c][1] for c in captions])
        else:
            embeds, pooled = self._encode(captions)
        time_ids = torch.stack([self.images[i].time_ids(config.resolution, f) for i, f in zip(indices, flips)])
        device = self.device
        return denoising_loss(unet, self.noise_scheduler, latents.to(device), noise.to(device), timesteps.to(device),
                              embeds, pooled, time_ids.to(device), config.snr_gamma)

    # ---- saving
    def _state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        from peft.utils import get_peft_model_state_dict

        return {name: get_peft_model_state_dict(self.accelerator.unwrap_model(module), adapter_name=ADAPTER_NAME)
                for name, module in self.wrapped.items()}

    def _lora_configs(self) -> dict[str, dict]:
        return {name: _jsonable(module.peft_config[ADAPTER_NAME].to_dict()) for name, module in self.modules.items()}

    def _checkpoint(self, render: bool = True) -> None:
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                     "lr_scheduler": self.lr_scheduler.state_dict(), "rng": capture_rng_state(),
                     "loss_ema": self.ema, "optimizer_name": self.optimizer_name}
            save_checkpoint(self.run_dir, self.step, self._state_dicts(), self._lora_configs(), state,
                            self.config.checkpoints_to_keep)
            self._write_loss_files()
            if render:
                self._render_validation()
        accelerator.wait_for_everyone()

    def _resume(self, checkpoint: Path) -> None:
        from peft.utils import set_peft_model_state_dict

        state_dicts, state = load_checkpoint(checkpoint)
        for name, module in self.modules.items():
            set_peft_model_state_dict(module, state_dicts[name], adapter_name=ADAPTER_NAME)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        restore_rng_state(state["rng"])
        self.step, self.ema = state["step"], state["loss_ema"]
        self.rows = read_loss_log(self.run_dir / LOSS_LOG, up_to_step=self.step)

    def _render_validation(self) -> None:
        config = self.config
        if not config.validation_images:
            return
        for module in self.modules.values():
            module.eval()
        try:
            with torch.no_grad(), self.accelerator.autocast():
                for index in range(config.validation_images):
                    seed = config.seed + index
                    image = self.pipe(config.effective_validation_prompt, height=config.resolution,
                                      width=config.resolution, num_inference_steps=config.validation_inference_steps,
                                      generator=torch.Generator().manual_seed(seed)).images[0]
                    path = self.run_dir / "validation" / f"step-{self.step:06d}-seed-{seed}.png"
                    atomic_write(path, lambda tmp, img=image: img.save(tmp, format="PNG"))
                    self.validation_paths.append(path)
        finally:
            for module in self.modules.values():
                module.train()

    def _write_loss_files(self) -> None:
        write_loss_log(self.run_dir / LOSS_LOG, self.rows)
        draw_loss_curve(self.run_dir / LOSS_CURVE, self.rows, title=f"{self.config.output_name} — loss per step")

    def _write_run_config(self) -> None:
        if self.accelerator.is_main_process:
            atomic_write_json(self.run_dir / RUN_CONFIG, {
                **self.profile.describe(), "config": self.config.as_dict(), "dataset_sha256": self.dataset_hash,
                "images": [{"path": str(i.path), "sha256": i.sha256, "caption": i.caption} for i in self.images],
                "started_at": self.started_at, "num_processes": self.accelerator.num_processes})

    def _finish(self) -> TrainResult:
        """Final checkpoint, then the LoRA files — written only now, each by rename."""
        config = self.config
        if config.checkpoint_every and not (self.run_dir / f"checkpoint-{self.step:06d}").is_dir():
            self._checkpoint()
        elif not config.checkpoint_every and self.accelerator.is_main_process:
            self._write_loss_files()
            self._render_validation()
        lora_path = self.run_dir / DIFFUSERS_WEIGHTS
        kohya_path = self.run_dir / f"{config.output_name}.safetensors"
        if self.accelerator.is_main_process:
            state_dicts = self._state_dicts()
            metadata = kohya_metadata(config.replace(optimizer=self.optimizer_name), self.profile, steps=self.step,
                                      dataset_hash=self.dataset_hash, num_images=len(self.images),
                                      started_at=self.started_at, finished_at=_now())
            save_diffusers_lora(lora_path, state_dicts, self._lora_configs())
            save_kohya_lora(kohya_path, state_dicts, config.alpha, metadata)
        result = self._result(interrupted=False, lora_path=lora_path, kohya_path=kohya_path)
        if self.accelerator.is_main_process:
            atomic_write_json(self.run_dir / "training_summary.json",
                              {**self.profile.describe(), **result.as_dict(), "config": config.as_dict(),
                               "optimizer_used": self.optimizer_name, "dataset_sha256": self.dataset_hash,
                               "started_at": self.started_at, "finished_at": _now()})
        return result

    def _result(self, interrupted: bool, lora_path: Path | None = None, kohya_path: Path | None = None):
        curve = self.run_dir / LOSS_CURVE
        return TrainResult(self.run_dir, lora_path, kohya_path, self.step, self.ema, checkpoint_dirs(self.run_dir),
                           self.run_dir / LOSS_LOG, interrupted, curve if curve.is_file() else None,
                           list(self.validation_paths))

    def _diverged(self, value: float) -> TrainingError:
        last = latest_checkpoint(self.run_dir)
        where = f"the last good checkpoint is {last.name}" if last else "no checkpoint was saved yet"
        return TrainingError(f"training diverged: loss became {value} at step {self.step + 1} ({where})",
                             f"lower --learning-rate (now {self.config.learning_rate:g}), use --mixed-precision "
                             "bf16 instead of fp16, or raise --snr-gamma; rerun with --resume to continue")


# --------------------------------------------------------------------------- pieces
def denoising_loss(unet, noise_scheduler, latents, noise, timesteps, prompt_embeds, pooled_embeds, time_ids,
                   snr_gamma: float = 0.0) -> torch.Tensor:
    """SDXL's training objective: predict the added noise (or velocity); min-SNR weighting when gamma > 0."""
    dtype = next(unet.parameters()).dtype
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy.to(dtype), timesteps, prompt_embeds.to(dtype),
                      added_cond_kwargs={"text_embeds": pooled_embeds.to(dtype), "time_ids": time_ids.to(dtype)},
                      return_dict=False)[0].float()
    kind = noise_scheduler.config.prediction_type
    target = noise_scheduler.get_velocity(latents, noise, timesteps) if kind == "v_prediction" else noise
    if not snr_gamma:
        return F.mse_loss(prediction, target.float())
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma) / (snr + 1 if kind == "v_prediction" else snr)
    per_sample = F.mse_loss(prediction, target.float(), reduction="none").mean(dim=list(range(1, prediction.ndim)))
    return (per_sample * weights).mean()


@torch.no_grad()
def evaluation_loss(pipe, profile, dataset: list[tuple[Path, str]], resolution: int, seed: int = 0,
                    timesteps: tuple[int, ...] = (100, 300, 500, 700, 900)) -> float:
    """Mean plain-MSE denoising loss of ``pipe``'s UNet on ``dataset`` at fixed noise, timesteps and latents.

    A yardstick for "did it learn": lower after training than before on the training images.
    """
    from diffusers import DDPMScheduler

    images = prepare_images(dataset, resolution)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    dists = cached_latent_distributions(images, pipe.vae, vae_identity(profile, pipe.vae), resolution, False, None)
    device, generator, losses = pipe.unet.device, torch.Generator().manual_seed(seed), []
    for index, image in enumerate(images):
        latent = (dists[(index, False)][0] - (getattr(pipe.vae.config, "shift_factor", None) or 0.0))
        latent = (latent * pipe.vae.config.scaling_factor).unsqueeze(0).to(device)
        embeds, pooled = encode_prompts([image.caption], [pipe.tokenizer, pipe.tokenizer_2],
                                        [pipe.text_encoder, pipe.text_encoder_2], device)
        for t in timesteps:
            noise = torch.randn(latent.shape, generator=generator).to(device)
            losses.append(denoising_loss(pipe.unet, scheduler, latent, noise, torch.tensor([t], device=device),
                                         embeds, pooled, image.time_ids(resolution, False).unsqueeze(0).to(device))
                          .item())
    return sum(losses) / len(losses)


@contextmanager
def _lora_adapters(pipe, config: TrainConfig) -> Iterator[dict[str, torch.nn.Module]]:
    """Add a trainable LoRA to the shared UNet (and text encoders); remove it and every training change after."""
    from peft import LoraConfig

    unet = pipe.unet
    previous = unet.active_adapters() if getattr(unet, "peft_config", None) else []
    modules: dict[str, torch.nn.Module] = {"unet": unet}
    if config.train_text_encoder:
        modules.update(text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2)
    # pipe.disable_lora() (base-model renders) switches every LoRA layer off, a new adapter's too: remember it.
    disabled = {name: _lora_layers_disabled(module) for name, module in modules.items()}
    torch.manual_seed(config.seed)  # LoRA initialisation
    try:
        for name, module in modules.items():
            module.requires_grad_(False)
            targets = UNET_TARGETS if name == "unet" else TEXT_ENCODER_TARGETS
            module.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                                          target_modules=targets), adapter_name=ADAPTER_NAME)
            module.set_adapter(ADAPTER_NAME)
            module.enable_adapters()
            for param in module.parameters():  # trainable LoRA weights stay fp32 under fp16/bf16 autocast
                if param.requires_grad:
                    param.data = param.data.float()
            if config.gradient_checkpointing:
                _set_gradient_checkpointing(module, True)
            module.train()
        yield modules
    finally:
        for name, module in modules.items():
            if ADAPTER_NAME in (getattr(module, "peft_config", None) or {}):
                if name == "unet":
                    module.delete_adapters(ADAPTER_NAME)
                else:
                    module.delete_adapter(ADAPTER_NAME)
            _set_gradient_checkpointing(module, False)
            module.__dict__.pop("_original_forward", None)  # accelerate's autocast wrapper, if it added one
            module.__dict__.pop("forward", None)
            module.requires_grad_(False)
            module.eval()
        if previous:
            unet.set_adapter(previous)
        for name, module in modules.items():
            if disabled[name] and getattr(module, "peft_config", None):
                module.disable_adapters()


def _lora_layers_disabled(module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(layer.disable_adapters for layer in module.modules() if isinstance(layer, BaseTunerLayer))


def _set_gradient_checkpointing(module, enabled: bool) -> None:
    if hasattr(module, "enable_gradient_checkpointing"):  # diffusers models
        (module.enable_gradient_checkpointing if enabled else module.disable_gradient_checkpointing)()
    elif enabled:
        module.gradient_checkpointing_enable()
    elif getattr(module, "is_gradient_checkpointing", False):
        module.gradient_checkpointing_disable()


def _make_accelerator(config: TrainConfig, profile):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if PartialState().num_processes == 1:
        # One process trains round after round, maybe with another precision: start from a clean state.
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation,
                       cpu=profile.torch_device.type == "cpu")


def _make_optimizer(config: TrainConfig, params: list[torch.nn.Parameter], device_type: str):
    name = config.optimizer
    if name == "auto":
        name = "adamw8bit" if device_type == "cuda" and bitsandbytes_available() else "adamw"
    if name == "adamw8bit":
        import bitsandbytes  # imported only here: optional, CUDA-only

        optimizer_class = bitsandbytes.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    return optimizer_class(params, lr=config.learning_rate, betas=(0.9, 0.999), weight_decay=config.weight_decay,
                           eps=1e-8), name


def _check_resumable(run_dir: Path, config: TrainConfig, profile, images: list[TrainingImage],
                     checkpoint: Path | None) -> None:
    if checkpoint is None or not (run_dir / RUN_CONFIG).is_file():
        return
    import json

    saved = json.loads((run_dir / RUN_CONFIG).read_text(encoding="utf-8"))
    before = {**{k: saved["config"].get(k) for k in ("rank", "alpha", "train_text_encoder", "resolution")},
              "base_model": saved.get("base_model"), "dataset": saved.get("dataset_sha256")}
    now = {"rank": config.rank, "alpha": config.alpha, "train_text_encoder": config.train_text_encoder,
           "resolution": config.resolution, "base_model": profile.base_model, "dataset": dataset_sha256(images)}
    changed = [k for k in now if before[k] != now[k]]
    if changed:
        detail = ", ".join(f"{k} {before[k]!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(f"cannot resume {checkpoint}: {detail}",
                          "resume with the same settings and images, or start a new --run-dir")


def _out_of_memory(config: TrainConfig) -> TrainingError:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    hints = []
    if config.batch_size > 1:
        hints.append("--batch-size 1 (raise --gradient-accumulation instead)")
    if config.resolution > 768:
        hints.append("--resolution 768")
    if config.rank > 16:
        hints.append("--rank 16")
    if not config.gradient_checkpointing:
        hints.append("--gradient-checkpointing")
    if config.mixed_precision == "no":
        hints.append("--mixed-precision bf16 (or fp16)")
    if config.optimizer != "adamw8bit":
        hints.append("--optimizer adamw8bit (needs bitsandbytes)")
    if config.train_text_encoder:
        hints.append("--no-train-text-encoder")
    return TrainingError("out of GPU memory while training",
                         "lower the memory use: " + ", ".join(hints or ["close other GPU programs"])
                         + "; then rerun with --resume")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, tuple, list)):
        return [_jsonable(v) for v in (sorted(value) if isinstance(value, set) else value)]
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
