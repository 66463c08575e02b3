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
    from agent.decision import Decider
    from agent.session import Session
    from agent.ui import UI
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
    from agent import render
    from agent.session import Session  # the rounds (and, through them, the model stack) load once the input is good

    quiet = bool(getattr(args, "quiet", False))
    with Session(settings, quiet=quiet, events=ui.session_events()) as session:
        if settings.is_tiny:
            ui.warn(session.profile.describe()["notice"])
        _confirm_paid_competitors(session, ui)
        if args.steps is not None:
            session.apply({"steps": args.steps})  # a clamp note is shown as a warning
        decider = choose_decider(session, use_llm=not args.no_llm, ui=ui)
        done = len(session.history())
        ui.info(f"results: {session.store.root} · decider: {decider.name} · rounds: {rounds}"
                + (f" ({done} already finished)" if done else ""))
        session.run_rounds(rounds, decider, on_round=lambda record: render.show(
            ui, render.record_scores(record, previous=_before(session.history(), record))))
        show_summary(session, ui)
    return 0


def _before(history: list[dict], record: dict) -> dict | None:
    """The round recorded just before ``record`` (its prompt is what the round's prompt changed from)."""
    earlier = [r for r in history if r.get("round", 0) < record.get("round", 0)]
    return earlier[-1] if earlier else None


def _names(value) -> list[str]:
    if isinstance(value, list):
        return value
    return [part.strip() for part in str(value).split(",") if part.strip()]


def choose_decider(session: Session, use_llm: bool, ui: UI | None = None) -> Decider:
    """The LLM decider when asked for and a key is set (imported only then), else the rule policy."""
    from agent.llm_client import llm_configured
    from agent.ui import UI

    ui = ui or UI(quiet=True)
    if use_llm and llm_configured(session.settings):
        from agent.llm_decider import make_decider

        decider, reason = make_decider(session.settings, session.bounds)
        if reason:
            ui.warn(f"{reason}: the embedded rule policy decides")
        return decider
    from agent.policy import RulePolicy

    if use_llm:
        ui.info("no LLM key set (DEEPSEEK_API_KEY or OPENAI_API_KEY) and llm_base_url is no local server: "
                "the embedded rule policy decides")
    return RulePolicy(bounds=session.bounds)


def _confirm_paid_competitors(session: Session, ui: UI) -> None:
    """Hosted generation can cost credits: ask once, unless --yes. Without a yes they sit out."""
    keyed = session.keyed_competitors()
    if not keyed:
        return
    per_round = session.settings.sampling_images_per_prompt
    question = (f"each round asks {', '.join(keyed)} for {per_round} image(s) each (may use paid credits). Continue?")
    if not ui.confirm(question):
        ui.warn(f"hosted competitors sit out ({', '.join(keyed)}); pass --yes to include them")
        session.skip_competitors(keyed)



def show_summary(session: Session, ui: UI) -> None:
    from agent import render

    data = session.store.data
    best = data.get("best_round")
    record = next((r for r in data["rounds"] if r["round"] == best), None)
    if record is not None and session.store.best_lora_holds(record):
        ui.success(f"best round: {best} (LoRA score {render.number(record.get('lora_score'))}) → "
                   f"{session.store.root / (data.get('best_lora') or 'best_lora')}")
    if session.report_written:  # only what this process wrote: never a path that may not exist
        ui.success(f"report: {session.report_written}")
    if session.profile.is_tiny:
        from tools.models import TINY_NOTICE

        ui.warn(TINY_NOTICE)
