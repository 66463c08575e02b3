"""Settings: defaults < ``aldar.toml`` < ``ALDAR_*`` environment variables < flags.

All settings are one flat, typed dataclass so that the same name works in the
TOML file (under any section header, sections only group), as an environment
variable (``ALDAR_`` + upper-case name) and as a CLI flag (``--name-with-dashes``).
API keys are *not* settings: they come from the environment or ``.env`` only
(see ``tools.secrets``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from tools.errors import ConfigError, InputError
from tools.paths import BUNDLED_REFERENCES, BUNDLED_TAXONOMY

PROFILES = ("tiny", "sdxl")
DEFAULT_LCM_LORA = "latent-consistency/lcm-lora-sdxl"  # fast mode's LoRA (use_lcm); tools.generation.sampling draws with it
DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("auto", "fp32", "fp16", "bf16")
ROUND_RANKINGS = ("guarded", "quality")
PATH_SETTINGS = ("references", "taxonomy", "analysis_path", "output_dir")
# Left empty, these come from the references folder (tools.character) and the output folder.
DERIVED_SETTINGS = ("trigger_token", "character_name", "test_prompt", "analysis_path")
ANALYSIS_FILE = "feature_analysis.json"


# The character's settings as command-line flags: setting → (flag, metavar, help). Each command names the ones
# it takes (CHARACTER_FLAGS in agent/commands/*.py); agent.cli adds them, with the setting as the dest.
CHARACTER_FLAGS = {
    "references": ("--references", "DIR", "folder of reference pictures, png/jpg/webp, with an optional taxonomy.json "
                                          "and character.json (default: the bundled Aldar Köse references)"),
    "taxonomy": ("--taxonomy", "FILE", "feature taxonomy JSON (default: <references>/taxonomy.json, else the bundled "
                                       "one)"),
    "trigger_token": ("--trigger-token", "TOKEN", "made-up word that names the character in captions and prompts "
                                                  "(default: <references>/character.json's, else the folder's name)"),
    "character_name": ("--character-name", "NAME", "the character's name in titles and the LoRA's file name "
                                                   "(default: <references>/character.json's, else the folder's name)"),
    "test_prompt": ("--prompt", "TEXT", "the prompt each round draws with, starting with the trigger token (default: "
                                        "<references>/character.json's, else the trigger token and the key features "
                                        "the analysis found)"),
}
DEFAULT_NEGATIVE_PROMPT = "photo, realistic, blurry, deformed, extra limbs, text, watermark"
# images_per_prompt 0 means the profile's default: few paid or minutes-long SDXL images, many seconds-cheap tiny ones.
IMAGES_PER_PROMPT = {"sdxl": 2, "tiny": 8}
PROFILE_IMAGES_TEXT = ", ".join(f"{count} on {name}" for name, count in IMAGES_PER_PROMPT.items())


@dataclass
class Settings:
    # [models]
    profile: str = "sdxl"
    base_model: str = "stabilityai/stable-diffusion-xl-base-1.0"
    clip_model: str = "openai/clip-vit-large-patch14"
    lcm_lora: str = DEFAULT_LCM_LORA
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 42
    # [character]
    references: str = str(BUNDLED_REFERENCES)
    taxonomy: str = ""  # empty: <references>/taxonomy.json, else the bundled one
    # The three below, empty: <references>/character.json's, else the references folder's name (the prompt:
    # built from the analysis). The bundled references' character.json names Aldar Köse.
    trigger_token: str = ""
    character_name: str = ""
    analysis_path: str = ""  # empty: <output_dir>/feature_analysis.json
    # [scoring]
    weight_clip: float = 0.4
    weight_features: float = 0.4
    weight_ssim: float = 0.2
    # Prompts of the round's suite beside the character's own (tools.scoring.suite): new contexts and no-trigger
    # prompts, for identity, editability and bleed. 0: no suite (quality only).
    suite_size: int = 5
    # How rounds are ranked (best round, best_lora/) and a round's checkpoint chosen: "guarded" = by quality, but a
    # round (a checkpoint) whose editability or bleed (editability) is clearly worse than another's does not win on
    # quality alone — each checkpoint draws a few suite prompts for it; "quality" = quality only.
    round_ranking: str = "guarded"
    # [generation]
    num_inference_steps: int = 30
    guidance_scale: float = 7.0
    use_lcm: bool = False
    images_per_prompt: int = 0  # 0: the profile's (IMAGES_PER_PROMPT)
    test_prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    competitors: list[str] = field(default_factory=lambda: ["freepik", "deepai", "gemini"])
    # [rounds]
    max_rounds: int = 3
    patience: int = 2
    target_score: float = 0.8
    # One longer round (twice the profile's steps, stopped at a plateau, best checkpoint kept), and a further round
    # only where a signal says it pays (issue 25's fallback: measured in bench/loop_value.py, README "Does the loop
    # pay?", the rounds did not beat one run of equal steps by the +0.03 they should); false: the rounds run to
    # max_rounds / patience.
    rounds_must_pay: bool = True
    output_dir: str = "lora_training_results"
    # [llm]
    llm_base_url: str = "https://api.deepseek.com"
    llm_model: str = "deepseek-v4-flash"
    llm_thinking: bool = True
    llm_max_steps: int = 12
    llm_timeout_s: float = 120.0
    # Tokens one answer may take (0: the server's own limit). A small local model can ramble until its context
    # is full — minutes on a CPU — so cap it there; hosted servers stop on their own.
    llm_max_tokens: int = 0
    # [providers]
    freepik_base_url: str = "https://api.freepik.com"
    deepai_base_url: str = "https://api.deepai.org"
    gemini_base_url: str = "https://generativelanguage.googleapis.com/v1beta"
    gemini_model: str = "gemini-2.5-flash-image"
    provider_timeout_s: float = 60.0

    # The settings that were left empty and filled from the references (DERIVED_SETTINGS): re-derived when
    # ``replace`` changes the references or the output folder.
    derived: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # aldar.toml and quoted variables reach us with "~" unexpanded; every reader of these paths needs it expanded.
        for name in PATH_SETTINGS:
            value = getattr(self, name)
            if isinstance(value, str) and value.startswith("~"):
                setattr(self, name, os.path.expanduser(value))
        self._derive_character()

    def _derive_character(self) -> None:
        """Fill the empty trigger token, name and test prompt from <references>/character.json, else the folder's
        name; an empty analysis_path becomes <output_dir>/feature_analysis.json."""
        empty = [name for name in DERIVED_SETTINGS if not str(getattr(self, name)).strip()]
        if not empty:
            return
        card = read_character_card(self.references) if Path(self.references).expanduser().is_dir() else {}
        found = {**folder_identity(self.references), **card,
                 "analysis_path": str(Path(self.output_dir).expanduser() / ANALYSIS_FILE)}
        for name in empty:
            setattr(self, name, found.get(name, ""))  # no test_prompt anywhere: the analysis builds it
        self.derived = tuple(empty)

    # --- derived ------------------------------------------------------------
    @property
    def metric_weights(self) -> dict[str, float]:
        return {"clip": self.weight_clip, "features": self.weight_features, "ssim": self.weight_ssim}

    @property
    def is_tiny(self) -> bool:
        return self.profile == "tiny"

    @property
    def sampling_negative_prompt(self) -> str:
        """The negative prompt the local generators sample with. On tiny, the default one is left out: its
        words (photo, realistic, blurry, …) are not the toy world's, except "photo", which would steer away
        from one of its styles — measured, it cost the LoRA a third of its lead over the base. The toy base
        learnt its unconditional score from empty captions, which is what no negative prompt samples with.
        A negative prompt the user set is always used."""
        if self.is_tiny and self.negative_prompt == DEFAULT_NEGATIVE_PROMPT:
            return ""
        return self.negative_prompt

    @property
    def sampling_images_per_prompt(self) -> int:
        """Images per prompt and generator: ``images_per_prompt``, or with 0 the profile's default — 2 on
        sdxl, 8 on tiny. A tiny image costs a quarter of a second, and with two per round one image moved a
        key feature's pass rate by a half: measured, the rounds' differences were that noise."""
        return self.images_per_prompt or IMAGES_PER_PROMPT[self.profile]

    def taxonomy_path(self) -> Path:
        if self.taxonomy:
            return Path(self.taxonomy).expanduser()
        beside = Path(self.references).expanduser() / "taxonomy.json"
        return beside if beside.is_file() else BUNDLED_TAXONOMY

    def replace(self, **changes: Any) -> "Settings":
        changes = {k: v for k, v in changes.items() if v is not None}
        if {"references", "output_dir"} & changes.keys():  # what came from the old folder is derived afresh
            changes = {**{name: "" for name in self.derived}, **changes}
        updated = dataclasses.replace(self, **changes)
        updated.derived = tuple(dict.fromkeys([*updated.derived, *(n for n in self.derived if n not in changes)]))
        updated.validate()
        return updated

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.pop("derived", None)
        return values

    def validate(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"unknown profile {self.profile!r}", f"use one of: {', '.join(PROFILES)}")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}", f"use one of: {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}", f"use one of: {', '.join(DTYPES)}")
        validate_weights(self.metric_weights)
        for name in ("num_inference_steps", "max_rounds", "patience", "llm_max_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} is {getattr(self, name)}", f"set {name} to 1 or more")
        if self.suite_size and not 2 <= self.suite_size <= 12:
            raise ConfigError(f"suite_size is {self.suite_size}",
                              "set suite_size to 2..12 prompts, or 0 for no suite (quality on the own prompt only)")
        if self.round_ranking not in ROUND_RANKINGS:
            raise ConfigError(f"unknown round_ranking {self.round_ranking!r}", f"use one of: {', '.join(ROUND_RANKINGS)}")
        if self.llm_max_tokens < 0:
            raise ConfigError(f"llm_max_tokens is {self.llm_max_tokens}",
                              "set llm_max_tokens to 0 (the server's limit) or a number of tokens such as 512")
        if self.images_per_prompt < 0:
            raise ConfigError(f"images_per_prompt is {self.images_per_prompt}",
                              f"set images_per_prompt to 1 or more, or 0 for the profile's default ({PROFILE_IMAGES_TEXT})")
        for name in ("llm_timeout_s", "provider_timeout_s"):
            if not getattr(self, name) > 0:  # also rejects nan
                raise ConfigError(f"{name} is {getattr(self, name)}", f"set {name} to a positive number of seconds")
        if not self.trigger_token.strip():  # it heads every caption and prompt
            raise ConfigError(f"trigger_token {self.trigger_token!r} is empty",
                              "set a made-up word such as 'bluebot' (--trigger-token)")
        if len(self.trigger_token.split()) > 1 or "," in self.trigger_token:  # captions are split at commas
            raise ConfigError(f"trigger_token {self.trigger_token!r} is not one word",
                              "set a made-up word without spaces or commas, such as 'bluebot' (--trigger-token)")
        if not 0 <= self.seed < 2**32:  # torch/numpy generators and provider APIs take 32-bit seeds
            raise ConfigError(f"seed is {self.seed}", "set seed to a whole number from 0 to 4294967295")
        if not 0.0 < self.target_score <= 1.0:
            raise ConfigError(f"target_score is {self.target_score}", "set target_score in (0, 1]")


# ---------------------------------------------------------------- the character beside the references
# A references folder may hold a character.json (as it may hold a taxonomy.json) naming its character; what the
# settings leave empty comes from there, else from the folder's name (tools.character: the checks on them).
CARD_NAME = "character.json"
CARD_KEYS = ("trigger_token", "character_name", "test_prompt", "description")  # what a character.json may set


def read_character_card(references: str | Path) -> dict[str, str]:
    """The ``character.json`` beside the references: its known keys with non-empty text values, else {}.
    An unreadable card is refused with the file named: it would otherwise silently name nobody."""
    path = Path(references).expanduser() / CARD_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc})",
                         'fix it, e.g. {"trigger_token": "bluebot", "character_name": "Blue Bot"}') from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a JSON object", 'write it as {"trigger_token": "...", "character_name": "..."}')
    return {key: data[key].strip() for key in CARD_KEYS if isinstance(data.get(key), str) and data[key].strip()}


def folder_identity(references: str | Path) -> dict[str, str]:
    """A trigger token and name from the folder's name (``my_hero`` → ``myhero``, ``my hero``) for pictures
    that come with no card and no settings: a made-up word of the user's own, not the bundled character's."""
    name = Path(references).expanduser().resolve().name or "character"
    spaced = " ".join(re.split(r"[\s_\-.]+", name)).strip() or "character"
    return {"trigger_token": slug(spaced).replace("_", "") or "character", "character_name": spaced}


def slug(text: str) -> str:
    """Lower-case ASCII letters, digits and underscores (``King Zorabek`` → ``king_zorabek``): file names."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


def validate_weights(weights: dict[str, float]) -> None:
    """Metric weights must be finite, non-negative and sum to 1."""
    not_finite = {k: v for k, v in weights.items() if not math.isfinite(v)}
    if not_finite:
        name, value = next(iter(not_finite.items()))
        raise ConfigError(f"metric weight {name} is {value}", "use finite weights >= 0 that sum to 1")
    negative = {k: v for k, v in weights.items() if v < 0}
    if negative:
        name, value = next(iter(negative.items()))
        raise ConfigError(f"metric weight {name} is negative ({value})", "use weights >= 0 that sum to 1")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        parts = " + ".join(f"{k} {v:g}" for k, v in weights.items())
        raise ConfigError(
            f"metric weights sum to {total:g} ({parts})",
            "make them sum to 1 (e.g. --weights 0.4,0.4,0.2) in aldar.toml [scoring] or on the command line",
        )


def _field_types() -> dict[str, Any]:
    hints = get_type_hints(Settings)
    return {f.name: hints[f.name] for f in fields(Settings) if f.init}


def coerce(name: str, raw: Any, origin: str) -> Any:
    """Turn a TOML value or an environment string into the field's type."""
    kind = _field_types()[name]
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int and not isinstance(raw, bool):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)  # int(3.7) would silently drop the fraction
            return int(raw)
        if kind is float and not isinstance(raw, bool):
            return float(raw)
        if kind is str and not isinstance(raw, (list, dict, bool)):
            return str(raw)
        if getattr(kind, "__origin__", None) is list:
            if isinstance(raw, str):
                return [part.strip() for part in raw.split(",") if part.strip()]
            return [str(item) for item in raw]
    except (TypeError, ValueError):
        pass
    type_name = getattr(kind, "__name__", str(kind))
    example = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a text value"}
    raise ConfigError(f"{origin}: {name} = {raw!r} is not a valid {type_name}",
                      f"give {name} {example.get(type_name, 'a ' + type_name + ' value')}")


def load_settings(config_file: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    """Build settings from defaults, the TOML file, ``ALDAR_*`` variables and ``overrides``.

    ``config_file`` defaults to ``$ALDAR_CONFIG`` or ``./aldar.toml`` when present.
    ``overrides`` (from CLI flags) ignore ``None`` values.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = Path(config_file or env.get("ALDAR_CONFIG") or "aldar.toml")
    if config_file or env.get("ALDAR_CONFIG") or path.is_file():
        values.update(_read_toml(path))
    known = set(_field_types())
    for name in known:
        raw = env.get(f"ALDAR_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = coerce(name, raw, f"environment variable ALDAR_{name.upper()}")
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}", f"known settings: {', '.join(sorted(known))}")
        values[name] = coerce(name, value, f"--{name.replace('_', '-')}")
    settings = Settings(**values)
    settings.validate()
    return settings


ENV_PREFIX = "ALDAR_"
# The one list of ALDAR_* variables that are read but are not settings (never warned about as typos);
# tests/test_hardening.py checks that every ALDAR_* name the code reads is a setting or listed here.
OTHER_ENV_NAMES = {
    "ALDAR_CONFIG": "the settings file (as --config)",
    "ALDAR_CACHE": "the cache folder (default ~/.cache/aldar)",
    "ALDAR_SKIP_BROWSER": "1: the test suite skips opening report.html in Chromium (README, Tests)",
}


def unknown_environment_names(environ: dict[str, str] | None = None) -> list[str]:
    """One line per ``ALDAR_*`` variable that no setting reads, naming the closest valid one.

    An unknown aldar.toml key is refused; a misspelt variable would otherwise be ignored in silence
    (``ALDAR_PROFLE=tiny`` then fails on a missing model that never mentions the typo).
    """
    import difflib

    env = os.environ if environ is None else environ
    valid = [ENV_PREFIX + name.upper() for name in _field_types()] + list(OTHER_ENV_NAMES)
    lines = []
    for name in sorted(n for n in env if n.upper().startswith(ENV_PREFIX) and n not in valid):
        close = difflib.get_close_matches(name.upper(), valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"settings are {ENV_PREFIX} + a setting name in capitals"
        lines.append(f"environment variable {name} is not a setting and is ignored — {hint}")
    return lines


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found", "create it (see aldar.toml in the repo) or drop --config")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc})", "fix the syntax on the line it names") from None
    flat: dict[str, Any] = {}
    known = _field_types()
    for key, value in data.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for name, raw in items:
            if name not in known:
                raise ConfigError(f"{path}: unknown setting {name!r}",
                                  f"remove it; known settings: {', '.join(sorted(known))}")
            flat[name] = coerce(name, raw, str(path))
    return flat
