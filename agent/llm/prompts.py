"""The text the LLM reads lives in ``prompts/*.md``, not in Python strings.

Placeholders are ``$name`` (``string.Template``), so JSON braces in a prompt need no escaping.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from string import Template

from agent.rounds.knobs import bounds_table
from tools.errors import ConfigError
from tools.settings import Settings

# Package data (the repository's prompts/ folder, installed as aldar_prompts): found from any working folder,
# in a checkout and in a wheel. Wheels install unpacked, so the resource is a real folder.
PROMPTS_DIR = Path(str(files("aldar_prompts")))


def load_prompt(name: str, folder: Path | None = None, **values: object) -> str:
    """``prompts/<name>.md`` with ``$placeholders`` filled (unknown ones are left as they are)."""
    path = (folder or PROMPTS_DIR) / f"{name}.md"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        raise ConfigError(f"prompt file {path} is missing",
                          "reinstall aldar, or in a checkout restore prompts/ (git checkout prompts)") from None
    return Template(text).safe_substitute({k: str(v) for k, v in values.items()}).strip()


def thresholds() -> dict[str, str]:
    """The rule policy's thresholds and steps as the feedback guide and the knob guide state them: the LLM reads
    the numbers the policy and the tools decide by, from the one place they are defined."""
    from agent.rounds import policy
    from agent.rounds.records import LIKENESS

    return {"missed_pass_rate": f"{policy.MISSED_PASS_RATE:g}", "copy_clip": f"{policy.COPY_CLIP:g}",
            "copy_ssim": f"{policy.COPY_SSIM:g}", "low_variety": f"{policy.LOW_VARIETY:g}",
            "likeness_percent": f"{LIKENESS * 100:g}", "identity_ok": f"{policy.IDENTITY_OK:g}",
            "editability_vs_base": f"{policy.EDITABILITY_VS_BASE:g}", "bleed_high": f"{policy.BLEED_HIGH:g}",
            "lead_low": f"{policy.LEAD_LOW:g}",
            "step_down": f"{policy.STEP_DOWN:g}", "step_up": f"{policy.STEP_UP:g}", "lr_down": f"{policy.LR_DOWN:g}",
            "rank_up": f"{policy.RANK_UP:g}", "max_emphasis": f"{policy.MAX_EMPHASIS:g}"}


def _common(settings: Settings, bounds: dict[str, tuple]) -> dict[str, str]:
    weights = settings.metric_weights
    return {
        **thresholds(),
        "character": settings.character_name,
        "weights": " + ".join(f"{v:g}·{k}" for k, v in weights.items()),
        "bounds_table": bounds_table(bounds),
        "profile_note": ("- This session runs the `tiny` profile: small models trained in a bundled toy world. "
                         "Scores are meaningful inside that world only, not for real SDXL. Say so when you "
                         "report scores.") if settings.is_tiny else "",
    }


def chat_system_prompt(settings: Settings, bounds: dict[str, tuple]) -> str:
    values = _common(settings, bounds)
    return "\n\n".join(load_prompt(name, **values) for name in ("system", "feedback_guide", "knobs"))


def decider_system_prompt(settings: Settings, bounds: dict[str, tuple]) -> str:
    values = _common(settings, bounds)
    return "\n\n".join(load_prompt(name, **values) for name in ("decider", "feedback_guide", "knobs"))
