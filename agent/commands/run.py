"""``aldar run``: the autonomous improvement rounds (the original train_lora_competitive.py).

Each round trains the LoRA, generates with it, the base model and every hosted
competitor whose key is set, scores everyone against the references and lets
the LLM (when a key is configured) or the embedded rule policy pick the next
adjustment. Rerunning the same command resumes: finished rounds are kept.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from tools.errors import ConfigError

if TYPE_CHECKING:  # the command line is parsed (and --rounds checked) before any of this loads
    from pathlib import Path

    from agent.rounds.decision import Decider
    from agent.rounds.documents import Round
    from agent.rounds.session import Session
    from agent.views.ui import UI
    from tools.settings import Settings

NAME = "run"
CHARACTER_FLAGS = ("references", "taxonomy", "trigger_token", "character_name", "test_prompt")
HELP = ("autonomous rounds: train the LoRA, generate against the base model and hosted competitors, score "
        "everyone against the references, let the LLM or the rule policy adjust, repeat (resumes when rerun)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, metavar="N",
                        help="rounds in the history when the run ends (default: max_rounds, 3); finished rounds count")
    parser.add_argument("--competitors", metavar="A,B",
                        help="hosted generators to compete (default from settings: freepik,deepai,gemini; "
                             "'none' for only the LoRA and the base model)")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="training steps of the next round (clamped to the profile's safe range; the decider "
                             "changes them from there; default: the profile's, or what the last round decided)")
    parser.add_argument("--no-llm", action="store_true", help="decide with the embedded rule policy even if an LLM key is set")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask before paid hosted generation")


def run(args: argparse.Namespace, settings: Settings, ui: UI) -> int:
    if args.competitors is not None:
        names = [] if args.competitors.strip().lower() == "none" else args.competitors
        settings = settings.replace(competitors=_names(names))
    rounds = args.rounds if args.rounds is not None else settings.max_rounds
    if rounds < 1:
        raise ConfigError(f"--rounds is {rounds}", "pass --rounds 1 or more")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps is {args.steps}", "pass --steps 1 or more")
    settings = settings.replace(max_rounds=rounds)
    from agent.rounds.session import Session  # the rounds (and, through them, the model stack) load once the input is good
    from agent.views import render

    from agent.views.report import ReportWriter

    quiet = bool(getattr(args, "quiet", False))
    report = ReportWriter()
    with Session(settings, quiet=quiet, events=ui.session_events(on_round_recorded=report)) as session:
        if settings.is_tiny:
            ui.warn(session.profile.describe()["notice"])
        _confirm_paid_competitors(session, ui)
        if args.steps is not None:
            session.apply({"steps": args.steps})  # a clamp note is shown as a warning
        decider = choose_decider(session, use_llm=not args.no_llm, ui=ui)
        done = len(session.history())
        ui.info(f"results: {session.store.root} · decider: {decider.name} · rounds: {rounds}"
                + (f" ({done} already finished)" if done else ""))
        session.run_rounds(rounds, decider, on_round=lambda record: _show_round(ui, record, session.history()))
        show_summary(session, ui, report.written)
    return 0


def _show_round(ui, record: Round, history: list[Round]) -> None:
    """A finished round: its ranking on the character's own prompt, then how it does in new scenes."""
    from agent.views import render

    ui.show(render.record_scores(record, previous=_before(history, record)))
    if (suite := render.suite_scores(record)) is not None:
        ui.show(suite)


def _before(history: list[Round], record: Round) -> Round | None:
    """The round recorded just before ``record`` (its prompt is what the round's prompt changed from)."""
    earlier = [r for r in history if r.round < record.round]
    return earlier[-1] if earlier else None


def _names(value) -> list[str]:
    if isinstance(value, list):
        return value
    return [part.strip() for part in str(value).split(",") if part.strip()]


def choose_decider(session: Session, use_llm: bool, ui: UI | None = None) -> Decider:
    """The LLM decider when asked for (``make_decider`` falls back to the rule policy and says why), else the
    rule policy."""
    from agent.views.ui import UI

    ui = ui or UI(quiet=True)
    if use_llm:
        from agent.llm.decider import make_decider  # says why the rule policy decides when the LLM cannot

        decider, reason = make_decider(session.settings, session.bounds)
        if reason:
            ui.warn(f"{reason}: the embedded rule policy decides")
        return decider
    from agent.rounds.policy import RulePolicy

    return RulePolicy(bounds=session.bounds, ranking=session.settings.round_ranking)


def _confirm_paid_competitors(session: Session, ui: UI) -> None:
    """Hosted generation can cost credits: ask once, unless --yes. Without a yes they sit out."""
    from agent.rounds.actions import consent_to_paid

    per_round = session.settings.sampling_images_per_prompt
    declined = consent_to_paid(session, ui.confirm, lambda paid: f"each round asks {', '.join(paid)} for {per_round} "
                                                                 "image(s) each (may use paid credits). Continue?")
    if declined:
        ui.warn(f"hosted competitors sit out ({', '.join(declined)}); pass --yes to include them")



def show_summary(session: Session, ui: UI, report: Path | None) -> None:
    from agent.views import render

    store = session.store
    record = store.best_record()
    if record is not None and store.best_lora_holds(record):
        ui.success(f"best round: {record.round} (LoRA score {render.number(record.lora_score)}) → "
                   f"{store.root / (store.state.best_lora or 'best_lora')}")
    if report:  # only what this process wrote: never a path that may not exist
        ui.success(f"report: {report}")
    if session.profile.is_tiny:
        from tools.models import TINY_NOTICE

        ui.warn(TINY_NOTICE)
