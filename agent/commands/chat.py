"""``aldar chat``: the interactive assistant (slash commands work without any LLM), or one turn with --message."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line is parsed before any of this loads (see agent.cli.build_parser)
    from agent.views.ui import UI
    from tools.settings import Settings

NAME = "chat"
CHARACTER_FLAGS = ("references", "taxonomy", "trigger_token", "character_name", "test_prompt")
HELP = ("chat with the assistant about training and scoring the LoRA; slash commands (/train, /score, /auto N, "
        "/history, /explain, /help …) work without an LLM. Esc+Enter or a trailing \\ continues a line.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--message", metavar="TEXT",
                        help="run one turn (chat text or a slash command such as '/auto 2'), print, exit")
    parser.add_argument("-y", "--yes", action="store_true",
                        help="do not ask before training or paid API calls (needed with --message when no terminal "
                             "can answer)")


def run(args: argparse.Namespace, settings: Settings, ui: UI) -> int:
    from agent.views.repl import Repl  # reaches its prompt without torch or the LLM client: both load on first use

    repl = Repl(settings, ui)
    if args.message is not None:
        return repl.run_once(args.message)
    return repl.interact()
