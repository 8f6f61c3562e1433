"""Running candidate programs against a pooled test suite."""

from __future__ import annotations

from collections.abc import Sequence

from streamcascade.sandbox import ExecutionResult, Sandbox


def run_candidates(
    sandbox: Sandbox, programs: Sequence[str], tests: Sequence[str]
) -> tuple[list[list[bool]], dict[str, ExecutionResult]]:
    """Each distinct non-empty program runs once against all `tests`, in parallel.

    Returns the pass matrix (one row per program, in order; an empty program or
    one that failed to load passes nothing) and the result of each program run.
    """
    unique = list(dict.fromkeys(p for p in programs if p.strip()))
    results = dict(zip(unique, sandbox.run_many([(p, tests) for p in unique]), strict=True))
    passed = [
        results[p].passed
        if p in results and results[p].load_status == "ok"
        else [False] * len(tests)
        for p in programs
    ]
    return passed, results
