"""The checkpoints' edit check: a few of the prompt suite's new-context prompts drawn at every checkpoint, so that
the checkpoint a round keeps is chosen with the same guard as the ranking of rounds (``tools.scoring.guard``):
the best-scoring checkpoint whose editability is not clearly worse than another checkpoint's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import torch

from tools.atomic import atomic_write


class EditCheck(Protocol):
    """The prompts and seeds to draw at each checkpoint (the suite's seeds: image ``i`` of a prompt at
    ``seeds[i]``), and the checkpoint's editability on them ({"editability": share, "editability_images": n})."""

    prompts: list[str]
    seeds: list[int]

    def __call__(self, images: list[list[Path]]) -> dict[str, float]: ...


def draw_checkpoint_images(pipe, config, check: EditCheck | None, folder: Path, step: int,
                           batch: int) -> tuple[list[Path], list[list[Path]], float]:
    """A checkpoint's validation images (the validation prompt, image ``i`` at seed ``config.seed + i``) and, with
    ``check``, the edit check's (each prompt at ``check.seeds``), drawn with the training pipeline (adapter on,
    eval mode: the caller's) at the validation sampling, ``batch`` images per pipe call (0: all in one — on a CPU
    a batch of eight takes a third of eight single calls; each image's noise is its own seed's either way).
    Returns the validation paths, the edit check's grouped by prompt, and the edit check's share of the seconds."""
    seeds = [config.seed + index for index in range(config.validation_images)]
    jobs = [(config.effective_validation_prompt, seed, folder / f"step-{step:06d}-seed-{seed}.png") for seed in seeds]
    edits = [(prompt, seed, folder / f"step-{step:06d}-suite{index}-seed-{seed}.png")
             for index, prompt in enumerate(check.prompts if check is not None else []) for seed in check.seeds]
    everything = jobs + edits
    size = batch if batch > 0 else max(len(everything), 1)
    started = time.perf_counter()
    for first in range(0, len(everything), size):
        chunk = everything[first:first + size]
        negative = [config.validation_negative_prompt] * len(chunk) if config.validation_negative_prompt else None
        images = pipe([prompt for prompt, _, _ in chunk], negative_prompt=negative, height=config.resolution,
                      width=config.resolution, num_inference_steps=config.validation_inference_steps,
                      guidance_scale=config.effective_validation_guidance_scale,
                      generator=[torch.Generator().manual_seed(seed) for _, seed, _ in chunk]).images
        for image, (_, _, path) in zip(images, chunk):
            atomic_write(path, lambda tmp, img=image: img.save(tmp, format="PNG"))
    seconds = time.perf_counter() - started
    count = len(check.seeds) if check is not None else 1
    per_prompt = [[path for _, _, path in edits[i:i + count]] for i in range(0, len(edits), count)]
    return [path for _, _, path in jobs], per_prompt, seconds * len(edits) / max(len(everything), 1)
