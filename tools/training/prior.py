"""Prior preservation (DreamBooth; kohya's regularisation folder): class images trained on beside the references.

The class images show what the base model draws for the class prompt — by default the references' scene and style
without the character: no trigger, no name and none of the traits that make the identity (DreamBooth's "a dog" for
one dog) — so that training the trigger does not pull every character drawn in that scene toward this one (bleed).
Measured in bench/levers.py (toy world): a class prompt that kept the identity traits (the captions' shared tags,
the first default) made class images of the character itself, and bleed rose.
They are drawn by the base model once and cached by (model, prompt, seed, count, sampler), or read from a user's
regularisation folder (kohya's ``reg`` folder: images with optional same-stem ``.txt`` captions).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tools.errors import InputError
from tools.images import list_images
from tools.paths import aldar_cache
from tools.training.data import caption_tags, prepare_images


def class_prompt_for(text: str, trigger: str, name: str = "") -> str:
    """``text`` (a caption or the analysis' training prompt) with the trigger token and the character's name taken
    out: the class the character belongs to, as the base model should keep drawing it."""
    tags = []
    for tag in caption_tags(text):
        for word in (trigger, name):
            if word.strip():
                tag = re.sub(rf"(?i)\b{re.escape(word.strip())}\b", "", tag)
        tag = re.sub(r"\s+", " ", tag).strip(" ,")
        if tag:
            tags.append(tag)
    return ", ".join(tags)


def analysis_class_prompt(analysis: dict) -> str:
    """The class prompt an analysis implies: the key features of its context categories (the references' style,
    scene, expression), none of the identity's; "a character" where it has none."""
    from tools.scoring.suite import read_character

    character = read_character(analysis)
    context = [feature for category in character.context for feature in character.key_features.get(category, [])[:1]]
    return ", ".join(context) or "a character"


def with_class_prompt(config, analysis: dict | None):
    """``config`` with prior preservation's class prompt taken from ``analysis`` when none is set."""
    if not config.prior_preservation or config.class_prompt or not analysis:
        return config
    try:
        return config.replace(class_prompt=analysis_class_prompt(analysis))
    except InputError:  # an analysis without a taxonomy: the trainer's fallback (default_class_prompt)
        return config


def default_class_prompt(captions: list[str], trigger: str) -> str:
    """The tags every caption shares, without the trigger: the trainer's fallback when no analysis set the class
    prompt (``with_class_prompt``)."""
    common = [tag for tag in caption_tags(captions[0]) if all(tag in caption_tags(c) for c in captions[1:])]
    return class_prompt_for(", ".join(common), trigger) or "a person"


def class_images(config, profile, class_prompt: str, count: int, quiet: bool = True) -> list[tuple[Path, str]]:
    """(image, caption) pairs of the class images: the user's regularisation folder, or ``count`` pictures the base
    model draws for ``class_prompt`` once, cached by model, prompt, seed, count and sampler."""
    if config.class_images_dir:
        folder = Path(config.class_images_dir).expanduser()
        pairs = []
        for path in list_images(folder, "class-images-dir"):
            text = path.with_suffix(".txt")
            caption = text.read_text(encoding="utf-8").strip() if text.is_file() else ""
            pairs.append((path, caption or class_prompt))
        return pairs
    from tools.generation.local import generate_local
    from tools.generation.sampling import SamplingSpec

    sampling = SamplingSpec(steps=config.validation_inference_steps, guidance=config.effective_validation_guidance_scale,
                            negative_prompt=config.validation_negative_prompt, images_per_prompt=count,
                            seed=config.seed)
    seed_part = f"-seed{profile.seed}" if profile.is_tiny else ""
    identity = "|".join(map(str, (profile.base_model + seed_part, class_prompt, config.seed, count, sampling.steps,
                                  sampling.guidance, sampling.negative_prompt, profile.resolution)))
    folder = aldar_cache("class_images", hashlib.sha256(identity.encode()).hexdigest()[:24])
    drawn = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if len(drawn) != count:  # drawn once; a partial folder (interrupted) is drawn again
        images = generate_local(profile, [class_prompt], folder, sampling, lora_path=None, name="class", quiet=quiet)
        drawn = sorted(image.path for image in images)
    return [(path, class_prompt) for path in drawn]


def prepared_class_images(config, profile, dataset, images, quiet: bool):
    """Prior preservation's class images, prepared as the references are (drawn by the base model once, cached)."""
    class_prompt = config.class_prompt or default_class_prompt([i.caption for i in images], config.trigger_token)
    count = config.num_class_images or 4 * len(images)
    pairs = class_images(config, profile, class_prompt, count, quiet)
    return prepare_images(pairs, config.resolution, config.bucket_step if config.bucketing else None)
