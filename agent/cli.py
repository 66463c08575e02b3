"""``aldar`` command line: one subcommand per module in ``agent.commands``.

Settings flags shared by every command are added here; each flag overrides the
setting of the same name from ``aldar.toml`` / ``ALDAR_*`` (see ``tools.settings``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from agent.termination import interrupt_on_termination, interrupted_exit_code, terminated_by
from tools.atomic import disk_full_error, says_disk_full
from tools.errors import AldarError
from tools.secrets import install_log_redaction, load_dotenv
from tools.settings import Settings, load_settings, unknown_environment_names

COMMAND_MODULES = [  # in the order --help lists them: the loop's steps, then the whole loop, then helpers
    "agent.commands.analyze",
    "agent.commands.train",
    "agent.commands.generate",
    "agent.commands.score",
    "agent.commands.run",
    "agent.commands.chat",
    "agent.commands.story",
    "agent.commands.doctor",
]


class Parser(argparse.ArgumentParser):
    """argparse keeping two things as flags are added (its formatter's methods and its list of actions are not
    public API): each flag's default in its help, and the flag names, for "did you mean"."""

    def __init__(self, *args, **kwargs) -> None:
        self.flags: list[str] = []  # before argparse adds -h
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **options):
        self.flags.extend(name for name in names if name.startswith("-"))
        return super().add_argument(*names, **with_default(names, options))

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        add = group.add_argument

        def add_argument(*names, **options):
            self.flags.extend(name for name in names if name.startswith("-"))
            return add(*names, **with_default(names, options))

        group.add_argument = add_argument
        return group


def with_default(names: tuple[str, ...], options: dict) -> dict:
    """``options`` with " (default: X)" after the help where there is a default to show (as argparse's
    ArgumentDefaultsHelpFormatter): not for None, False or 0, nor where the help speaks of its default
    itself (flags whose default comes "from settings" say so)."""
    text, default = options.get("help"), options.get("default")
    shown = any(name.startswith("-") for name in names) or options.get("nargs") in ("?", "*")
    if (not text or text == argparse.SUPPRESS or default in (None, False, argparse.SUPPRESS) or "default" in text
            or not shown):
        return options
    return {**options, "help": f"{text} (default: %(default)s)"}


def add_character_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """The character's settings a command takes (its CHARACTER_FLAGS), from the one table in tools.settings.
    SUPPRESS: an absent flag leaves no attribute, so aldar.toml, ALDAR_* or the references folder decide."""
    from tools.settings import CHARACTER_FLAGS

    if not names:
        return
    group = parser.add_argument_group("character (override aldar.toml, ALDAR_* and <references>/character.json)")
    for name in names:
        flag, metavar, help_text = CHARACTER_FLAGS[name]
        group.add_argument(flag, dest=name, metavar=metavar, default=argparse.SUPPRESS, help=help_text)


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (override aldar.toml and ALDAR_* variables)")
    group.add_argument("--config", metavar="FILE", help="settings file (default: ./aldar.toml, or $ALDAR_CONFIG)")
    group.add_argument("--profile", choices=["tiny", "sdxl"],
                       help="models: sdxl = real weights; tiny = small models trained in the bundled toy world, "
                            "offline (scores meaningful in that world only; default from settings: sdxl; "
                            "env ALDAR_PROFILE)")
    group.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], help="compute device (auto: cuda > mps > cpu)")
    group.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], help="precision (auto: fp16 on GPU, fp32 on CPU)")
    group.add_argument("--base-model", dest="base_model", metavar="ID|DIR|FILE",
                       help="SDXL base: Hub repo id, diffusers folder or single .safetensors file")
    group.add_argument("--clip-model", dest="clip_model", metavar="ID|DIR", help="CLIP scorer model")
    group.add_argument("--seed", type=int, help="global seed")
    group.add_argument("--output-dir", dest="output_dir", metavar="DIR", help="results folder (lora_training_results)")
    group.add_argument("--weights", metavar="CLIP,FEATURES,SSIM",
                       help="quality-score weights, non-negative, summing to 1 (default 0.4,0.4,0.2)")
    group.add_argument("--llm-base-url", dest="llm_base_url", metavar="URL",
                       help="OpenAI-compatible LLM endpoint, e.g. http://127.0.0.1:8080/v1 for a local llama.cpp "
                            "server (a server on this machine needs no key; default from settings: Deepseek)")
    group.add_argument("--llm-model", dest="llm_model", metavar="NAME", help="model name the LLM endpoint serves")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name) for name in Settings.__dataclass_fields__ if hasattr(args, name)}
    if getattr(args, "weights", None):
        parts = [p.strip() for p in args.weights.split(",")]
        if len(parts) != 3:
            from tools.errors import ConfigError
            raise ConfigError(f"--weights {args.weights!r} needs three numbers", "write it as CLIP,FEATURES,SSIM, e.g. 0.4,0.4,0.2")
        overrides.update(weight_clip=parts[0], weight_features=parts[1], weight_ssim=parts[2])
    return load_settings(getattr(args, "config", None), overrides)


def use_one_torch_thread() -> None:
    """Tiny models are too small to gain from intra-op threads; on a busy CPU the spinning threads
    made a 2-round tiny run 6x slower (3.5 min vs 34 s). An explicit OMP_NUM_THREADS wins.

    torch is not imported for this: start-up stays light, and torch reads OMP_NUM_THREADS when the
    command that needs it first imports it. Only an already imported torch is told directly."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    else:
        os.environ["OMP_NUM_THREADS"] = "1"


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser, or, given the command line, only the flags of the command it names.

    A command's flags can cost imports (``generate`` lists the providers, ``train`` the trainer's
    settings); ``--version``, ``--help`` and one command's argument errors should not pay for all of them.
    The command modules themselves import nothing heavy: that waits for their ``run``.
    allow_abbrev=False everywhere: ``--round 2`` must not silently mean ``--rounds 2``.
    """
    parser = Parser(
        prog="aldar", allow_abbrev=False,
        description="Train an SDXL LoRA of one character, pit it against hosted generators, score everyone "
                    "against the reference pictures and let an agent decide the next training round.")
    from tools import __version__
    parser.add_argument("--version", action="version", version=f"aldar {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = None if argv is None else _command_word(argv)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        sub = commands.add_parser(module.NAME, help=module.HELP, description=module.HELP, allow_abbrev=False)
        if argv is None or module.NAME == named:
            module.add_arguments(sub)
            add_character_flags(sub, getattr(module, "CHARACTER_FLAGS", ()))
            add_settings_flags(sub)
        sub.set_defaults(handler=module.run, command_parser=sub)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand argparse will pick: the first word that is not an option (the top level takes
    no option with a value, and argparse never abbreviates subcommand names)."""
    return next((word for word in argv if not word.startswith("-")), None)


def did_you_mean(typed: str, choices: Sequence[str]) -> str:
    """`` (did you mean X?)`` for the choice closest to ``typed``, or '' when none is close."""
    import difflib

    close = difflib.get_close_matches(typed, list(choices), n=1) if typed else []
    return f" (did you mean {close[0]}?)" if close else ""


def refuse_unknown_arguments(parser: Parser, unknown: list[str]) -> None:
    """Exit 2 with ``parser``'s usage, naming the unknown arguments and the closest flag of ``parser``."""
    typed = next((word.partition("=")[0] for word in unknown if word.startswith("--")), "")
    parser.error(f"unrecognized arguments: {' '.join(unknown)}{did_you_mean(typed, parser.flags)}")


def refuse_unknown_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Exit 2 with the usage when the command word names no command, and the closest command, as flags get:
    argparse's own "invalid choice" lists every command but never says which one was meant."""
    word = _command_word(argv)
    names = [importlib.import_module(module).NAME for module in COMMAND_MODULES]
    if word is not None and word not in names:
        parser.error(f"unknown command {word!r}{did_you_mean(word, names)}; the commands: {', '.join(names)}")


def main(argv: Sequence[str] | None = None) -> int:
    # transformers' warnings here are about backends aldar does not use (torchvision image processors:
    # CLIP preprocessing is ours) and token counts the pipeline truncates anyway. TRANSFORMERS_VERBOSITY=warning
    # brings them back.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    load_dotenv()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    refuse_unknown_command(parser, argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would blame the top-level usage; the mistyped flag belongs to the subcommand
        refuse_unknown_arguments(getattr(args, "command_parser", None) or parser, unknown)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from agent.views.ui import UI

    ui = UI(assume_yes=bool(getattr(args, "yes", False)), quiet=bool(getattr(args, "quiet", False)))
    for line in unknown_environment_names():
        ui.warn(line)
    with interrupt_on_termination():
        code = run_command(args, ui)
    # A command that caught the interrupt itself (the chat) still ends as the signal asked.
    return interrupted_exit_code() if terminated_by() else code


def run_command(args: argparse.Namespace, ui) -> int:
    """The command's exit code; every error a user can meet ends as one line."""
    try:
        settings = settings_from_args(args)
        if settings.is_tiny:
            use_one_torch_thread()
        with ui.progress_bars():
            return int(args.handler(args, settings, ui) or 0)
    except AldarError as error:
        from rich.markup import escape  # a fix naming "[scoring]" (a TOML table) is text, not a rich tag

        ui.error(escape(str(error)))
        return error.exit_code
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP: the trainer checkpointed the step it reached
        ui.warn("interrupted — finished work is saved; rerun the same command to resume")
        return interrupted_exit_code()
    except (OSError, RuntimeError) as exc:
        # The last net for a full disk met outside the atomic writers (a library's own cache, a log).
        if not says_disk_full(exc):
            raise
        error = disk_full_error(Path(getattr(exc, "filename", None) or os.getcwd()))
        ui.error(str(error))
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
