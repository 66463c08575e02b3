"""CLIP embeddings of images and texts, batched and L2-normalised.

Preprocessing follows the CLIP image processor (shortest side to the model's
input size with bicubic resampling, centre crop, OpenAI mean/std) but runs on
tensors, so it needs neither torchvision nor the slow PIL fallback.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipEncoder:
    def __init__(self, model, tokenizer, model_id: str, profile: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.profile = profile
        self.image_size = int(model.config.vision_config.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        scale = self.image_size / min(image.size)
        resized = image.resize((max(self.image_size, round(image.width * scale)),
                                max(self.image_size, round(image.height * scale))), Image.BICUBIC)
        left = (resized.width - self.image_size) // 2
        top = (resized.height - self.image_size) // 2
        crop = resized.crop((left, top, left + self.image_size, top + self.image_size))
        pixels = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        return (pixels - mean) / std

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 16) -> torch.Tensor:
        """(N, D) unit vectors, computed ``batch_size`` images at a time."""
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start:start + batch_size]])
            features = self.model.get_image_features(pixel_values=batch.to(self.device))
            chunks.append(_as_tensor(features).float())
        if not chunks:
            return torch.empty(0, self.model.config.projection_dim)
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1).cpu()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size]), padding="max_length",
                                    max_length=77, truncation=True, return_tensors="pt")
            features = self.model.get_text_features(input_ids=tokens.input_ids.to(self.device),
                                                    attention_mask=tokens.attention_mask.to(self.device))
            chunks.append(_as_tensor(features).float())
        if not chunks:
            return torch.empty(0, self.model.config.projection_dim)
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1).cpu()

    @property
    def logit_scale(self) -> float:
        return 100.0


def _as_tensor(features) -> torch.Tensor:
    # transformers 5 returns a model-output object here; 4.x returned the tensor itself.
    if isinstance(features, torch.Tensor):
        return features
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(features, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP feature output: {type(features).__name__}")
