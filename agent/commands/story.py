"""``aldar story "PROMPT"``: an LLM-written tale of the character, illustrated scene by scene into a storybook folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line is parsed before any of this loads (see agent.cli.build_parser)
    from agent.views.ui import UI
    from tools.settings import Settings

NAME = "story"
CHARACTER_FLAGS = ("references", "trigger_token", "character_name")  # whose tale: the writer is told who
HELP = ("write a short tale of your character from your idea with the LLM (Deepseek or any OpenAI-compatible "
        "server) and illustrate each scene; saves story.json, story.md and index.html under <output_dir>/stories/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from agent.llm.story import GENERATORS, MAX_SCENES, MIN_SCENES

    parser.add_argument("prompt", help='what the tale is about, e.g. "Aldar tricks the greedy bai out of his horse"')
    parser.add_argument("--generator", choices=GENERATORS, default="lora",
                        help="who draws the scenes: the trained LoRA, the bare base model, or a hosted provider")
    parser.add_argument("--lora", type=Path, metavar="PATH",
                        help="LoRA folder or pytorch_lora_weights.safetensors; None = the newest one under output_dir")
    parser.add_argument("--scenes", type=int, default=4, help=f"number of scenes ({MIN_SCENES}-{MAX_SCENES})")
    parser.add_argument("--lcm", dest="use_lcm", action="store_const", const=True, default=None,
                        help="fast mode: LCM-LoRA + LCMScheduler, 4 steps (local generators); None = use_lcm from settings")
    parser.add_argument("--steps", dest="num_inference_steps", type=int, metavar="N",
                        help="inference steps for local generators; None = num_inference_steps from settings (30)")


def run(args: argparse.Namespace, settings: Settings, ui: UI) -> int:
    from rich.markup import escape

    from agent.llm.story import create_storybook

    book = create_storybook(settings, args.prompt, generator=args.generator, lora_path=args.lora,
                            scenes=args.scenes, quiet=args.quiet)
    for line in book.notes:
        ui.warn(line)
    drawn = sum(1 for scene in book.story["scenes"] if scene.get("image"))
    ui.success(f"“{escape(book.story['title'])}” — {len(book.story['scenes'])} scenes, {drawn} pictures "
               f"({book.story['generator']})")
    ui.info(f"open {escape(str(book.files['html']))}")
    if book.story.get("profile") == "tiny":
        from tools.models import TINY_NOTICE

        ui.warn(TINY_NOTICE)
    return 0
