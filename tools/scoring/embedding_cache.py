"""On-disk cache of CLIP image embeddings, so the references are embedded once per model.

Key = sha256 of the image file's bytes + the CLIP model id (+ the seed for the
tiny profile, whose random weights depend on it). Renaming or moving a file
keeps its entry; changing one pixel makes a new one. Location:
``$ALDAR_CACHE/embeddings`` or ``~/.cache/aldar/embeddings``. A damaged entry
is treated as a miss and rewritten.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from tools.atomic import atomic_write_bytes
from tools.paths import aldar_cache


def default_cache_dir() -> Path:
    return aldar_cache("embeddings")


def encoder_key(encoder, seed: int | None = None) -> str:
    """What identifies the embedding function: model id and input size, plus the seed of random-weight models."""
    key = f"{encoder.model_id}|{encoder.image_size}"
    return key if seed is None else f"{key}|seed={seed}"


class EmbeddingCache:
    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def _entry(self, content_sha256: str, model_key: str) -> Path:
        name = hashlib.sha256(f"{content_sha256}|{model_key}".encode()).hexdigest()
        return self.folder / name[:2] / f"{name}.npy"

    def get(self, content_sha256: str, model_key: str) -> np.ndarray | None:
        entry = self._entry(content_sha256, model_key)
        if not entry.is_file():
            return None
        try:
            return np.load(entry, allow_pickle=False)
        except (OSError, ValueError):
            return None

    def put(self, content_sha256: str, model_key: str, vector: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(vector, dtype=np.float32), allow_pickle=False)
        atomic_write_bytes(self._entry(content_sha256, model_key), buffer.getvalue())


def embed_images_cached(encoder, images: Sequence[Image.Image], hashes: Sequence[str],
                        cache: EmbeddingCache | None, model_key: str, batch_size: int = 16) -> torch.Tensor:
    """(N, D) unit embeddings of ``images`` (whose files hash to ``hashes``).

    Cached rows are read from disk; only the misses go through the model, in batches, and are stored.
    """
    if cache is None or not images:
        return encoder.embed_images(list(images), batch_size=batch_size)
    vectors: list[np.ndarray | None] = [cache.get(h, model_key) for h in hashes]
    missing = [i for i, v in enumerate(vectors) if v is None]
    cache.hits += len(images) - len(missing)
    cache.misses += len(missing)
    if missing:
        fresh = encoder.embed_images([images[i] for i in missing], batch_size=batch_size)
        for row, index in enumerate(missing):
            vectors[index] = fresh[row].numpy()
            cache.put(hashes[index], model_key, vectors[index])
    return torch.from_numpy(np.stack(vectors)).float()
