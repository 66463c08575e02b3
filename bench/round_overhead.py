"""One full improvement round on the tiny profile (CPU), split by stage, and the agent's own overhead.

    python bench/round_overhead.py [--rounds 2] [--steps 0] [--threads 1]

A round = analyze → train → generate (base + LoRA; hosted competitors sit out: no keys) → score
(+ feedback) → decide (rule policy) → store/report. For every round it prints each stage's wall
seconds and, of those, the seconds spent inside model code (trainer, generator, scorer, analyzer,
CLIP); everything else — history/JSON/report writes, the policy, prompt and caption building,
the lock — is the agent's own overhead, shown as a share of the round.

Baseline, measured in the same run beside each session round (order alternating): the same model work called
directly (train_lora, generate_local ×2, score_generators + build_feedback) with the same
parameters, no Session around it (CPU seconds are the steadier ratio on a shared machine). Round 1 is cold (models built, references analysed); later
rounds are warm. Tiny-profile numbers measure the agent's plumbing, not SDXL speed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from agent.rounds.params import emphasise, train_config, training_dataset  # noqa: E402
from agent.rounds.policy import RulePolicy  # noqa: E402
from agent.rounds.records import BASE, LORA  # noqa: E402
from agent.rounds.session import Session, SessionEvents  # noqa: E402
from agent.views.report import ReportWriter  # noqa: E402
from tools.generation.sampling import SamplingSpec  # noqa: E402
from tools.settings import BUNDLED_REFERENCES, load_settings  # noqa: E402

STAGES = ("analyze", "train", "generate", "score", "decide", "store/report")


def session_round(session: Session, decider) -> tuple[dict, float, float]:
    """(record, wall seconds, CPU seconds) of one ``run_round``."""
    wall, cpu = time.perf_counter(), time.process_time()
    record = session.run_round(decider)
    return record, time.perf_counter() - wall, time.process_time() - cpu


def direct_round(session: Session, params: dict, scratch: Path) -> tuple[float, float]:
    """The same model work without the agent: (wall seconds, CPU seconds)."""
    from tools.generation.local import generate_local
    from tools.scoring.scorer import build_feedback, score_generators
    from tools.training.trainer import train_lora

    settings, profile = session.settings, session.profile
    started, cpu = time.perf_counter(), time.process_time()
    config = train_config(profile, params)
    dataset = training_dataset(session.references, session.analysis, params.get("feature_emphasis") or [])
    result = train_lora(config, profile, dataset, scratch / "run", quiet=True)
    prompt = emphasise(settings.test_prompt, params.get("feature_emphasis") or [], settings.trigger_token)
    images = {}
    for name, lora in ((BASE, None), (LORA, result.lora_path)):
        made = generate_local(profile, [prompt], scratch / name, SamplingSpec.from_settings(settings), lora_path=lora,
                              name=name, quiet=True)
        images[name] = [m.path for m in made]
    report = score_generators(images, session.references, profile, session.analysis, settings.metric_weights)
    build_feedback(report, LORA)
    return time.perf_counter() - started, time.process_time() - cpu


def stage_split(record: dict, wall: float) -> dict[str, tuple[float, float]]:
    """stage → (wall seconds, model seconds); store/report is the remainder of the round."""
    timings, compute = record["timings_s"], record["compute_s"]
    split = {stage: (timings.get(stage, 0.0), compute.get(stage, 0.0)) for stage in STAGES[:-1]}
    split["store/report"] = (wall - sum(t for t, _ in split.values()), 0.0)
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--rounds", type=int, default=2, help="rounds (the first is cold)")
    parser.add_argument("--steps", type=int, default=0, help="training steps per round (0: the trainer's tiny default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 suits a busy 2-core box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        settings = load_settings(overrides={"profile": "tiny", "output_dir": str(tmp_path / "results"),
                                            "references": str(BUNDLED_REFERENCES),
                                            "analysis_path": str(tmp_path / "analysis.json")}, environ={})
        events = SessionEvents(on_round_recorded=ReportWriter())  # report.html and the chart, as aldar run writes them
        with Session(settings, quiet=True, events=events) as session:
            if args.steps:
                session.params["steps"] = args.steps
            decider = RulePolicy(bounds=session.bounds)
            print(f"tiny profile, CPU, torch threads {args.threads}; steps {session.params['steps']}, "
                  f"{settings.images_per_prompt} image(s) each for base and LoRA; hosted competitors: none (no keys)")
            for number in range(1, args.rounds + 1):
                params = dict(session.params)
                scratch = tmp_path / f"direct_{number}"
                if number % 2:  # alternate the order, so neither side always runs on a warmer process
                    record, wall, cpu = session_round(session, decider)
                    baseline, baseline_cpu = direct_round(session, params, scratch)
                else:
                    baseline, baseline_cpu = direct_round(session, params, scratch)
                    record, wall, cpu = session_round(session, decider)
                split = stage_split(record, wall)
                model = sum(m for _, m in split.values())
                overhead = wall - model
                print(f"\nround {number} ({'cold' if number == 1 else 'warm'}): {wall:.2f} s wall, {cpu:.2f} s CPU, "
                      f"{record['params']['steps']} training steps")
                print(f"  {'stage':<13}{'wall s':>9}{'model s':>9}{'agent s':>9}{'share':>8}")
                for stage in STAGES:
                    total, inside = split[stage]
                    print(f"  {stage:<13}{total:>9.3f}{inside:>9.3f}{total - inside:>9.3f}{total / wall:>8.1%}")
                print(f"  agent overhead: {overhead:.3f} s = {overhead / wall:.2%} of the round")
                print(f"  baseline (same model work called directly): {baseline:.2f} s wall, {baseline_cpu:.2f} s CPU"
                      f" → session/baseline {wall / baseline:.3f} wall, {cpu / baseline_cpu:.3f} CPU"
                      + ("  (round 1 also built the models and analysed the references)" if number == 1 else ""))


if __name__ == "__main__":
    main()
