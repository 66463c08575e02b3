"""Train the toy world's tokenizer, CLIP, VAE and SDXL-layout UNet from seeds, resumably.

    python -m tools.world.build                  # every stage in order (about 7 hours of one CPU core)
    python -m tools.world.build --stage clip     # one stage (see below for which may run side by side)
    python -m tools.world.build --export         # write fp16 weights from the latest checkpoints
    python -m tools.world.build --seed-from-weights --cache DIR   # start from the committed weights: only
                                                 # the stages their build log lacks train

The stages are records in ``tools.world.recipe`` (``GRAPH``: each names its model, the stage it starts
from, its text tower and latents, and its hyper-parameters); ``tools.world.runners`` has one runner per
kind. Stages: ``data`` (render the splits) → ``tokenizer`` → ``clip`` and ``vae`` side by side. The CLIP locks
its text tower and the VAE its encoder at their records' ``lock_step``; from then on
``unet`` can train on the final encoders while the CLIP's image tower and the VAE's decoder go on, and
``vision`` (the image tower alone, after ``clip``; then ``hardneg``, with hard-negative captions) and
``decoder`` (the VAE's decoder alone, after ``vae``) beside it; then ``retune``/``retune2`` (the UNet on the
final text tower, then with SDXL's varied original sizes and offset noise), ``decoder2`` and ``hardneg2``
(the image tower again, text locked); then ``textneg2`` (both towers again on hard negatives, long),
``retune3`` (the UNet onto that text tower) and beside it ``hardneg3`` (the image tower, text locked); then
``vae2`` (encoder and decoder together, the head weighted up, its encoder locked at the end), ``retune4``
(the UNet onto its latents) and ``hardneg4``; then ``decoder3`` and ``decoder4`` (the decoder alone on
vae2's latents, the head weighted up); then, for the scorer only (the pipeline keeps the text tower its UNet
trained on), ``novel`` (both CLIP towers learn the world's novel values), ``novel2`` (its image tower again)
and ``novel3`` (the text tower alone from hardneg4's, the old values' words anchored to hardneg4's
embedding of them, on novel2's image tower): the committed scorer's CLIP; then ``decoder5`` (the decoder alone
on vae2's latents again, half of each batch from the novel split, so that the VAE reconstructs the novel
values too); then ``unknown_words`` (the pipeline's text encoders alone: the embeddings of the tokens no world
text uses, so that a word the tokenizer spells in letters — a user's trigger, a novel value's name — leaves
the known words around it as they were). ``retune5`` (the UNet, the head weighted up in its latent loss) and
``retune6`` (the UNet onto novel3's text tower, so the base reads the novel words) are tried stages: measured,
not committed, left out of ``all`` (the model card says why).

Each training stage checkpoints model, optimizer and step every few minutes into the cache folder
(``$ALDAR_CACHE/world-build``, default ``~/.cache/aldar/world-build``; never committed) and on Ctrl-C; a
rerun continues from the checkpoint. Batches and noise are pure functions of (seed, step), so a resumed run
trains exactly as an uninterrupted one. Finished stages export fp16 safetensors into ``weights/``:
``weights/clip`` (a ``CLIPModel`` with its tokenizer, the analyzer's and scorer's model) and
``weights/sdxl`` (a ``StableDiffusionXLPipeline`` folder whose two text encoders are the CLIP's text tower).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from tools.paths import aldar_cache
from tools.world import WEIGHTS_DIR
from tools.world.checkpoints import Build, load_state
from tools.world.export import export, seed_from_weights
from tools.world.recipe import BUILD_ORDER, STAGE, TRAINING_STAGES, TRIED_STAGES, Recipe
from tools.world.runners import run_stage


def default_cache() -> Path:
    return aldar_cache("world-build")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.world.build", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--stage", choices=[*STAGE, "all"], default="all",
                        help="which stage to run (default: all, which leaves out the tried stages "
                             f"{', '.join(TRIED_STAGES)})")
    parser.add_argument("--export", action="store_true", help="only write fp16 weights from the latest checkpoints")
    parser.add_argument("--cache", type=Path, default=default_cache(), help="checkpoints and rendered splits")
    parser.add_argument("--weights", type=Path, default=WEIGHTS_DIR, help="where the fp16 weights go")
    parser.add_argument("--seed-from-weights", action="store_true",
                        help="start an empty cache from the committed weights (the first passes), then go on")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    build = Build(args.cache, Recipe(), args.weights)
    try:
        if args.seed_from_weights:
            build.log("seed", f"marked {', '.join(seed_from_weights(build))} finished from {build.weights}")
        if not args.export:
            for name in (BUILD_ORDER if args.stage == "all" else [args.stage]):
                if name in TRAINING_STAGES and args.stage == "all":
                    state = build.checkpoint_path(name)
                    if state.is_file() and load_state(state)["step"] >= build.recipe.stage(name).steps:
                        continue
                build.log(name, "starting")
                run_stage(build, name)
        build.log("export", f"wrote {', '.join(export(build)) or 'nothing yet'} into {build.weights}")
    except KeyboardInterrupt:
        return 130
    except RuntimeError as error:  # a stage not finished yet, or a text tower without its UNet: nothing written
        build.log("export" if args.export or args.stage == "all" else args.stage, f"stopped: {error}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
