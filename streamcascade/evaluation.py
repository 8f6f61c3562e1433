"""Grading function answers against hidden reference tests, in the sandbox (other
kinds grade their own: `streamcascade.tasks`)."""

from __future__ import annotations

import ast
from collections.abc import Sequence

from streamcascade.pyparse import parse
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CodeRequest


def _calls_check(code: str) -> bool:
    """Whether the test code already calls `check(...)` at its top level (MBPP's do)."""
    try:
        tree = parse(code)
    except SyntaxError:
        return False
    return any(
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "check"
        for node in tree.body
    )


def reference_test(request: CodeRequest) -> str | None:
    """HumanEval style: the reference code defines `check(candidate)`; call it,
    unless the code calls it itself (with the function its asserts name, which
    in MBPP is not always the entry point)."""
    if request.reference_tests is None:
        return None
    if _calls_check(request.reference_tests):
        return request.reference_tests
    return f"{request.reference_tests}\n\ncheck({request.entry_point})\n"


def grade_many(sandbox: Sandbox, pairs: Sequence[tuple[CodeRequest, str]]) -> list[bool | None]:
    """Whether each code passes its request's hidden tests; None where there are none."""
    jobs: list[tuple[str, list[str]]] = []
    where: list[int | None] = []
    for request, code in pairs:
        test = reference_test(request)
        if test is None or not code.strip():
            where.append(None)
            continue
        where.append(len(jobs))
        jobs.append((code, [test]))
    results = sandbox.run_many(jobs)
    graded: list[bool | None] = []
    for (request, _code), index in zip(pairs, where, strict=True):
        if index is None:
            graded.append(None if request.reference_tests is None else False)
        else:
            result = results[index]
            graded.append(result.load_status == "ok" and result.passed == [True])
    return graded
