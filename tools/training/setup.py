"""Setting up and tearing down a LoRA training run: adapters on the shared pipeline, accelerate, optimizer.

Kept apart from the training loop in ``tools.training.trainer`` so that the loop reads top to bottom.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from tools.errors import ConfigError, ResumeMismatchError, TrainingError
from tools.models import quiet_lora_loading
from tools.training.config import TEXT_ENCODER_TARGETS, UNET_TARGETS, TrainConfig, bitsandbytes_available
from tools.training.data import TrainingImage, dataset_sha256

ADAPTER_NAME = "aldar_training"  # never "default": the generator's own LoRA may already live in the UNet
RUN_CONFIG = "train_config.json"


@contextmanager
def lora_adapters(pipe, config: TrainConfig) -> Iterator[dict[str, torch.nn.Module]]:
    """Add a trainable LoRA (or LoKr / LoHa) to the shared UNet (and text encoders); remove it and every training
    change after."""
    unet = pipe.unet
    previous = unet.active_adapters() if getattr(unet, "peft_config", None) else []
    modules: dict[str, torch.nn.Module] = {"unet": unet}
    if config.train_text_encoder:
        modules.update(text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2)
    # pipe.disable_lora() (base-model renders) switches every LoRA layer off, a new adapter's too: remember it.
    disabled = {name: _lora_layers_disabled(module) for name, module in modules.items()}
    # Frozen text encoders may hold an earlier round's LoRA that the generator left active: off while training,
    # so the cached text embeddings (and validation renders) come from the bare base model.
    frozen = {name: getattr(pipe, name, None) for name in ("text_encoder", "text_encoder_2") if name not in modules}
    frozen = {name: module for name, module in frozen.items() if module is not None}
    frozen_disabled = {name: _lora_layers_disabled(module) for name, module in frozen.items()}
    for module in frozen.values():
        for layer in _tuner_layers(module):
            layer.enable_adapters(False)
    torch.manual_seed(config.seed)  # LoRA initialisation
    try:
        for name, module in modules.items():
            module.requires_grad_(False)
            targets = UNET_TARGETS if name == "unet" else TEXT_ENCODER_TARGETS
            lora_config = adapter_config(config, targets)
            if name == "unet":
                with quiet_lora_loading():  # a second adapter beside the generator's is expected
                    module.add_adapter(lora_config, adapter_name=ADAPTER_NAME)
            else:
                _add_plain_adapter(module, lora_config)
            _activate_only_ours(module)
            for param in module.parameters():  # trainable LoRA weights stay fp32 under fp16/bf16 autocast
                if param.requires_grad:
                    param.data = param.data.float()
            if config.gradient_checkpointing:
                _set_gradient_checkpointing(module, True)
            module.train()
        yield modules
    finally:
        for name, module in modules.items():
            if ADAPTER_NAME in (getattr(module, "peft_config", None) or {}):
                if name == "unet":
                    with quiet_lora_loading():
                        module.delete_adapters(ADAPTER_NAME)
                else:
                    _remove_plain_adapter(module)
            _set_gradient_checkpointing(module, False)
            module.__dict__.pop("_original_forward", None)  # accelerate's autocast wrapper, if it added one
            module.__dict__.pop("forward", None)
            module.requires_grad_(False)
            module.eval()
        if previous:
            unet.set_adapter(previous)
        for name, module in modules.items():
            for layer in _tuner_layers(module):
                layer.enable_adapters(not disabled[name])
        for name, module in frozen.items():
            for layer in _tuner_layers(module):
                layer.enable_adapters(not frozen_disabled[name])


def adapter_config(config: TrainConfig, targets: list[str]):
    """The peft config of ``config.adapter``: LoRA (DoRA with ``use_dora``), LoKr or LoHa at the same rank/alpha.

    LoKr and LoHa keep peft's (LyCORIS') defaults: Kronecker factors chosen by peft (w2 low-rank when the rank is
    below half its side), Hadamard product of two rank-r pairs; both scale by alpha/rank as LyCORIS does."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    if config.adapter == "lokr":
        return LoKrConfig(r=config.rank, alpha=config.alpha, target_modules=targets)
    if config.adapter == "loha":
        return LoHaConfig(r=config.rank, alpha=config.alpha, target_modules=targets)
    return LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian", target_modules=targets,
                      use_dora=config.use_dora)


def holds_adapter(layer, name: str = ADAPTER_NAME) -> bool:
    """Whether a peft tuner layer (LoRA, LoKr or LoHa) holds adapter ``name``."""
    return any(name in getattr(layer, attribute, {}) for attribute in layer.adapter_layer_names)


def adapter_state_dicts(modules: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    """Our adapter's weights per component, with PEFT's key names (export renames them; resume reads them)."""
    from peft.utils import get_peft_model_state_dict

    return {name: get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME) for name, module in modules.items()}


@contextmanager
def adapters_off(modules) -> Iterator[None]:
    """The trained adapters of ``modules`` switched off for the ``with`` block — the base model's own forward pass
    (output preservation's target) — then on again, their weights trainable as before."""
    modules = list(modules)
    grads = [(param, param.requires_grad) for module in modules for param in module.parameters()]
    # Only the layers on now: one that setup switched off (it holds only the generator's adapter) stays off.
    layers = [layer for module in modules for layer in _tuner_layers(module) if not layer.disable_adapters]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for param, trainable in grads:  # peft's enable_adapters re-marks what it thinks trainable: keep what was
            param.requires_grad_(trainable)


def _tuner_layers(module) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [layer for layer in module.modules() if isinstance(layer, BaseTunerLayer)]


def _activate_only_ours(module) -> None:
    """Train on the bare base model: our adapter on, any LoRA the generator loaded earlier off."""
    for layer in _tuner_layers(module):
        if holds_adapter(layer):
            layer.enable_adapters(True)
            layer.set_adapter(ADAPTER_NAME)  # also makes only our weights trainable
        else:
            layer.enable_adapters(False)


def _add_plain_adapter(module, lora_config) -> None:
    """LoRA on a transformers text encoder through peft itself.

    transformers' own ``add_adapter`` demands a newer peft than diffusers pins; ``inject_adapter_in_model``
    is the same injection ``diffusers`` uses for the UNet.
    """
    from peft import inject_adapter_in_model

    inject_adapter_in_model(lora_config, module, adapter_name=ADAPTER_NAME)
    configs = dict(getattr(module, "peft_config", None) or {})
    configs[ADAPTER_NAME] = lora_config  # get/set_peft_model_state_dict look the config up here
    module.peft_config = configs


def _remove_plain_adapter(module) -> None:
    """Undo ``_add_plain_adapter``: layers that held only our adapter get their original layer back."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in list(module.named_modules()):
        if isinstance(layer, BaseTunerLayer) and holds_adapter(layer):
            held = getattr(layer, layer.adapter_layer_names[0])
            if set(held) == {ADAPTER_NAME}:
                parent, _, child = name.rpartition(".")
                setattr(module.get_submodule(parent), child, layer.get_base_layer())
            else:
                layer.delete_adapter(ADAPTER_NAME)
    module.peft_config.pop(ADAPTER_NAME, None)
    if not module.peft_config:
        del module.peft_config


def _lora_layers_disabled(module) -> bool:
    return any(layer.disable_adapters for layer in _tuner_layers(module))


def _set_gradient_checkpointing(module, enabled: bool) -> None:
    if hasattr(module, "enable_gradient_checkpointing"):  # diffusers models
        (module.enable_gradient_checkpointing if enabled else module.disable_gradient_checkpointing)()
    elif enabled:
        module.gradient_checkpointing_enable()
    else:
        module.gradient_checkpointing_disable()  # a no-op when it was off


def make_accelerator(config: TrainConfig, profile, run_dir: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if config.allow_tf32 and torch.cuda.is_available():  # Ampere+: TF32 matmuls, far faster, same results in practice
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    on_cpu = profile.torch_device.type == "cpu"
    if PartialState(cpu=on_cpu).num_processes == 1:  # cpu=True here too, or a CPU torchrun is not seen
        # One process trains round after round, maybe with another precision: start from a clean state.
        AcceleratorState._reset_state(reset_partial_state=False)
    tracking = {} if config.report_to == "none" else {"log_with": config.report_to, "project_dir": str(run_dir / "logs")}
    return Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation,
                       cpu=on_cpu, **tracking)


def make_optimizer(config: TrainConfig, modules: dict[str, torch.nn.Module], device_type: str,
                   embedding: list[torch.nn.Parameter] | None = None):
    """The optimizer over the trainable LoRA weights; text encoders get their own rate. Returns (optimizer, name).

    AdamW (8-bit on CUDA with bitsandbytes), or Prodigy with its authors' settings for diffusion LoRAs:
    lr 1.0 (it estimates the step size itself), betas (0.9, 0.99), decoupled weight decay, bias correction,
    safeguard warmup. Under Prodigy a text encoder's rate is its ratio to the UNet's. Pivotal tuning's ``embedding``
    rows get their own rate and no weight decay (decay would pull the new words toward nothing).
    """
    name = config.optimizer
    if name == "auto":
        name = "adamw8bit" if device_type == "cuda" and bitsandbytes_available() else "adamw"
    groups = []
    own = {id(p) for p in embedding or []}  # the trigger's rows sit inside a trained text encoder too
    for component, module in modules.items():
        params = [p for p in module.parameters() if p.requires_grad and id(p) not in own]
        rate = config.learning_rate if component == "unet" else config.effective_text_encoder_learning_rate
        groups.append({"params": params, "lr": rate / config.learning_rate if name == "prodigy" else rate})
    if embedding:
        rate = config.effective_embedding_learning_rate
        groups.append({"params": embedding, "lr": rate / config.learning_rate if name == "prodigy" else rate,
                       "weight_decay": 0.0})
    if name == "prodigy":
        from prodigyopt import Prodigy  # imported only here: optional

        return Prodigy(groups, lr=1.0, betas=(0.9, 0.99), weight_decay=config.weight_decay, decouple=True,
                       use_bias_correction=config.prodigy_use_bias_correction,
                       safeguard_warmup=config.prodigy_safeguard_warmup, d_coef=config.prodigy_d_coef), name
    if name == "adamw8bit":
        import bitsandbytes  # imported only here: optional, CUDA-only

        optimizer_class = bitsandbytes.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    return optimizer_class(groups, lr=config.learning_rate, betas=(0.9, 0.999), weight_decay=config.weight_decay,
                           eps=1e-8), name


def check_resumable(run_dir: Path, config: TrainConfig, profile, images: list[TrainingImage],
                     checkpoint: Path | None) -> None:
    if checkpoint is None or not (run_dir / RUN_CONFIG).is_file():
        return
    saved = json.loads((run_dir / RUN_CONFIG).read_text(encoding="utf-8"))
    fixed = ("rank", "alpha", "train_text_encoder", "resolution", "use_dora", "adapter", "bucketing", "bucket_step",
             "optimizer", "pivotal_tuning", "embedding_vectors")
    before = {**{k: saved["config"].get(k, getattr(TrainConfig(), k)) for k in fixed},
              "base_model": saved.get("base_model"), "dataset": saved.get("dataset_sha256")}
    now = {**{k: getattr(config, k) for k in fixed}, "base_model": profile.base_model,
           "dataset": dataset_sha256(images)}
    changed = [k for k in now if before[k] != now[k]]
    if changed:
        detail = ", ".join(f"{k} {before[k]!r} -> {now[k]!r}" for k in changed)
        raise ResumeMismatchError(f"cannot resume {checkpoint}: {detail}",
                          "resume with the same settings and images, or start a new --run-dir")


def check_init_weights(config: TrainConfig, profile) -> None:
    """``ConfigError`` (one line) when ``config.init_weights`` cannot start this run: no checkpoint there (a
    deleted round folder), or one of another base model, rank, DoRA or set of trained components. The session
    catches it and starts the round afresh; ``aldar train`` refuses."""
    if not config.init_weights:
        return
    from tools.training.lora_files import ADAPTER_WEIGHTS

    path = Path(config.init_weights)
    made = _read_json(path / "checkpoint.json") if (path / ADAPTER_WEIGHTS).is_file() else None
    if made is None:
        raise ConfigError(f"cannot start from {path}: no LoRA checkpoint there (deleted or never finished)",
                          "pass a checkpoint-<step> folder of an earlier run, or no init weights")
    configs = made.get("lora_configs") or {}
    components = {"unet", "text_encoder", "text_encoder_2"} if config.train_text_encoder else {"unet"}
    unet = configs.get("unet") or {}
    problems = []
    if made.get("base_model") != profile.base_model:
        problems.append(f"base model {made.get('base_model')!r}, not {profile.base_model!r}")
    if unet.get("r") != config.rank:
        problems.append(f"rank {unet.get('r')}, not {config.rank}")
    if bool(unet.get("use_dora")) != bool(config.use_dora):
        problems.append("DoRA " + ("on" if unet.get("use_dora") else "off"))
    if set(configs) != components:
        problems.append(f"components {', '.join(sorted(configs)) or 'none'}, not {', '.join(sorted(components))}")
    from tools.embeddings import embedding_file

    if embedding_file(path, config.trigger_token).is_file() != config.pivotal_tuning:
        problems.append("pivotal tuning " + ("off" if config.pivotal_tuning else "on")
                        + f" (trigger {config.trigger_token!r})")
    if problems:
        raise ConfigError(f"cannot start from {path}: it was trained with {'; '.join(problems)}",
                          "start from a checkpoint of the same models and rank, or afresh")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def out_of_memory(config: TrainConfig) -> TrainingError:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    hints = []
    if config.batch_size > 1:
        hints.append("--batch-size 1 (raise --gradient-accumulation instead)")
    if config.resolution > 768:
        hints.append("--resolution 768")
    if config.rank > 16:
        hints.append("--rank 16")
    if not config.gradient_checkpointing:
        hints.append("--gradient-checkpointing")
    if config.mixed_precision == "no":
        hints.append("--mixed-precision bf16 (or fp16)")
    if config.optimizer != "adamw8bit":
        hints.append("--optimizer adamw8bit (needs bitsandbytes)")
    if config.train_text_encoder:
        hints.append("--no-train-text-encoder")
    return TrainingError("out of GPU memory while training",
                         "lower the memory use: " + ", ".join(hints or ["close other GPU programs"])
                         + "; then rerun with --resume")


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, tuple, list)):
        return [jsonable(v) for v in (sorted(value) if isinstance(value, set) else value)]
    return value
