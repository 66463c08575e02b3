"""The denoising objective the trainer minimises (min-SNR weighting, masked loss) and the fixed-noise
evaluation loss that says whether a UNet learnt its training images."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from tools.training.data import (cached_latent_distributions, encode_prompts, position_seed, prepare_images,
                                 vae_identity)

# Validation loss: every reference at these fractions of the noise schedule, each with its own seeded noise.
VALIDATION_TIMESTEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def denoising_loss(unet, noise_scheduler, latents, noise, timesteps, prompt_embeds, pooled_embeds, time_ids,
                   snr_gamma: float = 0.0, weights: torch.Tensor | None = None,
                   per_sample: bool = False) -> torch.Tensor:
    """SDXL's training objective: predict the added noise (or velocity); min-SNR weighting when gamma > 0.

    ``weights`` (batch, 1, h, w) on the latent grid weigh each latent pixel (masked loss: the character's mask
    average-pooled, kohya's ``apply_masked_loss``); None weighs all alike. ``per_sample``: one loss per batch item
    (prior preservation weighs the class images' part apart)."""
    prediction = predict(unet, noise_scheduler.add_noise(latents, noise, timesteps), timesteps, prompt_embeds,
                         pooled_embeds, time_ids)
    kind = noise_scheduler.config.prediction_type
    target = noise_scheduler.get_velocity(latents, noise, timesteps) if kind == "v_prediction" else noise
    if not snr_gamma and weights is None and not per_sample:
        return F.mse_loss(prediction, target.float())
    squared = F.mse_loss(prediction, target.float(), reduction="none")
    if weights is not None:
        squared = squared * weights.to(squared.device, squared.dtype)
    losses = squared.mean(dim=list(range(1, prediction.ndim)))
    if snr_gamma:
        losses = losses * min_snr_weights(noise_scheduler, timesteps, snr_gamma)
    return losses if per_sample else losses.mean()


def predict(unet, noisy, timesteps, prompt_embeds, pooled_embeds, time_ids) -> torch.Tensor:
    """The UNet's prediction (noise or velocity) for ``noisy`` latents, in float32."""
    dtype = next(unet.parameters()).dtype
    return unet(noisy.to(dtype), timesteps, prompt_embeds.to(dtype),
                added_cond_kwargs={"text_embeds": pooled_embeds.to(dtype), "time_ids": time_ids.to(dtype)},
                return_dict=False)[0].float()


def output_preservation_loss(unet, noise_scheduler, latents, noise, timesteps, base_embeds, embeds, time_ids,
                             adapters_off) -> torch.Tensor:
    """Differential output preservation (ai-toolkit's DOP), per sample: the adapted UNet's prediction for a
    caption without the trigger, against the base model's own (``adapters_off()``: the trained adapters switched
    off) on the same noisy latents — what the base draws for it is what the LoRA should draw. ``base_embeds`` and
    ``embeds``: (prompt, pooled) embeddings of those captions by the base's and the adapted text encoders (the
    same pair when the encoders do not train). Plain MSE, as ai-toolkit's: no min-SNR weighting, no mask."""
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    with torch.no_grad(), adapters_off():
        target = predict(unet, noisy, timesteps, *base_embeds, time_ids)
    prediction = predict(unet, noisy, timesteps, *embeds, time_ids)
    return F.mse_loss(prediction, target, reduction="none").mean(dim=list(range(1, prediction.ndim)))


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample min-SNR-gamma loss weights (Hang et al. 2023), kohya's convention.

    epsilon: ``min(SNR, gamma) / SNR``; v-prediction: ``min(SNR, gamma) / (SNR + 1)``. This is kohya's
    ``apply_snr_weight`` and what diffusers' training examples do today. Older diffusers examples added
    1 to the SNR *before* clamping on v-prediction (``min(SNR + 1, gamma) / (SNR + 1)``), which weighs
    the noisiest timesteps more. We follow kohya so that a LoRA's ``ss_min_snr_gamma`` means what it
    means to the kohya/A1111 users who read that metadata, and because it is the paper's v-loss weight.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    v_prediction = noise_scheduler.config.prediction_type == "v_prediction"
    return torch.clamp(snr, max=gamma) / (snr + 1 if v_prediction else snr)


def validation_items(sets, vae_config, train_timesteps: int, seed: int) -> list[dict]:
    """What the validation loss is measured on: each picture's latent mean (no sampling), its caption, fixed
    timesteps with noise seeded by (seed, picture) — the same numbers at every checkpoint and round. ``sets``:
    (images, latent cache, masked-loss weights function or None) per group of pictures."""
    scale, shift = vae_config.scaling_factor, getattr(vae_config, "shift_factor", None)
    timesteps = torch.tensor([int(f * train_timesteps) for f in VALIDATION_TIMESTEP_FRACTIONS])
    pictures = [(i, image, cache, weigh) for images, cache, weigh in sets for i, image in enumerate(images)]
    items = []
    for number, (index, image, cache, weigh) in enumerate(pictures):
        latent = ((cache[(index, False)][0] - (shift or 0.0)) * scale).unsqueeze(0)
        latents = latent.expand(len(timesteps), *latent.shape[1:])
        generator = torch.Generator().manual_seed(position_seed(seed, 104729, number))
        noise = torch.randn(latents.shape, generator=generator)
        weights = weigh([(index, False)]) if weigh is not None else None
        items.append({"latents": latents, "noise": noise, "timesteps": timesteps, "caption": image.caption,
                      "time_ids": image.time_ids(False).unsqueeze(0).expand(len(timesteps), -1),
                      "weights": None if weights is None else weights.expand(len(timesteps), -1, -1, -1)})
    return items


@torch.no_grad()
def evaluation_loss(pipe, profile, dataset: list[tuple[Path, str]], resolution: int, seed: int = 0,
                    timesteps: tuple[int, ...] = (100, 300, 500, 700, 900)) -> float:
    """Mean plain-MSE denoising loss of ``pipe``'s UNet on ``dataset`` at fixed noise, timesteps and latents.

    A yardstick for "did it learn": lower after training than before on the training images.
    """
    from diffusers import DDPMScheduler

    images = prepare_images(dataset, resolution)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    dists = cached_latent_distributions(images, pipe.vae, vae_identity(profile, pipe.vae), False, None)
    device, generator, losses = pipe.unet.device, torch.Generator().manual_seed(seed), []
    for index, image in enumerate(images):
        latent = (dists[(index, False)][0] - (getattr(pipe.vae.config, "shift_factor", None) or 0.0))
        latent = (latent * pipe.vae.config.scaling_factor).unsqueeze(0).to(device)
        embeds, pooled = encode_prompts([image.caption], [pipe.tokenizer, pipe.tokenizer_2],
                                        [pipe.text_encoder, pipe.text_encoder_2], device)
        for t in timesteps:
            noise = torch.randn(latent.shape, generator=generator).to(device)
            losses.append(denoising_loss(pipe.unet, scheduler, latent, noise, torch.tensor([t], device=device),
                                         embeds, pooled, image.time_ids(False).unsqueeze(0).to(device))
                          .item())
    return sum(losses) / len(losses)
