"""LoRA training throughput: steps/s and peak memory, with latent + text-embedding caching on vs off.

    python bench/train_throughput.py [--steps-tiny 20] [--steps-mid 6] [--steps-variants 20] [--threads 1]
    python bench/train_throughput.py --full-gpu [--steps 10] [--precision bf16]

CPU part (figures, not a test), each measured in the same run:
* tiny: the tiny profile's UNet at 64 px (the test configuration);
* mid: a ~50M-parameter SDXL-layout UNet (``unet_scale="mid"``) and an SDXL-size VAE at 256 px,
  batch 1, rank 16 (the text encoders stay tiny: the mid UNet cross-attends to 64 features).
"off" adds, to every micro-batch, the work an uncached trainer does (diffusers'
train_dreambooth_lora_sdxl.py without --cache_latents): a VAE encode of the batch and both text
encoders — exactly the work the caches remove. Each mode runs in its own subprocess so that peak
RSS (resource.getrusage maxrss) belongs to that mode alone; steps/s is timed from the loss log
(first to last step, setup and saving excluded).

Feature rows (same run, tiny UNet, batch 1 so a step is one image everywhere): aspect-ratio bucketing,
Prodigy and DoRA, each as a ratio of steps/s to plain AdamW on centre-cropped squares, on references
of three aspect ratios (tall, wide, square).

``--full-gpu``: the full-size SDXL UNet (random init, ``unet_scale="full"``) at 1024 px, batch 1,
fp16/bf16 autocast, gradient checkpointing on: s/step and peak VRAM (torch.cuda.max_memory_allocated).
Random weights: speed and memory match real SDXL; the loss means nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

SCALES = {"tiny": dict(unet_scale="small", resolution=64, rank=8, batch_size=2),
          "mid": dict(unet_scale="mid", resolution=256, rank=16, batch_size=1)}


VARIANTS = {"adamw": dict(bucketing=False, optimizer="adamw"),  # the baseline of the feature rows
            "bucketing": dict(bucketing=True, optimizer="adamw"),
            "prodigy": dict(bucketing=False, optimizer="prodigy"),
            "dora": dict(bucketing=False, optimizer="adamw", use_dora=True)}
SHAPES = ((256, 320), (320, 256), (288, 288))  # (width, height): tall, wide, square


def make_references(folder: Path, count: int = 4, size: int = 320, shaped: bool = False) -> list[tuple[Path, str]]:
    rng = np.random.default_rng(0)
    pairs = []
    for index in range(count):
        path = folder / f"ref{index}.png"
        width, height = SHAPES[index % len(SHAPES)] if shaped else (size, size)
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        pairs.append((path, f"aldarkose, reference {index}"))
    return pairs


SDXL_VAE_CONFIG = dict(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4,
                       down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                       layers_per_block=2, norm_num_groups=32, sample_size=1024, scaling_factor=0.13025)


def install_pipeline(profile, unet_scale: str, full_text: bool = False) -> None:
    """Put a pipeline with the chosen UNet size into tools.models' per-process cache for ``profile``.

    Beyond tiny, the VAE has SDXL's real size (84M parameters): what the latent cache saves depends on it.
    """
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from tests import random_models
    from tools import models

    components = random_models.random_sdxl_components(profile.seed, unet_scale=unet_scale)
    if unet_scale != "small":
        components["vae"] = AutoencoderKL(**SDXL_VAE_CONFIG)
    if full_text:  # the full UNet cross-attends to 768 + 1280 features and pools a 1280 projection
        components["text_encoder"] = CLIPTextModel(random_models.text_config(hidden=768, projection=768))
        components["text_encoder_2"] = CLIPTextModelWithProjection(
            random_models.text_config(hidden=1280, projection=1280))
    pipe = StableDiffusionXLPipeline(**components).to(profile.torch_device, profile.torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    models._cache[("sdxl-pipeline", profile)] = pipe


def add_uncached_work() -> None:
    """Make every micro-batch also do what an uncached trainer does: VAE-encode the batch, run the text encoders."""
    from tools.training import trainer
    from tools.training.data import bucket_batch

    original = trainer._Run._micro_batch_loss

    def micro_batch_loss(self, unet, micro):
        config = self.config
        indices = bucket_batch(self.step * config.gradient_accumulation + micro, self.buckets, config.batch_size,
                               config.seed)
        with torch.no_grad():
            pixels = torch.stack([self.images[i].pixels for i in indices]).to(self.device, self.pipe.vae.dtype)
            self.pipe.vae.encode(pixels).latent_dist.sample()
            self._encode([self.images[i].caption for i in indices])
        return original(self, unet, micro)

    trainer._Run._micro_batch_loss = micro_batch_loss


def one_mode(scale: str, cached: bool, steps: int, variant: str | None = None) -> dict:
    """Train ``steps`` steps in this process; return steps/s and peak memory.

    ``variant`` (a VARIANTS name): batch 1 on references of three aspect ratios, with that variant's knobs.
    """
    from tools.models import ModelProfile
    from tools.training.trainer import default_train_config, train_lora

    spec = SCALES[scale]
    profile = ModelProfile("tiny", f"bench-{scale}-sdxl", "tiny-random-clip", "cpu", "fp32", 0)
    install_pipeline(profile, spec["unet_scale"])
    if not cached:
        add_uncached_work()
    config = default_train_config(profile).replace(
        steps=steps, resolution=spec["resolution"], rank=spec["rank"], alpha=float(spec["rank"]),
        batch_size=1 if variant else spec["batch_size"], checkpoint_every=0, validation_images=0,
        **(VARIANTS[variant] if variant else {"bucketing": False}))
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_references(Path(tmp), shaped=variant is not None)
        result = train_lora(config, profile, dataset, Path(tmp) / "run", quiet=True)
        rows = [line.split(",") for line in result.loss_log.read_text().splitlines()[1:]]
    elapsed = float(rows[-1][4]) - float(rows[0][4])
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"steps_per_s": (len(rows) - 1) / elapsed, "peak_rss_mb": peak_rss_mb}


def run_subprocess(scale: str, cached: bool, steps: int, threads: int, variant: str | None = None) -> dict:
    command = [sys.executable, __file__, "--one", scale, "--steps", str(steps), "--threads", str(threads)]
    if not cached:
        command.append("--uncached")
    if variant:
        command += ["--variant", variant]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{scale} {variant or ('cached' if cached else 'uncached')} failed:\n"
                         f"{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_report(args) -> None:
    import os

    print(f"LoRA training throughput on the CPU ({os.cpu_count()} cores, torch threads {args.threads}); "
          "caching = VAE latents + text embeddings")
    print(f"{'model':<28}{'caching':>9}{'steps/s':>10}{'s/step':>9}{'peak RSS MB':>13}")
    for scale, steps in (("tiny", args.steps_tiny), ("mid", args.steps_mid)):
        on, off = run_subprocess(scale, True, steps, args.threads), run_subprocess(scale, False, steps, args.threads)
        label = f"{scale} UNet @ {SCALES[scale]['resolution']} px"
        for name, figures in (("on", on), ("off", off)):
            print(f"{label:<28}{name:>9}{figures['steps_per_s']:>10.2f}{1 / figures['steps_per_s']:>9.2f}"
                  f"{figures['peak_rss_mb']:>13.0f}")
        print(f"{'':<28}{'on/off':>9}{on['steps_per_s'] / off['steps_per_s']:>9.2f}x"
              f"{'':>9}{on['peak_rss_mb'] / off['peak_rss_mb']:>12.2f}x")
    print(f"\nfeatures ({args.variants_scale} UNet, batch 1, references tall/wide/square), ratio to plain AdamW "
          "on centre-cropped squares")
    print(f"{'variant':<28}{'steps/s':>9}{'ratio':>9}{'peak RSS MB':>13}")
    figures = {name: run_subprocess(args.variants_scale, True, args.steps_variants, args.threads, name)
               for name in VARIANTS}
    base = figures["adamw"]
    for name, measured in figures.items():
        print(f"{name:<28}{measured['steps_per_s']:>9.2f}{measured['steps_per_s'] / base['steps_per_s']:>8.2f}x"
              f"{measured['peak_rss_mb']:>13.0f}")


def full_gpu(args) -> None:
    if not torch.cuda.is_available():
        print("error: --full-gpu needs a CUDA GPU and torch.cuda.is_available() is False here — run it on a "
              "machine with an NVIDIA GPU and a CUDA build of torch (or drop --full-gpu for the CPU figures)",
              file=sys.stderr)
        raise SystemExit(2)
    from tools.models import ModelProfile
    from tools.training.trainer import default_train_config, train_lora

    dtype = "bf16" if args.precision == "bf16" else "fp16"
    profile = ModelProfile("tiny", "bench-full-sdxl", "tiny-random-clip", "cuda", dtype, 0)
    install_pipeline(profile, "full", full_text=True)
    config = default_train_config(profile).replace(
        steps=args.steps, resolution=1024, rank=32, alpha=16.0, batch_size=1, gradient_accumulation=1,
        gradient_checkpointing=True, mixed_precision=dtype, checkpoint_every=0, validation_images=0,
        lr_warmup_steps=0)
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_references(Path(tmp), size=1024)
        started = time.perf_counter()
        result = train_lora(config, profile, dataset, Path(tmp) / "run", quiet=True)
        total = time.perf_counter() - started
        rows = [line.split(",") for line in result.loss_log.read_text().splitlines()[1:]]
    per_step = (float(rows[-1][4]) - float(rows[0][4])) / (len(rows) - 1)
    print(f"full SDXL UNet (random init) @ 1024 px, batch 1, {dtype}, gradient checkpointing, rank 32, "
          f"optimizer {config.optimizer}: {per_step:.3f} s/step, peak VRAM "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB ({torch.cuda.get_device_name()}; {total:.0f} s in all)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--steps-tiny", type=int, default=20)
    parser.add_argument("--steps-mid", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a small shared machine spin-waiting threads cost more "
                             "than they give)")
    parser.add_argument("--full-gpu", action="store_true", help="full-size SDXL UNet at 1024 px on a CUDA GPU")
    parser.add_argument("--precision", choices=["bf16", "fp16"], default="bf16", help="--full-gpu autocast precision")
    parser.add_argument("--steps", type=int, default=10, help="steps per measurement (--full-gpu / --one)")
    parser.add_argument("--steps-variants", type=int, default=20, help="steps per feature row")
    parser.add_argument("--variants-scale", choices=list(SCALES), default="tiny", help="UNet of the feature rows")
    parser.add_argument("--one", choices=list(SCALES), help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--uncached", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.full_gpu:
        full_gpu(args)
    elif args.one:
        print(json.dumps(one_mode(args.one, not args.uncached, args.steps, args.variant)))
    else:
        cpu_report(args)


if __name__ == "__main__":
    main()
