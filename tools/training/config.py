"""LoRA training hyperparameters: one dataclass, its defaults per profile, and up-front validation.

Every field carries its own help text (``field(metadata={"help": ...})``) so the CLI builds one
documented flag per setting from this file and the two can never drift apart.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tools.errors import ConfigError
from tools.world import TINY_SAMPLING_STEPS

if TYPE_CHECKING:
    from tools.generation.sampling import SamplingSpec

OPTIMIZERS = ("auto", "adamw", "adamw8bit", "prodigy")
SAVE_PRECISIONS = ("fp16", "bf16", "fp32")
REPORT_TO = ("none", "tensorboard")
ADAPTERS = ("lora", "lokr", "loha")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
DIFFUSERS_SDXL_GUIDANCE = 5.0  # StableDiffusionXLPipeline's guidance_scale default


def _setting(default: Any, help_text: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass
class TrainConfig:
    """Hyperparameters of one SDXL LoRA training run (defaults: an SDXL character LoRA)."""

    rank: int = _setting(32, "LoRA rank (network dim): capacity of the adapter; 16-32 suits one character")
    alpha: float = _setting(16.0, "LoRA alpha: the update is scaled by alpha/rank; rank or rank/2 is usual")
    learning_rate: float = _setting(1e-4, "AdamW learning rate for the UNet's LoRA weights (Prodigy sets its own)")
    text_encoder_learning_rate: float = _setting(0.0, "learning rate for the text encoders' LoRA when they train "
                                                   "(0 = learning_rate; kohya users often take half)")
    steps: int = _setting(1500, "optimizer steps to train (each sees batch_size x gradient_accumulation images)")
    batch_size: int = _setting(1, "images per forward pass")
    gradient_accumulation: int = _setting(2, "forward passes summed before each optimizer step")
    resolution: int = _setting(1024, "training size in px: buckets hold about resolution^2 pixels (square crops "
                                  "of this side without --bucketing); multiple of 8")
    bucketing: bool = _setting(True, "aspect-ratio bucketing (kohya/SimpleTuner): each image trains at the bucket "
                                  "nearest its shape instead of a centre-cropped square")
    bucket_step: int = _setting(64, "bucket sides are multiples of this many px (kohya's bucket_reso_steps); "
                                 "multiple of 8")
    seed: int = _setting(42, "seed for data order, noise, timesteps and LoRA initialisation")
    optimizer: str = _setting("auto", "adamw | adamw8bit (bitsandbytes, CUDA only) | prodigy (prodigyopt: "
                                   "learning-rate free, ignores --learning-rate) | auto (8-bit AdamW when available)",
                           choices=OPTIMIZERS)
    weight_decay: float = _setting(1e-4, "decoupled weight decay (AdamW and Prodigy; Prodigy's authors suggest 0.01)")
    prodigy_d_coef: float = _setting(1.0, "Prodigy: multiplies its estimated step size (below 1 = gentler)")
    prodigy_safeguard_warmup: bool = _setting(True, "Prodigy: keep the step-size estimate from jumping during "
                                                 "learning-rate warmup (its authors' advice with warmup)")
    prodigy_use_bias_correction: bool = _setting(True, "Prodigy: Adam-style bias correction (its authors' advice "
                                                    "for diffusion models)")
    adapter: str = _setting("lora", "adapter kind: lora | lokr (LyCORIS LoKr: Kronecker factors, far fewer weights) | "
                                 "loha (LyCORIS LoHa: Hadamard product of two low-rank pairs); --use-dora is LoRA's "
                                 "DoRA. LoKr/LoHa files load in ComfyUI, A1111 and kohya (LyCORIS keys); diffusers "
                                 "loads LoKr, aldar loads both", choices=ADAPTERS)
    use_dora: bool = _setting(False, "DoRA (peft use_dora): weight-decomposed LoRA, often more faithful at low rank, "
                                  "a little slower per step; UNet only")
    max_grad_norm: float = _setting(1.0, "gradient clipping norm (0 = off)")
    lr_scheduler: str = _setting("cosine", "learning-rate schedule after warmup", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = _setting(100, "steps of linear learning-rate warmup")
    snr_gamma: float = _setting(5.0, "min-SNR loss weighting gamma (0 = plain MSE); 5 is the paper's value. "
                                  "kohya's convention: min(SNR, gamma)/(SNR+1) on v-prediction (older "
                                  "diffusers examples clamped SNR+1 instead)")
    noise_offset: float = _setting(0.0357, "noise offset (SDXL base was trained with 0.0357); helps dark/bright images")
    masked_loss: bool = _setting(False, "weigh the loss by each reference's character mask (kohya's masked_loss): "
                                     "masks/<same name> beside the references (white = character) or the alpha "
                                     "channel; the background is then not learned, so prompts can change it")
    mask_outside_weight: float = _setting(0.0, "masked loss: weight of the loss outside the mask (0 = kohya's: the "
                                               "background is not trained at all; 0.1-0.3 keeps some context)")
    normalize_masked_loss: bool = _setting(False, "masked loss: divide each picture's loss by its mask's mean weight "
                                                  "(OneTrainer's normalize_masked_area_loss), so a small character "
                                                  "trains as strongly as a whole picture; off = kohya's plain "
                                                  "weighting, which scales the step by the character's area")
    prior_preservation: bool = _setting(False, "prior preservation (DreamBooth; kohya's reg images): train on class "
                                              "images of the base model beside the references so that prompts "
                                              "without the trigger drift less toward the character; about twice "
                                              "the time per step")
    class_prompt: str = _setting("", "prior preservation: prompt of the class images (empty: the analysis' "
                                     "description without the trigger and name); must not contain the trigger")
    num_class_images: int = _setting(0, "prior preservation: class images to draw (0 = four per reference)")
    prior_loss_weight: float = _setting(1.0, "prior preservation: weight of the class images' loss (kohya's "
                                             "prior_loss_weight)")
    class_images_dir: str = _setting("", "prior preservation: a folder of your own regularisation images (captions "
                                         "from same-stem .txt files, else the class prompt) instead of drawing them")
    output_preservation: bool = _setting(False, "differential output preservation (ai-toolkit's DOP): each "
                                               "batch's captions without the trigger word are held to the base "
                                               "model's own prediction (adapter off) on the same noisy latents, so the "
                                               "LoRA acts where its trigger is; no class images; about twice the "
                                               "time per step")
    output_preservation_weight: float = _setting(1.0, "output preservation: weight of its loss (ai-toolkit's "
                                                      "diff_output_preservation_multiplier)")
    pivotal_tuning: bool = _setting(False, "pivotal tuning: the trigger word becomes new tokens whose embedding trains "
                                          "beside the LoRA (diffusers' --train_text_encoder_ti), for a character the "
                                          "base has no word for; saved as embeddings/<trigger>.safetensors")
    embedding_vectors: int = _setting(2, "pivotal tuning: tokens (vectors) the trigger gets in each text encoder "
                                      "(diffusers' num_new_tokens_per_abstraction)")
    embedding_learning_rate: float = _setting(0.0, "pivotal tuning: learning rate of the trigger's embedding (0 = "
                                                   "the text encoders' rate)")
    caption_mode: str = _setting("full", "training captions from the analysis: full (trigger + every trait, key "
                                        "features included) | identity-free (trigger + only what varies across the "
                                        "references: the traits common to all are left to the trigger)",
                                 choices=("full", "identity-free"))
    caption_dropout: float = _setting(0.0, "chance per sample of training on an empty caption (0-1; 0.05-0.1 helps "
                                        "the LoRA work without its trigger word)")
    shuffle_caption_tags: bool = _setting(False, "shuffle each caption's comma-separated tags every step (kohya's "
                                              "shuffle_caption); the first --keep-tokens stay in front")
    keep_tokens: int = _setting(1, "leading caption tags never shuffled or dropped by shuffling (1 keeps the trigger "
                                "word first)")
    train_text_encoder: bool = _setting(False, "also train LoRA on both text encoders (disables text-embedding caching)")
    gradient_checkpointing: bool = _setting(True, "recompute activations in backward: far less memory, "
                                               "about a fifth slower")
    allow_tf32: bool = _setting(True, "TF32 matmuls on Ampere+ CUDA GPUs (faster, same results in practice)")
    mixed_precision: str = _setting("no", "autocast precision: no | fp16 | bf16 "
                                       "(fp16 needs CUDA; default follows --dtype)",
                                 choices=MIXED_PRECISIONS)
    checkpoint_every: int = _setting(250, "save a resumable checkpoint every N steps (0 = only on interrupt)")
    checkpoints_to_keep: int = _setting(3, "keep the newest N checkpoints (0 = keep all)")
    flip_augmentation: bool = _setting(False, "add horizontally flipped copies "
                                           "(off: asymmetric characters mirror wrongly)")
    validation_prompt: str = _setting("", "prompt rendered at every checkpoint (empty: '<trigger>, portrait')")
    validation_images: int = _setting(2, "validation images per checkpoint, at fixed seeds (0 = none)")
    validation_inference_steps: int = _setting(25, "denoising steps for validation images")
    validation_guidance_scale: float = _setting(0.0, "classifier-free guidance of the validation images (0 = the "
                                                  "guidance_scale images are generated with: aldar run and aldar train "
                                                  "pass it; 5, diffusers' SDXL default, in the trainer alone)")
    validation_negative_prompt: str = _setting("", "negative prompt of the validation images (empty: none; aldar run "
                                                "and aldar train pass the one images are generated with, as "
                                                "kohya's sample prompts take --n)")
    plateau_checkpoints: int = _setting(0, "stop early once the validation quality has not risen beyond its spread "
                                        "(the best checkpoint's standard error) over this many checkpoints (0 = "
                                        "train every step)")
    init_weights: str = _setting("", "start from this checkpoint folder's LoRA weights instead of a fresh LoRA "
                                  "(kohya's --network_weights): same base model, rank and components")
    select_best_checkpoint: bool = _setting(True, "the run's LoRA is the checkpoint whose validation images score "
                                               "best against the references (off: the last step's)")
    save_precision: str = _setting("fp16", "dtype of the exported LoRA files: fp16 | bf16 | fp32 (as kohya's "
                                        "--save_precision)", choices=SAVE_PRECISIONS)
    report_to: str = _setting("none", "experiment tracker through accelerate: none | tensorboard (loss and lr per "
                                   "step, validation images per checkpoint, in <run-dir>/logs)", choices=REPORT_TO)
    cache_latents_to_disk: bool = _setting(True, "also keep VAE latents on disk (keyed by image hash + VAE id)")
    trigger_token: str = _setting("aldarkose", "trigger word recorded in the LoRA metadata and validation prompt")
    output_name: str = _setting("aldar_kose_lora", "name recorded in the kohya file (ss_output_name) and its file name")

    # ------------------------------------------------------------------ helpers
    @property
    def effective_text_encoder_learning_rate(self) -> float:
        return self.text_encoder_learning_rate or self.learning_rate

    @property
    def effective_embedding_learning_rate(self) -> float:
        return self.embedding_learning_rate or self.effective_text_encoder_learning_rate

    @property
    def effective_validation_guidance_scale(self) -> float:
        return self.validation_guidance_scale or DIFFUSERS_SDXL_GUIDANCE

    @property
    def effective_validation_prompt(self) -> str:
        return self.validation_prompt or f"{self.trigger_token}, portrait"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def judged_as_drawn(self, sampling: "SamplingSpec") -> "TrainConfig":
        """The validation guidance and negative prompt, where unset, those the images will be drawn with
        (``aldar run`` and ``aldar train`` pass ``SamplingSpec.from_settings``): judged at diffusers' 5 but
        drawn at 7, two tiny seeds of four chose another checkpoint and scored lower."""
        return self.replace(validation_guidance_scale=self.validation_guidance_scale or sampling.guidance,
                            validation_negative_prompt=self.validation_negative_prompt or sampling.negative_prompt)

    def replace(self, **changes: Any) -> "TrainConfig":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(unknown)}",
                              f"known settings: {', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    def validate(self, profile=None) -> None:
        """Raise ``ConfigError`` (problem + fix) for the first bad value; with ``profile``, also device checks."""
        for name in _WHOLE_AT_LEAST:
            check_setting(name, getattr(self, name))
        check_setting("alpha", self.alpha)
        check_setting("learning_rate", self.learning_rate)
        if self.text_encoder_learning_rate < 0 or not math.isfinite(self.text_encoder_learning_rate):
            raise ConfigError(f"text_encoder_learning_rate is {self.text_encoder_learning_rate!r}",
                              "set it to 0 (same as learning_rate) or a positive number")
        if max(self.learning_rate, self.text_encoder_learning_rate) > 1.0:
            raise ConfigError(f"learning rate {max(self.learning_rate, self.text_encoder_learning_rate):g} is above 1 "
                              "and will diverge",
                              "use about 1e-4 for SDXL (the tiny profile uses 5e-3)")
        if self.resolution < 64 or self.resolution % 8:
            raise ConfigError(f"resolution {self.resolution} is not a multiple of 8 of at least 64",
                              "use e.g. 1024 (SDXL), 768, 512, or 64 on the tiny profile")
        if self.bucket_step < 8 or self.bucket_step % 8 or self.bucket_step > self.resolution:
            raise ConfigError(f"bucket_step {self.bucket_step} is not a multiple of 8 between 8 and the resolution",
                              "use 64 (kohya's default) or 32; 8 on the tiny profile")
        if not (0.0 <= self.caption_dropout < 1.0):
            raise ConfigError(f"caption_dropout {self.caption_dropout} is outside [0, 1)", "use 0 to 0.1")
        _positive_finite("prodigy_d_coef", self.prodigy_d_coef)
        if self.prior_preservation:
            _positive_finite("prior_loss_weight", self.prior_loss_weight)
            check_class_prompt(self.class_prompt, self.trigger_token)
        if self.output_preservation:
            _positive_finite("output_preservation_weight", self.output_preservation_weight)
            if not self.trigger_token.strip():
                raise ConfigError("output preservation needs a trigger word: it holds each caption without it to "
                                  "the base model", "set --trigger-token, or drop --output-preservation")
        if self.pivotal_tuning:
            _check_pivotal(self)
        if not (0.0 <= self.mask_outside_weight < 1.0) or not math.isfinite(self.mask_outside_weight):
            raise ConfigError(f"mask_outside_weight {self.mask_outside_weight} is outside [0, 1)",
                              "use 0 (kohya's masked loss) to 0.3")
        if self.use_dora and self.adapter != "lora":
            raise ConfigError(f"DoRA is a LoRA variant; it does not apply to --adapter {self.adapter}",
                              "use --adapter lora with --use-dora, or drop --use-dora")
        if self.use_dora and self.train_text_encoder:
            # diffusers 0.42 drops DoRA magnitudes of text encoders on load: such a LoRA would load half.
            raise ConfigError("DoRA on the text encoders does not load in diffusers (its magnitudes are dropped)",
                              "use --use-dora with --no-train-text-encoder, or plain LoRA")
        if self.lr_warmup_steps >= self.steps and self.lr_warmup_steps > 0:
            raise ConfigError(f"lr_warmup_steps {self.lr_warmup_steps} is not below steps {self.steps}",
                              "use fewer warmup steps (about 5-10% of steps)")
        for name in ("weight_decay", "max_grad_norm", "snr_gamma", "validation_guidance_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} is {value}", f"set {name} to 0 or a positive number")
        if not (0.0 <= self.noise_offset < 1.0):
            raise ConfigError(f"noise_offset {self.noise_offset} is outside [0, 1)", "use 0 to 0.1 (0.0357 is SDXL's)")
        for name, allowed in (("optimizer", OPTIMIZERS), ("mixed_precision", MIXED_PRECISIONS),
                              ("lr_scheduler", LR_SCHEDULERS), ("save_precision", SAVE_PRECISIONS),
                              ("report_to", REPORT_TO), ("adapter", ADAPTERS),
                              ("caption_mode", ("full", "identity-free"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}", f"use one of: {', '.join(allowed)}")
        if not self.trigger_token.strip():
            raise ConfigError("trigger_token is empty", "set a rare word such as 'aldarkose'")
        if not self.output_name.strip() or any(c in self.output_name for c in "/\\"):
            raise ConfigError(f"output_name {self.output_name!r} is not a plain file name",
                              "use letters, digits, _ or -")
        if profile is not None:
            self._validate_for_device(profile.torch_device.type)

    def _validate_for_device(self, device_type: str) -> None:
        if self.mixed_precision == "fp16" and device_type != "cuda":
            raise ConfigError(f"mixed_precision fp16 needs a CUDA GPU (device is {device_type})",
                              "use --mixed-precision no (or bf16)")
        if self.optimizer == "prodigy" and not _available("prodigyopt"):
            raise ConfigError("the Prodigy optimizer needs the prodigyopt package",
                              "pip install prodigyopt, or use --optimizer adamw")
        if self.report_to == "tensorboard" and not (_available("tensorboard") or _available("tensorboardX")):
            raise ConfigError("--report-to tensorboard needs the tensorboard package",
                              "pip install tensorboard, or use --report-to none")
        if self.optimizer == "adamw8bit":
            if device_type != "cuda":
                raise ConfigError("8-bit AdamW needs a CUDA GPU", "use --optimizer adamw (or auto)")
            if not bitsandbytes_available():
                raise ConfigError("8-bit AdamW needs the bitsandbytes package",
                                  "pip install bitsandbytes, or use --optimizer adamw")


# Whole-number settings and their smallest valid value.
_WHOLE_AT_LEAST = {"rank": 1, "steps": 1, "batch_size": 1, "gradient_accumulation": 1, "validation_inference_steps": 1,
                   "lr_warmup_steps": 0, "checkpoint_every": 0, "checkpoints_to_keep": 0, "validation_images": 0,
                   "seed": 0, "keep_tokens": 0, "num_class_images": 0,
                   "plateau_checkpoints": 0}
RANK_LIMIT = 1024


def check_setting(name: str, value: Any) -> None:
    """Raise the ``ConfigError`` that ``validate`` raises when this one setting is outside its valid domain.

    The agent's knob table (``agent/rounds/knobs.py``) refuses values with this same check, so a bad
    ``steps`` reads the same from ``aldar train``, ``/train`` and a decider. (Checks between settings,
    such as warmup below steps or a learning rate above 1, stay in ``validate``: the agent's safe
    ranges keep its values far inside them.)
    """
    if name in _WHOLE_AT_LEAST:
        _at_least(name, value, _WHOLE_AT_LEAST[name])
    if name == "rank" and value > RANK_LIMIT:
        raise ConfigError(f"rank {value} is too large", f"use a rank between 1 and {RANK_LIMIT} (16-32 is typical)")
    if name in ("alpha", "learning_rate"):
        _positive_finite(name, value)


def check_class_prompt(class_prompt: str, trigger: str) -> None:
    """ConfigError when the class prompt names the trigger: the class images would teach the trigger the base's look."""
    from tools.character import has_trigger

    if has_trigger(class_prompt, trigger):
        raise ConfigError(f"the class prompt {class_prompt!r} contains the trigger token {trigger!r}",
                          "describe the class without the trigger (e.g. 'a man in an orange robe'), or leave "
                          "--class-prompt empty to take the analysis' description")


def _at_least(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} is {value!r}", f"set {name} to a whole number >= {low}")


def _positive_finite(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} is {value!r}", f"set {name} to a positive number")


def _available(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def bitsandbytes_available() -> bool:
    return _available("bitsandbytes")


# The toy world's learning rate per adapter (one place to give an adapter its own). LoKr (peft's, LyCORIS' factor -1)
# on the tiny UNet's 96-wide attention layers is an 8x8 factor ⊗ a full 12x12 one: 12,320 weights against LoRA's
# 89,600 at rank 8 (LoHa: 179,200), its first factor starting at zero. Measured with bench/adapter_learning.py (one
# round on the bundled references, key features of the adapter's images minus the base's; seeds 42/1/2, one
# thread; decoder5's VAE): LoRA +0.234 ± 0.064 at 5e-3; LoKr +0.250 ± 0.051 at 5e-3 (+0.188/+0.250/+0.312),
# +0.203 ± 0.051 at 1e-2; LoHa +0.214 ± 0.041 at 5e-3, +0.214 ± 0.007 at 1e-2 — every adapter over the issue's +0.15
# on every seed at LoRA's rate, so all keep it. (With decoder4's VAE LoKr had needed 1e-2: +0.156 ± 0.026 against
# +0.141 ± 0.022 at 5e-3.)
TINY_LEARNING_RATES = {"lora": 5e-3, "lokr": 5e-3, "loha": 5e-3}


def default_train_config(profile, adapter: str = "lora") -> TrainConfig:
    """Defaults for ``profile`` and ``adapter``: an SDXL character LoRA, or a seconds-long run on ``tiny``.

    tiny: the toy world's 64 px models; a hundred-odd steps teach its base Aldar Köse in seconds on a CPU.
    Four validation images per checkpoint: the best checkpoint is chosen by their mean score, and on one
    image the choice was a lottery (neighbouring checkpoints scored 0.18 and 0.62). Each adapter trains at its own
    learning rate there (TINY_LEARNING_RATES). On SDXL every adapter keeps LoRA's: not measured here, and trainers
    switch LyCORIS adapters without changing the rest (ai-toolkit's LoKr config changes only the network type;
    LyCORIS' guidelines tune dimension and factor, not the rate, and warn only that high-dim LoHa wants a lower one).
    """
    mixed = {"fp16": "fp16", "bf16": "bf16"}.get(profile.dtype, "no")
    if not profile.is_tiny:
        return TrainConfig(seed=profile.seed, mixed_precision=mixed, adapter=adapter)
    return TrainConfig(rank=8, alpha=8.0, learning_rate=TINY_LEARNING_RATES.get(adapter, TINY_LEARNING_RATES["lora"]),
                       adapter=adapter, steps=200, batch_size=2, gradient_accumulation=1,
                       resolution=64, seed=profile.seed, lr_scheduler="constant", lr_warmup_steps=0,
                       gradient_checkpointing=False, mixed_precision=mixed, checkpoint_every=40, bucket_step=8,
                       validation_images=4, validation_inference_steps=TINY_SAMPLING_STEPS, cache_latents_to_disk=False)


def _check_pivotal(config: TrainConfig) -> None:
    """The trigger becomes the embedding's token and its file's name: one plain word (A1111 and ComfyUI type it)."""
    # lower case: CLIP's tokenizer matches the new tokens in any case but hands them back lower-cased, and a
    # multi-vector trigger expands only under the spelling it was added with
    if not re.fullmatch(r"[a-z][a-z0-9_-]{2,39}", config.trigger_token):
        raise ConfigError(f"pivotal tuning needs a one-word, lower-case trigger of 3-40 letters, digits, _ or -, not "
                          f"{config.trigger_token!r}", "set --trigger-token to a rare word such as 'zorabek'")
    if not 1 <= config.embedding_vectors <= 16:
        raise ConfigError(f"embedding_vectors {config.embedding_vectors} is outside 1-16",
                          "use 2 (diffusers' default) to 4")
    if not (math.isfinite(config.embedding_learning_rate) and 0 <= config.embedding_learning_rate <= 1.0):
        raise ConfigError(f"embedding_learning_rate is {config.embedding_learning_rate!r}",
                          "set it to 0 (the text encoders' rate) or a positive number up to 1")


def training_settings() -> list[dataclasses.Field]:
    """The fields of ``TrainConfig`` in declaration order (the CLI makes one flag per setting). "Knobs" are the
    few of them a decider may turn between rounds (``agent/rounds/knobs.py``)."""
    return list(dataclasses.fields(TrainConfig))
