"""``aldar chat``: talk to the assistant, or drive every step yourself with slash commands.

Slash commands need no LLM at all; plain text goes to the LLM with the tools of
``agent.llm.tools``. Input: history in ``$ALDAR_CACHE/chat_history`` (default ``~/.cache/aldar``),
Tab completes commands, Esc+Enter inserts a newline, and a line ending in ``\\`` continues on
the next one. Ctrl-C cancels the running action (training stops at a checkpoint) and returns to the
prompt; Ctrl-C twice at the prompt, Ctrl-D, or /quit leaves. All output goes through one ``agent.views.ui.UI``.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from prompt_toolkit.completion import Completer, Completion
from rich.markup import escape

from agent.llm.client import KEY_HELP, describe_endpoint, resolve_endpoint
from agent.llm.loop import ChatLoop, LoopEvents
from agent.llm.tools import SessionTools, explain_features, latest_feedback
from agent.rounds.actions import generate_with_consent, train_next_round
from agent.rounds.knobs import NAMES as KNOBS
from agent.rounds.knobs import clamp_adjustments, knob_completions, params_text, parse_knob_arguments
from agent.termination import terminated_by
from agent.views import render
from agent.views.stream import StreamRenderer
from agent.views.ui import UI
from tools.atomic import atomic_write_json, unused_path
from tools.errors import AldarError, ConfigError, InputError
from tools.paths import aldar_cache
from tools.secrets import KEY_NAMES, api_key, mask, redact
from tools.settings import Settings
from tools.timestamps import iso_timestamp, timestamp

log = logging.getLogger(__name__)
CONTINUATION = "...    "
EXIT_CODES = {"ok": 0, "declined": 1, "failed": 2}  # `aldar chat -m`: how the one action ended
NO_LLM_LINE = ("chat needs an LLM: " + KEY_HELP + ". Slash commands work without one — type /help.")


@dataclass
class Command:
    name: str
    usage: str
    help: str
    run: Callable[[list[str]], None]


class Repl:
    """One chat: a lazily opened ``Session`` (it locks the results folder) and an optional LLM."""

    def __init__(self, settings: Settings, ui: UI | None = None) -> None:
        self.settings = settings
        self.ui = ui or UI()
        self.quiet = self.ui.quiet
        self._session = None
        self.loop: ChatLoop | None = None
        self.model = ""
        self.started = timestamp()
        self.started_at = iso_timestamp()
        self.inputs: list[dict] = []  # every line typed, for the transcript (chat text and slash commands)
        self.transcript_path: Path | None = None  # chosen at the first save
        self.outcome = "ok"  # of the input being handled: ok, declined (the user said no) or failed
        self.commands = {c.name: c for c in self._command_table()}
        self.aliases = {"exit": "quit", "q": "quit", "?": "help"}

    # ------------------------------------------------------------------ lifecycle
    @property
    def session(self):
        if self._session is None:
            from agent.rounds.session import Session
            from agent.views.report import ReportWriter

            self._session = Session(self.settings, quiet=self.quiet,
                                    events=self.ui.session_events(on_round_recorded=ReportWriter()))
        return self._session

    def close(self) -> None:
        if self.loop is not None and self.loop.usage.requests:
            usage = self.loop.usage
            self.ui.info(f"[dim]LLM this session: {usage.describe()}[/dim]")
        if self._session is not None:
            self._session.close()
            self._session = None

    @property
    def round_number(self) -> int:
        """The round in progress, else the next one (without opening the results folder)."""
        if self._session is None:
            from agent.rounds.store import peek_history

            return len(peek_history(self.settings.output_dir).rounds) + 1
        current = self._session.current
        return current.number if current is not None else self._session.next_round_number

    def prompt_text(self) -> str:
        return f"aldar ({self.settings.profile}, round {self.round_number})> "

    # ------------------------------------------------------------------ one line of input
    def handle(self, line: str) -> bool:
        """Run one input; False when the chat should end. Errors print one line and return True.
        Afterwards ``self.outcome`` tells whether the input did what it asked."""
        text = line.strip()
        if not text:
            return True
        self.outcome = "ok"
        entry = {"at": iso_timestamp(), "input": text, "outcome": "cancelled"}
        self.inputs.append(entry)
        keep_going = True
        try:
            if text.startswith("/"):
                keep_going = self._slash(text)
            else:
                self.chat(text)
        except AldarError as error:
            self.ui.error(escape(str(error)))
            self.outcome = "failed"
        except KeyboardInterrupt:  # Ctrl-C: the entry stays "cancelled"
            self._save_transcript()
            raise
        except SystemExit:
            raise
        except Exception as error:  # a bug in one action must not end the chat; the log keeps the traceback
            log.debug("action failed", exc_info=True)
            self.ui.error(escape(f"{text.split()[0]} failed: {type(error).__name__}: {error}"))
            self.outcome = "failed"
        entry["outcome"] = self.outcome
        self._save_transcript()
        return keep_going

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
            self.outcome = "failed"
            self.ui.warn(reason)
            self.ui.info(escape(self.answered_by(text)))
            return
        loop = self._chat_loop()
        renderer = StreamRenderer(self.ui)
        loop.events = LoopEvents(on_text=renderer.feed, on_tool_start=renderer.tool_start,
                                 on_tool_end=renderer.tool_end)
        try:
            result = loop.run_turn(text)
        finally:
            renderer.finish()
        if result.stop_reason != "answer":
            self.ui.warn(result.text)  # step limit or a repeated failing call: say why the turn ended
        elif not renderer.streamed_text:
            self.ui.markdown(result.text)
        self.ui.info(f"[dim]tokens: {result.usage.total_text()} this turn · {loop.usage.total_text()} this session[/dim]")

    def answered_by(self, question: str) -> str:
        """The slash commands that answer ``question`` without an LLM: ``/explain <word>`` for each word naming
        a key feature or its category in the taxonomy ("why is the face weak?" → /explain face), else the
        commands that read the results."""
        words = list(dict.fromkeys(re.findall(r"[a-z][a-z'-]+", question.lower())))
        named = feature_words(self.settings)
        # "mustaches" asks about the mustache: /explain matches words inside feature names
        asked = list(dict.fromkeys(word if word in named else word.removesuffix("s") for word in words
                                   if word in named or word.removesuffix("s") in named))[:3]
        if asked:
            return ("without an LLM: " + ", ".join(f"/explain {word}" for word in asked)
                    + (" says why it is" if len(asked) == 1 else " say why they are") + " weak, from the latest feedback")
        commands = list(dict.fromkeys(COMMAND_WORDS[word] for word in words if word in COMMAND_WORDS))
        shown = [self.commands[name] for name in commands or ["explain", "history", "score"]]
        return ("without an LLM: " + ", ".join(f"{c.usage} ({c.help})" for c in shown) + " — /help lists them all")

    def _chat_loop(self) -> ChatLoop:
        if self.loop is None:
            from agent.llm.client import make_client
            from agent.llm.prompts import chat_system_prompt

            client, self.model = make_client(self.settings)
            session = self.session
            tools = SessionTools(session, self.ui.confirm, decided_by=f"llm:{self.model}").specs()
            self.loop = ChatLoop(client, self.model, tools, system_prompt=chat_system_prompt(self.settings, session.bounds),
                                 max_steps=self.settings.llm_max_steps, thinking=self.settings.llm_thinking,
                                 max_tokens=self.settings.llm_max_tokens)
        return self.loop

    def _save_transcript(self) -> None:
        """Every input so far (slash commands too) and, once the LLM was used, its conversation and
        token use; keys scrubbed. Rewritten after each input, so a killed chat keeps what it did."""
        if not self.inputs:
            return
        if self.transcript_path is None:  # two chats started in the same second keep one file each
            self.transcript_path = unused_path(Path(self.settings.output_dir) / "chat" / f"transcript_{self.started}.json")
        path = self.transcript_path
        transcript = {"started_at": self.started_at, "profile": self.settings.profile, "inputs": self.inputs,
                      **(self.loop.transcript() if self.loop is not None else {})}
        try:
            atomic_write_json(path, json.loads(redact(json.dumps(transcript, ensure_ascii=False))))
        except OSError as exc:
            self.ui.warn(f"could not save the chat transcript to {path} ({exc})")

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
        self.ui.table("slash commands (no LLM needed)", ["command", "what it does"],
                 [[escape(c.usage), escape(c.help)] for c in self.commands.values()],
                 caption="Plain text goes to the LLM. Esc+Enter or a trailing \\ for a new line; Tab completes; "
                         "Ctrl-C cancels the running action.")

    def cmd_analyze(self, args: list[str]) -> None:
        _no_extra(args, allowed={"--force"})
        analysis = self.session.analyze(force="--force" in args)
        self.ui.show(render.analysis_table(analysis))
        self.ui.info(f"key features: {escape(', '.join(analysis.get('key_features') or []))}")
        self.ui.info(f"training prompt: {escape(analysis.get('training_prompt') or '')}")

    def cmd_train(self, args: list[str]) -> None:
        adjustments = parse_knob_arguments(args)
        session = self.session
        number = session.training_round_number
        question = f"Train round {number}'s LoRA now?"
        if session.current is not None and session.current.number != number:  # it is scored: recorded first
            question = f"Record round {session.current.number} (scored) and train round {number}'s LoRA now?"
        elif resumed := session.resume_step():  # the round's checkpoints are kept: a second /train goes on from them
            applied, _ = clamp_adjustments(session.params, adjustments, session.bounds)
            steps = {**session.params, **applied}.get("steps")
            question = (f"Train round {number}'s LoRA now? It continues from step {resumed} to {steps}."
                        if isinstance(steps, int) and steps > resumed else
                        f"Train round {number}'s LoRA now? Its checkpoint at step {resumed} already reaches "
                        f"steps={steps}: nothing more is trained (raise steps to train on).")
        if not self._confirmed(question, "training skipped"):
            return
        change = shlex.join(args) if args else "no changes"
        try:
            result, _, _ = train_next_round(session, adjustments, f"set by hand with /train ({change})", "user")
        except KeyboardInterrupt:  # the trainer saved a checkpoint first; the round stays unfinished
            number = session.current.number if session.current else session.next_round_number
            run_dir = session.store.relative(session.store.round_run_dir(number))
            self.ui.warn(f"training interrupted; the checkpoint in {escape(str(run_dir))} is kept — /train resumes it")
            return
        resumed = f" (resumed from step {result['resumed_from_step']})" if result.get("resumed_from_step") else ""
        self.ui.success(f"trained {result.get('steps')} steps{resumed} → "
                        f"{escape(str(session.store.relative(result.get('lora_path'))))}")

    def cmd_generate(self, args: list[str]) -> None:
        session = self.session
        paid = ", ".join(session.keyed_competitors())
        images = generate_with_consent(session, lambda question: self._confirmed(question, f"{paid} skipped (paid)",
                                                                                 required=False),
                                       " ".join(args).strip() or None)
        self.ui.table("generated images", ["generator", "images", "folder"],
                 [[name, len(paths), session.store.relative(Path(paths[0]).parent) if paths else "-"]
                  for name, paths in images.items()])

    def cmd_score(self, args: list[str]) -> None:
        _no_extra(args)
        result = self.session.score()
        self.ui.show(render.report_scores(result["report"]))
        self.ui.show_feedback(result["feedback"])
        self.ui.info(f"feedback: {escape(str(self.session.store.relative(result.get('feedback_path'))))}")

    def cmd_auto(self, args: list[str]) -> None:
        from agent.llm.decider import make_decider

        if len(args) != 1 or not args[0].isdigit() or int(args[0]) < 1:
            raise InputError("/auto needs a number of rounds", "write e.g. /auto 2")
        rounds = int(args[0])
        session = self.session
        blocked = session.stop_before(len(session.history()) + rounds)
        if blocked:  # asking first would promise rounds that stop before training anything
            from agent.rounds.ranking import how_to_go_on

            self.ui.warn(escape(f"/auto runs no round: {blocked} — {how_to_go_on(blocked)}, then restart the chat"))
            self.outcome = "failed"
            return
        if not self._confirmed(f"Run {rounds} full round(s) (training each, and paid APIs where keys are set)?",
                               "nothing run"):
            return
        events = None if self.quiet else LoopEvents(
            on_tool_start=lambda name, args: self.ui.info(f"[dim]  llm → {escape(name)}({escape(' '.join(args.split())[:100])})[/dim]"))
        decider, reason = make_decider(self.settings, session.bounds, events)
        self.ui.info(f"decisions by [bold]{escape(decider.name)}[/bold]" + (f" — {escape(reason)}" if reason else ""))
        records = session.run_rounds(len(session.history()) + rounds, decider)
        if records:
            self.ui.show_history(records)

    def cmd_history(self, args: list[str]) -> None:
        _no_extra(args)
        history = self.session.history()
        if not history:
            self.ui.info("no finished rounds yet — /auto 1, or /train, /generate, /score")
            return
        self.ui.show_history(history)

    def cmd_explain(self, args: list[str]) -> None:
        feedback = latest_feedback(self.session)
        if feedback is None:
            self.ui.info("no feedback yet — /score a round first (or /auto 1)")
            return
        explained = explain_features(feedback, " ".join(args) or None)
        if not explained:
            self.ui.success("no weak key features: the LoRA shows every key feature at least as often as the target")
            return
        for item in explained:
            if not item.get("weak"):
                self.ui.info(f"[bold]{escape(str(item['feature']))}[/bold]: {escape(item['why'])}")
                continue
            self.ui.info(f"[bold]{escape(str(item['feature']))}[/bold] ({escape(str(item.get('category')))}): "
                    f"{escape(item['why'])}.\n  → {escape(item['suggestion'])}")

    def cmd_report(self, args: list[str]) -> None:
        from agent.views.report import write_report

        _no_extra(args)
        session = self.session
        path = write_report(session.store, session.references, session.history())
        self.ui.success(f"report: {escape(str(path))}")

    def cmd_config(self, args: list[str]) -> None:
        _no_extra(args)
        s = self.settings
        rows = [["profile", s.profile + (" (toy world: scores meaningful in that world only)" if s.is_tiny else "")],
                ["output_dir", s.output_dir], ["references", s.references], ["device / dtype", f"{s.device} / {s.dtype}"],
                ["weights", ", ".join(f"{k} {v:g}" for k, v in s.metric_weights.items())],
                ["competitors", ", ".join(s.competitors) or "none"],
                ["llm", describe_endpoint(s)], ["llm_thinking", str(s.llm_thinking)],
                ["llm_max_steps", str(s.llm_max_steps)], ["llm_timeout_s", f"{s.llm_timeout_s:g}"]]
        rows += [[name, mask(api_key(name))] for name in KEY_NAMES]
        # What /help promises, before any round ran too; without opening (locking) the folder or loading torch.
        if self._session is not None:
            params = self._session.params
        else:
            from agent.rounds.params import planned_params

            params = planned_params(self.settings)
        rows.append(["next round params", params_text(params)])
        self.ui.table("configuration", ["setting", "value"], [[escape(a), escape(str(b))] for a, b in rows])

    def cmd_doctor(self, args: list[str]) -> None:
        import argparse

        from agent.commands import doctor

        _no_extra(args)
        doctor.run(argparse.Namespace(references=None, taxonomy=None), self.settings, self.ui)

    # ------------------------------------------------------------------ interactive loop
    def interact(self) -> int:
        """The prompt loop (prompt_toolkit on a terminal, plain lines otherwise)."""
        read = self._terminal_reader() if sys.stdin.isatty() and sys.stdout.isatty() else self._plain_reader
        self.ui.info(f"[bold]aldar chat[/bold] — profile {self.settings.profile}, results in {escape(self.settings.output_dir)}. "
                "/help lists commands; Esc+Enter or a trailing \\ for a new line; Ctrl-D to leave.")
        if self.llm_ready():
            self.ui.warn(NO_LLM_LINE)
        interrupts = 0
        try:
            while True:
                try:
                    line = read()
                except KeyboardInterrupt:
                    interrupts += 1
                    if interrupts >= 2 or terminated_by():
                        break
                    try:
                        self.ui.info("^C again to exit")
                    except KeyboardInterrupt:  # the second ^C landed while the hint was printing: leave as asked
                        break
                    continue
                except EOFError:
                    break
                interrupts = 0
                try:
                    if not self.handle(line):
                        break
                except KeyboardInterrupt:
                    if terminated_by():  # SIGTERM/SIGHUP: the work is saved as for Ctrl-C, and the chat ends
                        self.ui.warn("interrupted — finished work is saved; rerun the same command to resume")
                        break
                    self.ui.warn("cancelled — back at the prompt")
        finally:
            self.close()
        return 0

    def run_once(self, message: str) -> int:
        """``aldar chat --message``: one turn (or one slash command), then exit: 0 when it did what it
        asked, 1 when the user answered no, 2 when it failed (a question declined because there is no
        terminal to ask on counts as failed: the fix is --yes)."""
        try:
            self.handle(message)
        except KeyboardInterrupt:
            self.ui.warn("cancelled")
            return 130
        finally:
            self.close()
        return EXIT_CODES[self.outcome]

    def _confirmed(self, question: str, skipped: str, *, required: bool = True) -> bool:
        """Ask ``question``; on no, say ``skipped``. ``required``: the input asked for this very work, so
        a no means it did not do what it asked (``self.outcome``)."""
        if self.ui.confirm(question):
            return True
        if self.ui.can_ask:
            self.ui.info(escape(skipped))
            if required:
                self.outcome = "declined"
            return False
        line = f"{skipped}: there is no terminal to ask on — pass --yes to allow it (aldar chat --yes -m ...)"
        if required:
            self.ui.error(escape(line))
            self.outcome = "failed"
        else:
            self.ui.warn(escape(line))
        return False

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
            lines = [prompt.prompt(self.prompt_text())]
            while lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1]
                lines.append(prompt.prompt(CONTINUATION))
            return "\n".join(lines)

        return read

    def _plain_reader(self) -> str:
        lines = [self._read_line(self.prompt_text())]
        while lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            lines.append(self._read_line(CONTINUATION))
        return "\n".join(lines)

    def _read_line(self, prompt: str) -> str:
        self.ui.write(prompt)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")


# Words of a question that name the slash command answering it (when no key feature is named).
COMMAND_WORDS = {"weak": "explain", "feature": "explain", "features": "explain", "history": "history",
                 "rounds": "history", "score": "score", "scores": "score", "scored": "score", "report": "report",
                 "settings": "config", "config": "config", "parameters": "config", "api": "doctor",
                 "install": "doctor", "analysis": "analyze", "train": "train", "training": "train",
                 "generate": "generate", "images": "generate"}


def feature_words(settings: Settings) -> set[str]:
    """The words of the taxonomy's features and category names ("round face", face_shape → round, face, shape);
    none when the taxonomy does not load (the chat's commands say why)."""
    from tools.scoring.taxonomy import load_taxonomy

    try:
        taxonomy = load_taxonomy(settings.taxonomy_path())
    except AldarError:
        return set()
    phrases = [*taxonomy.categories, *(f for features in taxonomy.categories.values() for f in features)]
    return {word for phrase in phrases for word in re.split(r"[\s_]+", phrase.lower()) if len(word) >= 3}


def history_file() -> Path:
    return aldar_cache("chat_history")


class SlashCompleter(Completer):
    """Tab completes slash command names, and knob names after ``/train``."""

    def __init__(self, repl: Repl) -> None:
        self.repl = repl

    def get_completions(self, document, complete_event):  # noqa: ANN001
        text = document.text_before_cursor
        if text.startswith("/") and " " not in text:
            for name in list(self.repl.commands) + ["exit"]:
                if ("/" + name).startswith(text):
                    yield Completion("/" + name, start_position=-len(text))
        elif text.startswith("/train "):
            *given, word = text.split(" ")
            typed = {part.partition("=")[0] for part in given}
            if "=" not in word:
                for completion in knob_completions(word):
                    if completion[:-1] not in typed:  # a knob set twice would only keep the last value
                        yield Completion(completion, start_position=-len(word))


def _no_extra(args: list[str], allowed: set[str] | None = None) -> None:
    extra = [a for a in args if a not in (allowed or set())]
    if extra:
        raise InputError(f"unexpected argument(s) {' '.join(extra)}", "type /help for each command's arguments")
