"""How good the toy world's models are, measured in the world on pictures never trained on.

    python bench/world_quality.py                  # all four figures (about 5 minutes on 2 cores)
    python bench/world_quality.py --skip-loop      # the three model figures only
    python bench/world_quality.py --clip-only      # the CLIP figures (1, 1b) only, about a minute
    python bench/world_quality.py --weights DIR    # another build's weights folder (clip/ and sdxl/)

1. CLIP zero-shot accuracy per taxonomy category, with the analyzer's templates and softmax, on the
   held-out split (seed 9: the build trains on splits 1 and 2). Target: mean >= 90 %. Read against the
   bundled taxonomy (the novel values compete too) and against the old values alone.
1b. The novel values (``NOVEL_ATTRIBUTES``, learnt by the build's ``novel`` stage on split 3): on held-out
   pictures composed with them (split 10), per novel value the share of the pictures showing it that the
   CLIP reads as it (top-1 in its category), and per category the accuracy on those pictures.
2. VAE reconstruction PSNR on the same pictures (posterior mean, decoded). Target: >= 25 dB.
3. Base UNet: for captions naming every attribute of a random character without Aldar's signature, the
   share of generated images whose prompted attribute the CLIP recognises (top-1 in its category).
   Target: mean >= 70 %. The signature attributes, never in the base's data, are shown apart.
4. The loop: ``aldar run --profile tiny --rounds 3`` (rule policy) in a scratch folder; per round the
   LoRA's and the base's key-feature match and quality beside the reference ceiling. Targets: LoRA
   features - base features >= 0.3; quality rises from round 1 to the best round.

Figures are printed as measured; ``--json FILE`` also writes them (the model card quotes them).
These figures say how well the models fit the toy world, nothing about real SDXL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.scoring.analyzer import category_probabilities, text_embeddings  # noqa: E402
from tools.scoring.clip import ClipEncoder  # noqa: E402
from tools.models import load_toy_world_clip, load_toy_world_pipeline  # noqa: E402
from tools.settings import BUNDLED_TAXONOMY  # noqa: E402
from tools.scoring.taxonomy import load_taxonomy  # noqa: E402
from tools.world.attributes import ATTRIBUTES, NOVEL_ATTRIBUTES, sample_character, tag_caption  # noqa: E402
from tools.world.dataset import render_split, to_unit_range  # noqa: E402

HELDOUT_SEED = 9
NOVEL_HELDOUT_SEED = 10  # the build's novel stage trains on novel split 3
SIGNATURE = {"hairstyle": "skullcap", "clothing_color": "orange patterned robe", "facial_hair": "thin mustache"}


def top1(encoder: ClipEncoder, images, old_values_only: bool = False) -> dict[str, list[str]]:
    """Per category of the bundled taxonomy (``old_values_only``: without the novel values), each picture's
    top-1 description."""
    taxonomy = load_taxonomy(BUNDLED_TAXONOMY)
    if old_values_only:
        taxonomy = replace(taxonomy, categories={c: list(ATTRIBUTES[c]) for c in taxonomy.categories})
    probabilities = category_probabilities(encoder.embed_images(images, batch_size=64), text_embeddings(encoder, taxonomy))
    return {category: [descriptions[p] for p in probabilities[category].argmax(dim=1).tolist()]
            for category, descriptions in taxonomy.categories.items()}


def zero_shot_accuracy(encoder: ClipEncoder, images, labels: list[dict], old_values_only: bool = False) -> dict[str, float]:
    """Per category: share of pictures whose top-1 description is the true one."""
    predicted = top1(encoder, images, old_values_only)
    return {category: float(np.mean([p == truth[category] for p, truth in zip(guesses, labels)]))
            for category, guesses in predicted.items()}


def novel_value_recall(encoder: ClipEncoder, images, labels: list[dict]) -> dict[str, float]:
    """Per novel value: share of the pictures showing it whose top-1 in its category is it."""
    predicted = top1(encoder, images)
    recall = {}
    for category, values in NOVEL_ATTRIBUTES.items():
        for value in values:
            shown = [guess for guess, truth in zip(predicted[category], labels) if truth[category] == value]
            recall[value] = float(np.mean([guess == value for guess in shown]))
    return recall


def vae_psnr(vae, pixels: np.ndarray) -> float:
    with torch.no_grad():
        values = []
        for start in range(0, len(pixels), 64):
            x = to_unit_range(pixels[start:start + 64])
            recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            mse = ((recon - x) / 2).pow(2).mean(dim=(1, 2, 3))  # on the 0..1 scale
            values += (10 * torch.log10(1 / mse)).tolist()
    return float(np.mean(values))


def prompted_attribute_recognition(pipe, encoder: ClipEncoder, count: int, steps: int) -> dict[str, float]:
    """Generate from full captions of characters the base may draw; per category the share recognised."""
    rng = random.Random(1234)
    characters = [sample_character(rng, without_signature=True) for _ in range(count)]
    images = []
    for index, character in enumerate(characters):
        prompt = tag_caption(character, rng, keep=1.0)
        generator = torch.Generator().manual_seed(index)
        images += pipe(prompt, num_inference_steps=steps, guidance_scale=7.0, height=64, width=64,
                       generator=generator).images
    return zero_shot_accuracy(encoder, images, [c.labels() for c in characters])


def run_loop(rounds: int) -> list[dict]:
    """``aldar run --profile tiny`` in a scratch folder; per round the figures of its comparison report."""
    with tempfile.TemporaryDirectory(prefix="aldar-world-loop-") as scratch:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        started = time.perf_counter()
        subprocess.run(["aldar", "run", "--profile", "tiny", "--rounds", str(rounds), "--yes"], cwd=scratch, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        results = Path(scratch) / "lora_training_results"
        rows = []
        for report_path in sorted((results / "comparisons").glob("*round*.json")):
            report = json.loads(report_path.read_text())
            generators = report["generators"]
            rows.append({"report": report_path.name,
                         "lora_quality": generators["lora"]["quality"]["mean"],
                         "lora_features": generators["lora"]["features"]["mean"],
                         "base_quality": generators["base"]["quality"]["mean"],
                         "base_features": generators["base"]["features"]["mean"],
                         "ceiling_quality": report["ceiling"]["quality"]["mean"],
                         "ceiling_features": report["ceiling"]["features"]["mean"]})
        return [{**row, "run_seconds": round(seconds, 1)} for row in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--weights", type=Path, default=None, help="a weights folder with clip/ and sdxl/")
    parser.add_argument("--heldout", type=int, default=1000, help="held-out pictures for CLIP and VAE")
    parser.add_argument("--novel", type=int, default=1000, help="held-out pictures with novel values (figure 1b)")
    parser.add_argument("--clip-only", action="store_true", help="figures 1 and 1b only (the CLIP)")
    parser.add_argument("--generated", type=int, default=96, help="base UNet images for figure 3")
    parser.add_argument("--steps", type=int, default=30, help="sampling steps for figure 3")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the loop (figure 4)")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    figures: dict = {}

    model, tokenizer = load_toy_world_clip(args.weights / "clip" if args.weights else None)
    encoder = ClipEncoder(model, tokenizer, model_id="bench", profile="tiny")
    split = render_split(HELDOUT_SEED, args.heldout)
    from PIL import Image

    images = [Image.fromarray(p) for p in split.pixels]
    labels = [c.labels() for c in split.characters]
    accuracy = zero_shot_accuracy(encoder, images, labels)
    figures["clip_zero_shot"] = {**accuracy, "mean": float(np.mean(list(accuracy.values())))}
    print(f"1. CLIP zero-shot accuracy on {len(images)} held-out pictures (target mean >= 90 %)")
    for category, value in accuracy.items():
        print(f"   {category:15s} {value:6.1%}")
    print(f"   {'mean':15s} {figures['clip_zero_shot']['mean']:6.1%}")
    old_only = zero_shot_accuracy(encoder, images, labels, old_values_only=True)
    figures["clip_zero_shot_old_values_only"] = {**old_only, "mean": float(np.mean(list(old_only.values())))}
    print(f"   read against the old values alone (before the novel ones joined the taxonomy): mean "
          f"{figures['clip_zero_shot_old_values_only']['mean']:.1%} — "
          + ", ".join(f"{c} {v:.1%}" for c, v in old_only.items()))

    novel_split = render_split(NOVEL_HELDOUT_SEED, args.novel, novel=True)
    novel_images = [Image.fromarray(p) for p in novel_split.pixels]
    novel_labels = [c.labels() for c in novel_split.characters]
    recall = novel_value_recall(encoder, novel_images, novel_labels)
    on_novel = zero_shot_accuracy(encoder, novel_images, novel_labels)
    figures["clip_novel_values"] = {**recall, "mean": float(np.mean(list(recall.values())))}
    figures["clip_zero_shot_novel_pictures"] = {**on_novel, "mean": float(np.mean(list(on_novel.values())))}
    print(f"1b. CLIP on {len(novel_images)} held-out pictures with novel values (split {NOVEL_HELDOUT_SEED}): "
          "each novel value read as itself")
    for value, share in recall.items():
        print(f"   {value:20s} {share:6.1%}")
    print(f"   {'mean':20s} {figures['clip_novel_values']['mean']:6.1%}; per category on these pictures: "
          + ", ".join(f"{c} {v:.1%}" for c, v in on_novel.items()))

    if args.clip_only:
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return 0
    pipe = load_toy_world_pipeline(folder=args.weights / "sdxl" if args.weights else None)
    pipe.set_progress_bar_config(disable=True)
    figures["vae_psnr_db"] = vae_psnr(pipe.vae, split.pixels)
    print(f"2. VAE reconstruction PSNR: {figures['vae_psnr_db']:.2f} dB (target >= 25 dB)")

    recognised = prompted_attribute_recognition(pipe, encoder, args.generated, args.steps)
    trained = {c: v for c, v in recognised.items()}
    figures["base_prompted_recognition"] = {**trained, "mean": float(np.mean(list(trained.values())))}
    print(f"3. Base UNet: prompted attribute recognised by the CLIP, {args.generated} images at {args.steps} steps "
          f"(target mean >= 70 %; signature values {sorted(SIGNATURE.values())} are never prompted — the base never saw them)")
    for category, value in trained.items():
        print(f"   {category:15s} {value:6.1%}")
    print(f"   {'mean':15s} {figures['base_prompted_recognition']['mean']:6.1%}")

    if not args.skip_loop:
        rows = run_loop(args.rounds)
        figures["loop"] = rows
        print(f"4. The loop: aldar run --profile tiny --rounds {args.rounds} (rule policy), "
              f"{rows[0]['run_seconds'] if rows else '?'} s")
        print(f"   {'round report':28s} {'LoRA q':>7s} {'LoRA f':>7s} {'base q':>7s} {'base f':>7s} "
              f"{'ceil q':>7s} {'ceil f':>7s}")
        for row in rows:
            print(f"   {row['report']:28s} {row['lora_quality']:7.3f} {row['lora_features']:7.3f} "
                  f"{row['base_quality']:7.3f} {row['base_features']:7.3f} {row['ceiling_quality']:7.3f} "
                  f"{row['ceiling_features']:7.3f}")
        if rows:
            best = max(rows, key=lambda r: r["lora_quality"])
            print(f"   best round LoRA features - base features: {best['lora_features'] - best['base_features']:+.3f} "
                  f"(target >= +0.3); quality round 1 → best: {rows[0]['lora_quality']:.3f} → "
                  f"{best['lora_quality']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
