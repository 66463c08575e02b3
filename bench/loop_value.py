"""Does the loop earn its compute? Rounds of train → score → decide against one plain run, per training step.

    python bench/loop_value.py                                   # seeds 42,1,2,3, 3 rounds, the bundled character
    python bench/loop_value.py --seeds 42,1 --rounds 3 --character aldar_kose --json loop_value.json

For each character and seed, on the toy world (``tiny``), with the rule policy and no hosted competitor:

  (a) ``loop``           the loop: ``--rounds`` rounds (``Session.run_rounds``), each round's best checkpoint kept;
  (b) ``single_equal``   one run of the profile's defaults lengthened to the loop's total optimiser steps (the
                         tiny profile's step cap, twice the default, is lifted for it: a 600-step single run must
                         not silently train 400), best checkpoint kept;
  (c) ``single_default`` one run at the defaults.

Printed per seed and as mean ± spread (population standard deviation over the seeds): best quality (the
original 0.4/0.4/0.2 formula on the round's eight images of the character's own prompt), LoRA − base key-feature
match, total optimiser steps, CPU seconds, and **steps to likeness**: optimiser steps (cumulative over the
loop's rounds) until a checkpoint's validation quality first reaches 90 % of the reference ceiling's quality
("never" when none does). Identity, editability and bleed join the table once the scorer has them (issue 24).

Every figure here is measured inside the toy world: it says whether the loop helps the toy LoRA learn the toy
character per step, nothing about real SDXL. Runs are deterministic per seed (one torch thread).

Tried and measured (record each change to the loop with its figures here):
- the loop as of this bench's first run (rule policy with the backtrack rule, every round trained from
  scratch), Aldar Köse, seeds 42/1/2/3, 3 rounds: loop 0.641 ± 0.023, one run of equal steps 0.625 ± 0.023,
  the defaults 0.609 ± 0.024; loop − equal +0.016 ± 0.010 (+0.013/+0.001/+0.024/+0.025), every scenario at
  likeness by step 80-120. Rerun at seed 42: the same figures to the digit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from agent.rounds.policy import RulePolicy  # noqa: E402
from agent.rounds.session import Session, SessionEvents  # noqa: E402
from agent.views.report import ReportWriter  # noqa: E402
from tools.settings import BUNDLED_REFERENCES, load_settings  # noqa: E402

LIKENESS = 0.9  # of the reference ceiling's quality
SCENARIOS = ("loop", "single_equal", "single_default")
EXAMPLES = BUNDLED_REFERENCES.parent


def character_overrides(name: str) -> dict:
    """Settings for a bundled character: its references, and trigger/name/prompt from its character.json
    (the bundled Aldar Köse is the settings' default and needs none)."""
    folder = EXAMPLES / name
    if not folder.is_dir():
        known = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir() and not p.name.startswith("_"))
        raise SystemExit(f"no bundled character {name!r}: choose one of {', '.join(known)}")
    overrides: dict = {"references": str(folder)}
    card = folder / "character.json"
    if card.is_file():
        overrides.update({k: v for k, v in json.loads(card.read_text()).items()
                          if k in ("trigger_token", "character_name", "test_prompt")})
    return overrides


def run_scenario(scenario: str, character: str, seed: int, rounds: int, loop_steps: int | None,
                 work: Path) -> dict:
    """One scenario in its own results folder; returns its figures."""
    settings = load_settings(overrides={"profile": "tiny", "seed": seed, "competitors": [],
                                        "output_dir": str(work / f"{character}_{seed}_{scenario}"),
                                        "analysis_path": str(work / f"{character}_{seed}_{scenario}" / "analysis.json"),
                                        "target_score": 1.0, "patience": rounds + 1, "max_rounds": rounds,
                                        **character_overrides(character)}, environ={})
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    with Session(settings, quiet=True, events=SessionEvents(on_round_recorded=ReportWriter())) as session:
        policy = RulePolicy(bounds=session.bounds)
        if scenario == "loop":
            records = session.run_rounds(rounds, policy)
        else:
            if scenario == "single_equal":
                session.bounds = {**session.bounds, "steps": (1, loop_steps)}
                session.params["steps"] = loop_steps
            records = session.run_rounds(1, policy)
    cpu_s, wall_s = time.process_time() - started_cpu, time.perf_counter() - started_wall
    return summarise(records, cpu_s, wall_s)


def summarise(records: list[dict], cpu_s: float, wall_s: float) -> dict:
    """Best round, total steps and steps to likeness from a run's history records."""
    best = max(records, key=lambda r: r["lora_score"] if r["lora_score"] is not None else -1.0)
    ceiling = best["ceiling"]["quality"] if best.get("ceiling") else None
    steps_done, to_likeness = 0, None
    for record in records:
        for checkpoint in record["train"]["checkpoint_scores"]:
            if to_likeness is None and ceiling and checkpoint.get("quality") is not None \
                    and checkpoint["quality"] >= LIKENESS * ceiling:
                to_likeness = steps_done + int(checkpoint["step"])
        steps_done += int(record["train"]["steps"] or 0)
    lora, base = best["scores"]["lora"], best["scores"]["base"]
    return {"best_quality": round(best["lora_score"], 4), "best_round": best["round"], "rounds": len(records),
            "lead_features": round(lora["features"] - base["features"], 4),
            "round_qualities": [round(r["lora_score"], 4) for r in records],
            "optimizer_steps": steps_done, "steps_to_likeness": to_likeness, "ceiling_quality": ceiling,
            "cpu_s": round(cpu_s, 1), "wall_s": round(wall_s, 1)}


def mean_spread(values: list[float]) -> str:
    if not values:
        return "—"
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def likeness_text(value: int | None) -> str:
    return "never" if value is None else str(value)


def print_table(results: dict) -> None:
    for character, by_seed in results.items():
        print(f"\n{character} (toy world, tiny: these figures hold inside the toy world only)")
        print(f"  {'seed':>4s} {'scenario':15s} {'best q':>7s} {'round':>5s} {'lead f':>7s} {'steps':>6s} "
              f"{'to likeness':>11s} {'cpu s':>7s}  qualities per round")
        for seed, scenarios in by_seed.items():
            for name in SCENARIOS:
                row = scenarios[name]
                print(f"  {seed:>4} {name:15s} {row['best_quality']:7.3f} {row['best_round']:5d} "
                      f"{row['lead_features']:+7.3f} {row['optimizer_steps']:6d} "
                      f"{likeness_text(row['steps_to_likeness']):>11s} {row['cpu_s']:7.1f}  "
                      f"{' → '.join(f'{q:.3f}' for q in row['round_qualities'])}")
        print("  mean ± spread over the seeds:")
        for name in SCENARIOS:
            rows = [scenarios[name] for scenarios in by_seed.values()]
            reached = [r["steps_to_likeness"] for r in rows if r["steps_to_likeness"] is not None]
            print(f"    {name:15s} best q {mean_spread([r['best_quality'] for r in rows])}   "
                  f"lead f {mean_spread([r['lead_features'] for r in rows])}   "
                  f"steps {mean_spread([float(r['optimizer_steps']) for r in rows])}   "
                  f"to likeness {mean_spread([float(v) for v in reached])} ({len(reached)}/{len(rows)} reached)   "
                  f"cpu s {mean_spread([r['cpu_s'] for r in rows])}")
        loop = [s["loop"]["best_quality"] for s in by_seed.values()]
        equal = [s["single_equal"]["best_quality"] for s in by_seed.values()]
        lead = [a - b for a, b in zip(loop, equal)]
        print(f"  loop − single_equal best quality: {mean_spread(lead)} "
              f"(per seed: {', '.join(f'{v:+.3f}' for v in lead)}; target mean ≥ +0.03)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--seeds", default="42,1,2,3", help="comma-separated seeds")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the loop")
    parser.add_argument("--character", action="append", default=None,
                        help="a bundled character's folder name under examples/ (repeatable; default aldar_kose)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs' results folders here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    characters = args.character or [BUNDLED_REFERENCES.name]
    work = args.work or Path(tempfile.mkdtemp(prefix="aldar-loop-value-"))
    results: dict = {}
    for character in characters:
        for seed in seeds:
            loop = run_scenario("loop", character, seed, args.rounds, None, work)
            equal = run_scenario("single_equal", character, seed, args.rounds, loop["optimizer_steps"], work)
            default = run_scenario("single_default", character, seed, args.rounds, None, work)
            results.setdefault(character, {})[seed] = {"loop": loop, "single_equal": equal, "single_default": default}
            print(f"{character} seed {seed}: loop {loop['best_quality']:.3f} ({loop['optimizer_steps']} steps), "
                  f"single_equal {equal['best_quality']:.3f}, single_default {default['best_quality']:.3f}",
                  flush=True)
            if args.json:  # written as it goes: a long bench keeps what it measured
                args.json.write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
