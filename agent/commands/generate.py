"""``aldar generate``: images from hosted competitors and/or the local SDXL (+ LoRA), same prompts and seed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from tools.errors import AldarError, InputError
from tools.generation.sampling import check_lora_scale  # stdlib and tools.errors only
from tools.timestamps import timestamp  # the standard library's time only

if TYPE_CHECKING:  # the command line is parsed before any of this loads (see agent.cli.build_parser)
    from agent.views.ui import UI
    from tools.settings import Settings

NAME = "generate"
HELP = ("generate images with hosted providers (freepik, deepai, gemini, ...) and/or the local model "
        "(lora, base) for the same prompts and seed; without --provider: the newest trained LoRA, the base "
        "model and every competitor whose key is set")
LOCAL = ("lora", "base")
# --prompt is generate's own (repeatable, dest prompts): test_prompt is the default it falls back to.
CHARACTER_FLAGS = ("references", "taxonomy", "trigger_token", "character_name")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tools.providers import PROVIDERS  # the names for the help (requests, PIL; no model stack)
    from tools.settings import PROFILE_IMAGES_TEXT  # stdlib only

    # SUPPRESS: an absent flag leaves no attribute, so the setting (or the default named in the help) applies.
    parser.add_argument("--provider", dest="providers", action="append", metavar="NAME", default=argparse.SUPPRESS,
                        help=f"repeatable; one of: {', '.join([*PROVIDERS, *LOCAL])} (default: lora — --lora, else "
                             "the newest LoRA under output_dir, if any —, base, and each competitor with a key)")
    parser.add_argument("--prompt", dest="prompts", action="append", metavar="TEXT", default=argparse.SUPPRESS,
                        help="repeatable; start it with the trigger token for the LoRA (default: the test_prompt "
                             "setting, else the analysis' training prompt, else '<trigger token>, <character name>')")
    parser.add_argument("-n", "--images-per-prompt", dest="images_per_prompt", type=int, metavar="N",
                        default=argparse.SUPPRESS,
                        help="images per prompt and generator (default: the images_per_prompt setting; "
                             f"0 there: {PROFILE_IMAGES_TEXT})")
    parser.add_argument("--out", metavar="DIR", default=argparse.SUPPRESS, help="folder for the images (default: <output_dir>/comparisons)")
    parser.add_argument("--lora", metavar="PATH", default=argparse.SUPPRESS,
                        help="LoRA weights file or training run folder (for --provider lora; default: the newest "
                             "pytorch_lora_weights.safetensors under output_dir)")
    parser.add_argument("--lora-scale", dest="lora_scale", type=float, default=1.0, help="LoRA strength")
    parser.add_argument("--lcm", dest="use_lcm", action="store_true", default=argparse.SUPPRESS,
                        help="fast local generation with LCM (4-8 steps)")


def run(args: argparse.Namespace, settings: Settings, ui: UI) -> int:
    from rich.markup import escape

    from tools.providers import configured_providers, generate_with_provider

    args.lora = getattr(args, "lora", None)
    chosen = getattr(args, "providers", None)
    names = list(dict.fromkeys(chosen)) if chosen else _default_generators(args, settings, ui)
    if not getattr(args, "prompts", None):
        from tools.character import check_saved_analysis

        settings = check_saved_analysis(settings)
    prompts = getattr(args, "prompts", None) or [default_prompt(settings)]
    out = getattr(args, "out", None)
    out_dir = Path(out) if out else Path(settings.output_dir) / "comparisons"
    prompts = _validate(names, prompts, args)
    if "lora" in names:
        from tools.character import missing_trigger_warning

        for line in dict.fromkeys(missing_trigger_warning(p, settings.trigger_token) for p in prompts):
            if line:
                ui.warn(escape(line))

    hosted, skip_lines = configured_providers(settings, [n for n in names if n not in LOCAL])
    for line in skip_lines:
        ui.warn(escape(line))
    ready = {p.name: p for p in hosted}

    saved, failures, notes = [], [], []
    stamp = timestamp()  # one per call: a second call into the same folder adds images, never replaces them
    for name in names:
        try:
            if name in LOCAL:
                saved += _generate_local(name, prompts, out_dir, args, settings, stamp)
            elif name in ready:
                saved += generate_with_provider(ready[name], prompts, out_dir, settings.sampling_images_per_prompt,
                                                settings.seed, skipped=notes, quiet=args.quiet)
        except AldarError as error:  # one generator failing must not cost the others' images
            failures.append(name)
            ui.warn(escape(f"{name}: failed — {error}"))
    for line in notes:
        ui.warn(escape(line))

    if saved:
        # File names only (the folder is in the title): a long path would be cut short in a table cell.
        rows = [[escape(img.generator), prompts.index(img.prompt) + 1 if img.prompt in prompts else "-",
                 img.seed, escape(_shown_path(img.path, out_dir))] for img in saved]
        ui.table(f"generated images → {escape(str(out_dir))}", ["generator", "prompt", "seed", "file"], rows)
        ui.success(f"{len(saved)} image(s) saved" + (f"; failed: {', '.join(failures)}" if failures else ""))
        return 0
    if failures or notes:  # a generator was asked and answered badly: a missing key is not the problem
        ui.error(escape(f"no generator produced an image: {', '.join(failures + sorted(_no_image(notes)))} "
                        "failed (see the lines above) — fix what they name and retry, or use --provider base"))
    else:
        ui.error("no generator produced an image — set a key in .env for a hosted provider (see the lines above), "
                 "or use --provider base / --provider lora --lora PATH")
    return 2


def _no_image(notes: list[str]) -> set[str]:
    """The generators named by "<name>: prompt N gave no image — ..." lines."""
    return {line.partition(":")[0] for line in notes}


def default_prompt(settings: Settings) -> str:
    """The test_prompt setting; else the training prompt of the saved analysis (refused when it was made for
    another trigger token or other pictures); else '<trigger token>, <character name>'."""
    if settings.test_prompt:
        return settings.test_prompt
    from tools.atomic import read_json_object
    from tools.character import prompt_from_analysis

    saved = read_json_object(Path(settings.analysis_path))
    if saved and isinstance(saved.get("training_prompt"), str):
        return prompt_from_analysis(saved)
    return f"{settings.trigger_token}, {settings.character_name}"


def _validate(names: list[str], prompts: list[str], args: argparse.Namespace) -> list[str]:
    """Every bad input is reported before a single request or model load; the prompts, stripped."""
    from tools.character import check_prompts
    from tools.providers import PROVIDERS

    known = [*PROVIDERS, *LOCAL]
    for name in names:
        if name not in known:
            raise InputError(f"unknown provider {name!r}", f"use one of: {', '.join(known)}")
    prompts = check_prompts(prompts, "--prompt")
    check_lora_scale(args.lora_scale, "--lora-scale")
    if "lora" in names and not args.lora:
        raise InputError("--provider lora needs the LoRA to use", "pass --lora PATH (a .safetensors file or a run folder)")
    if args.lora:
        from tools.generation.local import resolve_lora_file  # raises InputError for a missing file or folder

        resolve_lora_file(args.lora)
    return prompts


def _default_generators(args: argparse.Namespace, settings: Settings, ui: UI) -> list[str]:
    """No --provider: the local model — the LoRA (--lora, else the newest one trained under output_dir,
    as `aldar story` finds it) and the base — plus the competitors setting (those without a key are
    skipped with one line each)."""
    if args.lora is None:
        from tools.generation.local import find_newest_lora

        newest = find_newest_lora(settings.output_dir)
        if newest is not None:
            args.lora = str(newest)
            ui.status(f"lora: the newest trained LoRA, {newest}")
    return [*(["lora"] if args.lora else []), "base", *settings.competitors]


def _generate_local(name: str, prompts: list[str], out_dir: Path, args: argparse.Namespace, settings: Settings,
                    stamp: str):
    from tools.generation.local import generate_local  # heavy (torch, diffusers): only when asked for
    from tools.generation.sampling import SamplingSpec
    from tools.models import resolve_profile

    return generate_local(resolve_profile(settings), prompts, out_dir, SamplingSpec.from_settings(settings),
                          lora_path=Path(args.lora) if name == "lora" else None, lora_scale=args.lora_scale,
                          name=name, quiet=args.quiet, file_stamp=stamp)


def _shown_path(path: Path, out_dir: Path) -> str:
    try:
        return str(Path(path).relative_to(out_dir))
    except ValueError:
        return str(path)
