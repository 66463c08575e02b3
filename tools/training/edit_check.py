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
    """Draw ``check``'s prompts with the training pipeline (adapter on, eval mode: the caller's) as the suite
    draws them — a prompt's images in one batch, at the validation sampling — and score them."""
    per_prompt = []
    for index, prompt in enumerate(check.prompts):
        count = len(check.seeds)
        negative = [config.validation_negative_prompt] * count if config.validation_negative_prompt else None
        images = pipe([prompt] * count, negative_prompt=negative, height=config.resolution,
                      width=config.resolution, num_inference_steps=config.validation_inference_steps,
                      guidance_scale=config.effective_validation_guidance_scale,
                      generator=[torch.Generator().manual_seed(seed) for seed in check.seeds]).images
        paths = [folder / f"step-{step:06d}-suite{index}-seed-{seed}.png" for seed in check.seeds]
        for image, path in zip(images, paths):
            atomic_write(path, lambda tmp, img=image: img.save(tmp, format="PNG"))
        per_prompt.append(paths)
    return {key: float(value) for key, value in check(per_prompt).items()}
