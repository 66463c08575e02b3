"""Training data for the LoRA trainer: images cropped once, VAE latents and text embeddings cached.

The reference trainer re-encodes every image with the VAE at every step; here each image (and its
mirror when flip augmentation is on) is encoded once per process — and, optionally, once per machine
on disk, keyed by the image's sha256 and the VAE's identity. The latent *distribution* (mean, std) is
cached, not one sample, so each step still draws a fresh latent exactly as without the cache.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tools.errors import InputError
from tools.images import file_sha256, load_image

_MEMORY_LATENTS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # key -> (mean, std), CPU fp32


@dataclass
class TrainingImage:
    """One (image, caption) pair resized and centre-cropped to the training resolution."""

    path: Path
    caption: str
    sha256: str
    original_size: tuple[int, int]  # (height, width) before resizing, as SDXL's add_time_ids expect
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image
    resized_size: tuple[int, int]   # (height, width) after resizing, before cropping
    pixels: torch.Tensor            # (3, R, R) in [-1, 1]

    def time_ids(self, resolution: int, flipped: bool) -> torch.Tensor:
        """SDXL micro-conditioning: original size, crop top-left, target size (mirrored crop when flipped)."""
        top, left = self.crop_top_left
        if flipped:
            left = self.resized_size[1] - left - resolution
        return torch.tensor([*self.original_size, top, left, resolution, resolution], dtype=torch.float32)


def prepare_images(dataset: list[tuple[Path, str]], resolution: int) -> list[TrainingImage]:
    """Load, resize (shorter side = ``resolution``) and centre-crop every image; InputError for bad pairs."""
    if not dataset:
        raise InputError("the training dataset is empty", "pass at least one (image, caption) pair / reference image")
    images = []
    for entry in dataset:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
            raise InputError(f"dataset entry {entry!r} is not an (image path, caption) pair",
                             "pass a list of (Path, str) tuples")
        path, caption = Path(entry[0]), entry[1]
        if not isinstance(caption, str) or not caption.strip():
            raise InputError(f"caption for {path.name} is empty", "give every image a caption with the trigger token")
        images.append(_crop(load_image(path), path, caption.strip(), resolution))
    return images


def _crop(image: Image.Image, path: Path, caption: str, resolution: int) -> TrainingImage:
    original = (image.height, image.width)
    scale = resolution / min(image.size)
    width, height = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    top, left = (height - resolution) // 2, (width - resolution) // 2
    cropped = resized.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0
    pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return TrainingImage(path, caption, file_sha256(path), original, (top, left), (height, width), pixels)


def dataset_sha256(images: list[TrainingImage]) -> str:
    """One hash over the images' bytes and their captions (order-independent), recorded in the LoRA."""
    digest = hashlib.sha256()
    for sha, caption in sorted((img.sha256, img.caption) for img in images):
        digest.update(f"{sha}\t{caption}\n".encode("utf-8"))
    return digest.hexdigest()


# --------------------------------------------------------------------------- latents
def vae_identity(profile, vae) -> str:
    """What makes two VAE encodes equal: the base model (and seed for random tiny weights) and the dtype."""
    seed = f"-seed{profile.seed}" if profile.is_tiny else ""
    return f"{profile.base_model}{seed}-{str(vae.dtype).replace('torch.', '')}"


def cached_latent_distributions(images: list[TrainingImage], vae, vae_id: str, resolution: int, flips: bool,
                                disk_dir: Path | None) -> dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]]:
    """(image index, flipped) -> (mean, std) of the VAE latent, encoding only what no cache holds."""
    out = {}
    for index, image in enumerate(images):
        for flipped in ((False, True) if flips else (False,)):
            key = hashlib.sha256(f"{image.sha256}|{vae_id}|{resolution}|{int(flipped)}".encode()).hexdigest()[:32]
            if key not in _MEMORY_LATENTS:
                _MEMORY_LATENTS[key] = _from_disk(disk_dir, key) or _encode(vae, image.pixels, flipped)
                _to_disk(disk_dir, key, _MEMORY_LATENTS[key])
            out[(index, flipped)] = _MEMORY_LATENTS[key]
    return out


@torch.no_grad()
def _encode(vae, pixels: torch.Tensor, flipped: bool) -> tuple[torch.Tensor, torch.Tensor]:
    batch = pixels.flip(-1) if flipped else pixels
    param = next(vae.parameters())
    dist = vae.encode(batch.unsqueeze(0).to(param.device, param.dtype)).latent_dist
    return dist.mean[0].float().cpu(), dist.std[0].float().cpu()


def _from_disk(disk_dir: Path | None, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    if disk_dir is None or not (disk_dir / f"{key}.safetensors").is_file():
        return None
    from safetensors.torch import load_file

    try:
        data = load_file(str(disk_dir / f"{key}.safetensors"))
        return data["mean"], data["std"]
    except (OSError, KeyError, RuntimeError):
        return None  # a damaged cache entry is re-encoded and overwritten


def _to_disk(disk_dir: Path | None, key: str, value: tuple[torch.Tensor, torch.Tensor]) -> None:
    if disk_dir is None or (disk_dir / f"{key}.safetensors").is_file():
        return
    from safetensors.torch import save_file

    from tools.atomic import atomic_write

    atomic_write(disk_dir / f"{key}.safetensors",
                 lambda tmp: save_file({"mean": value[0].contiguous(), "std": value[1].contiguous()}, str(tmp)))


def default_latent_cache_dir() -> Path:
    return Path(os.environ.get("ALDAR_CACHE", Path.home() / ".cache" / "aldar")) / "latents"


def clear_latent_cache() -> None:
    """Forget the in-memory latents (tests and benchmarks measure cold encodes with this)."""
    _MEMORY_LATENTS.clear()


def sample_latents(dists: list[tuple[torch.Tensor, torch.Tensor]], generator: torch.Generator,
                   scaling_factor: float, shift_factor: float | None) -> torch.Tensor:
    """Draw one latent per cached distribution and scale it as the UNet expects."""
    mean = torch.stack([d[0] for d in dists])
    std = torch.stack([d[1] for d in dists])
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    return (sample - (shift_factor or 0.0)) * scaling_factor


# --------------------------------------------------------------------------- text
def encode_prompts(captions: list[str], tokenizers: list, text_encoders: list,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL prompt embeddings: penultimate hidden states of both encoders side by side, pooled from the last."""
    hidden_states, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        output = encoder(ids.to(device), output_hidden_states=True)
        if output[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds first
            pooled = output[0]
        hidden_states.append(output.hidden_states[-2])
    return torch.cat(hidden_states, dim=-1), pooled


def batch_indices(sample_counter: int, batch_size: int, dataset_size: int, seed: int) -> list[int]:
    """Indices of the next batch: a fresh shuffle per epoch, a pure function of (seed, position).

    Being a pure function of the position makes resuming exact without saving any data-loader state.
    """
    indices = []
    for n in range(sample_counter, sample_counter + batch_size):
        epoch, position = divmod(n, dataset_size)
        order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices.append(int(order[position]))
    return indices
