"""A fingerprint of the world build: every stage, from seeds, in miniature, one digest per trained state.

    python bench/world_build_fingerprint.py [--cache DIR] [--json FILE]     # about a minute on one core

Runs every stage of the recipe (the tried ones too) on small splits, batches of 8 (CLIP) or 4 (VAE, UNet)
pictures and 2 to 6 steps, then prints a sha256 of each stage's trained tensors and losses and of the locked
text tower, encoders and latent moments. A change to the build that should train the same weights (a
refactor) must leave every digest as it was: run it before and after. Measured for the stage records that
replaced the flat ``Recipe`` (94d6f6c): all 28 digests equal to the flat recipe's runners'.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.atomic import atomic_write_json  # noqa: E402
from tools.world.checkpoints import Build, load_state  # noqa: E402
from tools.world.recipe import GRAPH, Recipe  # noqa: E402
from tools.world.runners import run_stage  # noqa: E402

STEPS = dict(clip=6, vae=4, unet=4, decoder=3, decoder2=3, novel3=3)  # the others 2
LOCKED = ("text_tower.pt", "vae_encoder.pt", "vae2_encoder.pt", "unet_latent_moments.pt", "unet_latent_moments_vae2.pt")


def miniature() -> Recipe:
    changes = {stage.name: dict(steps=STEPS.get(stage.name, 2), batch={"model": 8, "vae": 4, "unet": 4}[stage.model])
               for stage in GRAPH if stage.model}
    changes["clip"].update(lock_step=3)
    changes["vae"].update(lock_step=2)
    return Recipe(train_split=(1, 160), unet_split=(2, 96), heldout_split=(9, 8), novel_split=(3, 24)).changed(**changes)


def digest(value, sha) -> None:
    if isinstance(value, torch.Tensor):
        sha.update(value.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value):
            sha.update(str(key).encode())
            digest(value[key], sha)
    elif isinstance(value, (list, tuple)):
        for item in value:
            digest(item, sha)
    else:
        sha.update(repr(value).encode())


def fingerprint(cache: Path) -> dict[str, str]:
    build = Build(cache, miniature(), weights=cache / "weights")
    digests = {}
    for stage in GRAPH:
        run_stage(build, stage.name)
        if stage.model:
            sha = hashlib.sha256()
            state = load_state(build.checkpoint_path(stage.name))
            digest(state["modules"], sha)
            digest(state["losses"], sha)
            digests[stage.name] = sha.hexdigest()[:16]
    for name in LOCKED:
        sha = hashlib.sha256()
        digest(load_state(cache / name), sha)
        digests[name] = sha.hexdigest()[:16]
    return digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="an empty folder for the miniature build (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the digests here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        digests = fingerprint(args.cache or Path(scratch))
    for name, value in digests.items():
        print(f"{name:28s} {value}")
    if args.json:
        atomic_write_json(args.json, digests)


if __name__ == "__main__":
    main()
