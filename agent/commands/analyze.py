"""``aldar analyze``: zero-shot CLIP feature analysis of the reference pictures."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line is parsed before any of this loads (see agent.cli.build_parser)
    from agent.views.ui import UI
    from tools.settings import Settings

NAME = "analyze"
CHARACTER_FLAGS = ("references", "taxonomy", "trigger_token", "character_name")
HELP = ("find the character's key features in the reference pictures (CLIP, zero-shot against the taxonomy) "
        "and write the feature analysis with a training prompt and one caption per image")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # dest names equal Settings fields, so these flags override aldar.toml / ALDAR_* like every setting.
    parser.add_argument("--out", dest="analysis_path", metavar="FILE", default=argparse.SUPPRESS,
                        help="where to write the analysis (default: <output_dir>/feature_analysis.json)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the reference-embedding cache")


def run(args: argparse.Namespace, settings: Settings, ui: UI) -> int:
    from rich.markup import escape

    from agent.views import render
    from tools.character import character_warnings
    from tools.images import skipped_note
    from tools.models import resolve_profile
    from tools.scoring.analyzer import analyze_references

    profile = resolve_profile(settings)
    if skipped := skipped_note(settings.references):
        ui.warn_once(skipped)
    for line in character_warnings(settings):
        ui.warn(escape(line))
    analysis = analyze_references(Path(settings.references), profile, settings.taxonomy_path(),
                                  settings.trigger_token, settings.character_name, Path(settings.analysis_path),
                                  use_cache=not args.no_cache)
    ui.show(render.analysis_table(analysis))
    for line in analysis.get("warnings") or []:
        ui.warn(escape(line))
    ui.info(f"[bold]training prompt:[/bold] {escape(analysis['training_prompt'])}")
    ui.show(render.captions_table(analysis))
    ui.success(f"feature analysis saved to {settings.analysis_path}")
    return 0
