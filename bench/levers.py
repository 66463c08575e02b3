"""What each training lever does in the toy world (issue 26): one row per lever, beside plain LoRA in the same run.

    python bench/levers.py                       # tiny, seeds 42 1 2, every lever (~25 min on 2 busy cores)
    python bench/levers.py --seeds 42 --steps 100 --levers masked_loss lokr

The references are Aldar Köse's five bundled placements drawn on the world's five backgrounds, one each
(``write_references(backgrounds=...)``), with the character masks the drawing knows. Every lever trains from the
same references, captions (identity-free aside), seed and steps as plain LoRA; per seed, then mean ± std:

- identity: key-feature match (the scorer's) of the LoRA's images for the rounds' test prompt, and for the bare
  trigger token; the base model's beside them.
- background follow: share of images for "<trigger>, <background>" (each of the five) whose background the scorer
  CLIP reads as the prompted one (top-1 of its background category, zero-shot) — the editability of the
  background (tools/scoring/suite.py had not landed on main when this was written).
- bleed: key-feature match of images for prompts without the trigger ("<background>" alone) minus the base
  model's for the same prompts and seeds — how far the LoRA pulls trigger-free pictures toward the character;
  bleed_clip: the same images' CLIP similarity to the references minus the base's (the prompt suite's measure of
  bleed, on these prompts); bleed_suite: the same on the prompt suite's no-trigger prompts (other characters of the
  same kind in a scene, ``tools.scoring.suite.build_suite``) — the bleed the rounds score.
- speed: median seconds per optimizer step (from loss_log.csv) and its ratio to plain LoRA's in the same seed.
- validation loss vs quality: whether the checkpoint with the lowest validation loss is the best-scoring one.

Figures are printed as measured (``--json FILE`` also writes them); they say what the levers do in the toy
world at these few steps, not on real SDXL.

Measured (one process per seed 42/1/2, ``--levers lora masked_loss masked_normalized masked_outside_0.1
prior_preservation prior_weight_0.5 lokr loha``; mean ± std; the 2-core VM at a load of 25-30):

    lever                 features        background follow  bleed (CLIP)      x plain LoRA s/step
    base model            0.542 ± 0.064   0.967 ± 0.024      —                 —
    lora                  0.573 ± 0.015   0.983 ± 0.024      -0.019 ± 0.078    1
    masked_loss           0.448 ± 0.039   0.950 ± 0.041       0.037 ± 0.043    0.92 ± 0.01
    masked_normalized     0.406 ± 0.077   0.900 ± 0.082      -0.011 ± 0.020    0.87 ± 0.01
    masked_outside_0.1    0.469 ± 0.025   1.000 ± 0.000       0.034 ± 0.005    0.98 ± 0.04
    prior_preservation    0.542 ± 0.039   0.933 ± 0.047       0.120 ± 0.078    0.96 ± 0.03
    prior_weight_0.5      0.531 ± 0.142   0.933 ± 0.024       0.100 ± 0.089    0.69 ± 0.00
    lokr (its 1e-2)       0.552 ± 0.097   0.967 ± 0.047      -0.047 ± 0.034    0.84 ± 0.00
    loha                  0.500 ± 0.092   0.967 ± 0.047      -0.012 ± 0.020    0.78 ± 0.01

No masked variant follows a prompted background beyond plain LoRA's spread, and each loses key features; prior
preservation raises bleed rather than lowering it. README ("Levers") has the full table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LEVERS = {
    "lora": {},
    "masked_loss": {"masked_loss": True},
    "prior_preservation": {"prior_preservation": True},
    "identity_free": {"caption_mode": "identity-free"},
    "lokr": {"adapter": "lokr"},
    "loha": {"adapter": "loha"},
    # Variants tried against the misses of the plain levers (kohya's outside weight 0.1-0.3; kohya's and DreamBooth's
    # prior_loss_weight below 1; more class images).
    "masked_outside_0.1": {"masked_loss": True, "mask_outside_weight": 0.1},
    "masked_normalized": {"masked_loss": True, "normalize_masked_loss": True},  # OneTrainer's option
    "prior_weight_0.5": {"prior_preservation": True, "prior_loss_weight": 0.5},
    "prior_8_per_reference": {"prior_preservation": True, "num_class_images": 40},
    # The first default class prompt: the captions' shared tags without the trigger — the identity traits kept.
    "prior_traits": {"prior_preservation": True, "class_prompt": "traits"},
    # DreamBooth's bare class noun: whatever character the base draws.
    "prior_class_noun": {"prior_preservation": True, "class_prompt": "a character"},
}
IMAGES = 4  # per prompt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--steps", type=int, default=0, help="training steps (0 = the tiny profile's default)")
    parser.add_argument("--levers", nargs="+", default=list(LEVERS)[:6], choices=list(LEVERS),
                        help="default: the six levers of the table (the variants on request)")
    parser.add_argument("--backgrounds", choices=("varied", "bundled"), default="varied",
                        help="the references on the world's five backgrounds (default), or as bundled (all but one on "
                             "the steppe: a background an overtrained LoRA can copy)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--combine", type=Path, nargs="+", help="print one table from the --json files of runs "
                        "with other seeds (e.g. one process per seed), instead of running")
    args = parser.parse_args()
    if args.combine:
        runs = [json.loads(path.read_text()) for path in args.combine]
        print_table(combine(runs), [int(seed) for run_figures in runs for seed in run_figures["base"]])
        return 0
    import torch

    from tools.world.references import VARIED_BACKGROUNDS

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="aldar-levers-") as scratch:
        os.environ["ALDAR_CACHE"] = str(Path(scratch) / "cache")
        figures = run(Path(scratch), args.seeds, args.steps, ["lora"] + [x for x in args.levers if x != "lora"],
                      VARIED_BACKGROUNDS if args.backgrounds == "varied" else None)
    print_table(figures, args.seeds)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def run(scratch: Path, seeds: list[int], steps: int, levers: list[str], backgrounds=None) -> dict:
    from agent.rounds.params import training_dataset
    from tools.models import load_clip, resolve_profile
    from tools.scoring.analyzer import analyze_references
    from tools.scoring.scorer import checkpoint_scorer
    from tools.settings import load_settings
    from tools.world.attributes import ALDAR, BUNDLED_REFERENCES
    from tools.world.references import write_references

    references = scratch / "references"
    write_references(references, "aldar", BUNDLED_REFERENCES, lambda rng: ALDAR, 5, 0, backgrounds)
    settings = load_settings(overrides={"profile": "tiny", "device": "cpu", "references": str(references),
                                        "output_dir": str(scratch / "results")}, environ={})
    profile = resolve_profile(settings)
    analysis = analyze_references(references, profile, settings.taxonomy_path(), settings.trigger_token,
                                  settings.character_name, None)
    encoder = load_clip(profile)
    from tools.character import prompt_from_analysis

    # The rounds' test prompt: the setting, else the trigger and the analysis' key features (as Session does).
    settings = settings.replace(test_prompt=settings.test_prompt or prompt_from_analysis(analysis))
    figures: dict = {"levers": {}, "references": "aldar x5 on " + (", ".join(backgrounds) if backgrounds else
                                                                  "the bundled backgrounds"),
                     "key_features": analysis["key_features"]}
    for seed in seeds:
        base = measure_images(None, profile, settings, analysis, encoder, scratch / f"base-{seed}", seed)
        figures.setdefault("base", {})[seed] = base
        for lever in levers:
            started = time.perf_counter()
            result, per_step = train(lever, seed, steps, profile, settings, analysis, references, scratch,
                                     checkpoint_scorer(references, profile, analysis, settings.metric_weights),
                                     training_dataset)
            row = measure_images(result.lora_path, profile, settings, analysis, encoder,
                                 scratch / f"{lever}-{seed}", seed)
            row["bleed"] = row["trigger_free_features"] - base["trigger_free_features"]
            row["bleed_clip"] = row["trigger_free_clip"] - base["trigger_free_clip"]
            row["bleed_suite"] = row["suite_clip"] - base["suite_clip"]
            row["seconds_per_step"] = per_step
            row["agree"] = _agree(result)
            row["wall_s"] = time.perf_counter() - started
            figures["levers"].setdefault(lever, {})[seed] = row
            print(f"seed {seed} {lever}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in row.items()), flush=True)
    for lever, rows in figures["levers"].items():
        for seed, row in rows.items():
            row["speed_ratio"] = row["seconds_per_step"] / figures["levers"]["lora"][seed]["seconds_per_step"]
    return figures


def combine(runs: list[dict]) -> dict:
    """One figures document from several runs' (their seeds differ; seeds as numbers again, JSON made them text)."""
    figures: dict = {**runs[0], "base": {}, "levers": {}}
    for run_figures in runs:
        figures["base"].update({int(s): row for s, row in run_figures["base"].items()})
        for lever, rows in run_figures["levers"].items():
            figures["levers"].setdefault(lever, {}).update({int(s): row for s, row in rows.items()})
    return figures


def train(lever, seed, steps, profile, settings, analysis, references, scratch, scorer, training_dataset):
    from tools.training.report import read_loss_log
    from tools.training.trainer import default_train_config, train_lora

    from tools.training.prior import default_class_prompt, with_class_prompt

    knobs = dict(LEVERS[lever])
    if knobs.get("class_prompt") == "traits":
        captions = [caption for _, caption in training_dataset(references, analysis, [], "full")]
        knobs["class_prompt"] = default_class_prompt(captions, settings.trigger_token)
    config = default_train_config(profile, knobs.get("adapter", "lora")).replace(
        seed=seed, validation_prompt=settings.test_prompt, **({"steps": steps} if steps else {}), **knobs)
    config = with_class_prompt(config, analysis)  # as rounds and `aldar train` do
    config = config.replace(checkpoint_every=max(1, config.steps // 4), lr_warmup_steps=0, validation_images=2)
    from tools.generation.sampling import SamplingSpec

    # As rounds do: validation images and class images at the guidance and negative prompt images are drawn with.
    config = config.judged_as_drawn(SamplingSpec.from_settings(settings))
    dataset = training_dataset(references, analysis, [], config.caption_mode)
    result = train_lora(config, profile, dataset, scratch / "runs" / f"{lever}-{seed}", quiet=True,
                        score_checkpoint=scorer)
    rows = read_loss_log(result.loss_log)
    gaps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows, rows[1:])]
    return result, statistics.median(gaps)  # the median step: checkpoints' validation renders left out


def measure_images(lora_path, profile, settings, analysis, encoder, folder: Path, seed: int) -> dict:
    from tools.generation.local import generate_local
    from tools.generation.sampling import SamplingSpec
    from tools.scoring.analyzer import category_probabilities, text_embeddings
    from tools.scoring.scorer import score_generators
    from tools.scoring.suite import NO_TRIGGER, build_suite
    from tools.scoring.taxonomy import taxonomy_from_dict
    from tools.world.references import VARIED_BACKGROUNDS

    trigger = settings.trigger_token
    sampling = SamplingSpec.from_settings(settings)
    spec = SamplingSpec(steps=sampling.steps, guidance=sampling.guidance, negative_prompt=sampling.negative_prompt,
                        images_per_prompt=IMAGES, seed=seed * 100)
    name = "lora" if lora_path else "base"

    def draw(prompts: list[str], sub: str) -> list[Path]:
        return [image.path for image in generate_local(profile, prompts, folder / sub, spec, lora_path=lora_path,
                                                       name=name, quiet=True)]

    def scores(paths: list[Path]) -> dict:
        report = score_generators({name: paths}, Path(settings.references), profile, analysis,
                                  settings.metric_weights, encoder=encoder)
        return report["generators"][name]

    def features(paths: list[Path]) -> float:
        return scores(paths)["features"]["mean"]

    backgrounds = [f"{trigger}, {bg}" for bg in VARIED_BACKGROUNDS]
    background_images = draw(backgrounds, "backgrounds")
    taxonomy = taxonomy_from_dict(analysis["taxonomy"], "analysis")
    from PIL import Image

    embeddings = encoder.embed_images([Image.open(p).convert("RGB") for p in background_images])
    probabilities = category_probabilities(embeddings, text_embeddings(encoder, taxonomy))["background"]
    read = [taxonomy.categories["background"][int(i)] for i in probabilities.argmax(dim=1)]
    wanted = [bg for bg in VARIED_BACKGROUNDS for _ in range(IMAGES)]
    trigger_free = scores(draw(list(VARIED_BACKGROUNDS), "trigger_free"))
    # The prompt suite's no-trigger prompts (other characters of the same kind, in a scene): its bleed's images.
    others = [prompt.text for prompt in build_suite(analysis, seed) if prompt.kind == NO_TRIGGER]
    return {"suite_clip": scores(draw(others, "no_trigger"))["clip"]["mean"],"features": features(draw([settings.test_prompt], "test")),
            "trigger_features": features(draw([trigger], "trigger")),
            "background_follow": sum(r == w for r, w in zip(read, wanted)) / len(wanted),
            "trigger_free_features": trigger_free["features"]["mean"],
            "trigger_free_clip": trigger_free["clip"]["mean"]}


def _agree(result) -> str:
    why = (result.chosen_checkpoint or {}).get("why", "")
    return "agree" if "validation loss agrees" in why else "differ" if "disagrees" in why else "n/a"


def print_table(figures: dict, seeds: list[int]) -> None:
    def cell(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"

    base = figures["base"]
    print(f"\nlevers on the toy world (tiny, seeds {' '.join(map(str, seeds))}; mean ± std over seeds)")
    print(f"references: {figures['references']}")
    columns = ["features", "trigger_features", "background_follow", "bleed", "bleed_clip", "bleed_suite", "seconds_per_step",
               "speed_ratio"]
    print("| lever | " + " | ".join(columns) + " | val. loss vs quality |")
    print("|---" * (len(columns) + 2) + "|")
    print("| base model | " + " | ".join(cell([base[s][c] for s in seeds]) if c in base[seeds[0]] else "—"
                                        for c in columns) + " | — |")
    for lever, rows in figures["levers"].items():
        agree = [rows[s]["agree"] for s in seeds]
        print(f"| {lever} | " + " | ".join(cell([rows[s][c] for s in seeds]) for c in columns)
              + f" | {agree.count('agree')} agree / {agree.count('differ')} differ |")


if __name__ == "__main__":
    sys.exit(main())
