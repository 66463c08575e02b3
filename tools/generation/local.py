"""Local SDXL (+ LoRA) image generation.

The base pipeline comes from ``tools.models.load_sdxl_pipeline`` (one per process).
LoRAs are swapped in place as named PEFT adapters: a file is loaded once (keyed by
its path, size and mtime, so a retrained file at the same path loads fresh) and
re-activated with ``set_adapters`` afterwards; "base" just disables them.

Fast mode (the original ``USE_LCM``) puts diffusers' ``LCMScheduler`` in for one call
(4–8 steps, guidance ~1) with the LCM-LoRA adapter, and restores the scheduler after.
The tiny profile has no LCM-LoRA that fits its random UNet: the scheduler still
switches so the fast path runs, and each image's metadata says the adapter was not applied.

Image ``i`` of a prompt uses seed ``seed + i`` from a CPU ``torch.Generator``, so the
same seed gives the same picture on any device. Every PNG carries its parameters
(``tools.generation.png_metadata``) and is written atomically.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tools.atomic import unused_path
from tools.embeddings import activate_embedding, loaded_trigger, spelled_as_token
from tools.errors import InputError, ModelNotFoundError
from tools.generation.lycoris import is_lycoris_file, load_lycoris_weights
from tools.generation.png_metadata import save_png_with_parameters
from tools.generation.sampling import SamplingSpec, check_lora_scale
from tools.models import ModelProfile, hub_reachable, load_sdxl_pipeline, model_location, quiet_lora_loading
from tools.progress import progress_bar
from tools.settings import DEFAULT_LCM_LORA

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LCM_ADAPTER = "lcm"
MAX_LOADED_LORAS = 4  # adapters kept in memory; each SDXL LoRA holds tens of MB
LCM_NOT_APPLIED = "not applied: no LCM-LoRA fits the tiny profile (LCMScheduler only)"
_SAMPLER_NAMES = {"EulerDiscreteScheduler": "Euler", "EulerAncestralDiscreteScheduler": "Euler a",
                  "LCMScheduler": "LCM", "DPMSolverMultistepScheduler": "DPM++ 2M", "DDIMScheduler": "DDIM"}
_generation_lock = threading.Lock()  # one pipeline per process: adapters and scheduler are shared state


@dataclass
class GeneratedImage:
    """One image on disk and how it was made (``metadata`` holds the generation parameters)."""

    path: Path
    generator: str
    prompt: str
    seed: int
    metadata: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- LoRA adapters
@dataclass
class LoadedAdapters:
    """Which LoRA files a pipeline holds as named adapters: ``(path, size, mtime_ns) -> adapter name``."""

    by_file: dict[tuple[str, int, int], str] = field(default_factory=dict)
    loads: int = 0  # how many times a file was actually read (tests and the benchmark check reuse)


# weak keys: a pipeline dropped by clear_model_cache takes its registry with it
_adapters: "weakref.WeakKeyDictionary[Any, LoadedAdapters]" = weakref.WeakKeyDictionary()


def loaded_adapters(pipe) -> LoadedAdapters:
    """The adapter registry of ``pipe`` (created on first use)."""
    if pipe not in _adapters:
        _adapters[pipe] = LoadedAdapters()
    return _adapters[pipe]


def find_newest_lora(folder: str | Path) -> Path | None:
    """The newest ``pytorch_lora_weights.safetensors`` anywhere under ``folder`` (a results folder), if any."""
    found = sorted(Path(folder).glob("**/pytorch_lora_weights.safetensors"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve_lora_file(lora_path: str | Path) -> Path:
    """A training run's folder or its ``pytorch_lora_weights.safetensors`` → the weights file."""
    path = Path(lora_path).expanduser()
    if path.is_dir():
        candidate = path / LORA_WEIGHT_NAME
        if not candidate.is_file():
            found = sorted(path.glob("*.safetensors"))
            if len(found) != 1:
                raise InputError(f"LoRA folder {path} has no {LORA_WEIGHT_NAME}",
                                 "give the training run's folder or the .safetensors file itself")
            candidate = found[0]
        path = candidate
    if not path.is_file():
        raise InputError(f"LoRA file {path} does not exist", "give the path of a training run's folder or its "
                         f"{LORA_WEIGHT_NAME} (aldar train writes it)")
    if path.suffix != ".safetensors" or path.stat().st_size == 0:
        raise InputError(f"{path} is not a LoRA weights file", f"give a diffusers-format {LORA_WEIGHT_NAME}")
    return path.resolve()


def activate_lora(pipe, lora_file: Path | None, scale: float = 1.0, *, extra: dict[str, float] | None = None) -> str | None:
    """Make ``lora_file`` (at ``scale``) plus ``extra`` adapters the active set, with the trigger embedding trained
    beside it (``tools.embeddings``); None = the bare base model.

    Loads a file only the first time it is seen; returns the adapter name used.
    """
    activate_embedding(pipe, lora_file)  # pivotal tuning's trigger tokens, when the LoRA was trained with them
    registry = loaded_adapters(pipe)
    active: dict[str, float] = dict(extra or {})
    name = None
    if lora_file is not None:
        name = _adapter_for_file(pipe, registry, lora_file)
        active[name] = scale
    if not active:
        # Any adapter counts, not only ours: the trainer may have added one to this shared pipeline's UNet.
        if getattr(pipe.unet, "peft_config", None):
            pipe.disable_lora()
        return None
    pipe.enable_lora()
    pipe.set_adapters(list(active), adapter_weights=list(active.values()))
    return name


def _adapter_for_file(pipe, registry: LoadedAdapters, lora_file: Path) -> str:
    stat = lora_file.stat()
    key = (str(lora_file), stat.st_size, stat.st_mtime_ns)
    if key in registry.by_file:
        return registry.by_file[key]
    stale = [k for k in registry.by_file if k[0] == key[0]]  # same path, new contents (a retrained LoRA)
    loras = [k for k in registry.by_file if not k[0].startswith("lcm:") and k not in stale]
    stale += loras[:max(0, len(loras) - MAX_LOADED_LORAS + 1)]  # oldest first: rounds keep adding LoRAs
    for old in stale:
        with quiet_lora_loading():
            pipe.delete_adapters(registry.by_file.pop(old))
    name = f"lora_{registry.loads}_{re.sub(r'[^A-Za-z0-9_]', '_', lora_file.parent.name)[:40]}"
    try:
        with quiet_lora_loading():
            if is_lycoris_file(lora_file):  # LoKr/LoHa: diffusers' SDXL loader reads LoRA keys only
                load_lycoris_weights(pipe, lora_file, name)
            else:
                pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name=name)
    except InputError:
        _drop_partial_adapter(pipe, name)
        raise
    except (ValueError, RuntimeError, KeyError, OSError, TypeError) as exc:
        _drop_partial_adapter(pipe, name)
        raise InputError(f"LoRA {lora_file} does not fit this base model ({str(exc).splitlines()[0][:160]})",
                         "use a LoRA trained for the same base model and profile (tiny LoRAs only fit --profile tiny)"
                         ) from None
    registry.by_file[key] = name
    registry.loads += 1
    return name


def _drop_partial_adapter(pipe, name: str) -> None:
    # A load that failed halfway may have injected some layers; leave the pipeline as it was.
    try:
        with quiet_lora_loading():
            pipe.delete_adapters(name)
    except (ValueError, KeyError, RuntimeError):
        pass


def _ensure_lcm_adapter(pipe, lcm_lora: str) -> str:
    """The LCM-LoRA as an adapter (loaded once): a Hub repo id / cached model, or a local folder or file."""
    registry = loaded_adapters(pipe)
    local = Path(lcm_lora).expanduser()
    if local.exists():
        lcm_file = resolve_lora_file(local)
        stat = lcm_file.stat()
        key, source, weight_name = (f"lcm:{lcm_file}", stat.st_size, stat.st_mtime_ns), str(lcm_file.parent), lcm_file.name
    else:
        key, source, weight_name = (f"lcm:{lcm_lora}", 0, 0), lcm_lora, None
    if key not in registry.by_file:
        for old in [k for k in registry.by_file if k[0].startswith("lcm:")]:  # lcm_lora changed in this process
            with quiet_lora_loading():
                pipe.delete_adapters(registry.by_file.pop(old))
        name = f"{LCM_ADAPTER}_{registry.loads}"
        try:
            with quiet_lora_loading():
                pipe.load_lora_weights(source, adapter_name=name, **({"weight_name": weight_name} if weight_name else {}))
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            _drop_partial_adapter(pipe, name)
            raise ModelNotFoundError(f"could not load the LCM-LoRA {lcm_lora!r}: {str(exc).splitlines()[0][:160]}",
                                     "set lcm_lora to a local folder holding the SDXL LCM-LoRA, or turn fast mode off "
                                     "(use_lcm = false)") from None
        registry.by_file[key] = name
        registry.loads += 1
    return registry.by_file[key]


def check_lcm_available(profile: ModelProfile, lcm_lora: str = DEFAULT_LCM_LORA) -> bool:
    """True when the LCM-LoRA can be applied; raises when it is missing on sdxl.

    On tiny only a local file can fit the random UNet (the published LCM-LoRA is for real SDXL), so
    anything else means "scheduler only".
    """
    if profile.is_tiny:
        return model_location(lcm_lora) == "local"
    if model_location(lcm_lora) == "missing":
        if not hub_reachable():
            raise ModelNotFoundError(
                f"fast mode needs the LCM-LoRA {lcm_lora!r}, which is not in the Hugging Face cache and the Hub "
                "cannot be reached",
                f"download it with network (`hf download {lcm_lora}`), set lcm_lora in aldar.toml to a local "
                "folder, or turn fast mode off (use_lcm = false)")
    return True


# --------------------------------------------------------------------------- generation
def generate_local(profile: ModelProfile, prompts: list[str], out_dir: Path, sampling: SamplingSpec = SamplingSpec(),
                   *, lora_path: Path | None, lora_scale: float = 1.0, name: str = "lora", quiet: bool = False,
                   file_stamp: str | None = None, batch_size: int = 1) -> list[GeneratedImage]:
    """Generate ``sampling.images_per_prompt`` images for each prompt with the base model and (optionally) a LoRA.

    ``batch_size`` images are denoised together, in prompt order (a batch may span prompts; each image from its own
    seeded generator, so image ``i`` of a prompt starts from the same noise whatever the batch): on tiny, 8 at once
    took 3.4 s against 11.2 s one by one, and 40 at once 0.145 s an image against 8 at once 0.19 s. A batch's images
    can differ from the one-by-one ones in the last bits (batched kernels), so each caller keeps one batch size:
    the rounds' own prompt 1 (the figures measured so far), the prompt suite ``suite_batch_size``'s.

    ``lora_path=None`` is the base model as a contestant (name it "base"). Image ``i`` of
    each prompt uses seed ``sampling.seed + i``. Files: ``out_dir/<name>_p<prompt>_<i>_s<seed>.png`` — a round's
    own folder, where a regenerated round replaces its images. With ``file_stamp``
    (``tools.timestamps.timestamp()``) they are ``<name>_<stamp>_p<prompt>_<i>_s<seed>.png`` and never
    replace a file: a shared folder (``aldar generate``) keeps every call's images.
    """
    prompts = [p.strip() for p in prompts]
    _validate(prompts, lora_scale, name)
    lora_file = resolve_lora_file(lora_path) if lora_path is not None else None
    lcm_applied = check_lcm_available(profile, sampling.lcm_lora) if sampling.use_lcm else False
    drawn = sampling.as_drawn()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    pipe = load_sdxl_pipeline(profile)
    size = profile.resolution
    results: list[GeneratedImage] = []
    with _generation_lock:
        extra = {_ensure_lcm_adapter(pipe, drawn.lcm_lora): 1.0} if lcm_applied else None
        activate_lora(pipe, lora_file, lora_scale, extra=extra)
        trigger = loaded_trigger(pipe)
        drawn_prompts = spelled_as_token(prompts, trigger) if trigger else prompts
        standard_scheduler = pipe.scheduler
        try:
            if drawn.use_lcm:
                from diffusers import LCMScheduler

                pipe.scheduler = LCMScheduler.from_config(standard_scheduler.config)
            sampler = _SAMPLER_NAMES.get(type(pipe.scheduler).__name__, type(pipe.scheduler).__name__)
            # Image i of prompt p at seed + i, in prompt order; a batch may span prompts (the suite's on tiny).
            jobs = [(p_index, prompt, drawn.seed + i) for p_index, prompt in enumerate(prompts)
                    for i in range(drawn.images_per_prompt)]
            details = _details(profile, name, lora_file, drawn, lcm_applied)  # the same for every image
            stem = f"{_slug(name)}_{file_stamp}" if file_stamp else _slug(name)
            with progress_bar(f"generating {name}", len(jobs), quiet) as advance:
                for first in range(0, len(jobs), batch_size):
                    batch = jobs[first:first + batch_size]
                    negative = [drawn.negative_prompt] * len(batch) if drawn.negative_prompt else None
                    generators = [torch.Generator("cpu").manual_seed(seed) for _, _, seed in batch]
                    images = pipe(prompt=[drawn_prompts[p_index] for p_index, _, _ in batch], negative_prompt=negative,
                                  num_inference_steps=drawn.steps, guidance_scale=drawn.guidance, height=size,
                                  width=size, generator=generators).images
                    for image, (p_index, prompt, image_seed) in zip(images, batch):
                        i = image_seed - drawn.seed
                        params = _parameters(profile, prompt, drawn, sampler, image_seed, size, name, lora_file,
                                             lora_scale)
                        path = out_dir / f"{stem}_p{p_index:02d}_{i:02d}_s{image_seed}.png"
                        if file_stamp:
                            path = unused_path(path)  # two calls in the same second
                        save_png_with_parameters(image, path, params, details)
                        results.append(GeneratedImage(path, name, prompt, image_seed, {**params, **details}))
                        advance(1, status=f"seed {image_seed}")
        finally:
            pipe.scheduler = standard_scheduler
    return results


def suite_batch_size(profile: ModelProfile, prompts: int, images_per_prompt: int) -> int:
    """Images per pipe call for the prompt suite: on tiny all of a generator's suite in one call (64 px images; a
    CPU draws 40 at once at three quarters of the seconds per image of 8 at once), elsewhere one prompt's images
    (two by default on sdxl: how large a batch of 1024 px images a card holds was not measured here, no GPU)."""
    return prompts * images_per_prompt if profile.is_tiny else images_per_prompt


def _validate(prompts: list[str], lora_scale: float, name: str) -> None:
    if not prompts or any(not p for p in prompts):
        raise InputError("no prompt to generate from (empty prompt in the list)", "give at least one non-empty prompt")
    check_lora_scale(lora_scale)
    if not _slug(name):
        raise InputError(f"generator name {name!r} is empty", "name the contestant, e.g. lora or base")


def _parameters(profile: ModelProfile, prompt: str, drawn: SamplingSpec, sampler: str, seed: int, size: int,
                name: str, lora_file: Path | None, lora_scale: float) -> dict[str, Any]:
    params: dict[str, Any] = {"prompt": prompt, "negative_prompt": drawn.negative_prompt, "steps": drawn.steps,
                              "sampler": sampler, "cfg_scale": float(drawn.guidance), "seed": seed, "width": size,
                              "height": size, "model": profile.base_model}
    if lora_file is not None:
        params.update(lora_name=name, lora_scale=float(lora_scale))
    return params


def _details(profile: ModelProfile, name: str, lora_file: Path | None, drawn: SamplingSpec,
             lcm_applied: bool) -> dict[str, Any]:
    details: dict[str, Any] = {"generator": name, "lora_path": str(lora_file) if lora_file else None,
                               **profile.describe()}
    if drawn.use_lcm:
        details["lcm_lora"] = drawn.lcm_lora if lcm_applied else LCM_NOT_APPLIED
    return details


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:40]
