"""``aldar analyze``: zero-shot CLIP feature analysis of the reference pictures."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from agent import ui
from tools.scoring.analyzer import analyze_references
from tools.models import resolve_profile
from tools.settings import Settings

NAME = "analyze"
HELP = ("find the character's key features in the reference pictures (CLIP, zero-shot against the taxonomy) "
        "and write the feature analysis with a training prompt and one caption per image")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # dest names equal Settings fields, so these flags override aldar.toml / ALDAR_* like every setting.
    parser.add_argument("--references", metavar="DIR", default=argparse.SUPPRESS,
                        help="folder of reference pictures, png/jpg/webp (default: the bundled examples/aldar_kose)")
    parser.add_argument("--taxonomy", metavar="FILE", default=argparse.SUPPRESS,
                        help="feature taxonomy JSON (default: <references>/taxonomy.json, else the bundled one)")
    parser.add_argument("--out", dest="analysis_path", metavar="FILE", default=argparse.SUPPRESS,
                        help="where to write the analysis (default: models/aldar_feature_analysis.json)")
    parser.add_argument("--trigger-token", dest="trigger_token", metavar="TOKEN", default=argparse.SUPPRESS,
                        help="token that names the character in prompts (default: aldarkose)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the reference-embedding cache")


def run(args: argparse.Namespace, settings: Settings) -> int:
    profile = resolve_profile(settings)
    analysis = analyze_references(Path(settings.references), profile, settings.taxonomy_path(),
                                  settings.trigger_token, settings.character_name, Path(settings.analysis_path),
                                  use_cache=not args.no_cache)
    show_analysis(analysis)
    ui.success(f"feature analysis saved to {settings.analysis_path}")
    return 0


def show_analysis(analysis: dict) -> None:
    count = len(analysis["references"])
    key = {(d["category"], d["feature"]) for d in analysis["key_feature_details"]}
    rows = []
    for category, entry in analysis["categories"].items():
        for rank, item in enumerate(entry["top"], start=1):
            mark = "[bold green]key[/bold green]" if (category, item["feature"]) in key else ""
            rows.append([escape(category) if rank == 1 else "", escape(item["feature"]), item["probability"],
                         f"{item['agreement']}/{count}", mark])
    ui.table(f"key features of {analysis['character_name']} ({count} references, CLIP {analysis['model']})",
             ["category", "feature (top-2)", "mean probability", "top-1 in", ""], rows)
    ui.info(f"[bold]training prompt:[/bold] {escape(analysis['training_prompt'])}")
    if analysis.get("notice"):
        ui.warn(analysis["notice"])
