"""The build's cache folder: ``Build`` (paths, log, recipe), the resumable ``Trainer`` every training stage
shares, and each stage's trained state read back (checkpoints, the locked text tower and encoders). Every
file goes through ``tools.atomic``: a kill leaves the old file or the new one."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from tools.atomic import atomic_write, atomic_write_json
from tools.world import WEIGHTS_DIR
from tools.world.dataset import WorldSplit, to_unit_range
from tools.world.nets import ENCODER_PARTS, TEXT_TOWER_PARTS, new_clip, new_vae
from tools.world.recipe import ENCODER_LOCKS, MODEL_STAGES, Recipe, Stage, recipe_key
from tools.world.tokenizer import load_clip_tokenizer


class Build:
    """Paths and logging of one build; every stage reads its inputs from here."""

    def __init__(self, cache: Path, recipe: Recipe, weights: Path = WEIGHTS_DIR) -> None:
        self.cache, self.recipe, self.weights = cache, recipe, weights
        self.cache.mkdir(parents=True, exist_ok=True)

    def log(self, stage: str, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {stage}: {message}", flush=True)

    def split_path(self, name: str) -> Path:
        return self.cache / f"split_{name}.npz"

    def load_split(self, name: str) -> WorldSplit:
        from tools.world.attributes import Character

        if not self.split_path(name).is_file():
            raise RuntimeError(f"the {name} split is not rendered in {self.cache}: run the data stage first")
        with np.load(self.split_path(name), allow_pickle=False) as data:
            characters = [Character(**{k: tuple(v) if k == "plain_color" else v for k, v in c.items()})
                          for c in json.loads(str(data["characters"]))]
            return WorldSplit(characters, data["pixels"])

    @property
    def tokenizer_dir(self) -> Path:
        return self.cache / "tokenizer"

    def tokenizer(self):
        if not (self.tokenizer_dir / "merges.txt").is_file():
            raise RuntimeError(f"no tokenizer in {self.tokenizer_dir}: run the tokenizer stage first")
        return load_clip_tokenizer(self.tokenizer_dir)

    def checkpoint_path(self, stage: str) -> Path:
        return self.cache / f"{stage}.pt"

    def record(self, stage: str, **fields) -> None:
        """Append a stage's figures to ``build_log.json`` beside the weights (the model card reads it)."""
        path = self.cache / "build_log.json"
        log = json.loads(path.read_text()) if path.is_file() else {}
        log[stage] = {**log.get(stage, {}), **fields}
        atomic_write_json(path, log)


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def latest_stage(build: Build, model: str) -> str | None:
    """The last of ``model``'s stages (``MODEL_STAGES``) that has a checkpoint."""
    return next((s for s in reversed(MODEL_STAGES[model]) if build.checkpoint_path(s).is_file()), None)


def require_finished(build: Build, stage: str) -> dict:
    """``stage``'s checkpoint, which must have run all its steps."""
    if not build.checkpoint_path(stage).is_file():
        raise RuntimeError(f"the {stage} stage has no checkpoint in {build.cache}: run it first")
    state = load_state(build.checkpoint_path(stage))
    total = build.recipe.stage(stage).steps
    if state["step"] < total:
        raise RuntimeError(f"the {stage} stage is at step {state['step']} of {total}: finish it first")
    return state


class Trainer:
    """The resumable loop every stage shares: step function, checkpoints every few minutes, Ctrl-C safe.
    Steps, rate and warm-up are the stage record's."""

    def __init__(self, build: Build, stage: Stage, modules: dict, optimizer, checkpoint_every_s: float = 180.0) -> None:
        self.build, self.stage, self.modules, self.optimizer = build, stage.name, modules, optimizer
        self.total_steps, self.lr, self.warmup = stage.steps, stage.lr, stage.warmup
        self.checkpoint_every_s = checkpoint_every_s
        self.step, self.cpu_seconds, self.losses = 0, 0.0, []
        path = build.checkpoint_path(self.stage)
        if path.is_file():
            state = load_state(path)
            if state["recipe"] == recipe_key(build.recipe, self.stage):
                for name, module in modules.items():
                    module.load_state_dict(state["modules"][name])
                if state["optimizer"] is not None:  # None: a finished stage seeded from the committed weights
                    optimizer.load_state_dict(state["optimizer"])
                self.step, self.cpu_seconds, self.losses = state["step"], state["cpu_seconds"], state["losses"]
                build.log(self.stage, f"resumed at step {self.step}/{self.total_steps}")
            else:
                build.log(self.stage, "the recipe changed since the checkpoint: starting afresh")

    def learning_rate(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    def save(self) -> None:
        save_checkpoint(self.build.checkpoint_path(self.stage), {
            "recipe": recipe_key(self.build.recipe, self.stage), "step": self.step, "cpu_seconds": self.cpu_seconds,
            "losses": self.losses, "optimizer": self.optimizer.state_dict(),
            "modules": {name: module.state_dict() for name, module in self.modules.items()}})

    def run(self, step_fn, after_step=None) -> None:
        last_save, window = time.monotonic(), []
        try:
            while self.step < self.total_steps:
                started = time.process_time()
                for group in self.optimizer.param_groups:
                    group["lr"] = self.learning_rate(self.step)
                loss = step_fn(self.step)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for group in self.optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                self.optimizer.step()
                if after_step is not None:
                    after_step()
                self.step += 1
                self.cpu_seconds += time.process_time() - started
                window.append(float(loss.detach()))
                if self.step % 100 == 0 or self.step == self.total_steps:
                    self.losses.append((self.step, sum(window) / len(window)))
                    self.build.log(self.stage, f"step {self.step}/{self.total_steps} loss {self.losses[-1][1]:.4f} "
                                               f"cpu {self.cpu_seconds / 60:.1f} min")
                    window = []
                if time.monotonic() - last_save > self.checkpoint_every_s:
                    self.save()
                    last_save = time.monotonic()
        except KeyboardInterrupt:
            self.save()
            self.build.log(self.stage, f"interrupted: checkpoint at step {self.step} saved; rerun to continue")
            raise
        self.save()
        self.build.record(self.stage, steps=self.step, cpu_minutes=round(self.cpu_seconds / 60, 1),
                          final_loss=self.losses[-1][1] if self.losses else None)


# --------------------------------------------------------------------------- trained states read back
def fresh_clip(build: Build):
    """The CLIP at its seeded initial weights, with the build's tokenizer."""
    tokenizer = build.tokenizer()
    return new_clip(tokenizer, build.recipe.seed), tokenizer


def load_trained_clip(build: Build, stage: str | None = None):
    """The CLIP of ``stage`` (default: the latest CLIP stage with a checkpoint)."""
    stage = stage or latest_stage(build, "model")
    model, tokenizer = fresh_clip(build)
    model.load_state_dict(load_state(build.checkpoint_path(stage))["modules"]["model"])
    return model.eval(), tokenizer


def lock_text_tower(build: Build, model) -> None:
    """Stop training the text tower and save it once: the UNet trains on exactly these text encoders."""
    for part in TEXT_TOWER_PARTS:
        getattr(model, part).requires_grad_(False)
    path = build.cache / "text_tower.pt"
    if not path.is_file():
        save_checkpoint(path, {part: getattr(model, part).state_dict() for part in TEXT_TOWER_PARTS})
        build.log("clip", "text tower locked and saved: the UNet stage can start")


def load_locked_clip(build: Build):
    """A CLIP whose text tower is the locked one (its image tower does not matter to the UNet)."""
    model, tokenizer = fresh_clip(build)
    state = load_state(build.cache / "text_tower.pt")
    for part in TEXT_TOWER_PARTS:
        getattr(model, part).load_state_dict(state[part])
    return model.eval(), tokenizer


def lock_vae_encoder(build: Build, vae, stage: str = "vae") -> None:
    """Stop training the encoder; save it once with its latent scaling (the UNet trains on these latents)."""
    for part in ENCODER_PARTS:
        getattr(vae, part).requires_grad_(False)
    path = build.cache / ENCODER_LOCKS[stage]
    if not path.is_file():
        split = build.load_split("train")
        with torch.no_grad():  # SD's convention: latents scaled to unit variance (SDXL's 0.13025 is this measure)
            latents = vae.encode(to_unit_range(split.pixels[:1024])).latent_dist.mean
        save_checkpoint(path, {"scaling_factor": float(1.0 / latents.std()),
                               **{part: getattr(vae, part).state_dict() for part in ENCODER_PARTS}})
        build.log(stage, "encoder locked and saved: the UNet stage can start")


def encoder_stage(vae_stage: str) -> str:
    """The encoder stage whose latents ``vae_stage`` decodes: the last one up to it (``ENCODER_LOCKS``)."""
    stages = MODEL_STAGES["vae"]
    return next(s for s in reversed(stages[:stages.index(vae_stage) + 1]) if s in ENCODER_LOCKS)


def locked_encoder(build: Build, stage: str) -> dict:
    """The locked encoder of an encoder stage. ``vae`` locks it mid-stage; a later encoder stage locks it at
    its end, here, so that a process killed between the last checkpoint and the lock loses nothing."""
    path = build.cache / ENCODER_LOCKS[stage]
    if not path.is_file() and stage != "vae":
        vae = new_vae()
        vae.load_state_dict(require_finished(build, stage)["modules"]["vae"])
        lock_vae_encoder(build, vae, stage)
    return load_state(path)


def load_trained_vae(build: Build, encoder_only: bool = False, stage: str | None = None):
    """The VAE of ``stage`` (default: the latest with a checkpoint) with its locked encoder and scaling; with
    ``encoder_only`` just that encoder (a UNet stage needs only latents: pass the encoder stage)."""
    vae = new_vae()
    stage = stage or latest_stage(build, "vae")
    if not encoder_only:
        vae.load_state_dict(load_state(build.checkpoint_path(stage))["modules"]["vae"])
    locked = locked_encoder(build, encoder_stage(stage))
    for part in ENCODER_PARTS:
        if not encoder_only:
            for name, value in getattr(vae, part).state_dict().items():
                if not torch.equal(value, locked[part][name]):
                    raise RuntimeError(f"the VAE's {part}.{name} moved after the encoder was locked")
        getattr(vae, part).load_state_dict(locked[part])
    vae.register_to_config(scaling_factor=locked["scaling_factor"])
    return vae.eval()
