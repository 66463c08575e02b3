"""The parameters a round trains with: the profile's defaults, where a resumed folder starts, the
``TrainConfig`` and the captioned dataset they make, and how emphasised features lead a caption."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agent.rounds.payoff import PLATEAU_CHECKPOINTS, session_defaults
from agent.rounds.store import HistoryState, peek_history
from tools.errors import InputError
from tools.models import ModelProfile
from tools.settings import Settings


def starting_params(history: HistoryState, defaults: dict) -> dict:
    """The parameters the next round trains with: the interrupted round's (its checkpoints match them),
    else the last finished round's ``next_params``, else ``defaults`` (the original system's history,
    a bare list of rounds, has no next_params)."""
    if history.in_progress is not None and history.in_progress.params:
        return dict(history.in_progress.params)
    return dict((history.rounds[-1].next_params if history.rounds else None) or defaults)


def planned_params(settings: Settings) -> dict:
    """``starting_params`` of the results folder without opening it: no lock, no torch (the chat's /config
    before a session exists). The knobs' defaults depend on the profile's name only, so a stand-in profile
    (no device detection) gives the same ones."""
    stand_in = ModelProfile(settings.profile, settings.base_model, settings.clip_model, "cpu", "fp32", settings.seed)
    history = peek_history(settings.output_dir)
    if history.profile.get("profile", settings.profile) != settings.profile:
        # another profile's round: the session will discard it (RunStore.discard_round_of_other_models)
        history = dataclasses.replace(history, in_progress=None)
    return starting_params(history, session_params(settings, stand_in))


def session_params(settings: Settings, profile: ModelProfile) -> dict:
    """A session's first knobs: ``default_params`` with ``rounds_must_pay``'s longer round, this character's
    trigger token and LoRA file name (never another character's)."""
    from tools.character import lora_name

    params = session_defaults(settings, default_params(profile))
    if "trigger_token" in params:
        params["trigger_token"] = settings.trigger_token
    if "output_name" in params:
        params["output_name"] = lora_name(settings.character_name, settings.trigger_token)
    return params


def default_params(profile: ModelProfile) -> dict:
    """The trainer's defaults for ``profile`` plus the knobs the agent adds on top."""
    from tools.training.config import default_train_config  # the dataclass alone: no torch

    config = dataclasses.asdict(default_train_config(profile))
    params = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool)) or v is None}
    # validation_images stays on: each checkpoint's validation renders are scored against the references,
    # and the best-scoring checkpoint becomes the round's LoRA (select_best_checkpoint).
    params.setdefault("lora_scale", 1.0)
    params.setdefault("feature_emphasis", [])
    # Rounds continue the best round's LoRA (warm start) and stop at a plateau of validation quality.
    params["warm_start"] = True
    params["plateau_checkpoints"] = PLATEAU_CHECKPOINTS
    return params


def train_config(profile: ModelProfile, params: dict):
    """A ``TrainConfig`` from the profile's defaults with every matching param applied."""
    from tools.training.trainer import default_train_config

    config = default_train_config(profile)
    names = {f.name for f in dataclasses.fields(config)}
    config = dataclasses.replace(config, **{k: v for k, v in params.items() if k in names})
    if config.lr_warmup_steps >= config.steps:  # fewer steps after an overfitting round: warmup shrinks along
        config = dataclasses.replace(config, lr_warmup_steps=config.steps // 10)
    config.validate(profile)
    return config


def checkpoint_judges(settings: Settings, references: Path, profile, analysis: dict, suite) -> dict:
    """``train_lora``'s judges of a round's checkpoints: ``score_checkpoint`` scores each one's validation images as
    the round scores the LoRA, and with the guarded ranking ``edit_check`` draws a few of the round's suite prompts
    (``suite()``) at each, so the checkpoint kept is chosen with the guard that ranks the rounds
    (``tools.training.lora_files.guarded_checkpoint``)."""
    from tools.scoring.scorer import checkpoint_scorer
    from tools.scoring.suite import round_edit_check

    scorer = checkpoint_scorer(references, profile, analysis, settings.metric_weights)
    return {"score_checkpoint": scorer,
            "edit_check": round_edit_check(settings, suite, analysis, profile) if scorer is not None else None}


def training_dataset(references: Path, analysis: dict, emphasis: list[str],
                     caption_mode: str = "full") -> list[tuple[Path, str]]:
    """(image, caption) pairs from the analysis captions (``caption_mode``), emphasised features first."""
    from tools.scoring.analyzer import captions_for

    captions = captions_for(analysis, caption_mode)
    trigger = analysis.get("trigger_token", "")
    pairs = []
    for name, caption in sorted(captions.items()):
        path = references / name
        if path.is_file():
            pairs.append((path, emphasise(caption, emphasis, trigger)))
    if not pairs:
        raise InputError(f"none of the analysed captions match an image in {references}",
                         "re-run the analysis (aldar analyze --force) after changing the references")
    return pairs


def emphasise(text: str, features: list[str], trigger: str = "") -> str:
    """Put ``features`` right after the trigger token (early tokens weigh most in CLIP's text
    encoder, and SDXL truncates at 77 tokens), without repeating them later."""
    if not features:
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    wanted = [f for f in features if f.strip()]
    rest = [p for p in parts if p.lower() not in {f.lower() for f in wanted}]
    head = [rest.pop(0)] if rest and trigger and rest[0].lower().startswith(trigger.lower()) else []
    return ", ".join(head + wanted + rest)


def validate_inputs(settings: Settings) -> None:
    """Unknown competitor names and an unusable references folder fail here, not rounds later."""
    from tools.images import list_images
    from tools.providers import PROVIDERS

    unknown = [name for name in settings.competitors if name not in PROVIDERS]
    if unknown:
        raise InputError(f"unknown competitor {unknown[0]!r}",
                         f"use some of: {', '.join(PROVIDERS)} (comma-separated), or 'none'")
    list_images(settings.references)
