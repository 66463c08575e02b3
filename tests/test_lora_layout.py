"""LoRA keys of the REAL SDXL architecture, built on the ``meta`` device (no weights, no memory).

The expected names are derived here from the documented layouts, not from our modules: kohya sd-scripts'
``lora_te1_`` / ``lora_te2_`` / ``lora_unet_`` + module path with dots flattened to underscores (what
A1111 and ComfyUI map), and diffusers' ``unet.`` / ``text_encoder.`` / ``text_encoder_2.`` + module path,
with the text encoders' modules under ``text_model.`` as in the original CLIP checkpoints. A transformers or
diffusers upgrade that renames modules fails here instead of silently dropping part of users' LoRAs.
"""

from __future__ import annotations

import types

import pytest
import torch

from tests.random_models import unet_config
from tools.models import resolve_profile
from tools.settings import load_settings
from tools.training.config import default_train_config
from tools.training.lora_files import export_lora
from tools.training.setup import ADAPTER_NAME, adapter_state_dicts, jsonable, lora_adapters

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu")
OPEN_CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   projection_dim=1280, hidden_act="gelu")
ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def sdxl_unet_attention_modules() -> list[str]:
    """diffusers module paths of SDXL base's attention projections, from its published block layout."""
    config = unet_config("full")
    depth = config["transformer_layers_per_block"]
    places = []
    for block, kind in enumerate(config["down_block_types"]):
        if kind.startswith("CrossAttn"):
            places += [(f"down_blocks.{block}.attentions.{i}", depth[block]) for i in range(config["layers_per_block"])]
    places.append(("mid_block.attentions.0", depth[-1]))
    up_depth = list(reversed(depth))
    for block, kind in enumerate(config["up_block_types"]):
        if kind.startswith("CrossAttn"):
            places += [(f"up_blocks.{block}.attentions.{i}", up_depth[block])
                       for i in range(config["layers_per_block"] + 1)]
    return [f"{place}.transformer_blocks.{t}.{attn}.{proj}" for place, blocks in places for t in range(blocks)
            for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")]


def clip_attention_modules(layers: int) -> list[str]:
    return [f"text_model.encoder.layers.{n}.self_attn.{proj}" for n in range(layers) for proj in ATTENTION]


def kohya_name(prefix: str, module: str) -> str:
    return f"{prefix}_{module.replace('.', '_')}"


def export_on_meta(folder, adapter: str = "lora") -> dict[str, set[str]]:
    """Our adapters on the real SDXL UNet and CLIP-L/G (meta device), exported by our code path."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    profile = resolve_profile(load_settings(overrides={"profile": "tiny", "device": "cpu"}))
    config = default_train_config(profile).replace(train_text_encoder=True, rank=4, alpha=2.0, adapter=adapter)
    with torch.device("meta"):
        pipe = types.SimpleNamespace(
            unet=UNet2DConditionModel(**unet_config("full")),
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**OPEN_CLIP_G)))
        with lora_adapters(pipe, config) as modules:
            state_dicts = adapter_state_dicts(modules)
            lora_configs = {name: jsonable(m.peft_config[ADAPTER_NAME].to_dict()) for name, m in modules.items()}
    assert all(t.is_meta for state in state_dicts.values() for t in state.values())
    # Meta tensors hold no data to write: one-element stand-ins keep every key through the real save path.
    stand_ins = {c: {k: torch.zeros(1) for k in state} for c, state in state_dicts.items()}
    export_lora(folder / "diffusers.safetensors", folder / "kohya.safetensors", stand_ins, lora_configs,
                config.alpha, {"ss_network_dim": "4"})
    from safetensors import safe_open

    keys = {}
    for name in ("diffusers", "kohya"):
        with safe_open(str(folder / f"{name}.safetensors"), "pt") as handle:
            keys[name] = set(handle.keys())
    return keys


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_on_meta(tmp_path_factory.mktemp("layout"))


def all_attention_modules() -> list[tuple[str, str]]:
    """(component, module path) of every attention projection an adapter targets."""
    return ([("unet", m) for m in sdxl_unet_attention_modules()]
            + [("text_encoder", m) for m in clip_attention_modules(12)]
            + [("text_encoder_2", m) for m in clip_attention_modules(32)])


def test_the_expected_layout_counts_the_modules_of_sdxl():
    assert len(sdxl_unet_attention_modules()) == 560  # 70 transformer blocks x 2 attentions x 4 projections
    assert len(clip_attention_modules(12)) + len(clip_attention_modules(32)) == 176


def test_kohya_file_has_every_standard_key_and_no_other(exported):
    modules = ([kohya_name("lora_unet", m) for m in sdxl_unet_attention_modules()]
               + [kohya_name("lora_te1", m) for m in clip_attention_modules(12)]
               + [kohya_name("lora_te2", m) for m in clip_attention_modules(32)])
    expected = {f"{m}.{part}" for m in modules for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert len(modules) == 736
    assert exported["kohya"] == expected, (sorted(exported["kohya"] - expected)[:3], sorted(expected - exported["kohya"])[:3])
    assert "lora_te1_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight" in exported["kohya"]


def test_diffusers_file_has_every_standard_key_and_no_other(exported):
    expected = ({f"unet.{m}.lora.{d}.weight" for m in sdxl_unet_attention_modules() for d in ("down", "up")}
                | {f"text_encoder.{m}.lora_linear_layer.{d}.weight" for m in clip_attention_modules(12)
                   for d in ("down", "up")}
                | {f"text_encoder_2.{m}.lora_linear_layer.{d}.weight" for m in clip_attention_modules(32)
                   for d in ("down", "up")})
    assert exported["diffusers"] == expected, (sorted(exported["diffusers"] - expected)[:3],
                                              sorted(expected - exported["diffusers"])[:3])
    assert "text_encoder.text_model.encoder.layers.11.self_attn.out_proj.lora_linear_layer.up.weight" \
        in exported["diffusers"]


# --------------------------------------------------------------------------- LoKr and LoHa (LyCORIS layout)
KOHYA = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
# What kohya's LyCORIS, ComfyUI and A1111 read per module: LoKr's w2 is one matrix or a low-rank pair.
LYCORIS_PARTS = {"lokr": ({"lokr_w1", "lokr_w2", "alpha"}, {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"}),
                 "loha": ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},)}


def _parts_by_module(keys: set[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for key in keys:
        module, _, part = key.rpartition(".")
        found.setdefault(module, set()).add(part)
    return found


@pytest.mark.parametrize("adapter", ["lokr", "loha"])
def test_lycoris_files_have_every_standard_key_and_no_other(tmp_path, adapter):
    keys = export_on_meta(tmp_path, adapter)
    kohya = _parts_by_module(keys["kohya"])
    assert set(kohya) == {kohya_name(KOHYA[c], m) for c, m in all_attention_modules()}
    assert all(parts in LYCORIS_PARTS[adapter] for parts in kohya.values()), \
        sorted({frozenset(p) for p in kohya.values()}, key=len)
    assert "lora_te1_text_model_encoder_layers_0_self_attn_k_proj.alpha" in keys["kohya"]
    # The diffusers file keeps peft's names per component, as diffusers' LoKr loader reads them.
    diffusers = _parts_by_module(keys["diffusers"])
    assert set(diffusers) == {f"{c}.{m}" for c, m in all_attention_modules()}
    assert all(parts | {"alpha"} in LYCORIS_PARTS[adapter] for parts in diffusers.values())
