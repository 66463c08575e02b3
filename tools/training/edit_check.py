"""The checkpoints' edit check: a few of the prompt suite's new-context prompts drawn at every checkpoint, so that
the checkpoint a round keeps is chosen with the same guard as the ranking of rounds (``tools.scoring.guard``):
the best-scoring checkpoint whose editability is not clearly worse than another checkpoint's."""

from __future__ import annotations

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


def draw_edit_check(pipe, config, check: EditCheck, folder: Path, step: int) -> dict[str, float]:
    """Draw ``check``'s prompts with the training pipeline (adapter on, eval mode: the caller's) at the validation
    sampling — every prompt's images in one batch, image ``i`` of a prompt at ``check.seeds[i]`` — and score them."""
    prompts = [prompt for prompt in check.prompts for _ in check.seeds]
    negative = [config.validation_negative_prompt] * len(prompts) if config.validation_negative_prompt else None
    images = pipe(prompts, negative_prompt=negative, height=config.resolution, width=config.resolution,
                  num_inference_steps=config.validation_inference_steps,
                  guidance_scale=config.effective_validation_guidance_scale,
                  generator=[torch.Generator().manual_seed(seed) for _ in check.prompts for seed in check.seeds]).images
    paths = [folder / f"step-{step:06d}-suite{index}-seed-{seed}.png"
             for index in range(len(check.prompts)) for seed in check.seeds]
    for image, path in zip(images, paths):
        atomic_write(path, lambda tmp, img=image: img.save(tmp, format="PNG"))
    count = len(check.seeds)
    per_prompt = [paths[i:i + count] for i in range(0, len(paths), count)]
    return {key: float(value) for key, value in check(per_prompt).items()}
