"""``aldar score``: rank generators against the reference pictures and write the report and feedback."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from tools.errors import InputError

if TYPE_CHECKING:  # the command line is parsed before any of this loads (see agent.cli.build_parser)
    from agent.views.ui import UI
    from tools.scoring.analyzer import ImageSet
    from tools.settings import Settings

NAME = "score"
CHARACTER_FLAGS = ("references", "taxonomy", "trigger_token", "character_name")
HELP = ("score generated images against the references (CLIP, key features, SSIM), rank the generators beside the "
        "reference ceiling, write <output_dir>/comparisons/comparison_report_<ts>.json and feedback/feedback_<ts>.json")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images", action="append", nargs="+", required=True, metavar="[NAME=]PATH", default=argparse.SUPPRESS,
        help="generated images: files or folders. Write NAME=PATH to say which generator made them "
             "(e.g. --images lora=out/lora freepik=out/freepik deepai=d1.png deepai=d2.png); a PATH without "
             "NAME= belongs to --generator. The flag may be repeated.")
    parser.add_argument("--generator", default="lora", metavar="NAME",
                        help="generator name for the PATHs given without NAME=")
    parser.add_argument("--lora", default="lora", metavar="NAME",
                        help="which generator is the LoRA: feedback compares it with the best other one")
    parser.add_argument("--analysis", dest="analysis_path", metavar="FILE", default=argparse.SUPPRESS,
                        help="feature analysis to use (default: <output_dir>/feature_analysis.json); made first "
                             "when missing or made with another taxonomy or CLIP model (one made for another "
                             "trigger token or other references is refused)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the reference-embedding cache")


def parse_image_groups(groups: list[list[str]], default_name: str) -> dict[str, list[Path]]:
    """``[[ "lora=dir", "x.png" ], ...]`` → ``{"lora": [...files], default_name: [x.png]}``; folders expanded."""
    from tools.images import list_images

    result: dict[str, list[Path]] = {}
    for token in (t for group in groups for t in group):
        name, raw = default_name, token
        if "=" in token and not Path(token).exists():
            name, raw = token.split("=", 1)
        if not _NAME_PATTERN.match(name):
            raise InputError(f"generator name {name!r} in --images {token!r} is not usable",
                             "use letters, digits, '-', '_' or '.', e.g. --images freepik=out/freepik")
        if not raw.strip():  # Path("") is the working directory: "lora=" must not score whatever lies there
            raise InputError(f"--images {token!r} names no file or folder", "write NAME=PATH, e.g. lora=out/lora")
        path = Path(raw)
        if path.is_dir():
            files = list_images(path, "images")
        elif path.is_file():
            files = [path]
        else:
            raise InputError(f"--images {token!r}: {path} does not exist", "pass existing image files or folders")
        result.setdefault(name, []).extend(files)
    return result


def ensure_analysis(settings: Settings, profile, use_cache: bool, ui: UI) -> dict:
    """The analysis at settings.analysis_path, (re)made when missing, unreadable or stale."""
    from rich.markup import escape

    from agent.views import render
    from tools.models import load_clip
    from tools.character import check_saved_analysis
    from tools.scoring.analyzer import analyze_references, reusable_analysis
    from tools.scoring.taxonomy import load_taxonomy

    settings = check_saved_analysis(settings)  # its trigger token and name, unless given otherwise (refused)
    path = Path(settings.analysis_path)
    references = Path(settings.references)
    taxonomy = load_taxonomy(settings.taxonomy_path())  # validated even when the saved analysis is reused
    reason = "there is none yet"
    if path.is_file():
        # another trigger token or other pictures: refused (InputError), never silently replaced
        analysis = reusable_analysis(path, references, settings.trigger_token, load_clip(profile).model_id, taxonomy)
        if analysis is not None:
            return analysis
        reason = "the saved one is unreadable or was made with another taxonomy or CLIP model"
    ui.info(f"running the feature analysis first ({reason}) → {escape(str(path))}")
    analysis = analyze_references(references, profile, settings.taxonomy_path(), settings.trigger_token,
                                  settings.character_name, path, use_cache=use_cache)
    ui.show(render.analysis_table(analysis))
    for line in analysis.get("warnings") or []:
        ui.warn(escape(line))
    ui.info(f"[bold]training prompt:[/bold] {escape(analysis['training_prompt'])}")
    return analysis


def run(args: argparse.Namespace, settings: Settings, ui: UI) -> int:
    from agent.views import render
    from tools.images import list_images, skipped_note
    from tools.models import resolve_profile
    from tools.scoring.analyzer import load_image_set
    from tools.scoring.scorer import build_feedback, check_output_folder, score_generators, write_results

    groups = parse_image_groups(args.images, args.generator)
    # Every input is checked before any model work or any file is written.
    image_sets: dict[str, ImageSet] = {name: load_image_set(paths) for name, paths in groups.items()}
    list_images(settings.references, "references")
    if skipped := skipped_note(settings.references):
        ui.warn_once(skipped)
    check_output_folder(settings.output_dir)
    profile = resolve_profile(settings)
    analysis = ensure_analysis(settings, profile, not args.no_cache, ui)
    report = score_generators(image_sets, Path(settings.references), profile, analysis, settings.metric_weights,
                              use_cache=not args.no_cache, quiet=args.quiet)
    # images named base=PATH are the base model's: the feedback then says what the LoRA adds to them
    feedback = build_feedback(report, args.lora, "base") if args.lora in report["generators"] else None
    report_path, feedback_path = write_results(report, feedback, settings.output_dir)
    ui.show(render.report_scores(report))
    if feedback is None:
        ui.warn(f"no generator is named {args.lora!r}: no LoRA feedback written (name its images "
                f"{args.lora}=PATH or pass --lora NAME)")
    else:
        ui.show_feedback(feedback)
    ui.success(f"report: {report_path}" + (f"  feedback: {feedback_path}" if feedback_path else ""))
    return 0
