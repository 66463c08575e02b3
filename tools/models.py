"""Model profiles and loading.

Two profiles share every code path past loading:

* ``sdxl``: real SDXL base weights (Hub repo id, local diffusers folder, or a
  single-file ``.safetensors`` checkpoint) and a real CLIP scorer.
* ``tiny``: the toy world's models (``tools/world``): a CLIP, a VAE and an
  SDXL-layout UNet of the same classes, small configs, trained on pictures of a
  parametric character world and committed as fp16 files. Inside that world the
  scores mean something (the loop can be seen to learn the character); they say
  nothing about real SDXL. Random-weight builders of the same shapes remain for
  tests where only shapes matter.

Loaded models are cached per process, so rounds and LoRA swaps never reload the base. torch (and the
model stack) is imported by the functions that load or build models, not by this module: naming a profile
(``ModelProfile``, ``TINY_NOTICE``) costs the command line nothing.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from tools.errors import ModelNotFoundError

if TYPE_CHECKING:
    import torch

TINY_NOTICE = ("profile 'tiny': small models trained in the bundled toy world — these scores are meaningful "
               "inside that world only, not for real SDXL")
TINY_MODEL_ID = "toy-world-sdxl"
TINY_CLIP_ID = "toy-world-clip"
TINY_RESOLUTION = 64
SDXL_RESOLUTION = 1024
_cache: dict[tuple, Any] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class ModelProfile:
    """Everything needed to load the models of one run, resolved from settings."""

    name: str  # "tiny" | "sdxl"
    base_model: str
    clip_model: str
    device: str
    dtype: str  # "fp32" | "fp16" | "bf16"
    seed: int = 0

    @property
    def is_tiny(self) -> bool:
        return self.name == "tiny"

    @property
    def resolution(self) -> int:
        return TINY_RESOLUTION if self.is_tiny else SDXL_RESOLUTION

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype]

    def describe(self) -> dict[str, Any]:
        """The fields every saved JSON carries about the models that made it."""
        info = {"profile": self.name, "base_model": self.base_model, "clip_model": self.clip_model,
                "device": self.device, "dtype": self.dtype}
        if self.is_tiny:
            info["notice"] = TINY_NOTICE
        return info


def resolve_profile(settings) -> ModelProfile:
    """Turn ``Settings`` into a concrete profile (device and dtype chosen)."""
    from tools.devices import dtype_name, pick_device, pick_dtype  # torch: which devices exist

    device = pick_device(settings.device)
    dtype = pick_dtype(device, settings.dtype)
    if settings.profile == "tiny":
        # The CLIP id carries the weights' digest: saved analyses and embedding caches never outlive a rebuild.
        return ModelProfile("tiny", TINY_MODEL_ID, f"{TINY_CLIP_ID}@{toy_world_fingerprint()}", str(device),
                            dtype_name(dtype), settings.seed)
    return ModelProfile("sdxl", settings.base_model, settings.clip_model, str(device), dtype_name(dtype), settings.seed)


# --------------------------------------------------------------------------- tiny
def toy_world_weights() -> dict[str, Path]:
    """Where the committed toy-world weights live (``clip``: CLIPModel, ``sdxl``: pipeline folder)."""
    from tools.world import WEIGHTS_DIR

    return {"clip": WEIGHTS_DIR / "clip", "sdxl": WEIGHTS_DIR / "sdxl"}


def missing_toy_world_weights() -> list[str]:
    """The toy-world weight files that are not on disk (empty when the tiny profile can load)."""
    required = {"clip": ("config.json", "model.safetensors"),
                "sdxl": ("model_index.json", "unet/diffusion_pytorch_model.safetensors",
                         "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                         "text_encoder_2/model.safetensors")}
    folders = toy_world_weights()
    return [str(folders[name] / file) for name, files in required.items() for file in files
            if not (folders[name] / file).is_file()]


def _toy_world_missing_error() -> ModelNotFoundError:
    missing = missing_toy_world_weights()
    return ModelNotFoundError(f"the toy-world weights of the tiny profile are missing ({missing[0]})",
                              "restore them from the repository (`git checkout -- tools/world/weights`) or reinstall "
                              "aldar; to train them afresh run `python -m tools.world.build` (about an hour of CPU)")


def toy_world_fingerprint() -> str:
    """A short digest of the toy CLIP's weights: embedding caches keyed on it never outlive a rebuild."""
    import hashlib

    try:
        digest = hashlib.sha256((toy_world_weights()["clip"] / "model.safetensors").read_bytes()).hexdigest()
    except OSError:
        return "missing"  # loading says what to do; naming the profile must not fail first
    return digest[:12]


def load_toy_world_pipeline(dtype: torch.dtype | None = None, folder: Path | None = None):
    """The toy world's ``StableDiffusionXLPipeline`` (fp32 unless ``dtype``), loaded with the same
    ``from_pretrained`` as real SDXL (``folder``: another build's ``sdxl`` folder, e.g. for the bench)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    dtype = torch.float32 if dtype is None else dtype
    if folder is None and missing_toy_world_weights():
        raise _toy_world_missing_error()
    _quiet_loading_bars()
    return StableDiffusionXLPipeline.from_pretrained(folder or toy_world_weights()["sdxl"], use_safetensors=True,
                                                     **dtype_kwargs(dtype))


def load_toy_world_clip(folder: Path | None = None):
    """The toy world's CLIP (analyzer and scorer of the tiny profile) and its BPE tokenizer."""
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    if folder is None and missing_toy_world_weights():
        raise _toy_world_missing_error()
    folder = folder or toy_world_weights()["clip"]
    _quiet_loading_bars()
    model = CLIPModel.from_pretrained(folder, **transformers_dtype_kwargs(torch.float32))
    return model.eval(), CLIPTokenizer.from_pretrained(folder)


def _quiet_loading_bars() -> None:
    # The toy world loads in a blink; tqdm's "Loading weights" bars would only clutter the rich output.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def transformers_dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """transformers 5 names it ``dtype`` (and would otherwise load the fp16 files as fp16); 4.x ``torch_dtype``."""
    import transformers

    return {"dtype": dtype} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": dtype}


SDXL_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1,
                             prediction_type="epsilon")


def sdxl_unet_config(sample_size: int, widths: tuple[int, ...], heads: tuple[int, ...],
                     transformer_layers: tuple[int, ...], cross_attention_dim: int, time_embed: int,
                     pooled_dim: int, layers_per_block: int, norm_num_groups: int = 32) -> dict[str, Any]:
    """SDXL's UNet layout (a plain first level, cross-attention below it, text_time conditioning on the pooled
    text embedding and six size numbers, linear projections) at any width: SDXL base's own
    (``widths=(320, 640, 1280)``), the toy world's, and the tests' random ones."""
    levels = len(widths)
    return dict(sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=layers_per_block,
                block_out_channels=widths,
                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
                up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
                attention_head_dim=heads, transformer_layers_per_block=transformer_layers,
                cross_attention_dim=cross_attention_dim, use_linear_projection=True, addition_embed_type="text_time",
                addition_time_embed_dim=time_embed, projection_class_embeddings_input_dim=6 * time_embed + pooled_dim,
                norm_num_groups=norm_num_groups)


def sdxl_vae_config(widths: tuple[int, int, int, int], norm_num_groups: int, scaling_factor: float,
                    **extra: Any) -> dict[str, Any]:
    """SDXL's VAE layout: four blocks, so latents are 1/8 of the image with 4 channels, at any width."""
    return dict(block_out_channels=widths, in_channels=3, out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                latent_channels=4, norm_num_groups=norm_num_groups, layers_per_block=1,
                sample_size=TINY_RESOLUTION, scaling_factor=scaling_factor, **extra)


# --------------------------------------------------------------------------- real models
def model_location(model_id: str) -> str:
    """``local`` (a path on disk), ``cached`` (in the Hugging Face cache) or ``missing``."""
    if Path(model_id).expanduser().exists():
        return "local"
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(model_id, local_files_only=True)
        return "cached"
    except Exception:  # noqa: BLE001 - any failure here means "not usable offline"
        return "missing"


def local_or_repo_id(model_id: str) -> str:
    """``model_id`` with ``~`` expanded when that is a path on disk (loaders take "~/models/x" for a repo id)."""
    expanded = Path(model_id).expanduser()
    return str(expanded) if expanded.exists() else model_id


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can the Hugging Face Hub be reached (not offline by HF_HUB_OFFLINE, a TCP connection within ``timeout``)?"""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((endpoint, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _missing(what: str, model_id: str, setting: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{what} {model_id!r} is not in the Hugging Face cache and the Hub cannot be reached",
        f"download it on a machine with network (`hf download {model_id}`) and copy ~/.cache/huggingface, "
        f"or set {setting} in aldar.toml / --{setting.replace('_', '-')} to a local folder"
        + (" or .safetensors file" if setting == "base_model" else "")
        + "; or run offline with --profile tiny",
    )


def ensure_available(what: str, model_id: str, setting: str) -> None:
    """Fail fast (no 50 s of download retries) when a model cannot possibly load."""
    if model_location(model_id) == "missing" and not hub_reachable():
        raise _missing(what, model_id, setting)


DIFFUSERS_DTYPE_RENAMED = (0, 40)  # diffusers 0.40 takes ``dtype=`` and warns on ``torch_dtype=``


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``dtype=`` where diffusers has it, else ``torch_dtype=`` (checked in the 0.39.0 and 0.40.0 wheels)."""
    from importlib.metadata import version

    major_minor = tuple(int(part) for part in version("diffusers").split(".")[:2])
    return {"dtype": dtype} if major_minor >= DIFFUSERS_DTYPE_RENAMED else {"torch_dtype": dtype}


def load_sdxl_pipeline(profile: ModelProfile):
    """The SDXL text-to-image pipeline for ``profile``, loaded once per process."""
    key = ("sdxl-pipeline", profile)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = _load_sdxl_pipeline(profile)
        return _cache[key]


def _load_sdxl_pipeline(profile: ModelProfile):
    from diffusers import StableDiffusionXLPipeline

    if profile.is_tiny:
        pipe = load_toy_world_pipeline()
    else:
        source = profile.base_model
        ensure_available("SDXL base model", source, "base_model")
        kwargs: dict[str, Any] = dtype_kwargs(profile.torch_dtype)
        path_or_id = local_or_repo_id(source)
        try:
            if source.endswith((".safetensors", ".ckpt")):
                pipe = StableDiffusionXLPipeline.from_single_file(path_or_id, **kwargs)
            else:
                if profile.dtype == "fp16" and model_location(source) != "local":
                    kwargs["variant"] = "fp16"
                pipe = StableDiffusionXLPipeline.from_pretrained(path_or_id, use_safetensors=True, **kwargs)
        except (OSError, ValueError, EnvironmentError) as exc:
            raise ModelNotFoundError(f"could not load SDXL base model {source!r}: {str(exc).splitlines()[0]}",
                                     "check the path / repo id in base_model, or use --profile tiny") from None
        if profile.dtype == "fp16":
            pipe.vae.config.force_upcast = True  # SDXL's VAE overflows in fp16; diffusers upcasts when told
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(profile.torch_device)


def load_clip(profile: ModelProfile):
    """The CLIP scorer for ``profile`` as a ``tools.scoring.clip.ClipEncoder``, loaded once per process."""
    from tools.scoring.clip import ClipEncoder

    key = ("clip", profile.clip_model, profile.device, profile.seed)
    with _cache_lock:
        if key not in _cache:
            if profile.is_tiny:
                model, tokenizer = load_toy_world_clip()
            else:
                model, tokenizer = _load_real_clip(profile.clip_model)
            _cache[key] = ClipEncoder(model.to(profile.torch_device), tokenizer, model_id=profile.clip_model,
                                      profile=profile.name)
        return _cache[key]


def _load_real_clip(model_id: str):
    from transformers import CLIPModel, CLIPTokenizer

    ensure_available("CLIP model", model_id, "clip_model")
    try:
        model = CLIPModel.from_pretrained(local_or_repo_id(model_id))
        tokenizer = CLIPTokenizer.from_pretrained(local_or_repo_id(model_id))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"could not load CLIP model {model_id!r}: {str(exc).splitlines()[0]}",
                                 "check clip_model (repo id or local folder), or use --profile tiny") from None
    return model.eval(), tokenizer


@contextmanager
def quiet_lora_loading() -> Iterator[None]:
    """UNet-only LoRAs make diffusers warn about text encoders, and peft about a second adapter or deleting
    the active one: all expected when adapters are swapped in place."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="peft")
            yield
    finally:
        diffusers_logging.set_verbosity(level)


def clear_model_cache() -> None:
    with _cache_lock:
        _cache.clear()
