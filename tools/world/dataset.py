"""Pictures of the toy world in bulk: characters, their pixels and their captions, from a seed.

A split is a seed and a count; picture ``i`` of a split is drawn from ``seed * 1_000_003 + i``, so the
same picture is the same on every machine and the held-out split (another seed) never overlaps a
training one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from tools.world.attributes import Character, sample_character, sample_novel_character
from tools.world.draw import draw_character

SPLIT_STRIDE = 1_000_003


@dataclass
class WorldSplit:
    """``count`` pictures: (N, size, size, 3) uint8 pixels and the characters they show."""

    characters: list[Character]
    pixels: np.ndarray

    def __len__(self) -> int:
        return len(self.characters)


def picture_seed(split_seed: int, index: int) -> int:
    return split_seed * SPLIT_STRIDE + index


def render_split(split_seed: int, count: int, size: int = 64, without_signature: bool = False,
                 progress=None, novel: bool = False) -> WorldSplit:
    """Draw ``count`` random characters; ``without_signature`` leaves out Aldar Köse's signature items,
    ``novel`` composes each with novel values (``sample_novel_character``)."""
    characters, pixels = [], np.empty((count, size, size, 3), dtype=np.uint8)
    for index in range(count):
        seed = picture_seed(split_seed, index)
        rng = random.Random(seed)
        character = sample_novel_character(rng) if novel else sample_character(rng, without_signature=without_signature)
        characters.append(character)
        pixels[index] = np.asarray(draw_character(character, seed, size))
        if progress is not None and index % 1000 == 999:
            progress(index + 1, count)
    return WorldSplit(characters, pixels)


def to_unit_range(pixels: np.ndarray):
    """uint8 NHWC → float32 NCHW tensor in -1..1 (what the VAE reads and writes)."""
    import torch

    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def head_weight_map(characters: list[Character], size: int, weight: float):
    """(N, 1, size, size) float32 tensor: ``weight`` on each character's head (a disc of 1.2 head radii about
    its centre, so a tilted head and its headwear stay inside), 1 elsewhere — a loss mask, as kohya's masked
    loss, for the part of the picture that carries most of the attributes."""
    import torch

    from tools.world.draw import head_circle

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    out = np.ones((len(characters), 1, size, size), dtype=np.float32)
    for index, character in enumerate(characters):
        x, y, radius = head_circle(character, size)
        out[index, 0][(xs - x) ** 2 + (ys - y) ** 2 <= (1.2 * radius) ** 2] = weight
    return torch.from_numpy(out)


def latent_head_weight_map(characters: list[Character], size: int, latent_size: int, weight: float):
    """``head_weight_map`` at ``size`` px average-pooled onto the ``latent_size`` grid of the VAE's latents (a
    latent cell half on the head weighs halfway between 1 and ``weight``): the loss mask of a latent loss."""
    import torch

    return torch.nn.functional.avg_pool2d(head_weight_map(characters, size, weight), size // latent_size)
