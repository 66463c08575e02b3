"""The checkpoints' edit check: a few of the prompt suite's new-context prompts drawn at each checkpoint the guard
may keep (``could_be_kept``), so that the checkpoint a round keeps is chosen with the same guard as the ranking of
rounds (``tools.scoring.guard``): the best-scoring checkpoint whose editability is not clearly worse than another
checkpoint's."""

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


def could_be_kept(scores: list[dict], quality: float) -> bool:
    """Is a checkpoint of validation ``quality`` one the guard may keep, so worth its edit check? The first scored
    checkpoint (nearest the base: what the later ones' editability is held to) and each one scoring at least the
    checkpoint the guard keeps so far (``guarded_checkpoint`` of the earlier ``scores``). One below it could be
    kept only if the guard later passed over the kept one and every better one, and the guard keeps the best
    *checked* one: while the kept checkpoint follows the best quality, this checks about half a round's
    checkpoints; once the guard passes over a high one, every later checkpoint above the kept one is checked."""
    from tools.training.lora_files import guarded_checkpoint

    return not scores or quality >= guarded_checkpoint(scores)[0]["quality"]


def draw_checkpoint_images(pipe, config, prompts_and_seeds: list[tuple[str, int, Path]], batch: int) -> float:
    """Draw each (prompt, seed, path) with the training pipeline (adapter on, eval mode: the caller's) at the
    validation sampling, ``batch`` images per pipe call (0: all in one — on a CPU a batch of eight takes a third
    of eight single calls; each image's noise is its own seed's either way). Returns the seconds it took."""
    size = batch if batch > 0 else max(len(prompts_and_seeds), 1)
    started = time.perf_counter()
    for first in range(0, len(prompts_and_seeds), size):
        chunk = prompts_and_seeds[first:first + size]
        negative = [config.validation_negative_prompt] * len(chunk) if config.validation_negative_prompt else None
        images = pipe([prompt for prompt, _, _ in chunk], negative_prompt=negative, height=config.resolution,
                      width=config.resolution, num_inference_steps=config.validation_inference_steps,
                      guidance_scale=config.effective_validation_guidance_scale,
                      generator=[torch.Generator().manual_seed(seed) for _, seed, _ in chunk]).images
        for image, (_, _, path) in zip(images, chunk):
            atomic_write(path, lambda tmp, img=image: img.save(tmp, format="PNG"))
    return time.perf_counter() - started


def validation_jobs(config, folder: Path, step: int) -> list[tuple[str, int, Path]]:
    """A checkpoint's validation images: the validation prompt, image ``i`` at seed ``config.seed + i``."""
    return [(config.effective_validation_prompt, seed, folder / f"step-{step:06d}-seed-{seed}.png")
            for seed in range(config.seed, config.seed + config.validation_images)]


def edit_check_jobs(check: EditCheck, folder: Path, step: int) -> list[list[tuple[str, int, Path]]]:
    """A checkpoint's edit check images, grouped by prompt: each of ``check.prompts`` at ``check.seeds``."""
    return [[(prompt, seed, folder / f"step-{step:06d}-suite{index}-seed-{seed}.png") for seed in check.seeds]
            for index, prompt in enumerate(check.prompts)]
