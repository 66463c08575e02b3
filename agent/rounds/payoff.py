"""Rounds that earn their compute (issue 25): where a round starts from, how long the first one may train, and
whether another one would pay.

Measured in ``bench/loop_value.py`` (README "Does the loop pay?"): the rounds did not lead one run of equal steps
by the +0.03 they should on every character (Aldar +0.037 on the rounds' own scores, +0.014 on held-out seeds;
Zorabek below), and warm starts cut their steps from 725 to 480 at the same quality. So by default
(``rounds_must_pay``, issue 25's fallback) a run trains one longer round, every step, with its best checkpoint
kept, and another round only where a signal beyond noise says it would help, all within ``STEP_BUDGET`` × the
profile's steps; a later round continues the best round's LoRA (a warm start) rather than re-learning what round
1 knew.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from agent.rounds.documents import Round, RoundFeedback, TrainingCurve, feedback_of
from agent.rounds.ranking import best_round
from tools.errors import AldarError
from tools.models import ModelProfile
from tools.settings import Settings

# The agent's plateau stop, with rounds_must_pay off: a round ends once its validation quality is flat over this many
# checkpoints (with it on, the longer round trains every step: session_defaults says why).
PLATEAU_CHECKPOINTS = 3
# With rounds_must_pay (the default) round 1 trains this many times the profile's steps, its best checkpoint kept.
LONG_ROUND = 2
# ... and all rounds together at most this many times (issue 25's bound: the three-round loop of before). The
# round that would cross it trains the steps left; none is started with less than a checkpoint's worth left.
STEP_BUDGET = 3


def session_defaults(settings: Settings, defaults: dict) -> dict:
    """``defaults`` (the trainer's and the agent's knobs), with ``rounds_must_pay`` one longer round: LONG_ROUND
    times the profile's steps, every step trained (no plateau stop), its best checkpoint kept.

    Why no plateau stop there: a checkpoint's validation quality rests on four images and jumps by ±0.1-0.2 between
    neighbouring checkpoints (King Zorabek: 0.28 ↔ 0.51), so "flat over three checkpoints" stopped a slow learner
    at 160-280 of its 400 steps. Measured (bench/loop_value.py, held-out seeds, Zorabek 42/1/2/3): one plain run of
    500-600 steps scored 0.599 ± 0.104, the rounds with plateau stops 0.406 ± 0.127 (must_pay) and 0.440 (the loop)."""
    params = dict(defaults)
    if settings.rounds_must_pay:
        params["steps"] = int(params["steps"]) * LONG_ROUND
        params["plateau_checkpoints"] = 0
    return params


def step_budget(settings: Settings, defaults: dict) -> int | None:
    """The optimiser steps a run's rounds may train in all (``STEP_BUDGET`` × the profile's ``defaults``' steps),
    with ``rounds_must_pay``; None (no bound) without it."""
    return STEP_BUDGET * int(defaults["steps"]) if settings.rounds_must_pay else None


def steps_left(budget: int | None, rounds: list[Round], *more: int) -> int | None:
    """What ``budget`` leaves after the finished ``rounds``' optimiser steps and ``more`` (a round not yet
    recorded); None without a budget."""
    if budget is None:
        return None
    return budget - sum(record.train.steps or 0 for record in rounds) - sum(more)


def budget_capped(config, left: int | None, on_notice: Callable[[str], None] | None):
    """``config`` with its steps cut to the ``left`` of the run's step budget, said in one line; as it is when
    it fits (or there is no budget)."""
    if left is None or config.steps <= left:
        return config
    if on_notice is not None:
        on_notice(f"this round trains {left} of its {config.steps} steps: the rest of the rounds' budget, "
                  f"{STEP_BUDGET}× the profile's steps")
    config = dataclasses.replace(config, steps=max(left, 1))
    if config.lr_warmup_steps >= config.steps:
        config = dataclasses.replace(config, lr_warmup_steps=config.steps // 10)
    return config


def over_budget(left: int | None, every: int) -> str:
    """Why no further round fits the run's step budget ('' when one does): ``left`` steps are under a checkpoint's
    worth (``every``)."""
    if left is None or left >= max(every, 1):
        return ""
    return (f"{UNPAID}the rounds have trained all but {max(left, 0)} of the steps the run may spend, "
            f"{STEP_BUDGET}× the profile's), so the run stops here — set rounds_must_pay = false to train on.")


def warm_config(config, warm: dict | None, absolute: Callable):
    """``config`` continuing ``warm``'s checkpoint (``warm_start_plan``) for the steps it has left; as it is
    without a warm start. ``absolute`` resolves the results folder's stored path."""
    if not warm:
        return config
    config = dataclasses.replace(config, init_weights=str(absolute(warm["checkpoint"])), steps=int(warm["steps"]))
    if config.lr_warmup_steps >= config.steps:
        config = dataclasses.replace(config, lr_warmup_steps=config.steps // 10)
    return config


def warm_start_plan(rounds: list[Round], params: dict, config, profile: ModelProfile, number: int, ranking: str,
                    store, on_notice: Callable[[str], None] | None) -> dict | None:
    """Where round ``number`` continues from: the best finished round's chosen checkpoint, trained on for the
    steps ``params['steps']`` asks beyond those that checkpoint already had (kohya's --network_weights
    continuation). None — a fresh LoRA — when warm starts are off, no round finished, or that checkpoint cannot
    be continued (deleted, other models, another rank, no steps left), said in one line to ``on_notice``.
    ``config``: the round's ``TrainConfig`` for ``params``; ``store``: the ``RunStore`` (its stored paths)."""
    def say(line: str) -> None:
        if on_notice is not None:
            on_notice(line)

    from tools.training.lora_files import CHECKPOINT_PREFIX
    from tools.training.setup import check_init_weights

    if not params.get("warm_start") or not rounds:
        return None
    best = best_round(rounds, ranking)
    chosen = best.train.chosen_checkpoint if best is not None else None
    run_dir = store.absolute(best.paths.run_dir) if best is not None else None
    if best is None or chosen is None or chosen.step is None or run_dir is None:
        return None
    step = chosen.step
    folder = run_dir / f"{CHECKPOINT_PREFIX}{step:06d}"
    warm = best.train.warm_start
    inherited = (warm.lora_steps_before if warm is not None else 0) + step
    left = int(params.get("steps") or 0) - inherited
    every = int(params.get("checkpoint_every") or 0)
    why = ""
    if left < max(every, 1):
        why = (f"steps {params.get('steps')} leave no checkpoint's worth beyond the {inherited} steps round "
               f"{best.round}'s LoRA has had")
    else:
        try:
            check_init_weights(dataclasses.replace(config, init_weights=str(folder)), profile)
        except AldarError as error:
            why = error.problem
    if why:
        say(f"round {number}: trains a fresh LoRA ({why})")
        return None
    say(f"round {number}: continues round {best.round}'s LoRA from step {step} for {left} more steps")
    return {"from_round": best.round, "from_step": step, "checkpoint": store.relative(folder),
            "lora_steps_before": inherited, "steps": left}


UNPAID = "Another round would not pay ("


def run_stopped_because(record: Round) -> str:
    """Why the run stopped after ``record``'s round, whose decision asked to stop: the sentence of
    ``unpaid_round`` when that is why, so that the run's last line says it; else who asked."""
    rationale = record.rationale or ""
    return rationale[rationale.index(UNPAID):] if UNPAID in rationale else f"{record.decided_by} asked to stop"


def unpaid_round(feedback: RoundFeedback | dict, history: list[Round], ranking: str = "guarded") -> str:
    """Why another round would not pay after the round ``feedback`` scored ('' when it would): more steps pay
    while the validation quality was still rising beyond its spread at the last checkpoint, a fix pays when the
    LoRA overfits (also in the prompt suite's new scenes) or CLIP similarity is low, and more rounds pay while the last one beat the best before it beyond its spread. Measured
    (bench/loop_value.py, README 'Does the loop pay?'): otherwise the rounds did not beat one run of equal steps."""
    from agent.rounds.policy import (LOW_CLIP, overfitting_reason, previous_variety, prompt_overridden,  # its reading
                                     read_signals)

    feedback = feedback_of(feedback)
    signals = read_signals(feedback)
    training = feedback.training or TrainingCurve()
    if signals.still_rising or overfitting_reason(signals, previous_variety(history)):
        return ""
    if signals.clip is not None and signals.clip < LOW_CLIP:  # the character is not there yet: train harder
        return ""
    # The prompt suite's overfitting (the character learnt but overriding new scenes' prompts): its fix, a warm
    # round at a lower rate and lora_scale, paid +0.023 / +0.028 on Aldar seeds 1 / 2 (seed 42: -0.045, kept out
    # by the best-round choice), so it counts as paying like the policy's other overfitting signs.
    if prompt_overridden(signals):
        return ""
    best = best_round(history, ranking)
    spread = signals.spread or 0.0
    if best is not None and signals.lora_score is not None and signals.lora_score > best.lora_score + spread:
        return ""
    if best is not None and signals.lora_score is not None:
        why = (f"it scored {signals.lora_score:.3f}, not above round {best.round}'s {best.lora_score:.3f} "
               f"beyond its spread ±{spread:.3f}")
    elif signals.best_step is not None:
        why = (f"its validation quality peaked at step {signals.best_step} of {training.steps} and did not "
               f"rise beyond its spread ±{training.spread or 0.0:.3f} after it")
    else:
        why = "no signal says more training would help"
    return (f"{UNPAID}{why}; rounds that only add steps or emphasis did not beat one run of "
            "equal steps in bench/loop_value.py), so the run stops here — set rounds_must_pay = false to run them.")


def why_no_round_pays(feedback: RoundFeedback | dict, history: list[Round], settings: Settings, budget: int | None,
                      trained: int, params: dict) -> str:
    """With ``rounds_must_pay``, why the run stops after the round ``feedback`` scored (it ``trained`` steps):
    no signal says another round would pay (``unpaid_round``), or the step budget has no checkpoint's worth
    left (``over_budget``); '' when another round may run."""
    if not settings.rounds_must_pay:
        return ""
    left = steps_left(budget, history, trained)
    return (unpaid_round(feedback, history, settings.round_ranking)
            or over_budget(left, int(params.get("checkpoint_every") or 0)))
