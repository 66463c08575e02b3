"""How much each adapter learns in the learning test's setting, per learning rate, over seeds.

    python bench/adapter_learning.py                                  # lora, lokr, loha at their tiny rates; 42,1,2
    python bench/adapter_learning.py --adapters loha --rates 5e-3,1e-2 --seeds 42,1,2

One round of ``aldar run`` on the bundled references (toy world, ``tiny``, rule policy, no prompt suite, no
competitor) per adapter, learning rate and seed, as ``tests/test_levers.py`` and ``tests/test_world_learning.py``
run it: the adapter's images against the base model's on the references' key features (the scorer's feature
match). Printed per seed and as mean ± spread (population std over the seeds) beside plain LoRA at its rate in
the same run; issue 26's bar is a lead of +0.15. Every figure holds inside the toy world only.

Measured (``--adapters lokr,loha --rates 5e-3,1e-2``; decoder5's VAE; 2 cores shared with two other benches):

    lora  lr 0.005: +0.312 / +0.234 / +0.156  mean +0.234 ± 0.064  (bar +0.15: met on the mean, 3/3 seeds)
    lokr  lr 0.005: +0.188 / +0.250 / +0.312  mean +0.250 ± 0.051  (bar +0.15: met on the mean, 3/3 seeds)
    lokr  lr 0.01: +0.141 / +0.203 / +0.266  mean +0.203 ± 0.051  (bar +0.15: met on the mean, 2/3 seeds)
    loha  lr 0.005: +0.234 / +0.156 / +0.250  mean +0.214 ± 0.041  (bar +0.15: met on the mean, 3/3 seeds)
    loha  lr 0.01: +0.219 / +0.203 / +0.219  mean +0.214 ± 0.007  (bar +0.15: met on the mean, 3/3 seeds)

So every adapter keeps LoRA's 5e-3 on tiny (``tools.training.config.TINY_LEARNING_RATES``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BAR = 0.15


def lead(adapter: str, rate: float, seed: int, work: Path) -> float:
    """LoRA − base key features of one round with ``adapter`` at ``rate``."""
    from agent.rounds.policy import RulePolicy
    from agent.rounds.session import Session
    from tools.settings import load_settings

    folder = work / f"{adapter}_{rate:g}_{seed}"
    settings = load_settings(overrides={"profile": "tiny", "seed": seed, "competitors": [], "suite_size": 0,
                                        "output_dir": str(folder), "analysis_path": str(folder / "analysis.json"),
                                        "target_score": 1.0, "rounds_must_pay": False}, environ={})
    with Session(settings, quiet=True) as session:
        session.params.update(adapter=adapter, learning_rate=rate)
        record = session.run_rounds(1, RulePolicy(bounds=session.bounds))[0]
    return record.scores["lora"].features - record.scores["base"].features


def main() -> int:
    import torch

    from tools.training.config import TINY_LEARNING_RATES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--seeds", default="42,1,2", help="comma-separated seeds")
    parser.add_argument("--adapters", default="lora,lokr,loha", help="comma-separated: lora, lokr, loha")
    parser.add_argument("--rates", default="", help="comma-separated learning rates (default: each adapter's tiny rate)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [(a, float(r)) for a in args.adapters.split(",") for r in (args.rates.split(",") if args.rates
                                                                        else [TINY_LEARNING_RATES[a]])]
    if ("lora", TINY_LEARNING_RATES["lora"]) not in runs:
        runs.insert(0, ("lora", TINY_LEARNING_RATES["lora"]))  # the baseline, in the same run
    print("Toy world, tiny: LoRA − base key features after one round; every figure holds inside the toy world only.")
    with tempfile.TemporaryDirectory(prefix="aldar-adapters-") as scratch:
        for adapter, rate in runs:
            leads = [lead(adapter, rate, seed, Path(scratch)) for seed in seeds]
            per_seed = " / ".join(f"{value:+.3f}" for value in leads)
            mean, spread = statistics.fmean(leads), statistics.pstdev(leads)
            verdict = "met" if mean >= BAR else "MISSED"
            print(f"{adapter:5s} lr {rate:g}: {per_seed}  mean {mean:+.3f} ± {spread:.3f}  (bar +{BAR}: {verdict} on the "
                  f"mean, {sum(v >= BAR for v in leads)}/{len(leads)} seeds)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
