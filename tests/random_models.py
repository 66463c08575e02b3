"""Random-weight models for the tests and the benches: small configs of the real classes.

They are not the tiny profile (that loads the toy world's trained weights, ``tools.models``): these shape-check
the code paths in seconds (``small``), time a CPU training step (``mid``), or build SDXL base's real UNet on
the meta device or a GPU (``full``).
"""

from __future__ import annotations

import json
from typing import Any

from tools.models import SDXL_SCHEDULER_CONFIG, sdxl_unet_config, sdxl_vae_config
from tools.paths import aldar_cache


def byte_tokenizer():
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


BYTE_VOCAB_SIZE, BYTE_BOS, BYTE_EOS = 514, 512, 513


def text_config(hidden: int = 32, projection: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=BYTE_VOCAB_SIZE, bos_token_id=BYTE_BOS, eos_token_id=BYTE_EOS,
                          pad_token_id=BYTE_EOS, hidden_size=hidden, intermediate_size=hidden * 2,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                          projection_dim=projection, hidden_act="gelu")


def unet_config(scale: str = "small") -> dict[str, Any]:
    """SDXL UNet layout (text_time conditioning, 2048-style cross-attention) at a small width.

    ``scale="mid"`` gives a ~50M-parameter UNet for CPU benchmarks; ``"full"`` is
    SDXL base's real config (2.6B parameters, for GPU timing with random weights).
    """
    if scale == "full":
        return sdxl_unet_config(128, (320, 640, 1280), heads=(5, 10, 20), transformer_layers=(1, 2, 10),
                                cross_attention_dim=2048, time_embed=256, pooled_dim=1280, layers_per_block=2)
    if scale == "mid":
        return sdxl_unet_config(64, (128, 256, 512), heads=(2, 4, 8), transformer_layers=(1, 1, 2),
                                cross_attention_dim=64, time_embed=8, pooled_dim=32, layers_per_block=2)
    return sdxl_unet_config(8, (32, 64), heads=(2, 4), transformer_layers=(1, 2), cross_attention_dim=64,
                            time_embed=8, pooled_dim=32, layers_per_block=2)


def vae_config() -> dict[str, Any]:
    return sdxl_vae_config((16, 16, 32, 32), norm_num_groups=8, scaling_factor=0.13025)


def random_sdxl_components(seed: int = 0, unet_scale: str = "small") -> dict[str, Any]:
    """All seven components of ``StableDiffusionXLPipeline``, random but deterministic from ``seed``."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(unet_scale))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**vae_config())
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config())
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(text_config())
    tokenizer = byte_tokenizer()
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer,
                scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG))


def clip_config(size: str = "small"):
    """CLIP for scoring: ``small`` (seconds on a CPU) or ``vit-l-14`` (the real scorer's shape)."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    if size == "vit-l-14":
        text = CLIPTextConfig(vocab_size=BYTE_VOCAB_SIZE, bos_token_id=BYTE_BOS, eos_token_id=BYTE_EOS,
                              pad_token_id=BYTE_EOS, hidden_size=768, intermediate_size=3072,
                              num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77)
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=224, patch_size=14)
        return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=768)
    text = text_config(hidden=32)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=4)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32)


def random_clip(seed: int = 0, size: str = "small"):
    import torch
    from transformers import CLIPModel

    torch.manual_seed(seed + 10)
    return CLIPModel(clip_config(size)).eval(), byte_tokenizer()
