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

import json
import os
import socket
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from tools.errors import ModelNotFoundError
from tools.paths import aldar_cache

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


def tiny_tokenizer():
    """A CLIP tokenizer over the 256 byte-level symbols: no download, no merges.

    Every character is one token, so prompts truncate at 77 characters; that is
    fine for random-weight models and keeps the real ``CLIPTokenizer`` code path.
    """
    from transformers import CLIPTokenizer

    folder = aldar_cache("tiny-tokenizer")
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    if not (vocab_file.is_file() and merges_file.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        from tools.world.tokenizer import byte_symbols

        symbols = list(byte_symbols().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
        from tools.atomic import atomic_write_text

        atomic_write_text(vocab_file, json.dumps({tok: i for i, tok in enumerate(vocab)}))
        atomic_write_text(merges_file, "#version: 0.2\n")
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)


TINY_VOCAB_SIZE, TINY_BOS, TINY_EOS = 514, 512, 513


def tiny_text_config(hidden: int = 32, projection: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=TINY_VOCAB_SIZE, bos_token_id=TINY_BOS, eos_token_id=TINY_EOS,
                          pad_token_id=TINY_EOS, hidden_size=hidden, intermediate_size=hidden * 2,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                          projection_dim=projection, hidden_act="gelu")


def tiny_unet_config(scale: str = "tiny") -> dict[str, Any]:
    """SDXL UNet layout (text_time conditioning, 2048-style cross-attention) at a small width.

    ``scale="mid"`` gives a ~50M-parameter UNet for CPU benchmarks; ``"full"`` is
    SDXL base's real config (2.6B parameters, for GPU timing with random weights).
    """
    if scale == "full":
        return dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                    block_out_channels=(320, 640, 1280),
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
                    cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    if scale == "mid":
        return dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                    block_out_channels=(128, 256, 512),
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=(2, 4, 8), transformer_layers_per_block=(1, 1, 2),
                    cross_attention_dim=64, use_linear_projection=True, addition_embed_type="text_time",
                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)
    return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(32, 64),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
                cross_attention_dim=64, use_linear_projection=True, addition_embed_type="text_time",
                addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
                norm_num_groups=32)


def tiny_vae_config() -> dict[str, Any]:
    # Four blocks so latents are 1/8 of the image, as in SDXL (two blocks would be 1/2).
    return dict(block_out_channels=(16, 16, 32, 32), in_channels=3, out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=TINY_RESOLUTION,
                scaling_factor=0.13025)


SDXL_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1,
                             prediction_type="epsilon")


def build_tiny_sdxl_components(seed: int = 0, unet_scale: str = "tiny") -> dict[str, Any]:
    """All seven components of ``StableDiffusionXLPipeline``, random but deterministic from ``seed``."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config(unet_scale))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**tiny_vae_config())
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(tiny_text_config())
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(tiny_text_config())
    tokenizer = tiny_tokenizer()
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer,
                scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG))


def tiny_clip_config(size: str = "tiny"):
    """CLIP for scoring: ``tiny`` (seconds on a CPU) or ``vit-l-14`` (the real scorer's shape)."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    if size == "vit-l-14":
        text = CLIPTextConfig(vocab_size=TINY_VOCAB_SIZE, bos_token_id=TINY_BOS, eos_token_id=TINY_EOS,
                              pad_token_id=TINY_EOS, hidden_size=768, intermediate_size=3072,
                              num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77)
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=224, patch_size=14)
        return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=768)
    text = tiny_text_config(hidden=32)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=4)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)


def build_tiny_clip(seed: int = 0, size: str = "tiny"):
    import torch
    from transformers import CLIPModel

    torch.manual_seed(seed + 10)
    return CLIPModel(tiny_clip_config(size)).eval(), tiny_tokenizer()


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


def _hub_reachable(timeout: float = 3.0) -> bool:
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
    if model_location(model_id) == "missing" and not _hub_reachable():
        raise _missing(what, model_id, setting)


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``dtype=`` where diffusers has it (newer releases warn on ``torch_dtype=``), else ``torch_dtype=``."""
    try:
        from diffusers.utils import deprecation_utils

        renamed = hasattr(deprecation_utils, "_resolve_dtype")
    except ImportError:
        renamed = False
    return {"dtype": dtype} if renamed else {"torch_dtype": dtype}


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
