"""Loading the LoKr and LoHa files aldar writes into the shared SDXL pipeline.

diffusers' SDXL ``load_lora_weights`` reads LoRA keys only (its LoKr support is the UNet's
``load_lora_adapter``, and it has none for LoHa), so a LyCORIS file's components get their adapter through
peft here — the same injection diffusers uses — under a name that ``set_adapters`` / ``delete_adapters`` then
treat like any LoRA. The file holds peft's own keys per component and the peft config in its metadata
(``lora_adapter_metadata``, as diffusers writes it for LoRA).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tools.errors import InputError

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
MARKERS = (".lokr_", ".hada_")
DIFFUSERS_NOTE = ("LoKr/LoHa: diffusers' load_lora_weights reads LoRA keys only — aldar generate loads this file, "
                  "and the kohya file loads in ComfyUI, A1111 and kohya (LyCORIS)")


def is_lycoris_file(path: Path) -> bool:
    """Whether a safetensors file holds LoKr or LoHa weights (read from its key names, not its tensors)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return any(marker in key for key in handle.keys() for marker in MARKERS)


def load_lycoris_weights(pipe, path: Path, adapter_name: str) -> None:
    """Add the LoKr/LoHa adapter of ``path`` to each pipeline component it names; InputError when it does not fit."""
    from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model
    from peft.utils import set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as handle:
        packed = json.loads((handle.metadata() or {}).get("lora_adapter_metadata", "{}"))
    tensors = load_file(str(path))
    for component in COMPONENTS:
        state = {key[len(component) + 1:]: value for key, value in tensors.items() if key.startswith(component + ".")}
        if not state:
            continue
        settings = {key[len(component) + 1:]: value for key, value in packed.items()
                    if key.startswith(component + ".")}
        config_class = {"LOKR": LoKrConfig, "LOHA": LoHaConfig}.get(settings.get("peft_type", ""))
        if config_class is None:
            raise InputError(f"{path.name} holds LoKr/LoHa weights for {component} but no peft config",
                             "load a file written by aldar train, or the kohya file in ComfyUI/A1111")
        known = {f.name for f in dataclasses.fields(config_class)}
        config = config_class(**{k: v for k, v in settings.items() if k in known})
        module = getattr(pipe, component)
        if component != "unet" and not hasattr(module, "text_model"):  # transformers 5: CLIP modules at the top
            state = {key.removeprefix("text_model."): value for key, value in state.items()}
        if component == "unet":
            module.add_adapter(config, adapter_name=adapter_name)
        else:
            inject_adapter_in_model(config, module, adapter_name=adapter_name)
            module.peft_config = {**(getattr(module, "peft_config", None) or {}), adapter_name: config}
        result = set_peft_model_state_dict(module, state, adapter_name=adapter_name)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise InputError(f"{path.name} does not fit this base model's {component} ({unexpected[0]})",
                             "use a LoKr/LoHa trained for the same base model and profile")
