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

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from tools.atomic import atomic_write, atomic_write_json
from tools.character import has_trigger, without_trigger
from tools.embeddings import (TriggerEmbedding, embedding_file, find_embedding, read_embedding, save_embedding,
                              spelled_as_token, training_embedding)
from tools.errors import ConfigError, InputError, TrainingError
from tools.progress import progress_bar
from tools.training.config import TrainConfig, default_train_config
from tools.training.data import (bucket_batch, bucket_counts, cached_latent_distributions, check_run_dir,
                                 check_trigger_in_captions, dataset_dir, dataset_sha256, default_latent_cache_dir,
                                 encode_prompts, epochs_for, load_masks, position_seed, prepare_images,
                                 sample_latents, training_caption, vae_identity)
from tools.training.edit_check import EditCheck, draw_checkpoint_images
from tools.training.prior import prepared_class_images
from tools.training.losses import denoising_loss, output_preservation_loss, validation_items
from tools.training.lora_files import (CHECKPOINT_PREFIX, DIFFUSERS_WEIGHTS, best_checkpoint, capture_rng_state,
                                       checkpoint_dirs, chosen_checkpoint, export_lora, guarded_checkpoint,
                                       kohya_metadata, plateaued,
                                       latest_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint)
from tools.training.report import (LOSS_CURVE, LOSS_LOG, TrainResult, draw_loss_curve, read_checkpoint_scores,
                                   read_loss_log, write_checkpoint_scores, write_loss_log)
from tools.training.setup import (ADAPTER_NAME, RUN_CONFIG, adapter_state_dicts, adapters_off, check_init_weights,
                                  check_resumable, jsonable, lora_adapters, make_accelerator, make_optimizer,
                                  out_of_memory)
from tools.timestamps import iso_timestamp
from tools.training.losses import denoising_loss, evaluation_loss, min_snr_weights  # noqa: F401  (re-exported)

__all__ = ["TrainConfig", "TrainResult", "default_train_config", "train_lora", "denoising_loss", "evaluation_loss"]

EMA_DECAY = 0.9
# A checkpoint's validation images -> its scores against the references ({"quality": float, ...}).
CheckpointScorer = Callable[[list[Path]], dict[str, float]]


def train_lora(config: TrainConfig, profile, dataset: list[tuple[Path, str]], run_dir: Path, quiet: bool = False,
               stop: threading.Event | None = None, *, resume: bool = True,
               score_checkpoint: CheckpointScorer | None = None, edit_check: EditCheck | None = None) -> TrainResult:
    """Train a LoRA on ``dataset`` ((image, caption) pairs) into ``run_dir``; continue its latest checkpoint.

    ``score_checkpoint`` scores each checkpoint's validation images against the references; with
    ``config.select_best_checkpoint`` the best-scoring checkpoint becomes the run's LoRA — with ``edit_check``,
    the best-scoring one whose editability is not clearly worse than another's (``guarded_checkpoint``).
    Ctrl-C or ``stop.set()`` saves a checkpoint and returns ``interrupted=True``. NaN loss and CUDA
    out-of-memory raise ``TrainingError`` (the last good checkpoint stays).
    """
    config.validate(profile)
    masks, notes = load_masks([path for path, _ in dataset]) if config.masked_loss else ({}, [])
    images = prepare_images(dataset, config.resolution, config.bucket_step if config.bucketing else None, masks)
    if config.output_preservation:
        check_trigger_in_captions(images, config.trigger_token)
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    checkpoint = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if checkpoint and not resume:
        raise ConfigError(f"{run_dir} already holds training checkpoints",
                          "pass --resume to continue it, or choose a new --run-dir")
    check_resumable(run_dir, config, profile, images, checkpoint)
    if checkpoint is None:  # a resumed run continues its own checkpoint, whatever it started from
        check_init_weights(config, profile)
    accelerator = make_accelerator(config, profile, run_dir)
    from tools.models import load_sdxl_pipeline

    pipe = load_sdxl_pipeline(profile)
    prior = prepared_class_images(config, profile, dataset, images, quiet) if config.prior_preservation else []
    try:
        with lora_adapters(pipe, config) as modules, training_embedding(pipe, config, accelerator.device) as embedding:
            run = _Run(config, profile, images, run_dir, accelerator, pipe, modules, score_checkpoint, prior,
                       edit_check, embedding)
            result = run.train(checkpoint, quiet, stop)
            result.notes = notes + result.notes
            return result
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if "out of memory" not in str(error).lower():
            raise
        raise out_of_memory(config) from None
    finally:
        accelerator.end_training()  # closes the TensorBoard writer, if any
        accelerator.free_memory()


# --------------------------------------------------------------------------- the training run
class _Run:
    """State of one training run: models, optimizer, caches, step counter, loss rows."""

    def __init__(self, config, profile, images, run_dir, accelerator, pipe, modules, score_checkpoint,
                 class_images=(), edit_check=None, embedding: TriggerEmbedding | None = None) -> None:
        self.config, self.profile, self.images, self.run_dir = config, profile, images, run_dir
        self.class_images = list(class_images)  # prior preservation: the base model's pictures of the class
        self.class_buckets = [image.bucket for image in self.class_images]
        self.accelerator, self.pipe, self.modules, self.embedding = accelerator, pipe, modules, embedding
        self.score_checkpoint, self.edit_check, self.edit_check_s = score_checkpoint, edit_check, 0.0
        self.edit_images: list[list[Path]] = []  # the edit check's images of the latest checkpoint, by prompt
        self.device = accelerator.device
        self.dataset_hash = dataset_sha256(images)
        self.buckets = [image.bucket for image in images]
        self.started_at = time.time()  # epoch seconds: what kohya's ss_training_started_at holds
        self.step, self.rows, self.ema, self.scores = 0, [], None, []
        self.stopped_early = ""
        self.validation_losses: dict[int, float] = {}
        self.validation_paths: list[Path] = []
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.latents = self._cache_latents(self.images)
        self.class_latents = self._cache_latents(self.class_images) if self.class_images else {}
        # the prompts' embeddings change as the encoders' LoRA or the trigger's rows train: encoded every step
        self.text_cache = None if config.train_text_encoder or embedding is not None else self._cache_text()
        self.loss_weights = self._loss_weights()
        self.validation_set = self._validation_set()

    # ---- caches
    def _cache_latents(self, images):
        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:  # SDXL's VAE overflows in fp16
            vae.to(torch.float32)
        try:
            disk = default_latent_cache_dir() if self.config.cache_latents_to_disk else None
            return cached_latent_distributions(images, vae, vae_identity(self.profile, vae),
                                               self.config.flip_augmentation, disk)
        finally:
            if upcast:
                vae.to(torch.float16)

    @torch.no_grad()
    def _cache_text(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        captions = {image.caption for image in self.images + self.class_images} | (
            {""} if self.config.caption_dropout else set())
        if self.config.output_preservation:  # the prompts output preservation holds to the base
            captions |= {without_trigger(image.caption, self.config.trigger_token) for image in self.images}
        captions = sorted(captions)
        cache = {}
        for caption in captions:
            embeds, pooled = self._encode([caption])
            cache[caption] = (embeds[0], pooled[0])
        return cache

    def _encode(self, captions: list[str]):
        models = getattr(self, "wrapped", self.modules)  # DDP-wrapped once prepared
        encoders = [models.get("text_encoder", self.pipe.text_encoder),
                    models.get("text_encoder_2", self.pipe.text_encoder_2)]
        if self.embedding is not None:  # "zorabek" -> "zorabek zorabek_1": one token per trained vector
            captions = self.pipe.maybe_convert_prompt(spelled_as_token(captions, self.embedding.trigger),
                                                      self.pipe.tokenizer)
        return encode_prompts(captions, [self.pipe.tokenizer, self.pipe.tokenizer_2], encoders, self.device)

    def _loss_weights(self) -> dict[tuple[int, bool], torch.Tensor]:
        """(image, flipped) -> the masked loss's weights on the latent grid: the mask average-pooled to it
        (kohya's), ``mask_outside_weight`` outside, divided by their mean with ``normalize_masked_loss``
        (OneTrainer's); images without a mask are absent (weighed all alike)."""
        weights = {}
        for (index, flipped), (mean, _) in self.latents.items():
            mask = self.images[index].mask
            if mask is None:
                continue
            pooled = F.adaptive_avg_pool2d((mask.flip(-1) if flipped else mask).unsqueeze(0), mean.shape[-2:])[0]
            outside = self.config.mask_outside_weight
            weight = outside + (1.0 - outside) * pooled
            # normalised: mean(w·loss)/mean(w), the loss per weighted pixel, not scaled down by the character's area
            weights[(index, flipped)] = weight / weight.mean() if self.config.normalize_masked_loss else weight
        return weights

    def _batch_weights(self, keys: list[tuple[int, bool]]) -> torch.Tensor | None:
        if not any(key in self.loss_weights for key in keys):
            return None
        return torch.stack([self.loss_weights[key] if key in self.loss_weights
                            else torch.ones((1, *self.latents[key][0].shape[-2:])) for key in keys])

    def _validation_set(self) -> list[dict]:
        """What the validation loss is measured on (``losses.validation_items``): the references, masked as
        they train, and the class images."""
        return validation_items([(self.images, self.latents, self._batch_weights),
                                 (self.class_images, self.class_latents, None)],
                                self.pipe.vae.config, self.noise_scheduler.config.num_train_timesteps, self.config.seed)

    @torch.no_grad()
    def _validation_loss(self) -> float:
        """Mean plain-MSE denoising loss of the current weights on the validation set: deterministic, so
        checkpoints (and rounds with the same references) compare; kohya, OneTrainer and SimpleTuner log it too."""
        unet = self.accelerator.unwrap_model(self.wrapped["unet"]) if hasattr(self, "wrapped") else self.pipe.unet
        for module in self.modules.values():
            module.eval()
        losses = []
        try:
            with self.accelerator.autocast():
                for item in self.validation_set:
                    count = len(item["timesteps"])
                    embeds, pooled = self._embeddings([item["caption"]])
                    device = self.device
                    loss = denoising_loss(unet, self.noise_scheduler, item["latents"].to(device),
                                          item["noise"].to(device), item["timesteps"].to(device),
                                          embeds.expand(count, *embeds.shape[1:]), pooled.expand(count, -1),
                                          item["time_ids"].to(device), 0.0, weights=item.get("weights"))
                    losses.append(loss.item())
        finally:
            for module in self.modules.values():
                module.train()
        return sum(losses) / len(losses)

    def _record_validation_loss(self) -> float:
        value = self._validation_loss()
        self.validation_losses[self.step] = value
        for row in reversed(self.rows):
            if row["step"] == self.step:
                row["validation_loss"] = value
                break
        self.accelerator.log({"validation_loss": value}, step=self.step)
        return value

    # ---- main loop
    def train(self, checkpoint: Path | None, quiet: bool, stop: threading.Event | None) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        optimizer, self.optimizer_name = make_optimizer(config, self.modules, self.device.type,
                                                        self.embedding.parameters if self.embedding else None)
        self.optimizer_class = f"{type(optimizer).__module__}.{type(optimizer).__name__}"
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
            if config.init_weights:  # kohya's --network_weights: this run's LoRA starts where that one ended
                self._load_weights(Path(config.init_weights))
            self._write_run_config()
        if config.report_to != "none":
            accelerator.init_trackers("aldar_lora", config=config.as_dict())
        interrupted, start_step, clock = False, self.step, time.monotonic()
        self.clock_origin = clock - (self.rows[-1]["elapsed_s"] if self.rows else 0.0)
        with progress_bar(f"training LoRA ({self.profile.name})", config.steps, quiet) as advance:
            advance(self.step, status=f"resumed at step {self.step}" if self.step else "")
            try:
                while self.step < config.steps and not self._plateau():
                    if stop is not None and stop.is_set():
                        raise KeyboardInterrupt
                    self._optimizer_step()
                    rate = (self.step - start_step) / max(time.monotonic() - clock, 1e-9)
                    advance(1, status=f"loss {self.ema:.4f} · {rate:.2f} it/s")  # the bar shows the ETA
                    if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                        self._checkpoint()
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            if self.step > 0 and not (self.run_dir / f"{CHECKPOINT_PREFIX}{self.step:06d}").is_dir():
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
                if accelerator.sync_gradients and self.embedding is not None:
                    self.embedding.average_gradients(accelerator)  # its rows are outside the DDP-wrapped modules
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    params = [p for m in self.wrapped.values() for p in m.parameters() if p.requires_grad]
                    accelerator.clip_grad_norm_(params + (self.embedding.parameters if self.embedding else []),
                                                config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(accelerator.reduce(loss.detach(), "mean").item())
        self.lr_scheduler.step()
        self.step += 1
        step_loss = sum(losses) / len(losses)
        self.ema = step_loss if self.ema is None else EMA_DECAY * self.ema + (1 - EMA_DECAY) * step_loss
        # Prodigy's step is its estimate d times the scheduled lr: that product is the learning rate in effect.
        lr = self.lr_scheduler.get_last_lr()[0] * self.optimizer.param_groups[0].get("d", 1.0)
        self.rows.append({"step": self.step, "loss": step_loss, "loss_ema": self.ema, "lr": lr,
                          "elapsed_s": round(time.monotonic() - self.clock_origin, 3)})
        self.accelerator.log({"loss": step_loss, "loss_ema": self.ema, "lr": lr}, step=self.step)

    def _micro_batch_loss(self, unet, micro: int) -> torch.Tensor:
        """One batch: sample latents, noise and timesteps from a generator seeded by the position (exact resume);
        with prior preservation a batch of class images too, its loss weighed by ``prior_loss_weight``; with output
        preservation the batch's captions without the trigger held to the base, weighed by
        ``output_preservation_weight``."""
        config, rank = self.config, self.accelerator.process_index
        generator = torch.Generator().manual_seed(position_seed(config.seed, rank, self.step, micro))
        position = self.step * config.gradient_accumulation + micro
        batch = self._batch(self.images, self.latents, self.buckets, position, config.seed + 7919 * rank,
                            generator, masked=True)
        loss = self._denoising_loss(unet, batch, position, generator)
        if config.output_preservation:
            loss = loss + config.output_preservation_weight * self._preservation_loss(unet, batch)
        return loss

    def _denoising_loss(self, unet, batch: dict, position: int, generator: torch.Generator) -> torch.Tensor:
        """The batch's denoising loss; with prior preservation beside a batch of class images."""
        config, rank = self.config, self.accelerator.process_index
        if not self.class_images:
            return self._loss(unet, batch).mean()
        prior = self._batch(self.class_images, self.class_latents, self.class_buckets, position,
                            config.seed + 7919 * rank + 15485863, generator, masked=False)
        count = len(batch["latents"])
        if batch["latents"].shape[1:] == prior["latents"].shape[1:]:  # one forward pass for both, as DreamBooth
            if batch["weights"] is not None or prior["weights"] is not None:
                for part in (batch, prior):
                    if part["weights"] is None:
                        part["weights"] = torch.ones((len(part["latents"]), 1, *part["latents"].shape[2:]))
            joined = {k: None if batch[k] is None else batch[k] + prior[k] if isinstance(batch[k], list)
                      else torch.cat([batch[k], prior[k]]) for k in batch}
            losses = self._loss(unet, joined)
            return losses[:count].mean() + config.prior_loss_weight * losses[count:].mean()
        return self._loss(unet, batch).mean() + config.prior_loss_weight * self._loss(unet, prior).mean()

    def _preservation_loss(self, unet, batch: dict) -> torch.Tensor:
        """Output preservation on ``batch``: each sample's caption without the trigger, the adapted UNet's prediction
        held to the base's on the same noisy latents (``losses.output_preservation_loss``). A sample trained on a
        caption without the trigger (caption dropout) has nothing to preserve and counts as zero."""
        trigger = self.config.trigger_token
        keep = [i for i, caption in enumerate(batch["captions"]) if has_trigger(caption, trigger)]
        if not keep:
            return torch.zeros((), device=self.device)
        rows, captions = torch.tensor(keep), [without_trigger(batch["captions"][i], trigger) for i in keep]
        trained = list(self.wrapped.values())
        if not self.config.train_text_encoder:  # frozen encoders: the base's embeddings are the adapted model's
            with torch.no_grad():  # (a trigger's trained rows do not reach captions without it)
                base = embeds = self._embeddings(captions)
        else:  # trained encoders: the base's come with their adapters off, the adapted ones with gradients
            with torch.no_grad(), adapters_off(trained):
                base = self._embeddings(captions)
            embeds = self._embeddings(captions)
        device = self.device
        losses = output_preservation_loss(unet, self.noise_scheduler, batch["latents"][rows].to(device),
                                          batch["noise"][rows].to(device), batch["timesteps"][rows].to(device),
                                          base, embeds, batch["time_ids"][rows].to(device),
                                          lambda: adapters_off(trained))
        return losses.sum() / len(batch["captions"])

    def _embeddings(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt, pooled) embeddings of ``captions``: cached where the encoders are frozen, else encoded (with
        gradients only when the encoders train)."""
        if self.text_cache is not None and all(c in self.text_cache for c in captions):
            return (torch.stack([self.text_cache[c][0] for c in captions]),
                    torch.stack([self.text_cache[c][1] for c in captions]))
        if self.text_cache is not None:  # a shuffled caption: frozen encoders, no gradient needed
            with torch.no_grad():
                return self._encode(captions)
        return self._encode(captions)

    def _loss(self, unet, batch: dict) -> torch.Tensor:
        device = self.device
        return denoising_loss(unet, self.noise_scheduler, batch["latents"].to(device), batch["noise"].to(device),
                              batch["timesteps"].to(device), batch["embeds"], batch["pooled"],
                              batch["time_ids"].to(device), self.config.snr_gamma, weights=batch["weights"],
                              per_sample=True)

    def _batch(self, images, latent_cache, buckets, position: int, order_seed: int, generator: torch.Generator,
               masked: bool) -> dict:
        """A batch's inputs: latents drawn from the cache, noise, timesteps, caption embeddings, micro-conditioning
        and the masked loss's weights (None when unmasked)."""
        config = self.config
        indices = bucket_batch(position, buckets, config.batch_size, order_seed)
        flips = (torch.rand(len(indices), generator=generator) < 0.5).tolist() if config.flip_augmentation \
            else [False] * len(indices)
        vae_config = self.pipe.vae.config
        latents = sample_latents([latent_cache[(i, f)] for i, f in zip(indices, flips)], generator,
                                 vae_config.scaling_factor, getattr(vae_config, "shift_factor", None))
        noise = torch.randn(latents.shape, generator=generator)
        if config.noise_offset:
            noise += config.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(indices),),
                                  generator=generator)
        captions = [training_caption(images[i].caption, generator, config.caption_dropout,
                                     config.shuffle_caption_tags, config.keep_tokens) for i in indices]
        embeds, pooled = self._embeddings(captions)
        time_ids = torch.stack([images[i].time_ids(f) for i, f in zip(indices, flips)])
        weights = self._batch_weights(list(zip(indices, flips))) if masked else None
        return {"latents": latents, "noise": noise, "timesteps": timesteps, "embeds": embeds, "pooled": pooled,
                "time_ids": time_ids, "weights": weights, "captions": captions}

    # ---- saving
    def _state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        return adapter_state_dicts({name: self.accelerator.unwrap_model(m) for name, m in self.wrapped.items()})

    def _lora_configs(self) -> dict[str, dict]:
        return {name: jsonable(module.peft_config[ADAPTER_NAME].to_dict()) for name, module in self.modules.items()}

    def _embedding_rows(self) -> tuple[str, dict[str, torch.Tensor]] | None:
        return (self.embedding.trigger, self.embedding.rows()) if self.embedding is not None else None

    def _checkpoint(self, render: bool = True) -> None:
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            validation_loss = self._record_validation_loss()
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                     "lr_scheduler": self.lr_scheduler.state_dict(), "rng": capture_rng_state(),
                     "loss_ema": self.ema, "optimizer_name": self.optimizer_name}
            save_checkpoint(self.run_dir, self.step, self._state_dicts(), self._lora_configs(), state,
                            self.config.checkpoints_to_keep,
                            made_with={**self.profile.describe(), "validation_loss": validation_loss},
                            protect=self._best_step(), embedding=self._embedding_rows())
            if render:
                self._score(self._render_validation())
            self._write_loss_files()
        accelerator.wait_for_everyone()

    def _score(self, images: list[Path]) -> None:
        """This checkpoint's validation images scored against the references; kept beside the checkpoints."""
        if self.score_checkpoint is None or not images:
            return
        self.scores = [s for s in self.scores if s["step"] != self.step]
        self.scores.append({"step": self.step, **{k: float(v) for k, v in self.score_checkpoint(images).items()},
                            **({"validation_loss": self.validation_losses[self.step]}
                               if self.step in self.validation_losses else {}),
                            **(self._check_edits() if self.edit_check is not None else {})})
        write_checkpoint_scores(self.run_dir, self.scores)

    def _best_step(self) -> int | None:
        best = guarded_checkpoint(self.scores)[0] if self.config.select_best_checkpoint else None
        return best["step"] if best else None

    def _plateau(self) -> bool:
        """Flat validation quality (``lora_files.plateaued``): checked before every step, so a run resumed after
        its plateau stops at once. One process only: rank 0 alone scores checkpoints."""
        if self.accelerator.num_processes > 1 or not plateaued(self.scores, self.config.plateau_checkpoints):
            return False
        self.stopped_early = (f"validation quality flat over the last {self.config.plateau_checkpoints} "
                              f"checkpoints (best step {best_checkpoint(self.scores)['step']})")
        return True

    def _load_weights(self, checkpoint: Path) -> dict:
        """The checkpoint's LoRA weights into this run's adapter; returns its training state."""
        from peft.utils import set_peft_model_state_dict

        state_dicts, state = load_checkpoint(checkpoint)
        for name, module in self.modules.items():
            set_peft_model_state_dict(module, state_dicts[name], adapter_name=ADAPTER_NAME)
        saved = find_embedding(checkpoint) if self.embedding is not None else None
        if saved is not None:  # check_init_weights and check_resumable made sure it is there when it should be
            self.embedding.load(read_embedding(saved)[1])
        return state

    def _resume(self, checkpoint: Path) -> None:
        state = self._load_weights(checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        restore_rng_state(state["rng"])
        self.step, self.ema = state["step"], state["loss_ema"]
        self.rows = read_loss_log(self.run_dir / LOSS_LOG, up_to_step=self.step)
        self.validation_losses = {r["step"]: r["validation_loss"] for r in self.rows if "validation_loss" in r}
        self.scores = [s for s in read_checkpoint_scores(self.run_dir) if s["step"] <= self.step]

    def _render_validation(self) -> list[Path]:
        """This checkpoint's validation images (fixed seeds), also sent to TensorBoard when it is on; the edit
        check's images are drawn beside them (one batch on tiny) and scored by ``_check_edits``."""
        config = self.config
        if not config.validation_images:
            return []
        check = self.edit_check if self.score_checkpoint is not None else None
        with self._evaluating():
            paths, self.edit_images, edit_s = draw_checkpoint_images(
                self.pipe, config, check, self.run_dir / "validation", self.step, 0 if self.profile.is_tiny else 1)
        self.edit_check_s += edit_s
        self.validation_paths.extend(paths)
        tracker = next((t for t in self.accelerator.trackers if t.name == "tensorboard"), None)
        if tracker is not None:
            import numpy as np
            from PIL import Image

            arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
            tracker.writer.add_images("validation", arrays, self.step, dataformats="NHWC")
        return paths

    @contextmanager
    def _evaluating(self):
        for module in self.modules.values():
            module.eval()
        try:
            with torch.no_grad(), self.accelerator.autocast():
                yield
        finally:
            for module in self.modules.values():
                module.train()

    def _check_edits(self) -> dict[str, float]:
        """This checkpoint's editability on the edit check's images (drawn with the validation images); the
        seconds spent scoring them are counted with their share of the drawing."""
        started = time.perf_counter()
        figures = {key: float(value) for key, value in self.edit_check(self.edit_images).items()}
        self.edit_check_s += time.perf_counter() - started
        return figures

    def _write_loss_files(self) -> None:
        write_loss_log(self.run_dir / LOSS_LOG, self.rows)
        draw_loss_curve(self.run_dir / LOSS_CURVE, self.rows, title=f"{self.config.output_name}: loss per step",
                        scores=self.scores, best_step=self._best_step())

    def _write_run_config(self) -> None:
        if self.accelerator.is_main_process:
            atomic_write_json(self.run_dir / RUN_CONFIG, {
                **self.profile.describe(), "config": self.config.as_dict(), "dataset_sha256": self.dataset_hash,
                "images": [{"path": str(i.path), "sha256": i.sha256, "caption": i.caption} for i in self.images],
                "started_at": iso_timestamp(self.started_at), "num_processes": self.accelerator.num_processes})

    def _finish(self) -> TrainResult:
        """Final checkpoint, then the LoRA files — the best-scoring checkpoint's weights (or the last step's),
        written only now, each by rename."""
        config = self.config
        if config.checkpoint_every and not (self.run_dir / f"{CHECKPOINT_PREFIX}{self.step:06d}").is_dir():
            self._checkpoint()
        elif not config.checkpoint_every and self.accelerator.is_main_process:
            self._record_validation_loss()
            self._score(self._render_validation())
            self._write_loss_files()
        lora_path = self.run_dir / DIFFUSERS_WEIGHTS
        kohya_path = self.run_dir / f"{config.output_name}.safetensors"
        self.chosen = self._choose_checkpoint()
        if self.accelerator.is_main_process:
            chosen_dir = self.run_dir / f"{CHECKPOINT_PREFIX}{self.chosen['step']:06d}"
            state_dicts = load_checkpoint(chosen_dir)[0] if self.chosen["step"] != self.step else self._state_dicts()
            finished_at = time.time()
            metadata = kohya_metadata(
                config.replace(optimizer=self.optimizer_name), self.profile, steps=self.chosen["step"],
                epochs=(epochs_for(self.chosen["step"], self.buckets, config.batch_size, config.gradient_accumulation),
                        epochs_for(config.steps, self.buckets, config.batch_size, config.gradient_accumulation)),
                dataset_hash=self.dataset_hash, captions=[i.caption for i in self.images],
                dataset_dir=dataset_dir(self.images), started_at=self.started_at, finished_at=finished_at,
                prediction_type=self.noise_scheduler.config.prediction_type, optimizer=self.optimizer_class,
                buckets=bucket_counts(self.buckets) if config.bucketing else None)
            if self.chosen["step"] in self.validation_losses:  # kohya logs it (val_loss) but writes no ss_ key
                metadata["aldar_validation_loss"] = f"{self.validation_losses[self.chosen['step']]:.6g}"
            if self.embedding is not None:
                rows = (read_embedding(embedding_file(chosen_dir, config.trigger_token))[1]
                        if self.chosen["step"] != self.step else self.embedding.rows())
                # the embedding first: a LoRA file beside no embedding would draw without its trigger's tokens
                save_embedding(embedding_file(self.run_dir, config.trigger_token), rows, config.trigger_token)
                metadata["aldar_trigger_embedding"] = embedding_file(Path("."), config.trigger_token).as_posix()
            export_lora(lora_path, kohya_path, state_dicts, self._lora_configs(), config.alpha, metadata,
                        config.save_precision)
        self.accelerator.wait_for_everyone()  # other processes return only once the files exist
        result = self._result(interrupted=False, lora_path=lora_path, kohya_path=kohya_path)
        if self.accelerator.is_main_process:
            atomic_write_json(self.run_dir / "training_summary.json",
                              {**self.profile.describe(), **result.as_dict(), "config": config.as_dict(),
                               "optimizer_used": self.optimizer_name, "dataset_sha256": self.dataset_hash,
                               "started_at": iso_timestamp(self.started_at), "finished_at": iso_timestamp()})
        return result

    def _choose_checkpoint(self) -> dict:
        """Which step's weights the run hands over, with the reason (report.html shows it)."""
        on_disk = {int(p.name[len(CHECKPOINT_PREFIX):]) for p in checkpoint_dirs(self.run_dir)} | {self.step}
        return chosen_checkpoint(self.scores, self.validation_losses, self.config.select_best_checkpoint, on_disk,
                                 self.step)

    def _result(self, interrupted: bool, lora_path: Path | None = None, kohya_path: Path | None = None):
        curve = self.run_dir / LOSS_CURVE
        return TrainResult(self.run_dir, lora_path, kohya_path, self.step, self.ema, checkpoint_dirs(self.run_dir),
                           self.run_dir / LOSS_LOG, interrupted, curve if curve.is_file() else None,
                           list(self.validation_paths), list(self.scores), getattr(self, "chosen", None),
                           dict(self.validation_losses),
                           stopped_early="" if interrupted else self.stopped_early,
                           edit_check_s=round(self.edit_check_s, 3),
                           embedding_path=embedding_file(self.run_dir, self.config.trigger_token)
                           if self.embedding is not None and lora_path is not None else None)

    def _diverged(self, value: float) -> TrainingError:
        last = latest_checkpoint(self.run_dir)
        where = f"the last good checkpoint is {last.name}" if last else "no checkpoint was saved yet"
        return TrainingError(f"training diverged: loss became {value} at step {self.step + 1} ({where})",
                             f"lower --learning-rate (now {self.config.learning_rate:g}), use --mixed-precision "
                             "bf16 instead of fp16, or raise --snr-gamma; rerun with --resume to continue")
