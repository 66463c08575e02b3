"""Self-check: is this machine ready to run aldar with these settings?

``run_checks(settings)`` returns one ``CheckResult`` per check and prints
nothing (``agent/commands/doctor.py`` renders them). Every ``warn``/``fail``
carries a fix. Only ``fail`` results mean something required is missing (exit 1);
``warn`` marks a missing optional part that costs a feature (an API key), and
``info`` a fact worth knowing (weights the profile does not use, SDXL on a CPU).
Nothing here touches the network or downloads anything.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tools.errors import AldarError
from tools.secrets import KEY_NAMES, api_key, mask, redact
from tools.settings import Settings
from tools.urls import FIX as URL_FIX
from tools.urls import key_url_problem, shown_url

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
MIN_PYTHON = (3, 11)
# Mirrors pyproject.toml; the installed project's own metadata wins when present.
REQUIRED_PACKAGES = {
    "torch": "2.4", "diffusers": "0.32", "peft": "0.14", "transformers": "4.46", "accelerate": "1.0",
    "safetensors": "0.4", "openai": "1.50", "scikit-image": "0.24", "requests": "2.31", "rich": "13.7",
    "prompt-toolkit": "3.0.43", "pillow": "10.0", "prodigyopt": "1.0",
}
KEY_PURPOSES = {
    "DEEPSEEK_API_KEY": "the LLM agent (without it the embedded rule policy decides each round)",
    "OPENAI_API_KEY": "an OpenAI-compatible LLM endpoint instead of Deepseek (with OPENAI_BASE_URL)",
    "FREEPIK_API_KEY": "the Freepik competitor",
    "DEEPAI_API_KEY": "the DeepAI competitor",
    "GEMINI_API_KEY": "the Gemini competitor",
}


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # ok | info | warn | fail
    detail: str
    fix: str = ""


Check = Callable[[Settings], list[CheckResult]]


def run_checks(settings: Settings, extra_checks: Sequence[Check] = ()) -> list[CheckResult]:
    """Every check, in the order a user would fix them; one failing check never hides the rest.

    ``extra_checks`` come after the package checks: the CLI adds its own (agent modules, prompt files),
    which ``tools`` cannot import.
    """
    checks: list[Check] = [check_python, check_packages, check_modules, *extra_checks, check_device, check_models,
                           check_tiny_build, check_references, check_taxonomy, check_api_keys, check_key_urls,
                           check_output_folder]
    results: list[CheckResult] = []
    for check in checks:
        results.extend(run_check(check, settings))
    return results


def run_check(check: Check, settings: Settings) -> list[CheckResult]:
    """One check; an exception becomes a ``fail`` result carrying the error's fix."""
    name = check.__name__.removeprefix("check_")
    try:
        return check(settings)
    except AldarError as error:
        return [CheckResult(name, FAIL, error.problem, error.fix)]
    except Exception as error:  # noqa: BLE001 - a broken check must still be reported, not crash doctor
        return [CheckResult(name, FAIL, redact(f"{type(error).__name__}: {error}"),
                            "reinstall with `pip install -e .` if a package is broken, else report this as a bug")]


def exit_code(results: list[CheckResult]) -> int:
    return 1 if any(r.status == FAIL for r in results) else 0


# --------------------------------------------------------------------------- checks
def check_python(settings: Settings) -> list[CheckResult]:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        return [CheckResult("python", FAIL, f"Python {version}",
                            f"install Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ and recreate the virtual environment")]
    return [CheckResult("python", OK, f"Python {version}")]


def required_packages() -> dict[str, str]:
    """Distribution name → minimum version, read from the installed project's metadata."""
    from packaging.requirements import Requirement

    try:
        requirements = importlib.metadata.requires("aldar-lora") or []
    except importlib.metadata.PackageNotFoundError:
        return dict(REQUIRED_PACKAGES)
    found: dict[str, str] = {}
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None:  # extras such as [test]
            continue
        minimum = next((s.version for s in requirement.specifier if s.operator == ">="), "0")
        found[requirement.name] = minimum
    return found or dict(REQUIRED_PACKAGES)


def tested_below() -> dict[str, str]:
    """Distribution name → the first version past the majors the LoRA files were checked with (``<`` bounds)."""
    from packaging.requirements import Requirement

    try:
        requirements = importlib.metadata.requires("aldar-lora") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    bounds = {}
    for line in requirements:
        requirement = Requirement(line)
        bound = next((s.version for s in requirement.specifier if s.operator == "<"), None)
        if requirement.marker is None and bound:
            bounds[requirement.name] = bound
    return bounds


def check_packages(settings: Settings) -> list[CheckResult]:
    from packaging.version import InvalidVersion, Version

    results, untested = [], tested_below()
    for name, minimum in required_packages().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            results.append(CheckResult(name, FAIL, "not installed", f"pip install '{name}>={minimum}'"))
            continue
        try:
            too_old = Version(installed) < Version(minimum)
        except InvalidVersion:
            too_old = False
        if too_old:
            results.append(CheckResult(name, FAIL, f"{installed} (needs >= {minimum})",
                                       f"pip install -U '{name}>={minimum}'"))
        elif name in untested and _at_least(installed, untested[name]):
            results.append(CheckResult(name, WARN, f"{installed} is newer than tested (< {untested[name]}): module "
                                                   "renames can break LoRA key names",
                                       f"pip install '{name}<{untested[name]}', or run "
                                       "python -m pytest tests/test_lora_layout.py"))
        else:
            results.append(CheckResult(name, OK, installed))
    return results


def _at_least(installed: str, bound: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(installed) >= Version(bound)
    except InvalidVersion:
        return False


def import_all(package_name: str) -> tuple[int, list[CheckResult]]:
    """Import every module of a package: how many imported, and one fail line per module that does not."""
    import importlib
    import pkgutil

    package = importlib.import_module(package_name)
    names = [info.name for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}.")]
    failures = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - any import failure is what this check reports
            failures.append(CheckResult(f"module {name}", FAIL, redact(f"does not import: {type(error).__name__}: "
                                                                         f"{error}"),
                                        "reinstall aldar (`pip install -e .` in a checkout); if it persists, report it as a bug"))
    return len(names) - len(failures), failures


def check_modules(settings: Settings) -> list[CheckResult]:
    imported, failures = import_all("tools")
    return failures or [CheckResult("tools modules", OK, f"all {imported} import")]


def check_device(settings: Settings) -> list[CheckResult]:
    import torch

    from tools.devices import dtype_name, pick_device, pick_dtype

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    device = pick_device(settings.device)  # ConfigError (cuda asked, none there) becomes a fail with its fix
    dtype = pick_dtype(device, settings.dtype)
    gpu = f", {torch.cuda.get_device_name(0)}" if cuda else ""
    detail = (f"--device {settings.device} picks {device.type} ({dtype_name(dtype)}); "
              f"cuda: {'yes' if cuda else 'no'}{gpu}, mps: {'yes' if mps else 'no'}; torch {torch.__version__}")
    if device.type == "cpu" and settings.profile == "sdxl":
        return [CheckResult("device", INFO, detail + " — SDXL on a CPU runs, but training takes hours",
                            "use a CUDA GPU (12+ GB) or Apple Silicon for real runs; --profile tiny for checks")]
    return [CheckResult("device", OK, detail)]


def check_models(settings: Settings) -> list[CheckResult]:
    """Where each real model would load from; required only for the sdxl profile (and LCM only with use_lcm)."""
    from tools.models import model_location

    models = [("SDXL base", "base_model", settings.base_model, True),
              ("CLIP scorer", "clip_model", settings.clip_model, True),
              ("LCM-LoRA", "lcm_lora", settings.lcm_lora, settings.use_lcm)]
    results = []
    for label, setting, model_id, needed in models:
        where = model_location(model_id)
        name = f"model: {label}"
        if where != "missing":
            results.append(CheckResult(name, OK, f"{model_id} ({'local path' if where == 'local' else 'in the HF cache'})"))
            continue
        fix = model_fix(model_id, setting)
        if settings.profile == "tiny":  # nothing to fix: how to get it is for `aldar doctor --profile sdxl`
            results.append(CheckResult(name, INFO, f"{model_id} missing — not needed with --profile tiny"))
        elif needed:
            results.append(CheckResult(name, FAIL, f"{model_id} is neither a local path nor in the HF cache",
                                       fix + "; or run offline with --profile tiny"))
        else:
            results.append(CheckResult(name, INFO, f"{model_id} missing — only needed with use_lcm = true", fix))
    return results


_WHERE_TO_POINT = {
    "base_model": "--base-model (or base_model in aldar.toml) at a local diffusers folder or single .safetensors file",
    "clip_model": "--clip-model (or clip_model in aldar.toml) at a local folder",
    "lcm_lora": "lcm_lora in aldar.toml (or ALDAR_LCM_LORA) at a local folder",
}


def model_fix(model_id: str, setting: str) -> str:
    """The three ways to provide a model offline: fill the HF cache, or point the setting at a local copy."""
    return (f"download it where there is network (`hf download {model_id}`) and copy the Hugging Face cache "
            f"(~/.cache/huggingface, or $HF_HOME) to this machine, or point {_WHERE_TO_POINT[setting]}")


def check_tiny_build(settings: Settings) -> list[CheckResult]:
    """The toy-world weights of the tiny profile are on disk and load (what --profile tiny and the tests run on)."""
    from tools.models import load_toy_world_clip, load_toy_world_pipeline, missing_toy_world_weights, toy_world_weights

    status_if_broken = FAIL if settings.profile == "tiny" else WARN
    fix = ("restore them with `git checkout -- tools/world/weights` (or reinstall aldar); to train them afresh run "
           "`python -m tools.world.build` (about an hour of CPU)")
    missing = missing_toy_world_weights()
    if missing:
        return [CheckResult("tiny profile", status_if_broken,
                            f"toy-world weights missing: {len(missing)} files, e.g. {missing[0]}", fix)]
    started = time.perf_counter()
    try:
        pipe = load_toy_world_pipeline()
        clip, _ = load_toy_world_clip()
    except Exception as error:  # noqa: BLE001 - any load failure means the files are unusable
        return [CheckResult("tiny profile", status_if_broken,
                            f"toy-world weights in {toy_world_weights()['sdxl'].parent} do not load: "
                            f"{str(error).splitlines()[0]}", fix)]
    parameters = sum(p.numel() for key in ("unet", "vae", "text_encoder", "text_encoder_2")
                     for p in getattr(pipe, key).parameters()) + sum(p.numel() for p in clip.parameters())
    seconds = time.perf_counter() - started
    status = OK if settings.profile == "tiny" else INFO
    return [CheckResult("tiny profile", status,
                        f"toy-world weights present in {toy_world_weights()['sdxl'].parent} — trained SDXL-layout "
                        f"UNet, VAE and CLIP loaded in {seconds:.1f} s ({parameters / 1e6:.1f}M parameters)")]


def check_references(settings: Settings) -> list[CheckResult]:
    from tools.images import list_images, load_image, skipped_note

    folder = Path(settings.references)
    files = list_images(folder)  # InputError → fail with its fix
    sizes = set()
    for path in files:
        sizes.add("x".join(map(str, load_image(path).size)))
    skipped = skipped_note(folder)
    return [CheckResult("references", OK, f"{len(files)} images in {folder} ({', '.join(sorted(sizes))})"),
            *([CheckResult("references: skipped", INFO, skipped)] if skipped else [])]


def check_taxonomy(settings: Settings) -> list[CheckResult]:
    path = settings.taxonomy_path()
    try:
        from tools.scoring.taxonomy import load_taxonomy
    except ImportError as error:
        return [CheckResult("taxonomy", WARN, f"cannot check {path}: tools.scoring.taxonomy does not import ({error})",
                            "reinstall the project with `pip install -e .`")]
    taxonomy = load_taxonomy(path)
    features = sum(len(items) for items in taxonomy.categories.values())
    return [CheckResult("taxonomy", OK, f"{path}: {len(taxonomy.categories)} categories, {features} features")]


LLM_KEYS = ("DEEPSEEK_API_KEY", "OPENAI_API_KEY")  # either one configures the LLM agent


def check_api_keys(settings: Settings) -> list[CheckResult]:
    results = []
    llm_configured = any(api_key(name) for name in LLM_KEYS)
    for name in KEY_NAMES:
        value = api_key(name)
        purpose = KEY_PURPOSES.get(name, f"the {name.removesuffix('_API_KEY').lower()} integration")
        fix = f"add {name}=... to .env or export it; aldar works without it"
        if value:
            results.append(CheckResult(name, OK, f"set ({mask(value)}) — {purpose}"))
        elif name in LLM_KEYS and llm_configured:
            results.append(CheckResult(name, INFO, "not set — not needed, the other LLM key is set", fix))
        else:
            results.append(CheckResult(name, WARN, f"not set — needed for {purpose}", fix))
    return results


def check_key_urls(settings: Settings) -> list[CheckResult]:
    """One line per base URL a key is sent to (tools.urls: https, or plain http to this machine only). Unsafe
    fails where its key is set (every request would be refused), else warns."""
    from tools.providers import PROVIDERS

    urls: dict[str, tuple[str, tuple[str, ...]]] = {"llm_base_url": (settings.llm_base_url, LLM_KEYS)}
    if os.environ.get("OPENAI_BASE_URL", "").strip():
        urls["OPENAI_BASE_URL"] = (os.environ["OPENAI_BASE_URL"].strip(), ("OPENAI_API_KEY",))
    for provider in PROVIDERS.values():
        if provider.base_url_setting:
            url = getattr(settings, provider.base_url_setting, "") or provider.default_base_url
            keys = urls.get(provider.base_url_setting, (url, ()))[1]
            urls[provider.base_url_setting] = (url, (*keys, provider.key_env))
    results = []
    for setting, (url, keys) in urls.items():
        problem = key_url_problem(url)
        if not problem:
            how = "over TLS" if url.strip().startswith("https") else "in plain http to this machine only"
            results.append(CheckResult(f"{setting} URL", OK, f"{shown_url(url)} — keys go {how}"))
            continue
        status = FAIL if any(api_key(name) for name in keys) else WARN
        results.append(CheckResult(f"{setting} URL", status,
                                   f"{shown_url(url)}: {problem}; {', '.join(dict.fromkeys(keys))} will not be sent "
                                   "there", URL_FIX))
    return results


def check_output_folder(settings: Settings) -> list[CheckResult]:
    """Create and delete a file where results go; a folder not there yet is checked at its nearest parent."""
    folder = Path(settings.output_dir).expanduser().absolute()
    probe_in = folder
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    fix = f"choose a writable folder with --output-dir DIR (or output_dir in aldar.toml), or fix permissions of {probe_in}"
    if not probe_in.is_dir():
        return [CheckResult("output folder", FAIL, f"{probe_in} is a file, not a folder", fix)]
    try:
        with tempfile.NamedTemporaryFile(dir=probe_in, prefix=".aldar-doctor-", delete=True) as handle:
            handle.write(b"ok")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        return [CheckResult("output folder", FAIL, f"cannot write in {probe_in} ({error.strerror})", fix)]
    where = str(folder) if probe_in == folder else f"{folder} (will be created in {probe_in})"
    return [CheckResult("output folder", OK, f"{where} is writable")]
