"""From the cache to ``weights/`` and back: ``export`` writes fp16 safetensors of the latest finished states
(the pipeline's text encoders are the text tower its UNet trained on), ``seed_from_weights`` starts a cache
from the committed weights so that only later stages train."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tools.atomic import atomic_write_json, atomic_write_text, staging_dir, writing
from tools.models import SDXL_SCHEDULER_CONFIG
from tools.world.checkpoints import (Build, encoder_stage, latest_stage, load_locked_clip, load_state,
                                     load_trained_clip, load_trained_vae, save_checkpoint)
from tools.world.nets import ENCODER_PARTS, TEXT_TOWER_PARTS, new_unet, text_towers
from tools.world.recipe import (ENCODER_LOCKS, FIRST_BUILD, SCORER_ONLY_STAGES, STAGE, TRAINING_STAGES, recipe_key,
                                resolved)
from tools.world.runners import run_data


def _write_folder(final: Path, save) -> None:
    """``save(folder)`` into a staging folder beside ``final``, then swap it in: a kill while saving leaves the
    old folder; between the two renames, the old one beside it as ``<name>.old``."""
    staging = staging_dir(final)
    try:
        save(staging)
        old = final.with_name(final.name + ".old")
        with writing(final):
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.rename(old)
            staging.rename(final)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_pairing(build: Build, clip_model, text_clip, unet_stage: str) -> None:
    """The pipeline's UNet, text tower and VAE encoder must belong together: raise before writing anything."""
    if latest_stage(build, "model") not in SCORER_ONLY_STAGES:
        for part in TEXT_TOWER_PARTS:
            for name, value in getattr(clip_model, part).state_dict().items():
                if torch.equal(value, getattr(text_clip, part).state_dict()[name]):
                    continue
                if unet_stage == "unet":
                    raise RuntimeError(f"the CLIP's {part}.{name} moved after the text tower was locked")
                raise RuntimeError(f"the CLIP's {part}.{name} differs from the text tower {unet_stage} trained on: "
                                   "train the UNet on the new text tower (the next retune stage), then export")
    vae_stage = latest_stage(build, "vae")
    latents = STAGE[unet_stage].latents
    if vae_stage and encoder_stage(vae_stage) != latents:
        raise RuntimeError(f"the VAE's encoder is {encoder_stage(vae_stage)}'s but {unet_stage} learnt the latents of "
                           f"{latents}'s: train the UNet on the new latents (the next retune stage), then export")


def export(build: Build) -> list[str]:
    """fp16 safetensors of every finished (or checkpointed) model into ``weights/``; returns what was written."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    written = []
    build.weights.mkdir(parents=True, exist_ok=True)
    if not build.checkpoint_path("clip").is_file():
        return written
    unet_stage = latest_stage(build, "unet") or "unet"
    clip_model, tokenizer = load_trained_clip(build)
    # The pipeline's text encoders are the text tower the exported UNet trained on. The scorer's CLIP carries
    # the same tower (its image tower may have gone on: hardneg2), unless its latest stage taught the scorer
    # alone (SCORER_ONLY_STAGES) and no UNet stage has trained on that tower yet.
    text_clip = _pipeline_text_clip(build, unet_stage) or clip_model
    check_pairing(build, clip_model, text_clip, unet_stage)
    unknown_words = _unknown_words_embeddings(build, unet_stage, text_clip)

    def save_clip(folder: Path) -> None:
        clip_model.half().save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    _write_folder(build.weights / "clip", save_clip)
    written.append("clip")
    clip_model.float()
    if build.checkpoint_path("vae").is_file() and build.checkpoint_path("unet").is_file():
        encoder, encoder_2 = text_towers(text_clip)
        if unknown_words is not None:
            for text_encoder in (encoder, encoder_2):
                with torch.no_grad():
                    text_encoder.get_input_embeddings().weight.copy_(unknown_words)
        unet = new_unet(clip_model)
        unet.load_state_dict(load_state(build.checkpoint_path(unet_stage))["modules"]["ema"])
        pipe = StableDiffusionXLPipeline(vae=load_trained_vae(build), text_encoder=encoder, text_encoder_2=encoder_2,
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
                                         scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG))
        pipe.to(torch.float16)
        _write_folder(build.weights / "sdxl", lambda folder: pipe.save_pretrained(folder, safe_serialization=True))
        written.append("sdxl")
    log_path = build.cache / "build_log.json"
    if log_path.is_file():
        log = json.loads(log_path.read_text())
        log["recipe"] = resolved(build.recipe)
        for stage in TRAINING_STAGES:
            if build.checkpoint_path(stage).is_file():
                state = load_state(build.checkpoint_path(stage))
                if not state.get("seeded_from_weights"):
                    log.setdefault(stage, {}).update(steps_done=state["step"],
                                                     cpu_minutes=round(state["cpu_seconds"] / 60, 1))
        atomic_write_json(build.weights / "build_log.json", log)
    return written


def _unknown_words_embeddings(build: Build, unet_stage: str, text_clip) -> torch.Tensor | None:
    """The token embeddings the ``unknown_words`` stage trained for the pipeline's text encoders (None before
    it ran). It must have trained the very text tower ``unet_stage`` learnt — the same stage, every weight but
    the embeddings unchanged — else raise before anything is written."""
    stage = latest_stage(build, "text")
    if stage is None:
        return None
    key = "text_model.embeddings.token_embedding.weight"
    trained = load_state(build.checkpoint_path(stage))["modules"]["text"]
    tower = text_clip.state_dict()
    same = STAGE[stage].after == STAGE[unet_stage].text_tower and all(
        torch.equal(value, tower[name]) for name, value in trained.items() if name != key)
    if not same:
        raise RuntimeError(f"{stage} trained another text tower than the one {unet_stage} learnt "
                           f"({STAGE[unet_stage].text_tower}'s as it is now): delete {build.checkpoint_path(stage)} "
                           f"and run --stage {stage} again, then export")
    return trained[key]


def _pipeline_text_clip(build: Build, unet_stage: str):
    """The CLIP whose text tower ``unet_stage`` trained on (None before the first UNet's text tower is locked)."""
    if unet_stage != "unet":
        return load_trained_clip(build, STAGE[unet_stage].text_tower)[0]
    if (build.cache / "text_tower.pt").is_file():
        return load_locked_clip(build)[0]
    return None


def seed_from_weights(build: Build) -> list[str]:
    """Start a cache from the committed fp16 weights instead of the 7-hour rebuild: they become the
    finished states of the stages that made them (those their ``build_log.json`` records), so the stages
    after those can run on them. Their result is then not bit-identical to a rebuild from seeds (the fp16
    rounding of the committed states); the build log says so. Returns the stages marked finished."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModelWithProjection

    if any(build.checkpoint_path(s).is_file() for s in TRAINING_STAGES):
        raise RuntimeError(f"{build.cache} already holds checkpoints: seed an empty cache folder")
    log_path = build.weights / "build_log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    seeded = [s for s in TRAINING_STAGES if (log.get(s) or {}).get("steps_done")] or list(FIRST_BUILD)
    run_data(build, build.recipe.stage("data"))
    tokenizer = json.loads((build.weights / "clip" / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    build.tokenizer_dir.mkdir(parents=True, exist_ok=True)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["merges"]]
    atomic_write_json(build.tokenizer_dir / "vocab.json", tokenizer["vocab"])
    atomic_write_text(build.tokenizer_dir / "merges.txt", "#version: 0.2\n" + "".join(f"{m}\n" for m in merges))
    clip = CLIPModel.from_pretrained(build.weights / "clip", torch_dtype=torch.float32).state_dict()
    # The CLIP stages up to the UNet's take the pipeline's text tower (a scorer-only stage may have moved the
    # scorer's on) with the committed image tower; a scorer-only stage takes the committed CLIP as it is.
    pipeline_text = CLIPTextModelWithProjection.from_pretrained(build.weights / "sdxl" / "text_encoder_2",
                                                                torch_dtype=torch.float32).state_dict()
    text_clip = {**clip, **{k: v for k, v in pipeline_text.items() if k.startswith(("text_model.", "text_projection."))}}
    vae = AutoencoderKL.from_pretrained(build.weights / "sdxl" / "vae", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(build.weights / "sdxl" / "unet", torch_dtype=torch.float32).state_dict()
    for stage in {"vae", *seeded} & set(ENCODER_LOCKS):  # every seeded stage holds the committed encoder
        save_checkpoint(build.cache / ENCODER_LOCKS[stage], {"scaling_factor": vae.config.scaling_factor,
                                                             **{p: getattr(vae, p).state_dict() for p in ENCODER_PARTS}})
    # Every finished stage of a model holds its committed state (the text tower is the same from textneg on,
    # which the export checks against the UNet's).
    # The pipeline's encoders carry unknown_words's rows, and the committed weights hold no other: the CLIP stages
    # seeded from them take those rows (the tokens no world text uses), so a stage rerun on them — novel, which
    # reads the novel words, or unknown_words itself — starts from those rows, not from the build's random ones.
    states = {"model": {"model": text_clip}, "vae": {"vae": vae.state_dict()}, "unet": {"unet": unet, "ema": unet},
              "text": {"text": pipeline_text}}
    for stage in seeded:
        modules = {"model": clip} if stage in SCORER_ONLY_STAGES else states[STAGE[stage].model]
        save_checkpoint(build.checkpoint_path(stage), {
            "recipe": recipe_key(build.recipe, stage), "step": build.recipe.stage(stage).steps,
            "cpu_seconds": 0.0, "losses": [], "optimizer": None, "modules": modules, "seeded_from_weights": True})
    rows = "; the text towers carry unknown_words's embedding rows" if "unknown_words" in seeded else ""
    log["seeded_from_weights"] = (f"stages {', '.join(seeded)} were taken from the committed fp16 weights; "
                                  f"the stages after them trained on those{rows}")
    atomic_write_json(build.cache / "build_log.json", log)
    return seeded
