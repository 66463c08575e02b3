"""Local generation latency on the tiny profile (CPU): seconds per image and the ratios that matter.

    python bench/generate_latency.py [--rounds 3] [--steps 30] [--swaps 6] [--threads 1]

One run measures, against baselines taken in the same run:
* cold (build the pipeline + first image) vs warm (pipeline cached) seconds per image;
* the standard scheduler (Euler, settings steps) vs fast mode (LCMScheduler, 4 steps);
* a LoRA swap (``set_adapters`` on an adapter already loaded) vs reloading the LoRA file.

The warm modes are interleaved image by image and reported as medians, so load from other
processes hits every mode alike; CPU seconds are shown beside wall seconds. Tiny-profile numbers
compare code paths, not SDXL speed. ``--threads`` defaults to 1: on a small shared machine torch's
spin-waiting intra-op threads cost far more than they give to a 64 px UNet.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from tests.test_generator import write_random_lora  # noqa: E402 - the same random LoRA the tests use
from tools.generation.local import activate_lora, generate_local, loaded_adapters, quiet_lora_loading  # noqa: E402
from tools.generation.sampling import SamplingSpec  # noqa: E402
from tools.models import clear_model_cache, load_sdxl_pipeline, resolve_profile  # noqa: E402
from tools.settings import load_settings  # noqa: E402

PROMPT = "aldarkose, Aldar Kose smiling in an orange robe, steppe"


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def median_pair(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--rounds", type=int, default=3, help="images per warm mode (interleaved)")
    parser.add_argument("--steps", type=int, default=None, help="standard steps (default: settings, 30)")
    parser.add_argument("--swaps", type=int, default=6, help="LoRA swaps / reloads to time")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = load_settings(overrides={"profile": "tiny"}, environ={})
    profile = resolve_profile(settings)
    steps = args.steps or settings.num_inference_steps
    work = Path(tempfile.mkdtemp(prefix="aldar-bench-"))
    loras = []
    for seed in (1, 2):
        (work / f"lora_{seed}").mkdir()
        loras.append(write_random_lora(work / f"lora_{seed}", seed=seed).resolve())

    def image(lora_path=None, **sampling):
        spec = SamplingSpec(steps=steps, **sampling)
        return lambda: generate_local(profile, [PROMPT], work / "images", spec, lora_path=lora_path, quiet=True)

    clear_model_cache()
    build = timed(lambda: load_sdxl_pipeline(profile))
    first = timed(image())
    cold = (build[0] + first[0], build[1] + first[1])
    modes = {"standard": image(), "fast": image(use_lcm=True), "lora": image(lora_path=loras[0])}
    samples: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode, run in modes.items():
            samples[mode].append(timed(run))
    warm, fast, lora = (median_pair(samples[m]) for m in ("standard", "fast", "lora"))

    pipe = load_sdxl_pipeline(profile)
    for path in loras:
        activate_lora(pipe, path, 1.0)  # both files loaded once
    loads_before = loaded_adapters(pipe).loads
    swaps = [timed(lambda i=i: activate_lora(pipe, loras[i % 2], 0.8)) for i in range(args.swaps)]
    assert loaded_adapters(pipe).loads == loads_before, "a swap re-read a LoRA file"

    def reload(i: int) -> None:
        name, path = f"reload_{i}", loras[i % 2]
        with quiet_lora_loading():
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
            pipe.set_adapters([name], adapter_weights=[0.8])
            pipe.delete_adapters(name)  # keep the UNet's adapter count constant between reloads

    reloads = [timed(lambda i=i: reload(i)) for i in range(args.swaps)]
    swap, reload_time = median_pair(swaps), median_pair(reloads)

    print(f"aldar local generation latency — profile tiny ({profile.device}, {profile.resolution} px, "
          f"{args.threads} torch thread(s)); medians of {args.rounds} interleaved images; wall s (cpu s)")
    print(f"  pipeline build (tiny: random init, no download)  {build[0]:7.3f} ({build[1]:.3f})")
    print(f"  first image after the build, {steps} steps       {first[0]:7.3f} ({first[1]:.3f})")
    print(f"  cold: build + first image                        {cold[0]:7.3f} ({cold[1]:.3f})")
    print(f"  warm: Euler, {steps} steps                          {warm[0]:7.3f} ({warm[1]:.3f}) s/image"
          f"   cold/warm   {cold[0] / warm[0]:6.1f}x")
    print(f"  fast: LCMScheduler, 4 steps                      {fast[0]:7.3f} ({fast[1]:.3f}) s/image"
          f"   warm/fast   {warm[0] / fast[0]:6.1f}x")
    print(f"  warm + LoRA at scale 1.0, {steps} steps             {lora[0]:7.3f} ({lora[1]:.3f}) s/image"
          f"   lora/base   {lora[0] / warm[0]:6.2f}x")
    print(f"  LoRA swap (set_adapters, already loaded)         {swap[0] * 1e3:7.1f} ({swap[1] * 1e3:.1f}) ms"
          f"      median of {args.swaps}")
    print(f"  LoRA reload (load_lora_weights again)            {reload_time[0] * 1e3:7.1f} ({reload_time[1] * 1e3:.1f}) ms"
          f"      reload/swap {reload_time[0] / swap[0]:6.1f}x")


if __name__ == "__main__":
    main()
