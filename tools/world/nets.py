"""The world's networks: CLIP, VAE and SDXL-layout UNet configs at a small width, and the pieces every stage
shares to feed them (CLIP's pixel normalisation and logit cap, SDXL's two text encoders from one tower)."""

from __future__ import annotations

import math

import numpy as np
import torch

from tools.models import sdxl_unet_config, sdxl_vae_config
from tools.scoring.clip import CLIP_MEAN, CLIP_STD
from tools.world.recipe import RESOLUTION

PROMPT_TOKENS = 77  # SDXL's (CLIP's) text window: every prompt is truncated or padded to it
TEXT_TOWER_PARTS = ("text_model", "text_projection")
IMAGE_TOWER_PARTS = ("vision_model", "visual_projection")
ENCODER_PARTS = ("encoder", "quant_conv")


def clip_config(vocab_size: int, bos: int, eos: int):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
                          hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                          max_position_embeddings=PROMPT_TOKENS, projection_dim=64, hidden_act="quick_gelu")
    vision = CLIPVisionConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                              image_size=RESOLUTION, patch_size=8, projection_dim=64, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=64)


def vae_config() -> dict:
    return sdxl_vae_config((32, 48, 64, 64), norm_num_groups=16, scaling_factor=1.0, force_upcast=False)


def unet_config(text_hidden: int, projection_dim: int) -> dict:
    """SDXL's layout (three levels, text_time conditioning, linear projections) at a small width."""
    return sdxl_unet_config(RESOLUTION // 8, (48, 96, 96), heads=(4, 8, 8), transformer_layers=(1, 1, 1),
                            cross_attention_dim=2 * text_hidden, time_embed=32, pooled_dim=projection_dim,
                            layers_per_block=1, norm_num_groups=16)


def new_clip(tokenizer, seed: int):
    """A CLIP at its seeded initial weights over ``tokenizer``'s vocabulary."""
    from transformers import CLIPModel

    vocab = tokenizer.get_vocab()
    torch.manual_seed(seed + 10)
    return CLIPModel(clip_config(len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"]))


def new_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**vae_config())


def new_unet(clip_model):
    """A UNet whose cross-attention and pooled conditioning fit ``clip_model``'s text tower."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(clip_model.config.text_config.hidden_size,
                                              clip_model.config.projection_dim))


def clip_pixels(pixels: np.ndarray) -> torch.Tensor:
    """uint8 NHWC at the CLIP's input size → normalised NCHW, as ``tools.scoring.clip.ClipEncoder`` prepares it."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def cap_logit_scale(model) -> None:
    """CLIP caps its learned logit scale at 100 (the analyzer and scorer assume that scale)."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))


def text_towers(clip_model):
    """The CLIP's text tower as SDXL's two text encoders (the second with the pooled projection)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    text_config = clip_model.config.text_config
    text_config.projection_dim = clip_model.config.projection_dim
    encoder = CLIPTextModel(text_config)
    # transformers 5's CLIPTextModel is the text transformer itself; 4.x wraps it in ``text_model``.
    getattr(encoder, "text_model", encoder).load_state_dict(clip_model.text_model.state_dict())
    encoder_2 = CLIPTextModelWithProjection(text_config)
    encoder_2.text_model.load_state_dict(clip_model.text_model.state_dict())
    encoder_2.text_projection.load_state_dict(clip_model.text_projection.state_dict())
    return encoder.eval(), encoder_2.eval()


def encode_captions(encoder_2, tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's prompt embeddings: penultimate hidden states of both encoders side by side, pooled from the
    second. Both encoders are one text tower here, so one pass serves both. Padded to 77, no mask, as the pipeline."""
    ids = tokenizer(captions, padding="max_length", max_length=PROMPT_TOKENS, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        out = encoder_2(ids, output_hidden_states=True)
    hidden = out.hidden_states[-2]
    return torch.cat([hidden, hidden], dim=-1), out.text_embeds
