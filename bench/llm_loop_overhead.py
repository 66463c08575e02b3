"""What the function-calling loop adds on top of the bare openai client (loopback fake server, no network).

    python bench/llm_loop_overhead.py [--turns 30] [--calls 3]

One run measures, against baselines taken in the same run:
* a loop turn of ``--calls`` tool calls + a final answer (streamed, fragments merged, arguments
  validated, results appended) vs the same number of bare streamed ``chat.completions.create``
  calls that are only drained;
* deriving a tool schema from a signature + docstring, and validating one argument object.

Turns and baseline calls are interleaved and reported as medians, so load from other processes
hits both alike. The fake server answers instantly: real LLM latency (seconds) dwarfs all of this.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.llm.client import make_client  # noqa: E402
from agent.llm.decider import DecisionTools  # noqa: E402
from agent.llm.loop import ChatLoop  # noqa: E402
from agent.llm.toolspec import tool_spec  # noqa: E402
from agent.rounds.knobs import SAFE_BOUNDS, knob_parameters  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer, Reply  # noqa: E402
from tools.settings import load_settings  # noqa: E402

BOUNDS = {**SAFE_BOUNDS, "steps": (1, 5000)}
ARGUMENTS = '{"rationale": "the mustache is missing", "steps": 1500, "learning_rate": 0.0001, ' \
            '"feature_emphasis": ["thin mustache", "round face"]}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    os.environ["DEEPSEEK_API_KEY"] = "sk-bench-0000000000000000"

    tools = DecisionTools({"round": 1}, [], {}, BOUNDS, Path(".")).specs()
    read_feedback = next(t for t in tools if t.name == "read_feedback")
    propose = next(t for t in tools if t.name == "propose_adjustment")

    with FakeOpenAIServer() as server:
        settings = load_settings(overrides={"llm_base_url": server.url}, environ={})
        client, model = make_client(settings)
        loop_times, bare_times = [], []
        for _ in range(args.turns):
            server.enqueue(*[Reply.tools(("read_feedback", "{}")) for _ in range(args.calls)], Reply.text("done " * 40))
            loop = ChatLoop(client, model, [read_feedback], system_prompt="bench")
            started = time.perf_counter()
            loop.run_turn("go")
            loop_times.append(time.perf_counter() - started)

            server.enqueue(*[Reply.tools(("read_feedback", "{}")) for _ in range(args.calls)], Reply.text("done " * 40))
            started = time.perf_counter()
            for _ in range(args.calls + 1):
                stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "go"}],
                                                        stream=True, stream_options={"include_usage": True})
                for _chunk in stream:
                    pass
            bare_times.append(time.perf_counter() - started)

    derive_n, validate_n = 2000, 20000
    started = time.perf_counter()
    for _ in range(derive_n):
        tool_spec(propose.function, groups={"knobs": knob_parameters(BOUNDS)})  # as DecisionTools.specs does
    derive_us = (time.perf_counter() - started) / derive_n * 1e6
    started = time.perf_counter()
    for _ in range(validate_n):
        propose.parse_arguments(ARGUMENTS)
    validate_us = (time.perf_counter() - started) / validate_n * 1e6

    loop_ms, bare_ms = statistics.median(loop_times) * 1e3, statistics.median(bare_times) * 1e3
    print(f"turn with {args.calls} tool calls + answer, median of {args.turns}:")
    print(f"  ChatLoop            {loop_ms:8.2f} ms")
    print(f"  bare client calls   {bare_ms:8.2f} ms   (baseline, same requests)")
    print(f"  ratio loop / bare   {loop_ms / bare_ms:8.2f}x")
    print(f"derive propose_adjustment's schema   {derive_us:8.1f} µs")
    print(f"parse + validate its arguments       {validate_us:8.1f} µs")


if __name__ == "__main__":
    main()
