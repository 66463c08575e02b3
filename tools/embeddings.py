"""The trigger word as new tokens: a textual-inversion embedding trained beside the LoRA (pivotal tuning).

A base model that never read the trigger spells it in word pieces it reads like any other unknown word, so a
LoRA has little in the prompt to tie the character to — it learns him for every prompt, the unconditional one
included, and guidance cancels part of it. Pivotal tuning (diffusers' ``train_dreambooth_lora_sdxl_advanced.py
--train_text_encoder_ti``; kohya and OneTrainer train embeddings too) gives the trigger ``vectors`` new tokens
in both tokenizers, whose embedding rows train with the LoRA while every other row stays frozen.

The tokens follow diffusers' multi-vector convention — ``zorabek``, ``zorabek_1``, … — so the pipeline's own
``load_textual_inversion`` loads the file and ``maybe_convert_prompt`` expands the trigger in any prompt. The
file is ``embeddings/<trigger>.safetensors`` beside the LoRA, keys ``clip_l`` / ``clip_g`` (one row per vector):
the SDXL embedding layout A1111 and ComfyUI read, where the file name is the word to type.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from tools.atomic import atomic_write
from tools.character import trigger_spelled
from tools.errors import InputError

EMBEDDINGS_DIR = "embeddings"
# (tokenizer, text encoder, key in the file): SDXL's CLIP ViT-L and OpenCLIP ViT-bigG, as A1111 and ComfyUI name them
ENCODERS = (("tokenizer", "text_encoder", "clip_l"), ("tokenizer_2", "text_encoder_2", "clip_g"))


def trigger_tokens(trigger: str, vectors: int) -> list[str]:
    """The tokens of a ``vectors``-row embedding of ``trigger``, named as diffusers' loader names them."""
    return [trigger] + [f"{trigger}_{i}" for i in range(1, vectors)]


def embedding_file(folder: Path, trigger: str) -> Path:
    """Where a run (or checkpoint) folder keeps the trigger's embedding."""
    return Path(folder) / EMBEDDINGS_DIR / f"{trigger}.safetensors"


def find_embedding(folder: Path) -> Path | None:
    """The one embedding file of a run or checkpoint folder; None when it has none."""
    found = sorted((Path(folder) / EMBEDDINGS_DIR).glob("*.safetensors"))
    if len(found) > 1:
        raise InputError(f"{Path(folder) / EMBEDDINGS_DIR} holds {len(found)} embeddings",
                         "keep only the one its LoRA was trained with")
    return found[0] if found else None


def save_embedding(path: Path, rows: dict[str, torch.Tensor], trigger: str) -> Path:
    """Write ``{clip_l, clip_g}`` rows by rename; the trigger in the metadata (A1111 takes it from the name)."""
    from safetensors.torch import save_file

    tensors = {key: value.detach().float().cpu().contiguous() for key, value in rows.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"aldar_trigger": trigger}))
    return path


def read_embedding(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(trigger, rows per encoder key) of an embedding file; one-line ``InputError`` when it is not one."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        rows = load_file(str(path))
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise InputError(f"embedding {path} cannot be read ({str(error).splitlines()[0][:120]})",
                         "retrain the LoRA with pivotal tuning, or delete the embeddings folder beside it") from None
    keys = [key for _, _, key in ENCODERS]
    if set(rows) != set(keys) or len({rows[k].shape[0] for k in keys}) != 1:
        raise InputError(f"embedding {path} does not hold {' and '.join(keys)} rows of one length",
                         "use the embedding file aldar train wrote beside the LoRA")
    return metadata.get("aldar_trigger") or Path(path).stem, rows


# --------------------------------------------------------------------------- an embedding in a pipeline
@dataclass
class _Loaded:
    key: tuple[str, int, int] | None  # the file's (path, size, mtime_ns); None while training
    tokens: list[str]


# weak keys: a pipeline dropped by clear_model_cache takes its record with it
_loaded: "weakref.WeakKeyDictionary[Any, _Loaded]" = weakref.WeakKeyDictionary()


def load_into(pipe, rows: dict[str, torch.Tensor], trigger: str, key: tuple[str, int, int] | None = None) -> list[str]:
    """Add the trigger's tokens with ``rows`` to both tokenizers and text encoders (``load_textual_inversion``),
    replacing whatever embedding the pipeline held; returns the tokens."""
    unload_from(pipe)
    tokens = trigger_tokens(trigger, rows[ENCODERS[0][2]].shape[0])
    done = []
    try:
        for tokenizer_name, encoder_name, file_key in ENCODERS:
            tokenizer, encoder = getattr(pipe, tokenizer_name), getattr(pipe, encoder_name)
            weights = rows[file_key].to(encoder.get_input_embeddings().weight.dtype)
            pipe.load_textual_inversion(weights, token=trigger, tokenizer=tokenizer, text_encoder=encoder)
            done.append((tokenizer, encoder))
    except BaseException as error:  # a clash, or Ctrl-C between the encoders: the first one's tokens come out
        for tokenizer, encoder in done:
            pipe.unload_textual_inversion(tokens=tokens, tokenizer=tokenizer, text_encoder=encoder)
        if not isinstance(error, ValueError):
            raise
        raise InputError(f"the embedding's tokens {', '.join(tokens)} clash with the base model's tokenizer "
                         f"({str(error).splitlines()[0][:100]})", "pick another trigger word") from None
    _loaded[pipe] = _Loaded(key, tokens)
    return tokens


def unload_from(pipe) -> None:
    """Take the loaded trigger embedding (if any) out of the pipeline: the base model reads the word as before."""
    loaded = _loaded.pop(pipe, None)
    if loaded is None:
        return
    for tokenizer_name, encoder_name, _ in ENCODERS:
        pipe.unload_textual_inversion(tokens=loaded.tokens, tokenizer=getattr(pipe, tokenizer_name),
                                      text_encoder=getattr(pipe, encoder_name))


def spelled_as_token(prompts: list[str], trigger: str) -> list[str]:
    """``prompts`` with the trigger, as a whole word in any case, spelled as its token: CLIP's tokenizer finds
    "Zorabek" too but diffusers' ``maybe_convert_prompt`` expands only the exact spelling to every vector."""
    return [trigger_spelled(prompt, trigger) for prompt in prompts]


def loaded_trigger(pipe) -> str | None:
    """The trigger whose embedding the pipeline holds now (None: none)."""
    loaded = _loaded.get(pipe)
    return loaded.tokens[0] if loaded is not None else None


def activate_embedding(pipe, lora_file: Path | None) -> str | None:
    """Make the embedding trained with ``lora_file`` (``embeddings/`` beside it) the pipeline's one — loaded once
    per file — or none (the base model, or a LoRA trained without one). Returns the trigger it serves."""
    path = find_embedding(lora_file.parent) if lora_file is not None else None
    if path is None:
        unload_from(pipe)
        return None
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    loaded = _loaded.get(pipe)
    if loaded is not None and loaded.key == key:
        return loaded.tokens[0]
    trigger, rows = read_embedding(path)
    load_into(pipe, rows, trigger, key)
    return trigger


# --------------------------------------------------------------------------- training it
class _TrainableRows(torch.nn.Module):
    """An embedding table whose last rows come from a trainable parameter: the new tokens learn, the rest is the
    frozen table (no gradient, no optimizer state for the whole vocabulary)."""

    def __init__(self, table: torch.nn.Embedding, rows: torch.nn.Parameter) -> None:
        super().__init__()
        self.table, self.rows = table, rows
        self.first = table.num_embeddings - rows.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # a lookup in the table, the new tokens' positions taken from the rows: no copy of the vocabulary per step
        looked_up = self.table(ids)
        rows = self.rows[(ids - self.first).clamp(min=0)].to(looked_up.dtype)
        return torch.where((ids >= self.first).unsqueeze(-1), rows, looked_up)


class TriggerEmbedding:
    """The trigger's new rows while they train: ``parameters`` for the optimizer, ``rows()`` to save, ``load()``
    to continue a checkpoint's."""

    def __init__(self, trigger: str, parameters: dict[str, torch.nn.Parameter]) -> None:
        self.trigger, self.by_key = trigger, parameters

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.by_key.values())

    def rows(self) -> dict[str, torch.Tensor]:
        return {key: value.detach().float().cpu().clone() for key, value in self.by_key.items()}

    def average_gradients(self, accelerator) -> None:
        """Several processes: average the rows' gradients, as DDP averages the wrapped modules' (these rows live
        in the text encoders, which are not wrapped)."""
        if accelerator.num_processes == 1:
            return
        for parameter in self.parameters:
            if parameter.grad is not None:
                parameter.grad = accelerator.reduce(parameter.grad, "mean")

    def load(self, rows: dict[str, torch.Tensor]) -> None:
        for key, parameter in self.by_key.items():
            if rows[key].shape != parameter.shape:
                raise InputError(f"the embedding holds {tuple(rows[key].shape)} rows for {key}, this run trains "
                                 f"{tuple(parameter.shape)}", "start from a checkpoint of the same embedding_vectors")
            with torch.no_grad():
                parameter.copy_(rows[key].to(parameter.device, parameter.dtype))


def initial_rows(pipe, trigger: str, vectors: int, seed: int) -> dict[str, torch.Tensor]:
    """Fresh rows: the first starts where the base reads the trigger now (the mean of its word pieces' rows:
    diffusers' ``initializer_concept``, the trigger itself), the others Gaussian at the scale of the encoder's
    token embeddings (as diffusers' advanced script draws them), from ``seed``."""
    generator = torch.Generator().manual_seed(seed + 104729)
    rows = {}
    for tokenizer_name, encoder_name, file_key in ENCODERS:
        table = getattr(pipe, encoder_name).get_input_embeddings().weight.detach().float().cpu()
        pieces = getattr(pipe, tokenizer_name)(trigger, add_special_tokens=False).input_ids
        drawn = torch.randn((vectors, table.shape[1]), generator=generator) * table.std()
        rows[file_key] = torch.cat([table[pieces].mean(0, keepdim=True), drawn[1:]])
    return rows


@contextmanager
def trained_embedding(pipe, trigger: str, vectors: int, seed: int, device: torch.device,
                      freeze_encoders: bool = True) -> Iterator[TriggerEmbedding]:
    """The trigger's tokens added to the shared pipeline with trainable rows; afterwards the pipeline is as it was
    before any embedding was loaded (the generator loads the exported file when it draws with the LoRA).

    ``freeze_encoders``: the text encoders, encoded with gradients every step now, take none of their own while
    only the rows learn (SDXL's hold 0.8 B parameters); their flags come back as they were. False when the
    encoders train a LoRA of their own (``lora_adapters`` has frozen their base weights already)."""
    unload_from(pipe)  # a generator's embedding, if it left one: the rows start from the base's reading
    encoders = [getattr(pipe, name) for _, name, _ in ENCODERS]
    flags = [{name: p.requires_grad for name, p in encoder.named_parameters()} for encoder in encoders]
    swapped = []
    try:
        if freeze_encoders:
            for encoder in encoders:
                encoder.requires_grad_(False)
        load_into(pipe, initial_rows(pipe, trigger, vectors, seed), trigger)
        parameters = {}
        for encoder, (_, _, file_key) in zip(encoders, ENCODERS):
            table = encoder.get_input_embeddings()
            rows = torch.nn.Parameter(table.weight.detach()[-vectors:].float().clone().to(device))
            encoder.set_input_embeddings(_TrainableRows(table, rows))
            swapped.append((encoder, table))
            parameters[file_key] = rows
        yield TriggerEmbedding(trigger, parameters)
    finally:
        for encoder, table in swapped:
            encoder.set_input_embeddings(table)
        unload_from(pipe)
        for encoder, before in zip(encoders, flags):
            for name, parameter in encoder.named_parameters():
                parameter.requires_grad_(before.get(name, parameter.requires_grad))
                if freeze_encoders:
                    parameter.grad = None


def training_embedding(pipe, config, device: torch.device):
    """``trained_embedding`` for a ``TrainConfig`` with ``pivotal_tuning``; a context yielding None without it."""
    if not config.pivotal_tuning:
        return nullcontext(None)
    return trained_embedding(pipe, config.trigger_token, config.embedding_vectors, config.seed, device,
                             freeze_encoders=not config.train_text_encoder)
