"""Hosted competitor generators: the registry, key checks and saving their images.

Adding a provider = one ``ImageProvider`` subclass (in its own module) plus one line in
``PROVIDERS`` below. See README, "Adding a provider".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.atomic import unused_path
from tools.errors import InputError
from tools.generation.png_metadata import ALDAR_CHUNK, save_png_with_parameters
from tools.progress import progress_bar
from tools.providers.base import ImageProvider, ProviderImage
from tools.providers.deepai import DeepAIProvider
from tools.providers.freepik import FreepikMysticProvider, FreepikProvider
from tools.providers.gemini import GeminiProvider, ImagenProvider
from tools.secrets import api_key, install_log_redaction, redact_value
from tools.settings import Settings
from tools.timestamps import iso_timestamp, timestamp

if TYPE_CHECKING:
    from tools.generation.local import GeneratedImage

__all__ = ["PROVIDERS", "ImageProvider", "ProviderImage", "configured_providers", "generate_with_provider",
           "PNG_METADATA_KEY"]

log = logging.getLogger(__name__)

PROVIDERS: dict[str, type[ImageProvider]] = {
    "freepik": FreepikProvider,
    "freepik-mystic": FreepikMysticProvider,
    "deepai": DeepAIProvider,
    "gemini": GeminiProvider,
    "imagen": ImagenProvider,
}
PNG_METADATA_KEY = ALDAR_CHUNK  # PNG text chunk holding the generation metadata as JSON


def configured_providers(settings: Settings, names: list[str]) -> tuple[list[ImageProvider], list[str]]:
    """(ready providers, one skip line per provider whose key is not set), in the order asked.

    Unknown names raise ``InputError`` before anything is sent anywhere.
    """
    install_log_redaction()  # defence in depth: the key is never logged, and any record mentioning it is scrubbed
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise InputError(f"unknown provider {unknown[0]!r}", f"use one of: {', '.join(PROVIDERS)}")
    ready: list[ImageProvider] = []
    skipped: list[str] = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        cls = PROVIDERS[name]
        key = api_key(cls.key_env)
        if key is None:
            where = f"; get one at {cls.signup_url}" if cls.signup_url else ""
            skipped.append(f"{name}: skipped — {cls.key_env} is not set (add it to .env{where})")
            continue
        ready.append(cls.from_settings(settings, key))
    return ready, skipped


def generate_with_provider(provider: ImageProvider, prompts: list[str], out_dir: Path, images_per_prompt: int,
                           seed: int | None, *, skipped: list[str] | None = None,
                           quiet: bool = True) -> list["GeneratedImage"]:
    """Generate ``images_per_prompt`` images per prompt and save each as ``<provider>_<timestamp>_<i>.png``.

    Every image was decoded and verified by the provider; it is written atomically as PNG with its
    metadata (never a key) in the ``aldar`` text chunk. Safety-filtered / empty results are not
    saved: one line each goes to ``skipped`` (or to the log as a warning when ``skipped`` is None).
    ``ProviderError`` propagates; images saved before it stay on disk.
    """
    from tools.generation.local import GeneratedImage  # local SDXL module: imported only when saving

    out_dir = Path(out_dir)
    stamp = timestamp()
    saved: list[GeneratedImage] = []
    index = 0
    with progress_bar(f"{provider.name}", total=len(prompts) * images_per_prompt, quiet=quiet) as advance:
        for prompt_number, prompt in enumerate(prompts, start=1):
            for result in provider.generate(prompt, images_per_prompt, seed):
                advance(1)
                if not result.ok:
                    line = (f"{provider.name}: prompt {prompt_number} gave no image — {result.status} "
                            f"({provider.http.scrub(result.reason)})")
                    if skipped is not None:  # the caller shows it
                        skipped.append(line)
                    else:
                        log.warning("%s", line)
                    continue
                path = unused_path(out_dir / f"{provider.name}_{stamp}_{index}.png")
                index += 1
                metadata = redact_value(dict(result.metadata, created_at=iso_timestamp()), provider.http.secrets)
                _save_png(result, path, metadata)
                # Providers without a seed (DeepAI, Imagen) record the requested one for pairing.
                image_seed = metadata.get("seed")
                if not isinstance(image_seed, int):
                    image_seed = seed if seed is not None else -1
                saved.append(GeneratedImage(path=path, generator=provider.name, prompt=prompt,
                                            seed=image_seed, metadata=metadata))
    return saved


def _save_png(result: ProviderImage, path: Path, metadata: dict[str, Any]) -> None:
    image = result.image
    assert image is not None
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "I", "I;16", "1"):
        image = image.convert("RGB")  # CMYK / YCbCr JPEGs cannot be written as PNG
    # Same chunks as local images: A1111 "parameters" text + "aldar" JSON (params + details).
    params = {"prompt": metadata.get("prompt", ""), "seed": metadata.get("seed"),
              "width": image.width, "height": image.height,
              "model": f"{metadata.get('provider')}/{metadata.get('model')}"}
    details = {k: v for k, v in metadata.items() if k not in params}
    params = {k: v for k, v in params.items() if v is not None}  # no "Seed: None" for seedless providers
    save_png_with_parameters(image, path, params, details)

