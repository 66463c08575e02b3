"""``aldar train``: train the character LoRA on the reference pictures (one flag per hyperparameter).

Several GPUs: ``accelerate launch -m agent.cli train ...`` runs the same code on every GPU.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from tools.atomic import read_json
from tools.errors import InputError
from tools.models import ModelProfile  # a plain dataclass: tools.models loads torch only where it loads models
from tools.timestamps import timestamp  # the standard library's time only
from tools.training.config import TrainConfig, default_train_config, training_settings

if TYPE_CHECKING:  # the command line is parsed before any of this loads (see agent.cli.build_parser)
    from agent.views.ui import UI
    from tools.settings import Settings

NAME = "train"
HELP = ("train an SDXL LoRA of the character on the reference pictures (diffusers + peft + accelerate); "
        "writes diffusers and kohya LoRA files, checkpoints, validation images and a loss curve")
# Already settings flags that set the trainer's too: --seed, and --trigger-token (a character flag).
SHARED_FLAGS = {"seed", "trigger_token"}
# --prompt (test_prompt, given on the command line, aldar.toml or ALDAR_TEST_PROMPT): the validation prompt
# unless --validation-prompt says otherwise.
CHARACTER_FLAGS = ("references", "taxonomy", "trigger_token", "character_name", "test_prompt")
# Each profile as named, before its device is known (finding that loads torch): the help shows their
# defaults, and every flag is checked against them before anything heavy loads.
_NAMED_PROFILES = {"sdxl": ModelProfile("sdxl", "sdxl", "clip", "cuda", "fp16", 42),
                   "tiny": ModelProfile("tiny", "tiny", "clip", "cpu", "fp32", 42)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--analysis", metavar="FILE", default=argparse.SUPPRESS,
                        help="feature-analysis JSON (captions + trigger token, from `aldar analyze`); default: "
                             "analysis_path when it exists, else each caption is '<trigger>, <character name>'")
    parser.add_argument("--run-dir", metavar="DIR", default=argparse.SUPPRESS,
                        help="where the LoRA, checkpoints and logs go (default: <output_dir>/runs/train_<timestamp>)")
    parser.add_argument("--resume", action="store_true", default=argparse.SUPPRESS,
                        help="continue the latest checkpoint in --run-dir, else in the newest run under "
                             "<output_dir>/runs")
    group = parser.add_argument_group("hyperparameters (defaults: SDXL character LoRA; 'tiny:' the tiny profile)")
    sdxl, tiny = (default_train_config(p) for p in _NAMED_PROFILES.values())
    for setting in training_settings():
        if setting.name in SHARED_FLAGS:
            continue
        flag = "--" + setting.name.replace("_", "-")
        shown = f"{setting.metadata['help']} (default: {_show(getattr(sdxl, setting.name))}"
        if getattr(tiny, setting.name) != getattr(sdxl, setting.name):
            shown += f"; tiny: {_show(getattr(tiny, setting.name))}"
        shown = (shown + ")").replace("%", "%%")
        kwargs = dict(dest=setting.name, default=argparse.SUPPRESS, help=shown)
        if setting.type in (bool, "bool"):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            kind = {"int": int, "float": float, "str": str}.get(setting.type, setting.type)
            group.add_argument(flag, type=kind, choices=setting.metadata.get("choices"),
                               metavar=setting.name.upper() if not setting.metadata.get("choices") else None, **kwargs)


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def training_config(args: argparse.Namespace, profile: ModelProfile, trigger_token: str, *,
                    device_checks: bool = True, character_name: str = "", prompt: str = "") -> TrainConfig:
    """The profile's defaults, the character's trigger token and LoRA name, then every flag given; validated
    (on the profile's device too, unless ``device_checks`` is False: the device is not known yet)."""
    from tools.character import lora_name

    given = {k.name: getattr(args, k.name) for k in training_settings() if k.name not in SHARED_FLAGS and hasattr(args, k.name)}
    # --adapter picks its own default learning rate (tiny: LoKr's is LoRA's × 2); --learning-rate overrides it
    config = default_train_config(profile, given.get("adapter", "lora")).replace(trigger_token=trigger_token,
                                                   output_name=lora_name(character_name, trigger_token),
                                                   validation_prompt=prompt)
    config = config.replace(**given)
    config.validate(profile if device_checks else None)
    return config


def run(args: argparse.Namespace, settings: Settings, ui: UI) -> int:
    analysis, settings = _read_analysis(args, settings)
    trigger = settings.trigger_token  # an analysis made for another one is refused by _read_analysis
    # A bad flag exits 2 before torch loads; what depends on the device (fp16 needs CUDA, ...) right after,
    # and all of it before any file is touched.
    training_config(args, _NAMED_PROFILES[settings.profile], trigger, device_checks=False,
                    character_name=settings.character_name, prompt=_given_prompt(settings))
    from rich.markup import escape

    from tools.generation.sampling import SamplingSpec
    from tools.images import list_images, skipped_note
    from tools.models import resolve_profile
    from tools.training.lora_files import latest_checkpoint
    from tools.training.prior import with_class_prompt
    from tools.training.trainer import train_lora

    profile = resolve_profile(settings)
    config = training_config(args, profile, trigger, character_name=settings.character_name,
                             prompt=_given_prompt(settings))
    # validation images at the guidance and negative prompt `aldar generate` will use
    config = config.judged_as_drawn(SamplingSpec.from_settings(settings))
    config = with_class_prompt(config, analysis)  # prior preservation: the references' class, from the analysis
    images = list_images(Path(settings.references))
    if skipped := skipped_note(settings.references):
        ui.warn_once(skipped)
    from tools.character import character_warnings
    from tools.scoring.analyzer import captions_for

    if _main_process():
        for line in character_warnings(settings):
            ui.warn(escape(line))
    captions = captions_for(analysis, config.caption_mode)
    fallback = f"{config.trigger_token}, {settings.character_name}"
    dataset = [(path, captions.get(path.name) or fallback) for path in images]
    run_dir = _run_dir(args, settings)
    scorer = _checkpoint_scorer(analysis, settings, profile, config)
    if not _main_process():  # under accelerate launch / torchrun every process runs this; one reports
        result = train_lora(config, profile, dataset, run_dir, quiet=True, resume=bool(_flag(args, "resume")))
        return 130 if result.interrupted else 0
    if profile.is_tiny:
        ui.warn(profile.describe()["notice"])
    ui.info(f"training {escape(config.output_name)}: {len(dataset)} images, rank {config.rank}, alpha "
            f"{config.alpha:g}, lr {config.learning_rate:g}, {config.steps} steps at {config.resolution} px → "
            f"{escape(str(run_dir))}")
    resume = bool(_flag(args, "resume"))
    if resume and not latest_checkpoint(run_dir):
        ui.warn(f"no checkpoint in {escape(str(run_dir))} to resume: starting from step 0")
    result = train_lora(config, profile, dataset, run_dir, quiet=settings_quiet(args), resume=resume,
                        score_checkpoint=scorer)
    if result.interrupted:
        if not result.checkpoints:
            ui.warn("interrupted before the first step finished: nothing to resume")
        else:
            ui.warn(f"interrupted at step {result.steps}/{config.steps}; checkpoint saved in "
                    f"{escape(str(result.checkpoints[-1]))}. Resume with the same flags plus: "
                    f"--resume --run-dir {escape(shlex.quote(str(run_dir)))}")
        return 130
    for note in result.notes:
        ui.warn(escape(note))
    ui.table("LoRA training", ["", ""], [
        ["steps", result.steps], ["final loss (moving average)", result.final_loss],
        ["checkpoints", len(result.checkpoints)],
        ["LoRA from", f"step {result.chosen_checkpoint['step']}: {result.chosen_checkpoint['why']}"]])
    # The files under the table, one line each: a table cell cuts a long path, and a path must copy whole.
    ui.paths([("diffusers LoRA", result.lora_path), ("kohya / A1111 / ComfyUI LoRA", result.kohya_path),
              *([("trigger embedding (diffusers load_textual_inversion; A1111 / ComfyUI embeddings folder)",
                  result.embedding_path)] if result.embedding_path else []),
              ("loss curve", result.loss_curve)])
    if config.adapter != "lora":
        from tools.generation.lycoris import DIFFUSERS_NOTE

        ui.info(DIFFUSERS_NOTE)
    ui.success(f"LoRA saved to {escape(str(result.lora_path))}")
    return 0


def _given_prompt(settings: Settings) -> str:
    """A test prompt the user gave (--prompt, aldar.toml, ALDAR_TEST_PROMPT), else '' — a character.json's
    prompt is for the rounds: `aldar train` validates on '<trigger>, portrait' unless told otherwise."""
    return "" if "test_prompt" in settings.derived else settings.test_prompt


def _checkpoint_scorer(analysis: dict, settings: Settings, profile: ModelProfile, config: TrainConfig):
    """The rounds' scorer for each checkpoint when there is an analysis to score against, else None."""
    if not (config.select_best_checkpoint and config.validation_images):
        return None
    from tools.scoring.scorer import checkpoint_scorer

    return checkpoint_scorer(Path(settings.references), profile, analysis, settings.metric_weights)


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # set by torchrun and accelerate launch


def _flag(args: argparse.Namespace, name: str):
    return getattr(args, name, None)  # flags without a default are absent unless given


def settings_quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False))


def _read_analysis(args: argparse.Namespace, settings: Settings) -> tuple[dict, Settings]:
    """The analysis (``{}`` when there is none) and the settings beside it (its trigger token and name where
    the settings only derived theirs)."""
    given = _flag(args, "analysis")
    path = Path(given) if given else Path(settings.analysis_path)
    if not path.is_file():
        if given:
            raise InputError(f"analysis file {path} does not exist", "run `aldar analyze` first or fix --analysis")
        return {}, settings
    try:
        data = read_json(path)
    except ValueError as exc:  # also not UTF-8, or nested too deeply
        raise InputError(f"analysis file {path} is not valid JSON ({exc})", "rerun `aldar analyze`") from None
    if not isinstance(data, dict) or not isinstance(data.get("captions", {}), dict):
        raise InputError(f"analysis file {path} has no captions mapping", "rerun `aldar analyze`")
    from tools.character import adopt_analysis

    # Captions made for another trigger token or other pictures would train this LoRA on another character's.
    return data, adopt_analysis(data, path, settings)


def _run_dir(args: argparse.Namespace, settings: Settings) -> Path:
    if _flag(args, "run_dir"):
        return Path(args.run_dir)
    runs = Path(settings.output_dir) / "runs"
    if _flag(args, "resume"):
        from tools.training.lora_files import latest_checkpoint


        candidates = sorted((d for d in runs.glob("*") if d.is_dir() and latest_checkpoint(d)),
                            key=lambda d: d.stat().st_mtime)
        if not candidates:
            raise InputError(f"no run with checkpoints under {runs} to resume", "pass --run-dir DIR")
        return candidates[-1]
    return runs / f"train_{timestamp()}"
