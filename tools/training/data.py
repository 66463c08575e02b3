"""Training data for the LoRA trainer: images cropped once, VAE latents and text embeddings cached.

The reference trainer re-encodes every image with the VAE at every step; here each image (and its
mirror when flip augmentation is on) is encoded once per process — and, optionally, once per machine
on disk, keyed by the image's sha256 and the VAE's identity. The latent *distribution* (mean, std) is
cached, not one sample, so each step still draws a fresh latent exactly as without the cache.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from tools.character import has_trigger
from tools.errors import InputError
from tools.images import file_sha256, load_image
from tools.paths import aldar_cache

_MEMORY_LATENTS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # key -> (mean, std), CPU fp32


@dataclass
class TrainingImage:
    """One (image, caption) pair resized to cover its bucket and centre-cropped to it."""

    path: Path
    caption: str
    sha256: str
    original_size: tuple[int, int]  # (height, width) before resizing, as SDXL's add_time_ids expect
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image
    resized_size: tuple[int, int]   # (height, width) after resizing, before cropping
    pixels: torch.Tensor            # (3, H, W) in [-1, 1], (H, W) = the bucket
    mask: torch.Tensor | None = None  # (1, H, W) in [0, 1], 1 = the character (masked loss); cropped as pixels
    mask_sha256: str = ""

    @property
    def bucket(self) -> tuple[int, int]:
        """(height, width) this image trains at: its aspect-ratio bucket (a square without bucketing)."""
        return tuple(self.pixels.shape[1:])

    def time_ids(self, flipped: bool) -> torch.Tensor:
        """SDXL micro-conditioning: original size, crop top-left, target size (mirrored crop when flipped)."""
        top, left = self.crop_top_left
        height, width = self.bucket
        if flipped:
            left = self.resized_size[1] - left - width
        return torch.tensor([*self.original_size, top, left, height, width], dtype=torch.float32)


def bucket_sizes(resolution: int, step: int) -> list[tuple[int, int]]:
    """kohya-style buckets: (height, width) in multiples of ``step`` holding at most ``resolution``^2 pixels,
    each side between half and twice ``resolution`` (aspect ratios up to 4:1)."""
    area, sizes = resolution * resolution, set()
    for width in range(max(step, resolution // 2 // step * step), 2 * resolution + 1, step):
        height = min(2 * resolution, area // width // step * step)
        if height >= resolution // 2 and height >= step:
            sizes.update({(height, width), (width, height)})
    return sorted(sizes)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to ``size`` (height, width) in log scale; larger on ties."""
    aspect = math.log(size[1] / size[0])
    return min(buckets, key=lambda b: (abs(math.log(b[1] / b[0]) - aspect), -b[0] * b[1]))


def prepare_images(dataset: list[tuple[Path, str]], resolution: int, bucket_step: int | None = None,
                   masks: dict[Path, Image.Image] | None = None) -> list[TrainingImage]:
    """Load every image and fit it to its bucket (``bucket_step``) or a ``resolution`` square; InputError for
    bad pairs. Fitting = resize to cover the target, centre-crop the (small, with buckets) excess; an image's
    mask (``masks``, from ``load_masks``) is resized and cropped with it."""
    if not dataset:
        raise InputError("the training dataset is empty", "pass at least one (image, caption) pair / reference image")
    buckets = bucket_sizes(resolution, bucket_step) if bucket_step else None
    images = []
    for entry in dataset:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
            raise InputError(f"dataset entry {entry!r} is not an (image path, caption) pair",
                             "pass a list of (Path, str) tuples")
        path, caption = Path(entry[0]), entry[1]
        if not isinstance(caption, str) or not caption.strip():
            raise InputError(f"caption for {path.name} is empty", "give every image a caption with the trigger token")
        image = load_image(path)
        target = nearest_bucket((image.height, image.width), buckets) if buckets else (resolution, resolution)
        images.append(_fit(image, path, caption.strip(), target, (masks or {}).get(path)))
    return images


def _fit(image: Image.Image, path: Path, caption: str, target: tuple[int, int],
         mask: Image.Image | None = None) -> TrainingImage:
    original = (image.height, image.width)
    height_out, width_out = target
    scale = max(height_out / image.height, width_out / image.width)
    width, height = max(width_out, round(image.width * scale)), max(height_out, round(image.height * scale))
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    top, left = (height - height_out) // 2, (width - width_out) // 2
    cropped = resized.crop((left, top, left + width_out, top + height_out))
    array = np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0
    pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    fitted = None
    if mask is not None:  # the same resize and crop as the picture: the mask stays on the character
        box = (left, top, left + width_out, top + height_out)
        mask_array = np.asarray(mask.convert("L").resize((width, height), Image.Resampling.BILINEAR).crop(box),
                                dtype=np.float32) / 255.0
        fitted = torch.from_numpy(mask_array).unsqueeze(0).contiguous()
    return TrainingImage(path, caption, file_sha256(path), original, (top, left), (height, width), pixels, fitted,
                         hashlib.sha256(fitted.numpy().tobytes()).hexdigest()[:16] if fitted is not None else "")


# --------------------------------------------------------------------------- masks
MASKS_FOLDER = "masks"


def load_masks(paths: list[Path]) -> tuple[dict[Path, Image.Image], list[str]]:
    """Each reference's character mask for ``--masked-loss`` (white = character), as kohya reads them: a file of the
    same name (or stem, as .png) in a ``masks/`` folder beside the references, else the image's alpha channel.

    Returns (masks by path, notes): a mask of another size than its picture is resized (noted); references
    without a mask train unmasked (listed in one note). InputError for an all-black mask (it would train nothing)
    or when no reference has a mask.
    """
    masks, notes, unmasked, resized = {}, [], [], []
    for path in map(Path, paths):
        mask = _mask_file(path) or _alpha_mask(path)
        if mask is None:
            unmasked.append(path.name)
            continue
        if np.asarray(mask).max() == 0:
            raise InputError(f"the mask of {path.name} is all black: masked loss would train nothing on it",
                             f"paint the character white in {path.parent / MASKS_FOLDER / path.name}, or remove "
                             "that mask")
        with Image.open(path) as picture:
            size = ImageOps.exif_transpose(picture).size
        if mask.size != size:
            resized.append(f"{path.name} ({mask.size[0]}x{mask.size[1]} -> {size[0]}x{size[1]})")
            mask = mask.resize(size, Image.Resampling.BILINEAR)
        masks[path] = mask
    if not masks:
        raise InputError("--masked-loss found no mask for any reference",
                         f"put {MASKS_FOLDER}/<same file name>.png beside the references (white = the character) or "
                         "use pictures with an alpha channel; or drop --masked-loss")
    if resized:
        notes.append(f"masks resized to their picture: {', '.join(resized)}")
    if unmasked:
        notes.append(f"no mask for {', '.join(unmasked)}: trained unmasked (whole picture)")
    return masks, notes


def _mask_file(path: Path) -> Image.Image | None:
    folder = path.parent / MASKS_FOLDER
    for candidate in (folder / path.name, folder / f"{path.stem}.png"):
        if candidate.is_file():
            try:
                with Image.open(candidate) as opened:
                    return ImageOps.exif_transpose(opened).convert("L")  # upright, as its picture
            except (OSError, SyntaxError, ValueError):
                raise InputError(f"mask {candidate} is not an image PIL can read",
                                 "save it as a black-and-white PNG of the picture's size, or remove it") from None
    return None


def _alpha_mask(path: Path) -> Image.Image | None:
    """The alpha channel of a picture that has a real one (not fully opaque), else None."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
            return None
        alpha = image.convert("RGBA").getchannel("A")
    return alpha if alpha.getextrema()[0] < 255 else None


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


def cached_latent_distributions(images: list[TrainingImage], vae, vae_id: str, flips: bool,
                                disk_dir: Path | None) -> dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]]:
    """(image index, flipped) -> (mean, std) of the VAE latent at the image's bucket, encoding only what no
    cache holds (the key names the bucket and crop, so a new bucket size never reuses another's latent)."""
    out = {}
    for index, image in enumerate(images):
        for flipped in ((False, True) if flips else (False,)):
            fit = f"{image.bucket[0]}x{image.bucket[1]}@{image.crop_top_left[0]},{image.crop_top_left[1]}"
            if image.mask_sha256:  # kohya caches the mask beside the latent: a new mask is a new entry
                fit += f"|mask{image.mask_sha256}"
            key = hashlib.sha256(f"{image.sha256}|{vae_id}|{fit}|{int(flipped)}".encode()).hexdigest()[:32]
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
    return aldar_cache("latents")


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


def bucket_batch(batch_number: int, buckets: list[tuple[int, int]], batch_size: int, seed: int) -> list[int]:
    """Image indices of batch ``batch_number``: every batch from one bucket (its latents stack), each image once
    per epoch, a fresh shuffle per epoch — a pure function of (seed, position), which makes resuming exact
    without saving any data-loader state. A bucket's last batch may be smaller (as kohya's)."""
    epoch_batches = _epoch_batches(buckets, batch_size, seed, 0)
    epoch, position = divmod(batch_number, len(epoch_batches))
    return _epoch_batches(buckets, batch_size, seed, epoch)[position] if epoch else epoch_batches[position]


def _epoch_batches(buckets: list[tuple[int, int]], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(buckets), generator=generator).tolist()
    groups: dict[tuple[int, int], list[int]] = {}
    for index in order:
        groups.setdefault(buckets[index], []).append(index)
    batches = [members[i:i + batch_size] for _, members in sorted(groups.items())
               for i in range(0, len(members), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def epochs_for(steps: int, buckets: list[tuple[int, int]], batch_size: int, gradient_accumulation: int) -> int:
    """Epochs that ``steps`` optimizer steps run through (kohya's ss_num_epochs)."""
    return math.ceil(steps * gradient_accumulation / len(_epoch_batches(buckets, batch_size, 0, 0)))


def caption_tags(caption: str) -> list[str]:
    """A caption's comma-separated tags, as kohya splits them (shuffling, ``ss_tag_frequency``)."""
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def training_caption(caption: str, generator: torch.Generator, dropout: float, shuffle: bool, keep: int) -> str:
    """The caption one sample trains on: empty with chance ``dropout``, else its tags after the first ``keep``
    shuffled (kohya's caption_dropout_rate / shuffle_caption / keep_tokens). Random draws come from
    ``generator`` (seeded by position), so resuming replays them exactly."""
    drop = bool(torch.rand((), generator=generator) < dropout) if dropout else False
    if drop:
        return ""
    if not shuffle:
        return caption
    tags = caption_tags(caption)
    head, tail = tags[:keep], tags[keep:]
    tail = [tail[i] for i in torch.randperm(len(tail), generator=generator).tolist()]
    return ", ".join(head + tail)


def check_trigger_in_captions(images, trigger: str) -> None:
    """Output preservation holds each caption without the trigger to the base model: a caption without it would be
    trained toward the references and held to the base at once. ``InputError`` naming the first such picture."""
    for image in images:
        if not has_trigger(image.caption, trigger):
            raise InputError(f"output preservation needs the trigger word {trigger!r} in every caption; "
                             f"{image.path.name}'s has none ({image.caption!r})",
                             "add the trigger word to its caption (or pass the --trigger-token the captions use), "
                             "or drop --output-preservation")


def check_run_dir(run_dir: Path) -> None:
    """``InputError`` before any work when ``run_dir`` (or the nearest existing folder above it) is a file."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"run folder {run_dir} cannot be created: {existing} is a file",
                         "pass --run-dir DIR with a folder path")


def position_seed(*parts: int) -> int:
    """A stable seed per (seed, rank, step, micro-batch): Python's hash() is not promised to stay the same."""
    return int(hashlib.sha256("-".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def dataset_dir(images) -> str:
    """The references' folder name (kohya keys ss_tag_frequency and ss_dataset_dirs by dataset folder)."""
    parents = {image.path.parent.name for image in images}
    return parents.pop() if len(parents) == 1 else "references"


def bucket_counts(buckets: list[tuple[int, int]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for height, width in buckets:
        counts[f"{width}x{height}"] = counts.get(f"{width}x{height}", 0) + 1
    return dict(sorted(counts.items()))
