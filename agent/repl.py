"""``aldar chat``: talk to the assistant, or drive every step yourself with slash commands.

Slash commands need no LLM at all; plain text goes to the LLM with the tools of
``agent.llm_tools``. Input: history in ``$ALDAR_CACHE/chat_history`` (default ``~/.cache/aldar``),
Tab completes commands, Esc+Enter inserts a newline, and a line ending in ``\\`` continues on
the next one. Ctrl-C cancels the running action (training stops at a checkpoint) and returns to the
prompt; Ctrl-C twice at the prompt, Ctrl-D, or /quit leaves. All output goes through ``agent.ui``.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from prompt_toolkit.completion import Completer, Completion
from rich.live import Live
from rich.markdown import Markdown
from rich.markup import escape

from agent import ui
from agent.llm_client import KEY_HELP, describe_endpoint, resolve_endpoint
from agent.llm_tools import KNOBS, build_session_tools, explain_features, finish_scored_round, latest_feedback
from agent.loop import ChatLoop, LoopEvents, ToolCallRecord
from tools.atomic import atomic_write_json
from tools.errors import AldarError, ConfigError, InputError
from tools.secrets import KEY_NAMES, api_key, mask, redact
from tools.settings import Settings

log = logging.getLogger(__name__)
PROMPT = "aldar> "
CONTINUATION = "...    "
NO_LLM_LINE = ("chat needs an LLM: " + KEY_HELP + ". Slash commands work without one — type /help.")


@dataclass
class Command:
    name: str
    usage: str
    help: str
    run: Callable[[list[str]], None]


class Repl:
    """One chat: a lazily opened ``Session`` (it locks the results folder) and an optional LLM."""

    def __init__(self, settings: Settings, *, assume_yes: bool = False, quiet: bool = False) -> None:
        self.settings = settings
        self.assume_yes = assume_yes
        self.quiet = quiet
        self._session = None
        self.loop: ChatLoop | None = None
        self.model = ""
        self.started = time.strftime("%Y%m%d_%H%M%S")
        self.commands = {c.name: c for c in self._command_table()}
        self.aliases = {"exit": "quit", "q": "quit", "?": "help"}

    # ------------------------------------------------------------------ lifecycle
    @property
    def session(self):
        if self._session is None:
            from agent.session import Session

            self._session = Session(self.settings, assume_yes=self.assume_yes, quiet=self.quiet)
        return self._session

    def close(self) -> None:
        if self.loop is not None and self.loop.usage.requests:
            usage = self.loop.usage
            ui.info(f"[dim]LLM tokens this session: {usage.total_tokens:,} "
                    f"({usage.prompt_tokens:,} in, {usage.completion_tokens:,} out, {usage.requests} requests)[/dim]")
        if self._session is not None:
            self._session.close()
            self._session = None

    # ------------------------------------------------------------------ one line of input
    def handle(self, line: str) -> bool:
        """Run one input; False when the chat should end. Errors print one line and return True."""
        text = line.strip()
        if not text:
            return True
        try:
            if text.startswith("/"):
                return self._slash(text)
            self.chat(text)
        except AldarError as error:
            ui.error(str(error))
            self.last_failed = True
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # a bug in one action must not end the chat; the log keeps the traceback
            log.debug("action failed", exc_info=True)
            ui.error(escape(f"{text.split()[0]} failed: {type(error).__name__}: {error}"))
            self.last_failed = True
        return True

    def _slash(self, text: str) -> bool:
        try:
            words = shlex.split(text[1:])
        except ValueError as exc:
            raise InputError(f"cannot read {text!r} ({exc})", "close the quotes") from None
        name = words[0].lower() if words else ""
        name = self.aliases.get(name, name)
        if name == "quit":
            return False
        command = self.commands.get(name)
        if command is None:
            close = difflib.get_close_matches(name, list(self.commands), n=1)
            hint = f"did you mean /{close[0]}? " if close else ""
            raise InputError(f"unknown command /{name}", f"{hint}type /help for the list")
        command.run(words[1:])
        return True

    # ------------------------------------------------------------------ chat with the LLM
    def llm_ready(self) -> str:
        """'' when an LLM key is configured, else the reason."""
        try:
            resolve_endpoint(self.settings)
            return ""
        except ConfigError:
            return NO_LLM_LINE

    def chat(self, text: str) -> None:
        reason = self.llm_ready()
        if reason:
            self.last_failed = True
            ui.warn(reason)
            return
        loop = self._chat_loop()
        renderer = StreamRenderer()
        loop.events = LoopEvents(on_text=renderer.feed, on_tool_start=renderer.tool_start,
                                 on_tool_end=renderer.tool_end)
        try:
            result = loop.run_turn(text)
        finally:
            renderer.finish()
            self._save_transcript()
        if result.stop_reason != "answer":
            ui.warn(result.text)  # step limit or a repeated failing call: say why the turn ended
        elif not renderer.streamed_text:
            ui.markdown(result.text)
        ui.info(f"[dim]tokens: {result.usage.total_tokens:,} this turn · {loop.usage.total_tokens:,} this session[/dim]")

    def _chat_loop(self) -> ChatLoop:
        if self.loop is None:
            from agent.llm_client import make_client
            from agent.prompts import chat_system_prompt

            client, self.model = make_client(self.settings)
            session = self.session
            tools = build_session_tools(session, assume_yes=self.assume_yes, decided_by=f"llm:{self.model}")
            self.loop = ChatLoop(client, self.model, tools, system_prompt=chat_system_prompt(self.settings, session.bounds),
                                 max_steps=self.settings.llm_max_steps, thinking=self.settings.llm_thinking)
        return self.loop

    def _save_transcript(self) -> None:
        if self.loop is None:
            return
        path = Path(self.settings.output_dir) / "chat" / f"transcript_{self.started}.json"
        try:
            atomic_write_json(path, self.loop.transcript())
        except OSError as exc:
            ui.warn(f"could not save the chat transcript to {path} ({exc})")

    # ------------------------------------------------------------------ slash commands
    def _command_table(self) -> list[Command]:
        return [
            Command("help", "/help", "this list", self.cmd_help),
            Command("analyze", "/analyze [--force]", "CLIP feature analysis of the references (cached)", self.cmd_analyze),
            Command("train", "/train [knob=value ...]", f"train this round's LoRA (knobs: {', '.join(KNOBS)})",
                    self.cmd_train),
            Command("generate", "/generate [prompt]", "images from the LoRA, the base model and hosted competitors",
                    self.cmd_generate),
            Command("score", "/score", "score this round's images against the references; writes feedback",
                    self.cmd_score),
            Command("auto", "/auto N", "run N full rounds; the LLM decides each adjustment (rule policy without a key)",
                    self.cmd_auto),
            Command("history", "/history", "the finished rounds", self.cmd_history),
            Command("explain", "/explain [feature]", "why key features are weak, from the latest feedback (no LLM)",
                    self.cmd_explain),
            Command("report", "/report", "write report.html and score_chart.png", self.cmd_report),
            Command("config", "/config", "settings, LLM endpoint, keys (masked), next round's parameters",
                    self.cmd_config),
            Command("doctor", "/doctor", "check packages, device, models, references, keys", self.cmd_doctor),
            Command("quit", "/quit", "leave (also /exit, Ctrl-D, Ctrl-C twice)", lambda args: None),
        ]

    def cmd_help(self, args: list[str]) -> None:
        ui.table("slash commands (no LLM needed)", ["command", "what it does"],
                 [[escape(c.usage), escape(c.help)] for c in self.commands.values()],
                 caption="Plain text goes to the LLM. Esc+Enter or a trailing \\ for a new line; Tab completes; "
                         "Ctrl-C cancels the running action.")

    def cmd_analyze(self, args: list[str]) -> None:
        _no_extra(args, allowed={"--force"})
        analysis = self.session.analyze(force="--force" in args)
        rows = [[name, ", ".join(f"{t.get('feature')} ({t.get('probability', 0):.2f})" for t in entry.get("top", []))]
                for name, entry in (analysis.get("categories") or {}).items()]
        ui.table("feature analysis", ["category", "top features (probability)"], rows,
                 caption=_notice(analysis))
        ui.info(f"key features: {escape(', '.join(analysis.get('key_features') or []))}")
        ui.info(f"training prompt: {escape(analysis.get('training_prompt') or '')}")

    def cmd_train(self, args: list[str]) -> None:
        from agent.session import Decision

        adjustments = parse_knobs(args)
        session = self.session
        if not ui.confirm(f"Train round {session.next_round_number if session.current is None else session.current.number}"
                          f"'s LoRA now?", self.assume_yes):
            ui.info("training skipped")
            return
        finish_scored_round(session, Decision(adjustments, "set with /train", "user"))
        try:
            result = session.train(adjustments or None)
        except KeyboardInterrupt:  # the trainer saved a checkpoint first; the round stays unfinished
            number = session.current.number if session.current else session.next_round_number
            run_dir = session.store.relative(session.store.round_run_dir(number))
            ui.warn(f"training interrupted; the checkpoint in {escape(str(run_dir))} is kept — /train resumes it")
            return
        ui.success(f"trained {result.get('steps')} steps → {escape(str(session.store.relative(result.get('lora_path'))))}")

    def cmd_generate(self, args: list[str]) -> None:
        session = self.session
        paid = session.keyed_competitors()
        if paid and not ui.confirm(f"Ask the paid APIs ({', '.join(paid)}) for images?", self.assume_yes):
            session.competitors = [c for c in session.competitors if c not in paid]
        prompt = " ".join(args).strip()
        images = session.generate([prompt] if prompt else None)
        ui.table("generated images", ["generator", "images", "folder"],
                 [[name, len(paths), session.store.relative(Path(paths[0]).parent) if paths else "-"]
                  for name, paths in images.items()])

    def cmd_score(self, args: list[str]) -> None:
        _no_extra(args)
        result = self.session.score()
        show_scores(result["report"], result["feedback"])
        ui.info(f"feedback: {escape(str(self.session.store.relative(result.get('feedback_path'))))}")

    def cmd_auto(self, args: list[str]) -> None:
        from agent.llm_decider import make_decider

        if len(args) != 1 or not args[0].isdigit() or int(args[0]) < 1:
            raise InputError("/auto needs a number of rounds", "write e.g. /auto 2")
        rounds = int(args[0])
        session = self.session
        if not ui.confirm(f"Run {rounds} full round(s) (training each, and paid APIs where keys are set)?",
                          self.assume_yes):
            ui.info("nothing run")
            return
        events = None if self.quiet else LoopEvents(
            on_tool_start=lambda name, args: ui.info(f"[dim]  llm → {escape(name)}({escape(' '.join(args.split())[:100])})[/dim]"))
        decider, reason = make_decider(self.settings, session.bounds, events)
        ui.info(f"decisions by [bold]{escape(decider.name)}[/bold]" + (f" — {escape(reason)}" if reason else ""))
        records = session.run_rounds(len(session.history()) + rounds, decider)
        if records:
            show_history(records)

    def cmd_history(self, args: list[str]) -> None:
        _no_extra(args)
        history = self.session.history()
        if not history:
            ui.info("no finished rounds yet — /auto 1, or /train, /generate, /score")
            return
        show_history(history)

    def cmd_explain(self, args: list[str]) -> None:
        feedback = latest_feedback(self.session)
        if feedback is None:
            ui.info("no feedback yet — /score a round first (or /auto 1)")
            return
        explained = explain_features(feedback, " ".join(args) or None)
        if not explained:
            ui.success("no weak key features: the LoRA shows every key feature at least as often as the target")
            return
        for item in explained:
            if not item.get("weak"):
                ui.info(f"[bold]{escape(str(item['feature']))}[/bold]: {escape(item['why'])}")
                continue
            ui.info(f"[bold]{escape(str(item['feature']))}[/bold] ({escape(str(item.get('category')))}): "
                    f"{escape(item['why'])}.\n  → {escape(item['suggestion'])}")

    def cmd_report(self, args: list[str]) -> None:
        from agent.report import write_report

        _no_extra(args)
        session = self.session
        path = write_report(session.store, session.references, session.history())
        ui.success(f"report: {escape(str(path))}")

    def cmd_config(self, args: list[str]) -> None:
        _no_extra(args)
        s = self.settings
        rows = [["profile", s.profile + (" (random weights: checks the pipeline, not quality)" if s.is_tiny else "")],
                ["output_dir", s.output_dir], ["references", s.references], ["device / dtype", f"{s.device} / {s.dtype}"],
                ["weights", ", ".join(f"{k} {v:g}" for k, v in s.metric_weights.items())],
                ["competitors", ", ".join(s.competitors) or "none"],
                ["llm", describe_endpoint(s)], ["llm_thinking", str(s.llm_thinking)],
                ["llm_max_steps", str(s.llm_max_steps)], ["llm_timeout_s", f"{s.llm_timeout_s:g}"]]
        rows += [[name, mask(api_key(name))] for name in KEY_NAMES]
        if self._session is not None:
            rows.append(["next round params", ", ".join(f"{k}={v}" for k, v in self._session.params.items() if k in KNOBS)])
        ui.table("configuration", ["setting", "value"], [[escape(a), escape(str(b))] for a, b in rows])

    def cmd_doctor(self, args: list[str]) -> None:
        import argparse

        from agent.commands import doctor

        _no_extra(args)
        doctor.run(argparse.Namespace(references=None, taxonomy=None), self.settings)

    # ------------------------------------------------------------------ interactive loop
    def interact(self) -> int:
        """The prompt loop (prompt_toolkit on a terminal, plain lines otherwise)."""
        read = self._terminal_reader() if sys.stdin.isatty() and sys.stdout.isatty() else _plain_reader
        ui.info(f"[bold]aldar chat[/bold] — profile {self.settings.profile}, results in {escape(self.settings.output_dir)}. "
                "/help lists commands; Esc+Enter or a trailing \\ for a new line; Ctrl-D to leave.")
        if self.llm_ready():
            ui.warn(NO_LLM_LINE)
        interrupts = 0
        try:
            while True:
                try:
                    line = read()
                except KeyboardInterrupt:
                    interrupts += 1
                    if interrupts >= 2:
                        break
                    ui.info("^C again to exit")
                    continue
                except EOFError:
                    break
                interrupts = 0
                try:
                    if not self.handle(line):
                        break
                except KeyboardInterrupt:
                    ui.warn("cancelled — back at the prompt")
        finally:
            self.close()
        return 0

    def run_once(self, message: str) -> int:
        """``aldar chat --message``: one turn (or one slash command), then exit."""
        self.last_failed = False
        try:
            self.handle(message)
        except KeyboardInterrupt:
            ui.warn("cancelled")
            return 130
        finally:
            self.close()
        return 2 if self.last_failed else 0

    last_failed = False

    def _terminal_reader(self) -> Callable[[], str]:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory
        from prompt_toolkit.key_binding import KeyBindings

        bindings = KeyBindings()

        @bindings.add("escape", "enter")
        def _newline(event) -> None:  # noqa: ANN001
            event.current_buffer.insert_text("\n")

        history_path = history_file()
        history_path.parent.mkdir(parents=True, exist_ok=True)
        prompt = PromptSession(history=FileHistory(str(history_path)), completer=SlashCompleter(self),
                               key_bindings=bindings, complete_while_typing=False)

        def read() -> str:
            lines = [prompt.prompt(PROMPT)]
            while lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1]
                lines.append(prompt.prompt(CONTINUATION))
            return "\n".join(lines)

        return read


def _plain_reader() -> str:
    lines = [_read_line(PROMPT)]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(_read_line(CONTINUATION))
    return "\n".join(lines)


def _read_line(prompt: str) -> str:
    ui.console.print(prompt, end="")
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def history_file() -> Path:
    return Path(os.environ.get("ALDAR_CACHE") or Path.home() / ".cache" / "aldar") / "chat_history"


class SlashCompleter(Completer):
    """Tab completes slash command names."""

    def __init__(self, repl: Repl) -> None:
        self.repl = repl

    def get_completions(self, document, complete_event):  # noqa: ANN001
        text = document.text_before_cursor
        if text.startswith("/") and " " not in text:
            for name in list(self.repl.commands) + ["exit"]:
                if ("/" + name).startswith(text):
                    yield Completion("/" + name, start_position=-len(text))


class StreamRenderer:
    """Shows the model's answer as Markdown while it streams in (rich Live on a terminal; printed once
    complete otherwise), and tool calls as dim lines."""

    def __init__(self) -> None:
        self.text = ""
        self.streamed_text = False
        self.live: Live | None = None
        self.animate = ui.console.is_terminal

    def feed(self, piece: str) -> None:
        self.text += piece
        self.streamed_text = True
        if not self.animate:
            return
        if self.live is None:
            self.live = Live(Markdown(""), console=ui.console, refresh_per_second=8, transient=False)
            self.live.start()
        self.live.update(Markdown(redact(self.text)))

    def pause(self) -> None:
        """End the current block of text (before a tool call, or at the end of the turn)."""
        if self.live is not None:
            self.live.stop()
            self.live = None
        elif self.text.strip():
            ui.markdown(self.text)
        self.text = ""

    def tool_start(self, name: str, arguments: str) -> None:
        self.pause()
        shown = " ".join(arguments.split())
        shown = shown if len(shown) <= 100 else shown[:97] + "..."
        ui.info(f"[dim]→ {escape(name)}({escape(shown)})[/dim]")

    def tool_end(self, record: ToolCallRecord) -> None:
        if record.ok:
            ui.info(f"[dim]  ✓ {escape(record.name)}[/dim]")
        else:
            try:
                reason = json.loads(record.result).get("error", "")
            except (ValueError, AttributeError):
                reason = record.result
            ui.info(f"[dim]  ✗ {escape(record.name)}: {escape(str(reason)[:160])}[/dim]")

    def finish(self) -> None:
        self.pause()


# --------------------------------------------------------------------------- shared printing helpers
def parse_knobs(args: list[str]) -> dict:
    """``steps=40 learning_rate=1e-4 feature_emphasis="thin mustache,round face"`` → adjustments."""
    adjustments: dict = {}
    for arg in args:
        name, sep, raw = arg.partition("=")
        if not sep or name not in KNOBS:
            raise InputError(f"cannot read {arg!r}", f"write knob=value with a knob among {', '.join(KNOBS)}")
        if name == "feature_emphasis":
            adjustments[name] = [part.strip() for part in raw.split(",") if part.strip()]
            continue
        try:
            number = float(raw)
        except ValueError:
            raise InputError(f"{name}={raw!r} is not a number", f"write e.g. {name}=2") from None
        adjustments[name] = int(number) if number.is_integer() and name in ("steps", "rank") else number
    return adjustments


def show_scores(report: dict, feedback: dict) -> None:
    rows = []
    for entry in report.get("ranking") or []:
        generator = (report.get("generators") or {}).get(entry.get("generator"), {})
        rows.append([entry.get("rank"), entry.get("generator"), _stat(generator.get("quality")),
                     _stat(generator.get("clip")), _stat(generator.get("features")), _stat(generator.get("ssim")),
                     entry.get("band")])
    ceiling = report.get("ceiling")
    if ceiling:
        rows.append(["—", "references (ceiling)", _stat(ceiling.get("quality")), _stat(ceiling.get("clip")),
                     _stat(ceiling.get("features")), _stat(ceiling.get("ssim")), ceiling.get("band", "")])
    ui.table("scores (mean ± std)", ["#", "generator", "quality", "CLIP", "features", "SSIM", "band"],
             [[escape(str(c)) if isinstance(c, str) else c for c in row] for row in rows], caption=_notice(report))
    gap = feedback.get("score_gap")
    if feedback.get("lora_score") is not None:
        versus = feedback.get("compared_against") or "target"
        ui.info(f"LoRA {feedback['lora_score']:.3f} ({feedback.get('band')}), "
                f"gap to {escape(str(versus))}: {gap:.3f}" if isinstance(gap, (int, float)) else
                f"LoRA {feedback['lora_score']:.3f} ({feedback.get('band')})")
    for recommendation in feedback.get("recommendations") or []:
        ui.info(f"  [{_priority_style(recommendation.get('priority'))}]{escape(str(recommendation.get('priority')))}"
                f"[/] {escape(str(recommendation.get('message')))}")


def show_history(history: list[dict]) -> None:
    rows = []
    for record in history:
        params = record.get("params") or {}
        rows.append([record.get("round"), record.get("lora_score"), record.get("band") or "",
                     record.get("best_competitor") or "-", record.get("score_gap"),
                     f"{params.get('steps')} / {params.get('learning_rate')} / {params.get('rank')}",
                     record.get("decided_by") or "", escape(str(record.get("rationale") or ""))[:120]])
    ui.table("rounds", ["round", "LoRA", "band", "best competitor", "gap", "steps / lr / rank", "decided by", "why"],
             [[("-" if c is None else c) for c in row] for row in rows])


def _stat(value) -> str:  # noqa: ANN001
    if isinstance(value, dict) and isinstance(value.get("mean"), (int, float)):
        std = value.get("std")
        return f"{value['mean']:.3f} ± {std:.3f}" if isinstance(std, (int, float)) else f"{value['mean']:.3f}"
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _priority_style(priority) -> str:  # noqa: ANN001
    return {"high": "red", "medium": "yellow"}.get(priority, "dim")


def _notice(document: dict) -> str | None:
    notice = document.get("notice") or (document.get("profile") or {}).get("notice")
    return escape(notice) if notice else None


def _no_extra(args: list[str], allowed: set[str] | None = None) -> None:
    extra = [a for a in args if a not in (allowed or set())]
    if extra:
        raise InputError(f"unexpected argument(s) {' '.join(extra)}", "type /help for each command's arguments")
