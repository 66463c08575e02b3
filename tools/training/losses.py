"""The denoising objective the trainer minimises (min-SNR weighting, masked loss) and the fixed-noise
evaluation loss that says whether a UNet learnt its training images."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from tools.training.data import cached_latent_distributions, encode_prompts, prepare_images, vae_identity


def denoising_loss(unet, noise_scheduler, latents, noise, timesteps, prompt_embeds, pooled_embeds, time_ids,
                   snr_gamma: float = 0.0, weights: torch.Tensor | None = None,
                   per_sample: bool = False) -> torch.Tensor:
    """SDXL's training objective: predict the added noise (or velocity); min-SNR weighting when gamma > 0.

    ``weights`` (batch, 1, h, w) on the latent grid weigh each latent pixel (masked loss: the character's mask
    average-pooled, kohya's ``apply_masked_loss``); None weighs all alike. ``per_sample``: one loss per batch item
    (prior preservation weighs the class images' part apart)."""
    dtype = next(unet.parameters()).dtype
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy.to(dtype), timesteps, prompt_embeds.to(dtype),
                      added_cond_kwargs={"text_embeds": pooled_embeds.to(dtype), "time_ids": time_ids.to(dtype)},
                      return_dict=False)[0].float()
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
