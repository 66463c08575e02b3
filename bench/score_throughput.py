"""Scoring throughput: 64 generated images against the 5 references, with and without the embedding cache.

Two CLIP sizes, both random weights (offline): a small one (seconds on a CPU) and a
ViT-L/14-shaped one (the real scorer's shape, ``random_clip(size="vit-l-14")``).
"no cache" embeds the references on every call; "cache" reads them from a warm
on-disk cache. Text embeddings are memoised per process in both cases (the
analysis, run first, fills that memo), so the difference is the references alone.

    /work/venv/bin/python bench/score_throughput.py [--images 64] [--repeats 2] [--sizes small,vit-l-14]

Prints one line per case: seconds, images/s, and for the cached case the speed-up over no cache.
Each figure is the best of ``--repeats`` runs, measured in this same process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.scoring.analyzer import analyze_references  # noqa: E402
from tools.scoring.clip import ClipEncoder  # noqa: E402
from tools.scoring.embedding_cache import EmbeddingCache  # noqa: E402
from tests.random_models import random_clip  # noqa: E402
from tools.models import resolve_profile  # noqa: E402
from tools.scoring.scorer import score_generators  # noqa: E402
from tools.settings import BUNDLED_REFERENCES, BUNDLED_TAXONOMY, load_settings  # noqa: E402

WEIGHTS = {"clip": 0.4, "features": 0.4, "ssim": 0.2}


def make_generated(folder: Path, count: int, size: int) -> list[Path]:
    """Deterministic stand-ins for generated images: shapes on a coloured ground."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(100, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = (int(v) for v in rng.integers(0, size * 3 // 4, 2))
            x1, y1 = x0 + int(rng.integers(size // 8, size // 3)), y0 + int(rng.integers(size // 8, size // 3))
            draw.ellipse([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        path = folder / f"gen_{index:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


def best_time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_size(size: str, generated: list[Path], references: Path, repeats: int, workdir: Path) -> None:
    profile = resolve_profile(load_settings(overrides={"profile": "tiny", "device": "cpu"}, environ={}))
    model, tokenizer = random_clip(profile.seed, size=size)
    encoder = ClipEncoder(model, tokenizer, model_id=f"random-clip-{size}", profile="tiny")
    cache = EmbeddingCache(workdir / f"cache-{size}")
    analysis = analyze_references(references, profile, BUNDLED_TAXONOMY, "aldarkose", "Aldar Köse", None,
                                  encoder=encoder, cache=cache)  # also warms the cache and the text memo
    groups = {"bench": generated}
    reference_count = len(analysis["references"])

    def score(use_cache: bool):
        return lambda: score_generators(groups, references, profile, analysis, WEIGHTS, encoder=encoder,
                                        cache=cache, use_cache=use_cache)

    # Alternate the two cases so that machine noise (shared CPU) hits both alike.
    cold, warm = [], []
    for _ in range(repeats):
        cold.append(best_time(score(False), 1))
        warm.append(best_time(score(True), 1))
    cold_s, warm_s = min(cold), min(warm)
    n = len(generated)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    label = f"{size:<9} ({params:6.1f} M params)"
    print(f"{label} no cache: {n} images vs {reference_count} refs in {cold_s:7.2f} s = {n / cold_s:7.2f} images/s")
    print(f"{label} cache   : {n} images vs {reference_count} refs in {warm_s:7.2f} s = {n / warm_s:7.2f} images/s"
          f"  cache speed-up x{cold_s / warm_s:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=512, help="side of the generated stand-ins (px)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", default="small,vit-l-14")
    parser.add_argument("--references", type=Path, default=BUNDLED_REFERENCES)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; best of {args.repeats} per case")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        generated = make_generated(workdir / "generated", args.images, args.image_size)
        for size in args.sizes.split(","):
            bench_size(size.strip(), generated, args.references, args.repeats, workdir)


if __name__ == "__main__":
    main()
