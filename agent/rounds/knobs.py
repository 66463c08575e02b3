"""The knobs a decider (rule policy, LLM, or you in the chat) may turn between rounds — one table.

Each knob has a type, a *valid* domain and a *safe* range. A value outside the valid domain is
refused, with the same one-line message everywhere (``aldar train``, ``/train``, the clamp): for the
trainer's knobs that message is ``TrainConfig``'s own (``tools.training.config.check_setting``). A
valid value outside the safe range is clamped into it, with a note in the history.

Everything else derives from ``KNOBS``: the policy's bounds (``SAFE_BOUNDS``, ``bounds_for``), the
clamp (``clamp_adjustments``), the REPL's parsing and completion (``parse_knob_arguments``), and the
knob parameters of the LLM tools (``knob_parameters``: a parameter group that ``agent.llm.toolspec``
expands into each tool's schema, with this table's help and this session's ranges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Callable, Literal, Optional

from agent.llm.toolspec import ExtraParameter, Range
from tools.errors import ConfigError, InputError
from tools.generation.sampling import check_lora_scale
from tools.numbers import finite_number
from tools.training.config import check_setting


@dataclass(frozen=True)
class Knob:
    name: str
    kind: type  # int, float, bool (a switch), str (one of ``choices``), or list (of feature phrases)
    safe: tuple[float, float]  # clamped into this range; for a list: (0, most phrases); (0, 1) for bool and str
    help: str
    trainer_setting: bool = True  # a TrainConfig field: its valid domain is TrainConfig's
    check: Optional[Callable[[Any], None]] = None  # else the valid domain's check (raises InputError)
    choices: tuple[str, ...] = ()  # a str knob's values
    unshown: tuple = ()  # values left out of the parameter lines (a lever at its default)

    def refuse_invalid(self, value: Any) -> None:
        """Raise ``InputError`` when ``value`` is outside the knob's valid domain."""
        if self.kind is list:
            return
        if self.kind is str and value not in self.choices:
            raise InputError(f"{self.name} {value!r} is not one of {', '.join(self.choices)}",
                             f"use {self.name}={self.choices[0]}")
        if self.trainer_setting:
            try:
                check_setting(self.name, value)
            except ConfigError as error:
                raise InputError(error.problem, error.fix) from None
        elif self.check is not None:
            self.check(value)


KNOBS: tuple[Knob, ...] = (
    Knob("steps", int, (100, 5000), "Optimiser steps of the next training round."),
    Knob("learning_rate", float, (1e-6, 1e-3), "Optimiser step size."),
    Knob("rank", int, (1, 128), "LoRA rank (capacity)."),
    Knob("alpha", float, (0.5, 256), "LoRA alpha (strength is alpha / rank)."),
    Knob("lora_scale", float, (0.3, 1.5), "LoRA strength when generating (no retraining).", trainer_setting=False,
         check=partial(check_lora_scale, name="lora_scale")),
    Knob("feature_emphasis", list, (0, 4), "Key feature phrases to stress in the captions and prompt.",
         trainer_setting=False),
    # The levers of issue 26 (bench/levers.py measures each on the toy world; prompts/ says when each helps).
    Knob("masked_loss", bool, (0, 1), "Train on the character only (reference masks): prompts can change the "
         "background; needs masks/ beside the references or alpha channels.", unshown=(False,)),
    Knob("mask_outside_weight", float, (0.0, 0.5), "Masked loss: weight of the background (0 = not learned).",
         unshown=(0.0,)),
    Knob("prior_preservation", bool, (0, 1), "Train beside the base model's class images: less bleed into "
         "prompts without the trigger, about twice the time per step.", unshown=(False,)),
    Knob("prior_loss_weight", float, (0.1, 2.0), "Prior preservation: weight of the class images' loss.",
         unshown=(1.0,)),
    Knob("output_preservation", bool, (0, 1), "Hold each caption without the trigger to the base model's own "
         "prediction (differential output preservation): the LoRA acts where its trigger is; no class images, "
         "about twice the time per step.", unshown=(False,)),
    Knob("pivotal_tuning", bool, (0, 1), "Train the trigger word as new tokens beside the LoRA (pivotal tuning): "
         "the prompt then has a word of its own for the character; for characters the base has no word for.",
         unshown=(False,)),
    Knob("caption_mode", str, (0, 1), "Captions: full (every trait) or identity-free (only what varies; the "
         "identity is left to the trigger).", choices=("full", "identity-free"), unshown=("full",)),
    Knob("adapter", str, (0, 1), "Adapter kind: lora, lokr or loha (same rank, alpha and learning rate).",
         choices=("lora", "lokr", "loha"), unshown=("lora",)),
)
BY_NAME: dict[str, Knob] = {knob.name: knob for knob in KNOBS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
SAFE_BOUNDS: dict[str, tuple] = {knob.name: knob.safe for knob in KNOBS}
MAX_EMPHASIS = int(BY_NAME["feature_emphasis"].safe[1])


def bounds_for(default_params: dict[str, Any], tiny: bool) -> dict[str, tuple]:
    """SAFE_BOUNDS, or on tiny: steps capped at twice the profile's default, and the higher
    learning rates the toy world's small UNet trains at (its LoRA learns in a couple of hundred steps at 5e-3).

    Tiny rounds take seconds; letting them multiply the steps would make the quickstart slow
    without teaching the small models more.
    """
    if not tiny:
        return SAFE_BOUNDS
    steps = int(default_params.get("steps") or 1)
    top_lr = max(1e-2, float(default_params.get("learning_rate") or 0.0))
    return {**SAFE_BOUNDS, "steps": (1, max(steps, 2) * 2), "learning_rate": (1e-6, top_lr)}


def knob_values(params: dict[str, Any]) -> dict[str, Any]:
    """The knobs among ``params`` (e.g. to show the next round's parameters)."""
    return {name: params[name] for name in NAMES if name in params}


def value_text(value: Any) -> str:
    """A knob's value as a person reads it: lists joined with ", ", floats short (0.002, 1e-05)."""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def params_items(params: dict) -> list[tuple[str, str]]:
    """The knobs of ``params`` as (name, value text) pairs; an empty feature_emphasis and a lever at its default
    (masked_loss off, adapter lora, …) are left out."""
    return [(name, value_text(value)) for name, value in knob_values(params).items()
            if not (name == "feature_emphasis" and not value)
            and not any(value is unshown or (type(value) is type(unshown) and value == unshown)
                        for unshown in BY_NAME[name].unshown)]


def params_text(params: dict) -> str:
    """The knobs of ``params`` as ``steps: 30 · learning_rate: 0.03 · feature_emphasis: happy, round face``:
    one spelling of parameters for the terminal, the history's rationales and the report."""
    return " · ".join(f"{name}: {value}" for name, value in params_items(params))


def clamp_adjustments(params: dict[str, Any], adjustments: dict[str, Any],
                      bounds: dict[str, tuple] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Keep only known knobs with valid values, each clamped into its safe range.

    Returns the clamped adjustments and one note per value that was changed or
    dropped, so the history shows what a decider asked for versus what ran.
    """
    bounds = bounds or SAFE_BOUNDS
    clamped: dict[str, Any] = {}
    notes: list[str] = []
    for name, value in adjustments.items():
        if name not in bounds or name not in BY_NAME:
            notes.append(f"dropped unknown parameter {name!r}")
            continue
        knob, (low, high) = BY_NAME[name], bounds[name]
        if knob.kind in (bool, str):
            value = _switch(value) if knob.kind is bool else value
            try:
                if value is None:
                    raise InputError(f"{adjustments[name]!r} is not on or off", "use true or false")
                knob.refuse_invalid(value)
            except InputError as error:
                notes.append(f"dropped {name}={adjustments[name]!r}: {error}")
                continue
            clamped[name] = value
            continue
        if knob.kind is list:
            phrases = _phrases(value)
            if len(phrases) > high:
                notes.append(f"{name} cut from {len(phrases)} to {int(high)} phrases")
            clamped[name] = phrases[:int(high)]
            continue
        number = finite_number(value)
        if number is None:
            notes.append(f"dropped {name}={value!r}: not a number")
            continue
        if knob.kind is int:
            number = int(round(number))
        try:
            knob.refuse_invalid(number)
        except InputError as error:
            notes.append(f"dropped {name}={value!r}: {error}")
            continue
        bounded = min(max(number, low), high)
        if knob.kind is int:
            bounded = int(round(bounded))
        if bounded != number or (knob.kind is int and number != value):
            notes.append(f"{name} {value} clamped to {bounded} (safe range {low}-{high})")
        clamped[name] = bounded
    return clamped, notes


def parse_knob_arguments(args: list[str]) -> dict[str, Any]:
    """``steps=40 learning_rate=1e-4 feature_emphasis="thin mustache,round face"`` → adjustments.

    Unknown knobs, non-numbers and values outside a knob's valid domain raise ``InputError``;
    valid values outside the safe range are left for the clamp.
    """
    adjustments: dict[str, Any] = {}
    for arg in args:
        name, sep, raw = arg.partition("=")
        knob = BY_NAME.get(name)
        if not sep or knob is None:
            raise InputError(f"cannot read {arg!r}", f"write knob=value with a knob among {', '.join(NAMES)}")
        if knob.kind is list:
            adjustments[name] = [part.strip() for part in raw.split(",") if part.strip()]
            continue
        if knob.kind is bool:
            if _switch(raw) is None:
                raise InputError(f"{name}={raw!r} is not on or off", f"write {name}=true or {name}=false")
            adjustments[name] = _switch(raw)
            continue
        if knob.kind is str:
            knob.refuse_invalid(raw)
            adjustments[name] = raw
            continue
        try:
            number = float(raw)
        except ValueError:
            raise InputError(f"{name}={raw!r} is not a number", f"write e.g. {name}=2") from None
        if not math.isfinite(number):
            raise InputError(f"{name}={raw!r} is not a number", f"write e.g. {name}=2")
        value: Any = int(number) if knob.kind is int and number.is_integer() else number
        knob.refuse_invalid(int(round(value)) if knob.kind is int else value)
        adjustments[name] = value
    return adjustments


def knob_completions(text: str) -> list[str]:
    """``name=`` completions for the knob being typed (the REPL's Tab after ``/train``)."""
    return [f"{name}=" for name in NAMES if name.startswith(text)]


def knob_parameters(bounds: dict[str, tuple]) -> list[ExtraParameter]:
    """The knobs as optional tool parameters, typed and ranged by ``bounds`` (this session's)."""
    parameters = []
    for knob in KNOBS:
        low, high = bounds.get(knob.name, knob.safe)
        if knob.kind is list:
            annotation: Any = Optional[list[str]]
            description = f"{knob.help} At most {int(high)}."
        elif knob.kind is bool:
            annotation, description = Optional[bool], knob.help
        elif knob.kind is str:
            annotation, description = Optional[Literal[knob.choices]], knob.help  # type: ignore[valid-type]
        else:
            annotation = Optional[Annotated[knob.kind, Range(low, high)]]
            description = knob.help
        parameters.append(ExtraParameter(knob.name, annotation, description))
    return parameters


def bounds_table(bounds: dict[str, tuple]) -> str:
    """The safe ranges as Markdown lines for the prompts."""
    lines = []
    for knob in KNOBS:
        low, high = bounds.get(knob.name, knob.safe)
        if knob.kind is list:
            lines.append(f"- {knob.name}: at most {int(high)} phrases")
        elif knob.kind is bool:
            lines.append(f"- {knob.name}: true or false")
        elif knob.kind is str:
            lines.append(f"- {knob.name}: {' | '.join(knob.choices)}")
        else:
            lines.append(f"- {knob.name}: {low:g} … {high:g}")
    return "\n".join(lines)


def _switch(value: Any) -> bool | None:
    """A bool knob's value from a bool, 0/1 or on/off words; None when it is none of them."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    return {"true": True, "on": True, "yes": True, "1": True,
            "false": False, "off": False, "no": False, "0": False}.get(str(value).strip().lower())


def _phrases(value: Any) -> list[str]:
    phrases = [value] if isinstance(value, str) else list(value or [])
    return list(dict.fromkeys(str(p).strip() for p in phrases if str(p).strip()))
