"""How local images are drawn: one record, built once from the settings, that every caller hands on.

``aldar run``, ``aldar generate``, ``aldar story`` and the benches used to pass ten sampling keywords each
from ``Settings``, and they drifted (only the story passed ``lcm_lora``; only the rounds capped the tiny
profile's steps). ``SamplingSpec.from_settings`` is now the one place that reads them; a caller that draws
differently says so with ``dataclasses.replace`` (the story draws one image per scene).

It holds no torch: command modules import it before their arguments are checked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from tools.errors import InputError
from tools.settings import DEFAULT_LCM_LORA
from tools.world import TINY_SAMPLING_STEPS

if TYPE_CHECKING:
    from tools.settings import Settings

LCM_STEPS = (4, 8)  # LCM-LoRA's useful range; outside it we use the lower bound
LCM_MAX_GUIDANCE = 2.0  # LCM is distilled for guidance ~1; higher values burn the image
# Valid LoRA strengths when drawing. 0 is the base model; above ~1.5 most LoRAs burn, and the deciders keep
# to a narrower safe range (agent.rounds.knobs), but a user may try a stronger scale by hand.
LORA_SCALE_RANGE = (0.0, 4.0)


def check_lora_scale(scale: float, name: str = "LoRA scale") -> None:
    """Refuse a LoRA strength outside ``LORA_SCALE_RANGE`` (the one valid range: CLI, knobs, generator)."""
    low, high = LORA_SCALE_RANGE
    if not low <= scale <= high:  # also false for NaN
        raise InputError(f"{name} {scale:g} is out of range",
                         f"use a scale from {low:g} to {high:g} (1.0 = as trained, 0 = the base model; 0.6-1.2 is usual)")


@dataclass(frozen=True)
class SamplingSpec:
    """The sampler settings of one batch of local images. Image ``i`` of a prompt uses seed ``seed + i``."""

    steps: int = 30
    guidance: float = 7.0
    negative_prompt: str = ""
    images_per_prompt: int = 1
    seed: int = 42
    use_lcm: bool = False
    lcm_lora: str = DEFAULT_LCM_LORA

    def __post_init__(self) -> None:
        if self.images_per_prompt < 1:
            raise InputError(f"images_per_prompt is {self.images_per_prompt}", "ask for 1 or more images per prompt")
        if self.steps < 1:
            raise InputError(f"steps is {self.steps}", "use 1 or more inference steps (30 is the default, 4 with LCM)")
        if not self.guidance >= 0:
            raise InputError(f"guidance is {self.guidance}",
                             "use a guidance scale of 0 or more (7.0 default, ~1 with LCM)")

    @classmethod
    def from_settings(cls, settings: "Settings") -> "SamplingSpec":
        """The settings' sampler: on tiny the steps are capped at what the toy base needs (more change nothing
        but the time), the negative prompt and images per prompt are the profile's (``Settings.sampling_*``)."""
        steps = settings.num_inference_steps
        if settings.is_tiny:
            steps = min(steps, TINY_SAMPLING_STEPS)
        return cls(steps=steps, guidance=settings.guidance_scale, negative_prompt=settings.sampling_negative_prompt,
                   images_per_prompt=settings.sampling_images_per_prompt, seed=settings.seed,
                   use_lcm=settings.use_lcm, lcm_lora=settings.lcm_lora)

    def as_drawn(self) -> "SamplingSpec":
        """The steps and guidance the sampler really runs: fast mode (LCM) keeps 4-8 steps and guidance ≤ 2,
        and falls back to 4 steps, guidance 1 outside them."""
        if not self.use_lcm:
            return self
        steps = self.steps if LCM_STEPS[0] <= self.steps <= LCM_STEPS[1] else LCM_STEPS[0]
        guidance = self.guidance if self.guidance <= LCM_MAX_GUIDANCE else 1.0
        return replace(self, steps=steps, guidance=guidance)
